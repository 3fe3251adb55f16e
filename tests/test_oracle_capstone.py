"""vmlab's decoder against capstone: instruction lengths agree for every supported encoding.

For every form of the instruction table: encodings over every register field, every ModRM
addressing mode (mod 00/01/10/11, SIB with every scale, index and base, disp32 with no
base, the ESP and EBP special cases) and random displacements and immediates; our
``instruction_length`` must be non-zero and equal to capstone's length. Then random byte
strings: wherever our decoder accepts an encoding, capstone must decode it to the same length.
"""

from __future__ import annotations

import random

import pytest

from vm.cpu.decode import instruction_length
from vm.isa import FORMS, IMM_SIZES, Form

pytestmark = pytest.mark.requires("capstone")

FUZZ_STRINGS = 30_000
SHOWN = 20


@pytest.fixture(scope="module")
def capstone_length():
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)

    def length(code: bytes) -> int:
        """Capstone's length of the first instruction in code, 0 if it decodes none."""
        for insn in md.disasm(code, 0x1000, count=1):
            return insn.size
        return 0

    return length


def modrm_tails(rng: random.Random, reg: int, register_ok: bool) -> list[bytes]:
    """ModRM (+SIB, + displacement) byte strings for one reg field, over every mode."""
    out = []
    for mod in range(4):
        if mod == 3 and not register_ok:
            continue
        for rm in range(8):
            modrm = bytes([mod << 6 | reg << 3 | rm])
            disp = {0: b"", 1: rng.randbytes(1), 2: rng.randbytes(4), 3: b""}[mod]
            if mod == 3:
                out.append(modrm)
            elif rm == 4:  # SIB: every byte for mod 00, every scale/index and base 4/5 after
                sibs = range(256) if mod == 0 else [s for s in range(256) if s & 7 in (4, 5, rm)]
                for sib in sibs:
                    extra = rng.randbytes(4) if mod == 0 and sib & 7 == 5 else b""
                    out.append(modrm + bytes([sib]) + extra + disp)
            elif rm == 5 and mod == 0:  # disp32, no base
                out.append(modrm + rng.randbytes(4))
            else:
                out.append(modrm + disp)
    return out


def encodings(form: Form, rng: random.Random) -> list[bytes]:
    """Byte strings of one form, with random displacements and immediates."""
    imm = sum(IMM_SIZES.get(kind, 0) for kind in form.operands)
    if form.plus_reg:
        heads = [form.prefix + form.opcode[:-1] + bytes([form.opcode[-1] + r]) for r in range(8)]
    else:
        heads = [form.prefix + form.opcode]
    if form.modrm is None:
        return [head + rng.randbytes(imm) for head in heads]
    regs = range(8) if form.modrm == "r" else [int(form.modrm)]
    if "sreg" in form.operands:  # ES CS SS DS FS GS, and CS cannot be loaded
        regs = [0, 2, 3, 4, 5] if form.operands[0] == "sreg" else range(6)
    if "cr" in form.operands:  # CR0 CR2 CR3 CR4
        regs = [0, 2, 3, 4]
    register_ok = "m" not in form.operands  # LEA, LGDT... take a memory operand only
    if "r32rm" in form.operands:  # MOV to and from CRn: the operand is always a register
        return [
            head + bytes([0xC0 | reg << 3 | rm])
            for head in heads
            for reg in regs
            for rm in range(8)
        ]
    out = []
    for head in heads:
        for reg in regs:
            for tail in modrm_tails(rng, reg, register_ok):
                out.append(head + tail + rng.randbytes(imm))
    return out


def form_name(form: Form) -> str:
    return f"{form.mnemonic} {', '.join(form.operands)}".strip()


@pytest.mark.parametrize(
    "form",
    # one case per encoding: aliases (jnae/jb/jc, pushf/pushfd...) share their bytes
    list({(f.prefix, f.opcode, f.modrm, f.operands): f for f in FORMS}.values()),
    ids=form_name,
)
def test_instruction_length_matches_capstone(form, capstone_length):
    rng = random.Random(form_name(form))
    wrong = []
    for code in encodings(form, rng):
        ours, theirs = instruction_length(code), capstone_length(code + bytes(16))
        if ours != theirs or ours == 0:
            wrong.append(f"{code.hex(' ')}: vmlab {ours}, capstone {theirs}")
    assert not wrong, f"{len(wrong)} encodings of {form_name(form)} differ:\n" + "\n".join(
        wrong[:SHOWN]
    )


def test_random_bytes_decode_to_capstone_lengths(capstone_length):
    """Random byte strings, their first byte often a real opcode: whenever our decoder
    accepts one (length > 0), capstone decodes the same length."""
    rng = random.Random(2024)
    firsts = sorted({f.prefix[:1] or f.opcode[:1] for f in FORMS} | {b"\x0f"})
    prefixes = [b"\xf2", b"\xf3", b"\x26", b"\x2e", b"\x36", b"\x3e", b"\x64", b"\x65"]
    wrong = []
    accepted = 0
    for _ in range(FUZZ_STRINGS):
        code = rng.randbytes(15)
        pick = rng.random()
        if pick < 0.5:
            code = rng.choice(firsts) + code
        elif pick < 0.6:
            code = rng.choice(prefixes) + rng.choice(firsts) + code
        code = code[:15]
        ours = instruction_length(code)
        if ours == 0:
            continue
        accepted += 1
        theirs = capstone_length(code)
        if ours != theirs:
            wrong.append(
                f"{code[: max(ours, theirs, 1)].hex(' ')}: vmlab {ours}, capstone {theirs}"
            )
    assert accepted > FUZZ_STRINGS // 4, f"only {accepted} strings decoded"
    assert not wrong, f"{len(wrong)} of {accepted} accepted strings differ:\n" + "\n".join(
        wrong[:SHOWN]
    )
