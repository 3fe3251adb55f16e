"""Instruction decoding: prefixes, opcode, ModRM/SIB/displacement, immediate.

The decoder is table-driven: ``OPINFO`` (built from the instruction table in vm.isa) says
for each opcode whether a ModRM byte follows, how many immediate bytes follow, and which
ModRM digits are instructions with a register operand and which with a memory operand;
every other encoding is #UD. The core decodes every instruction with ``decode`` and then
runs the branch its form slot names (``opcode index * 8 + ModRM.reg``, vm.isa.form_slots);
``ACCESS`` (also from the table) says what the operand stage does first.
``instruction_length`` and ``decode_form`` run the same decoder from Python.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import types

from vm.cpu.jit import Mem, State, Table, i64, jit, jit_inline, pair
from vm.isa import (
    EXACT_MODRM_FORMS,
    EXACT_MODRM_INDEX,
    FORM_SLOTS,
    FORMS,
    IMM_SIZES,
    MAX_EXACT_MODRM,
    OPCODE_INDEXES,
    PRIV_CPL0,
    PRIV_IOPL,
    Form,
    form_digits,
    form_sides,
    form_slots,
    opcode_index,
)

# OPINFO bits, per opcode index (the byte, 256 + the byte after 0F, 512 + k for the k-th
# encoding fixed by its whole ModRM byte: vm.isa.opcode_index).
HAS_MODRM = 1 << 0
IMM_SHIFT = 1  # bits 1..3: immediate size in bytes (0, 1, 2 or 4)
IMM_ONLY_DIGIT0 = 1 << 4  # F6/F7: only /0 (TEST) has an immediate
VALID = 1 << 5
PREFIX = 1 << 6  # the byte is a prefix the decoder accepts, not an opcode
REG_ONLY = 1 << 7  # ModRM.rm always names a register (MOV to/from CRn ignore mod)
DIGITS_SHIFT = 8  # bits 8..15: ModRM digits that are a form (with a memory operand)
EXACT_MODRM = 1 << 16  # some ModRM bytes with mod 3 name a form of their own (0F 01 C1)
CHECK_REGISTER = 1 << 17  # not every digit takes a register operand (LEA, 0F 01): see below
REGISTER_DIGITS_SHIFT = 24  # bits 24..31, with CHECK_REGISTER: digits with a register operand
# After the opcode indexes: the keys of the EXACT_MODRM forms, (opcode index << 8) | ModRM.
EXACT_KEYS = OPCODE_INDEXES
OPINFO_SIZE = EXACT_KEYS + MAX_EXACT_MODRM

MAX_PREFIXES = 4
MAX_INSTRUCTION = 15

# Prefixes the decoder accepts. Segment overrides are no-ops: segments are flat.
PREFIX_REP = 0xF3
PREFIX_REPNE = 0xF2
SEGMENT_PREFIXES = (0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65)


def _byte_index(form: Form) -> int:
    """The opcode index of a form's first two opcode bytes (0F 01 for VMCALL's 0F 01 C1)."""
    return 256 + form.opcode[1] if form.opcode[0] == 0x0F else form.opcode[0]


def build_opinfo() -> np.ndarray:
    """Derive the decoder's per-opcode table from vm.isa.FORMS."""
    info = np.zeros(OPINFO_SIZE, dtype=np.int64)
    info[EXACT_KEYS:] = -1
    imm_by_digit: dict[int, dict[int, int]] = {}
    digits: dict[int, list[int]] = {}  # opcode index -> [memory digits, register digits]
    for form in FORMS:
        index = opcode_index(form)
        imm = sum(IMM_SIZES.get(kind, 0) for kind in form.operands)
        for i in [index + r for r in range(8)] if form.plus_reg else [index]:
            bits = VALID
            if form.modrm is not None:
                bits |= HAS_MODRM
                sides = digits.setdefault(i, [0, 0])
                for digit in form_digits(form):
                    for memory in form_sides(form):
                        sides[0 if memory else 1] |= 1 << digit
                if form.modrm != "r":
                    imm_by_digit.setdefault(i, {})[int(form.modrm)] = imm
            if "r32rm" in form.operands:
                bits |= REG_ONLY
            info[i] |= bits
            info[i] |= max(imm, (int(info[i]) >> IMM_SHIFT) & 7) << IMM_SHIFT
    for i, (memory, register) in digits.items():
        if info[i] & REG_ONLY:  # (mod is taken as 3 whatever it says)
            info[i] |= register << DIGITS_SHIFT
        else:  # every digit with a register operand has a memory one: checked first
            assert register & ~memory == 0, i
            info[i] |= memory << DIGITS_SHIFT
            if register != memory:
                info[i] |= CHECK_REGISTER | register << REGISTER_DIGITS_SHIFT
    for i, sizes in imm_by_digit.items():
        if len(set(sizes.values())) > 1:  # F6/F7: TEST has an immediate, NOT..IDIV do not
            assert set(sizes) >= {0} and all(v == 0 for d, v in sizes.items() if d != 0), i
            info[i] = (info[i] & ~(7 << IMM_SHIFT)) | (sizes[0] << IMM_SHIFT) | IMM_ONLY_DIGIT0
    for k, form in enumerate(EXACT_MODRM_FORMS):
        assert opcode_index(form) == EXACT_MODRM_INDEX + k
        assert not any(kind in IMM_SIZES for kind in form.operands)  # (decode returns early)
        first = _byte_index(form)
        info[first] |= VALID | HAS_MODRM | EXACT_MODRM
        info[EXACT_KEYS + k] = first << 8 | form.modrm_byte
    for b in (PREFIX_REP, PREFIX_REPNE, *SEGMENT_PREFIXES):
        info[b] = PREFIX
    return info


