"""The CPU's tables come from the instruction table (vm.isa): every encoding of a row runs in
its row's own branch of the core and costs what the row says; every encoding the table does
not have raises #UD, and no such encoding reaches a branch."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
from systables import KERNEL_CODE, KERNEL_DATA, KERNEL_STACK, TSS_SELECTOR, protected_machine

from vm.cpu import core
from vm.cpu import state as S
from vm.cpu.decode import (
    ACC_CPL0,
    ACC_IOPL,
    ACCESS,
    OPINFO,
    PREFIX,
    decode_again,
    decode_form,
    form_access,
)
from vm.cpu.exits import ExitReason
from vm.isa import (
    DEFAULT_COST_TABLE,
    FORMS,
    IMM_SIZES,
    PRIV_CPL0,
    PRIV_IOPL,
    Form,
    form_digits,
    form_sides,
    form_slots,
    opcode_index,
)
from vm.machine import Machine

DATA = 0x6000  # memory operands address this
CODE = 0x3000


def table_encodings() -> tuple[set[bytes], dict[bytes, Form], dict[tuple[bytes, int], Form]]:
    """What the table says is an instruction, computed from the rows alone: opcodes that take
    no ModRM, and (opcode, ModRM byte) pairs, with the first row that has each."""
    no_modrm: dict[bytes, Form] = {}
    with_modrm: dict[tuple[bytes, int], Form] = {}
    for form in sorted(FORMS, key=lambda f: f.plus_reg):
        if form.prefix:
            continue
        heads = [form.opcode]
        if form.plus_reg:
            heads = [form.opcode[:-1] + bytes([form.opcode[-1] + r]) for r in range(8)]
        for head in heads:
            if form.modrm_byte is not None:
                with_modrm.setdefault((head[:2], form.modrm_byte), form)
            elif form.modrm is None:
                no_modrm.setdefault(head, form)
            else:
                for digit in form_digits(form):
                    for mod in range(4):
                        if "r32rm" not in form.operands and (mod != 3) not in form_sides(form):
                            continue
                        for rm in range(8):
                            modrm = mod << 6 | digit << 3 | rm
                            with_modrm.setdefault((head, modrm), form)
    return set(no_modrm), no_modrm, with_modrm


def opcodes() -> list[bytes]:
    """Every one-byte opcode that is not a prefix, and every 0F xx."""
    ones = [bytes([b]) for b in range(256) if b != 0x0F and not OPINFO[b] & PREFIX]
    return ones + [bytes([0x0F, b]) for b in range(256)]


def handler_of(op: int, reg: int) -> int:
    """The branch the core's run loop takes (as it computes it)."""
    handler = core.OP_HANDLER[op]
    return core.HANDLER[op * 8 + reg] if handler == core.H_SLOW else handler


def test_every_encoding_of_the_table_reaches_its_rows_branch_and_no_other_does():
    _, no_modrm, with_modrm = table_encodings()
    regs = np.zeros(S.STATE_SIZE, np.int64)
    buf = np.zeros(64, np.uint8)
    wrong = []
    checked = 0
    for head in opcodes():
        for modrm in range(256) if head not in no_modrm else [0x90]:
            code = head + bytes([modrm]) + bytes(12)
            buf[: len(code)] = np.frombuffer(code, np.uint8)
            length, op, _, _, reg, _, _, _ = decode_again(buf, 0, regs, OPINFO)
            form = no_modrm.get(head) or with_modrm.get((head, modrm))
            checked += 1
            if form is None:
                if length != 0:
                    wrong.append(f"{code[:3].hex(' ')}: not in the table, decoded")
                continue
            if length == 0:
                wrong.append(f"{code[:3].hex(' ')}: {form.name} is #UD")
                continue
            handler = handler_of(op, reg)
            if handler != core.FAMILY[form.family] or handler == core.H_UD:
                wrong.append(f"{code[:3].hex(' ')}: {form.name} runs in branch {handler}")
            if op != opcode_index(form) + (head[-1] - form.opcode[-1] if form.plus_reg else 0):
                wrong.append(f"{code[:3].hex(' ')}: {form.name} decoded as opcode {op:#x}")
            slot = op * 8 + reg
            if ACCESS[slot] != form_access(form) or DEFAULT_COST_TABLE[slot] != form.cost:
                wrong.append(f"{code[:3].hex(' ')}: {form.name}'s access or cost slot differs")
    assert checked > 80_000
    assert not wrong, f"{len(wrong)} encodings:\n" + "\n".join(wrong[:30])


