"""NASM as the oracle: a generated corpus over every form of the instruction table, over
registers, addressing shapes and immediates at their edges, assembles to NASM's bytes."""

from __future__ import annotations

import itertools
import random
import subprocess

import pytest
from conftest import require_tool

from vm.asm import assemble
from vm.asm.encoder import CREGS, REG8, REG16, REG32, SREGS
from vm.isa import FORMS, Form

MEMORY = [
    "[eax]",
    "[ebx+4]",
    "[ecx-128]",
    "[edx+127]",
    "[esi+128]",
    "[edi-0x12345]",
    "[esp]",
    "[esp+8]",
    "[ebp]",
    "[ebp-4]",
    "[0x1234]",
    "[eax+ebx]",
    "[ebp+ecx*2]",
    "[esp+eax*4+16]",
    "[edi*8+0x100]",
    "[eax*2]",
    "[ecx*4]",
    "[eax*3+1]",
    "[esi+edi*1-2000]",
    "[data]",
    "[data+ecx*4]",
]
IMM8 = ["0", "1", "0x7f", "0x80", "0xff", "-1", "-128", "'A'"]
SIMM8 = ["0", "1", "-1", "127", "-128", "0x7f"]
IMM16 = ["0", "1", "0xffff", "0x1234"]
IMM32 = ["0", "1", "127", "128", "-129", "0xffff", "0x12345678", "0xffffffff", "data"]
# Memory operands that NASM takes without a size (the instruction fixes it).
UNSIZED = {"lea", "lgdt", "lidt", "sgdt", "sidt", "invlpg", "str", "sldt", "smsw"}


def operand_choices(form: Form, kind: str) -> list[str]:
    sized = form.mnemonic not in UNSIZED and "sreg" not in form.operands
    size = {"rm8": "byte ", "rm16": "word ", "rm32": "dword "}.get(kind, "")
    memory = [(size if sized else "") + m for m in MEMORY]
    return {
        "r8": list(REG8),
        "r32": list(REG32),
        "r32rm": list(REG32),
        "rm8": list(REG8) + memory,
        "rm16": list(REG16) + memory,
        "rm32": list(REG32) + memory,
        "m": list(MEMORY),
        "imm8": IMM8,
        "simm8": SIMM8,
        "imm16": IMM16,
        "imm32": IMM32,
        "rel8": ["$", "$+2", "$-100", "$+120"],
        "rel32": ["far_label", "near far_label", "data"],
        "moffs8": ["[0x1234]", "[data]"],
        "moffs32": ["[0x12345678]", "[data]"],
        "al": ["al"],
        "eax": ["eax"],
        "cl": ["cl"],
        "dx": ["dx"],
        "1": ["1"],
        "cr": list(CREGS),
        "sreg": [s for s in SREGS if not (form.opcode == b"\x8e" and s == "cs")],
    }[kind]


def corpus(seed: int = 7, per_form: int = 24) -> list[str]:
    """Instruction lines covering every form (at most per_form combinations each)."""
    rng = random.Random(seed)
    lines = []
    for form in FORMS:
        choices = [operand_choices(form, kind) for kind in form.operands]
        combos = list(itertools.product(*choices)) if choices else [()]
        if form.operands == ("r32", "eax") or form.operands == ("eax", "r32"):
            pass  # xchg with eax: every register
        picked = combos if len(combos) <= per_form else rng.sample(combos, per_form)
        for operands in picked:
            lines.append(f"{form.mnemonic} {', '.join(operands)}".strip())
    return lines


def program(lines: list[str]) -> str:
    body = ["bits 32", "org 0x10000", "near_label:"]
    body += [f"    {line}" for line in lines]
    body += ["    times 300 nop", "far_label:", "data: dd 1, 2, 3", "db 'text', 0", "align 16"]
    return "\n".join(body) + "\n"


def nasm(source: str, tmp_path) -> bytes:
    path = tmp_path / "corpus.asm"
    path.write_text(source)
    out = tmp_path / "corpus.bin"
    run = subprocess.run(
        ["nasm", "-f", "bin", "-o", str(out), str(path)], capture_output=True, text=True
    )
    assert run.returncode == 0, f"NASM rejected the corpus:\n{run.stderr[:2000]}"
    return out.read_bytes()


def test_corpus_covers_every_form():
    lines = corpus()
    mnemonics = {line.split(" ")[0] for line in lines}
    assert {f.mnemonic.split(" ")[0] for f in FORMS} <= mnemonics
    assert len(lines) >= 5000


@pytest.mark.parametrize("seed", [7, 8])
def test_every_form_assembles_to_nasms_bytes(seed, tmp_path):
    require_tool("nasm")
    source = program(corpus(seed))
    ours = assemble(source, filename="corpus.asm")
    theirs = nasm(source, tmp_path)
    if ours.code == theirs:
        return
    for entry in ours.listing:  # name the first line whose bytes differ
        start = entry.address - ours.origin
        if theirs[start : start + len(entry.data)] != entry.data:
            expected = theirs[start : start + max(len(entry.data), 1)].hex(" ")
            pytest.fail(
                f"line {entry.line}: {entry.text.strip()}\n"
                f"  vmlab: {entry.data.hex(' ')}\n  nasm:  {expected}"
            )
    pytest.fail(f"lengths differ: vmlab {len(ours.code)} bytes, nasm {len(theirs)}")


@pytest.mark.parametrize(
    "name, defines",
    [
        ("toyos.asm", ()),
        ("toyos.asm", ("PARAVIRT",)),
        ("toyos.asm", ("PARAVIRT", "PARAVIRT_UNBATCHED")),
        ("toyos.asm", ("PVOPS",)),
        ("user.asm", ()),
    ],
)
def test_toyos_sources_assemble_to_nasms_bytes(name, defines, tmp_path):
    require_tool("nasm")
    from vm.asm import assemble_file
    from vm.guest.toyos import GUEST_DIR

    out = tmp_path / "out.bin"
    flags = [f"-d{define}" for define in defines]
    subprocess.run(["nasm", "-f", "bin", *flags, "-o", str(out), str(GUEST_DIR / name)], check=True)
    ours = assemble_file(GUEST_DIR / name, defines=dict.fromkeys(defines, 1))
    assert ours.code == out.read_bytes()