# ACCESS bits, per form slot (opcode index * 8 + ModRM.reg, like the cost table): what the
# core's operand stage does before the instruction's branch runs (vm.isa Form.access and
# Form.privileged).
ACC_READ = 1 << 0  # read the r/m operand into ``src``
ACC_WRITE = 1 << 1  # the r/m operand is written back (its address is checked up front)
ACC_PUSH = 1 << 2  # a dword is pushed (the stack slot is checked up front)
ACC_POP = 1 << 3  # a dword is popped into ``popped`` before the instruction executes
ACC_SIZE_SHIFT = 4  # bits 4..6: r/m operand size in bytes (1, 2 or 4)
ACC_CPL0 = 1 << 7  # #GP(0) unless CPL = 0, before anything else
ACC_IOPL = 1 << 8  # #GP(0) unless CPL <= IOPL, before anything else
ACC_PRIVILEGED = ACC_CPL0 | ACC_IOPL
_ACCESS_BITS = {"read": ACC_READ, "write": ACC_WRITE, "push": ACC_PUSH, "pop": ACC_POP}
_RM_SIZES = {"rm8": 1, "rm16": 2, "rm32": 4}


def form_access(form: Form) -> int:
    """The ACCESS bits of one form (see ACC_*), from its access words and privilege."""
    acc = 0
    words = form.access.split()
    for word in words:
        acc |= _ACCESS_BITS.get(word, 0)
    if acc & (ACC_READ | ACC_WRITE):
        kind = next(k for k in form.operands if k in _RM_SIZES)
        acc |= (2 if "word" in words else _RM_SIZES[kind]) << ACC_SIZE_SHIFT
    if form.privileged == PRIV_CPL0:
        acc |= ACC_CPL0
    elif form.privileged == PRIV_IOPL:
        acc |= ACC_IOPL
    return acc


def build_access() -> np.ndarray:
    """Derive the operand stage's per-form-slot table from vm.isa.FORMS."""
    table = np.zeros(FORM_SLOTS, dtype=np.int64)
    for (slot, _), form in form_slots().items():
        table[slot] = form_access(form)
    return table


OPINFO = build_opinfo()
ACCESS = build_access()


@jit_inline
def sign8(v):
    """Sign-extend a byte to int64."""
    return v - 256 if v & 0x80 else v


@jit_inline
def fetch32(code, q):
    """Little-endian dword from a byte array."""
    return (
        np.int64(code[q])
        | (np.int64(code[q + 1]) << 8)
        | (np.int64(code[q + 2]) << 16)
        | (np.int64(code[q + 3]) << 24)
    )