def test_every_handler_family_has_a_branch_in_the_core():
    source = Path(core.__file__).read_text()
    branches = set(re.findall(r"handler == H_(\w+)", source))
    families = {f.upper() for f in core.FAMILY} - {"UD"}
    assert families <= branches, families - branches
    used = {f.family for f in FORMS}
    assert used == set(core.FAMILY) - {"ud"}, "a family no row uses, or a row's unknown one"


def test_privilege_in_the_access_table_follows_the_rows():
    for (slot, _), form in form_slots().items():
        assert bool(ACCESS[slot] & ACC_CPL0) == (form.privileged == PRIV_CPL0), form
        assert bool(ACCESS[slot] & ACC_IOPL) == (form.privileged == PRIV_IOPL), form


# ---- what each form costs, as the core charges it -----------------------------------------------
def encoding(slot: int, memory: bool, form: Form) -> bytes:
    """Bytes of the form in a slot: r/m = ECX or [DATA]; immediates 1 (moffs: DATA)."""
    op, digit = divmod(slot, 8)
    if form.modrm_byte is not None:
        return form.opcode
    code = form.prefix + (bytes([op]) if op < 256 else bytes([0x0F, op - 256]))
    if form.modrm is not None:
        if memory:
            code += bytes([digit << 3 | 5]) + struct.pack("<I", DATA)
        else:
            code += bytes([0xC0 | digit << 3 | 1])
    for kind in form.operands:
        size = IMM_SIZES.get(kind, 0)
        if form.opcode in (b"\xf6", b"\xf7") and form.modrm != "0":
            size = 0  # (only TEST of the F6/F7 group has an immediate)
        value = DATA if kind.startswith("moffs") else 1
        code += value.to_bytes(4, "little")[:size]
    return code


def cost_machine(form: Form) -> Machine:
    """A ring-0 machine where one instruction of ``form`` at CODE runs without a fault."""
    m = protected_machine()
    m.state[S.EXC_EXIT_BITMAP] = 0xFFFFFFFF  # a fault would show as a FAULT exit
    m.state[S.EXIT_CONTROLS] = S.EXIT_ON_HLT | S.EXIT_ON_IO
    m.set_soft_int_exits("all")
    # a divisor of 1 and a jump target; LTR's TSS; MOV SS's ring-0 data segment
    selector = {"ltr": TSS_SELECTOR, "mov_to_sreg": KERNEL_DATA}.get(form.name, 1)
    m.regs.ecx = selector
    m.regs.esi, m.regs.edi, m.regs.ebp = DATA, DATA + 0x100, KERNEL_STACK
    m.write32(DATA, selector)
    m.load(KERNEL_STACK, struct.pack("<III", CODE + 0x100, KERNEL_CODE, 2))  # for IRET
    m.eip = CODE
    return m


def slot_forms() -> list[tuple[int, bool, Form]]:
    """Every (form slot, memory operand) of the table, and each REP form."""
    out = [(slot, memory, form) for (slot, memory), form in form_slots().items()]
    return out + [(opcode_index(f) * 8, False, f) for f in FORMS if f.prefix]


NOT_RETIRED = {"ud2", "vmcall"}  # #UD (or a HYPERCALL exit): never charged


@pytest.mark.parametrize(
    ("slot", "memory", "form"),
    slot_forms(),
    ids=[f"{f.prefix.hex()}{s // 8:x}/{s % 8}{'m' if m else ''}" for s, m, f in slot_forms()],
)
def test_each_form_costs_what_its_row_says(slot, memory, form):
    code = encoding(slot, memory, form)
    decoded = decode_form(code)
    assert decoded is not None and decoded.form.family == form.family, code.hex(" ")
    assert decoded.form.prefix == form.prefix and decoded.form.cost == form.cost
    m = cost_machine(form)
    m.load(CODE, code)
    assert m.state[S.COST_TABLE + slot] == form.cost
    before = m.cycles
    ex = m.step()
    if form.name in NOT_RETIRED:
        assert ex.reason == ExitReason.FAULT and ex.vector == 6, ex
        assert m.cycles == before and m.instructions == 0
        return
    assert ex.reason != ExitReason.FAULT, f"{code.hex(' ')}: {ex}"
    assert m.cycles - before == form.cost, f"{code.hex(' ')}: {ex}"


def test_every_privileged_form_takes_the_slow_path_that_checks_privilege():
    for (slot, _), form in form_slots().items():
        if form.privileged:
            assert core.OP_HANDLER[slot // 8] == core.H_SLOW, form