@jit_inline
def decode(code, p, regs, opinfo):
    """Decode the instruction at code[p:].

    Returns (length, opcode index, rep prefix, mod, reg, rm, effective address, immediate),
    with length 0 for an encoding the CPU does not support (#UD). ``rep`` is 0, 0xF3 or 0xF2.
    The effective address uses the current registers (``regs`` = the state array). The
    encodings a whole ModRM byte names (VMCALL) are left to decode_exact, which the run loop
    calls when this says 0: rare, and so kept out of the loop's inlined copy of this one.
    """
    q = p
    rep = 0
    op = np.int64(code[q])
    while opinfo[op] & PREFIX:
        if op == PREFIX_REP or op == PREFIX_REPNE:
            rep = op
        q += 1
        if q - p > MAX_PREFIXES:
            return 0, 0, 0, 0, 0, 0, 0, 0
        op = np.int64(code[q])
    q += 1
    if op == 0x0F:
        op = 256 + np.int64(code[q])
        q += 1
    info = opinfo[op]
    if not info & VALID:
        return 0, op, rep, 0, 0, 0, 0, 0
    mod = 0
    reg = 0
    rm = 0
    ea = 0
    if info & HAS_MODRM:
        modrm = np.int64(code[q])
        q += 1
        mod = modrm >> 6
        reg = (modrm >> 3) & 7
        rm = modrm & 7
        if not (info >> (DIGITS_SHIFT + reg)) & 1:  # (VMCALL and such: see decode_exact)
            return 0, op, rep, mod, reg, rm, 0, 0
        if info & REG_ONLY:
            mod = 3
        elif mod == 3 and info & CHECK_REGISTER and not (info >> (REGISTER_DIGITS_SHIFT + reg)) & 1:
            return 0, op, rep, mod, reg, rm, 0, 0  # (LEA, LGDT...: no register operand)
        elif mod != 3:
            if rm == 4:  # SIB byte follows
                sib = np.int64(code[q])
                q += 1
                index = (sib >> 3) & 7
                base = sib & 7
                if index != 4:
                    ea = regs[index] << (sib >> 6)
                if base == 5 and mod == 0:
                    ea += fetch32(code, q)
                    q += 4
                else:
                    ea += regs[base]
            elif rm == 5 and mod == 0:  # disp32, no base
                ea = fetch32(code, q)
                q += 4
            else:
                ea = regs[rm]
            if mod == 1:
                ea += sign8(np.int64(code[q]))
                q += 1
            elif mod == 2:
                ea += fetch32(code, q)
                q += 4
            ea &= 0xFFFFFFFF
    size = (info >> IMM_SHIFT) & 7
    if (info & IMM_ONLY_DIGIT0) and reg != 0:
        size = 0
    imm = 0
    if size == 1:
        imm = np.int64(code[q])
    elif size == 4:
        imm = fetch32(code, q)
    elif size == 2:
        imm = np.int64(code[q]) | (np.int64(code[q + 1]) << 8)
    q += size
    return q - p, op, rep, mod, reg, rm, ea, imm


def instruction_length(code: bytes) -> int:
    """Length of the first instruction in ``code`` as the CPU decodes it; 0 if unsupported."""
    buf = np.zeros(MAX_INSTRUCTION + 16, dtype=np.uint8)
    data = bytes(code[:MAX_INSTRUCTION])
    buf[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    regs = np.zeros(8, dtype=np.int64)
    length = int(decode_again(buf, 0, regs, OPINFO)[0])
    return length if length <= len(data) else 0


@jit(pair(i64)(Mem, i64, Table))
def decode_exact(code, p, opinfo):
    """(length, opcode index EXACT_MODRM_INDEX + k) of the k-th encoding that its whole
    ModRM byte names (VMCALL, 0F 01 C1) at code[p:], or (0, 0); none has an immediate."""
    q = p
    op = np.int64(code[q])
    while opinfo[op] & PREFIX:
        q += 1
        if q - p > MAX_PREFIXES:
            return 0, 0
        op = np.int64(code[q])
    q += 1
    if op == 0x0F:
        op = 256 + np.int64(code[q])
        q += 1
    if not opinfo[op] & EXACT_MODRM:
        return 0, 0
    key = (op << 8) | np.int64(code[q])
    for k in range(MAX_EXACT_MODRM):
        if opinfo[EXACT_KEYS + k] == key:
            return q + 1 - p, EXACT_MODRM_INDEX + k
    return 0, 0


@jit(types.UniTuple(i64, 8)(Mem, i64, State, Table))
def decode_again(code, p, regs, opinfo):
    """decode and decode_exact, as a call (the run loop inlines only one copy of decode)."""
    length, op, rep, mod, reg, rm, ea, imm = decode(code, p, regs, opinfo)
    if length == 0:
        exact, exact_op = decode_exact(code, p, opinfo)
        if exact:
            return exact, exact_op, rep, mod, reg, rm, 0, 0
    return length, op, rep, mod, reg, rm, ea, imm


@jit(i64(Mem, i64, State, Table))
def effective_address(code, p, regs, opinfo):
    """The ModRM effective address of the instruction at code[p:] with the given registers."""
    return decode(code, p, regs, opinfo)[6]


# ---- the Python decoder that names the form ------------------------------------------------
_SLOT_FORMS = form_slots()
# Forms with a mandatory prefix (REP and REPNE string forms), by (form slot, prefix byte).
_PREFIXED_FORMS = {(opcode_index(f) * 8, f.prefix[0]): f for f in reversed(FORMS) if f.prefix}


class Decoded(NamedTuple):
    """One instruction as the CPU decodes it, with the vm.isa row it is."""

    form: Form  # the vm.isa row this encoding is
    length: int
    mod: int  # ModRM fields (0 when the form has no ModRM; mod is 3 for MOV to/from CRn)
    reg: int
    rm: int
    imm: int  # the immediate (moffs: the address), unsigned as encoded; 0 if none
    code: bytes  # the instruction's bytes

    @property
    def name(self) -> str:
        """The operation's name (vm.isa Form.name): "mov_to_cr", "lgdt", "add"..."""
        return self.form.name

    @property
    def is_memory(self) -> bool:
        """The r/m operand (or a moffs operand) is in memory: see decoded_address."""
        if self.form.modrm is not None:
            return self.mod != 3
        return any(kind.startswith("moffs") for kind in self.form.operands)


def _buffer(code: bytes) -> np.ndarray:
    buf = np.zeros(MAX_INSTRUCTION + 16, dtype=np.uint8)
    data = bytes(code[:MAX_INSTRUCTION])
    buf[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    return buf


def decode_form(code: bytes) -> Decoded | None:
    """Decode the first instruction of ``code`` as the CPU does and name its form.

    None when the CPU raises #UD on these bytes (or ``code`` ends before the instruction).
    """
    buf = _buffer(code)
    length, op, rep, mod, reg, rm, _, imm = decode_again(buf, 0, np.zeros(8, np.int64), OPINFO)
    if length == 0 or length > len(code):
        return None
    if not OPINFO[op] & HAS_MODRM and op < EXACT_MODRM_INDEX:
        mod = reg = rm = 0
    slot = op * 8 + reg
    form = None
    if rep:  # REP MOVSB...; F2 before MOVS, STOS, LODS repeats as F3 does
        other = PREFIX_REP if rep == PREFIX_REPNE else PREFIX_REPNE
        form = _PREFIXED_FORMS.get((slot, rep)) or _PREFIXED_FORMS.get((slot, other))
    if form is None:
        form = _SLOT_FORMS.get((slot, bool(OPINFO[op] & HAS_MODRM) and mod != 3))
    if form is None:
        return None
    return Decoded(form, int(length), int(mod), int(reg), int(rm), int(imm), bytes(code[:length]))


def decoded_address(decoded: Decoded, state: np.ndarray) -> int:
    """The linear address of a decoded instruction's memory operand, computed with the
    registers in ``state`` (a moffs form: its address). ValueError if it has none."""
    if not decoded.is_memory:
        raise ValueError(f"{decoded.name} at these bytes has no memory operand")
    if decoded.form.modrm is None:
        return decoded.imm
    return int(effective_address(_buffer(decoded.code), 0, state, OPINFO))
