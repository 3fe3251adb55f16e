"""Operands and instruction encoding: pick the form NASM would, and write its bytes.

NASM's rule, which vmlab follows: of the forms in the instruction table that accept the
operands, take the shortest encoding; among equally short ones, the first in the table.
Immediates and displacements whose value is not known yet (a forward reference on an
early pass) take their longest size, as NASM does, and shrink on a later pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vm.asm.errors import AsmError, Location
from vm.isa import FORMS_BY_MNEMONIC, IMM_SIZES, REG8_NAMES, REG32_NAMES, SREG_NAMES, Form

REG32 = REG32_NAMES
REG16 = tuple(name[1:] for name in REG32_NAMES)  # ax cx dx bx sp bp si di
REG8 = REG8_NAMES
SREGS = SREG_NAMES
CREGS = {"cr0": 0, "cr2": 2, "cr3": 3, "cr4": 4}
SIZES = {"byte": 1, "word": 2, "dword": 4}
ESP, EBP = 4, 5


def register(name: str) -> tuple[str, int, int] | None:
    """(kind, number, size) of a register name, or None."""
    n = name.lower()
    if n in REG32:
        return "reg", REG32.index(n), 4
    if n in REG16:
        return "reg", REG16.index(n), 2
    if n in REG8:
        return "reg", REG8.index(n), 1
    if n in SREGS:
        return "sreg", SREGS.index(n), 2
    if n in CREGS:
        return "cr", CREGS[n], 4
    return None


@dataclass
class Operand:
    """One parsed operand. ``value``/``disp`` is None while a forward reference is unknown."""

    kind: str  # "reg", "sreg", "cr", "mem", "imm"
    column: int
    number: int = 0  # register number
    size: int = 0  # register size, or a size keyword on memory / immediates (0: none)
    value: int | None = 0  # immediate value
    base: int | None = None  # memory: base register
    index: int | None = None  # memory: index register
    scale: int = 1
    disp: int | None = 0
    strict: str = ""  # "short" or "near" on a jump target


def fits_signed8(v: int) -> bool:
    v &= 0xFFFFFFFF
    return v < 0x80 or v >= 0xFFFFFF80


def _in_range(v: int, bits: int) -> bool:
    return -(1 << (bits - 1)) <= v < (1 << bits)


def _kind_matches(kind: str, op: Operand, long_jump: bool) -> bool:
    """Does operand op fit operand kind (vm.isa's names)?"""
    if kind in ("r8", "r32"):
        return op.kind == "reg" and op.size == (1 if kind == "r8" else 4)
    if kind == "r32rm":
        return op.kind == "reg" and op.size == 4
    if kind in ("rm8", "rm16", "rm32"):
        size = {"rm8": 1, "rm16": 2, "rm32": 4}[kind]
        if op.kind == "reg":
            return op.size == size
        return op.kind == "mem" and op.size in (0, size)
    if kind == "m":
        return op.kind == "mem"
    if kind in ("al", "eax", "cl"):
        return op.kind == "reg" and register(kind)[1:] == (op.number, op.size)
    if kind == "dx":
        return op.kind == "reg" and op.size == 2 and op.number == 2
    if kind == "sreg" or kind == "cr":
        return op.kind == kind
    if kind in ("moffs8", "moffs32"):
        return (
            op.kind == "mem"
            and op.base is None
            and op.index is None
            and op.size in (0, 1 if kind == "moffs8" else 4)
        )
    if op.kind != "imm":
        return False
    if kind == "1":
        return op.value == 1 and op.size == 0
    if kind in ("imm8", "simm8"):
        if op.size not in (0, 1) or op.strict:
            return False
        if op.value is None:
            return True  # unknown yet: hope it is small (a later pass will know)
        if kind == "simm8":
            return fits_signed8(op.value) and _in_range(op.value, 32)
        return True  # an imm8 that does not fit is reported by encode_form
    if kind == "imm16":
        return op.size in (0, 2) and not op.strict
    if kind == "imm32":
        return op.size in (0, 4) and not op.strict
    if kind == "rel8":  # short until a pass finds the target out of reach (then for good)
        return op.strict != "near" and op.size == 0 and (not long_jump or op.strict == "short")
    if kind == "rel32":
        return op.strict != "short" and op.size in (0, 4)
    return False


def _modrm_memory(op: Operand, loc: Location) -> tuple[int, bytes]:
    """(mod and rm bits, the bytes after ModRM) of a memory operand, as NASM encodes it."""
    base, index, scale = op.base, op.index, op.scale
    if index is not None and base is None and scale in (2, 3, 5, 9):
        base, scale = index, scale - 1  # [eax*2] -> [eax+eax], as NASM splits it
        if scale == 1 and index == ESP:
            raise loc.error("esp cannot be scaled", op.column)
    if index is not None and scale == 1 and base is None:
        base, index = index, None  # [eax*1] is [eax]
    if index == ESP:
        if scale != 1 or base == ESP:
            raise loc.error("esp cannot be an index register", op.column)
        base, index = index, base
    if scale not in (1, 2, 4, 8):
        raise loc.error(f"scale must be 1, 2, 4 or 8, not {scale}", op.column)
    disp = op.disp
    if base is None and index is None:  # [disp32]
        return 0b00_000_101, _dword(disp or 0)
    if base is None:  # [index*scale + disp32]
        sib = {1: 0, 2: 1, 4: 2, 8: 3}[scale] << 6 | index << 3 | 0b101
        return 0b00_000_100, bytes([sib]) + _dword(disp or 0)
    if disp is None:  # unknown yet: hope it is small
        mod, tail = 0b01, b"\x00"
    elif disp == 0 and base != EBP:
        mod, tail = 0b00, b""
    elif fits_signed8(disp) and _in_range(disp, 32):
        mod, tail = 0b01, bytes([disp & 0xFF])
    else:
        mod, tail = 0b10, _dword(disp)
    if index is None and base != ESP:
        return mod << 6 | base, tail
    sib = {1: 0, 2: 1, 4: 2, 8: 3}[scale] << 6 | (4 if index is None else index) << 3 | base
    return mod << 6 | 0b100, bytes([sib]) + tail


def _dword(v: int) -> bytes:
    return (v & 0xFFFFFFFF).to_bytes(4, "little")


def encode_form(
    form: Form,
    ops: list[Operand],
    address: int,
    loc: Location,
    fail: Callable[[AsmError], None],
) -> bytes | None:
    """The bytes of one form with these operands, or None when a rel8 cannot reach.

    ``fail(error)`` takes an error that only the last pass reports (a value that does not
    fit may still shrink): it raises it, or notes it and lets encoding go on.
    """
    reg_field = int(form.modrm) if form.modrm not in (None, "r") else 0
    rm_op = None
    opcode = bytearray(form.prefix + form.opcode)
    for kind, op in zip(form.operands, ops, strict=True):
        if kind in ("r8", "r32", "sreg", "cr"):
            if form.plus_reg:
                opcode[-1] += op.number
            else:
                reg_field = op.number
        elif kind in ("rm8", "rm16", "rm32", "m", "r32rm"):
            rm_op = op
    out = bytes(opcode)
    if form.modrm is not None:
        if rm_op is None:
            raise loc.error("internal: a ModRM form without an r/m operand")
        if rm_op.kind == "reg":
            out += bytes([0xC0 | reg_field << 3 | rm_op.number])
        else:
            modrm, tail = _modrm_memory(rm_op, loc)
            out += bytes([modrm | reg_field << 3]) + tail
    imm_kinds = [(k, o) for k, o in zip(form.operands, ops, strict=True) if k in IMM_SIZES]
    length = len(out) + sum(IMM_SIZES[k] for k, _ in imm_kinds)
    for kind, op in imm_kinds:
        size = IMM_SIZES[kind]
        if kind in ("moffs8", "moffs32"):
            value = op.disp or 0
        elif kind in ("rel8", "rel32"):
            value = 0 if op.value is None else op.value - (address + length)
            if kind == "rel8" and not -128 <= value <= 127:
                if op.strict == "short":
                    fail(loc.error(f"short jump out of range ({value} bytes)", op.column))
                if op.strict != "short":
                    return None
        elif kind == "simm8":  # matched only when it fits, as a 32-bit value
            value = op.value or 0
        else:
            value = op.value or 0
            if not _in_range(value, size * 8):
                fail(loc.error(f"value {value:#x} does not fit in {size * 8} bits", op.column))
        out += (value & ((1 << (size * 8)) - 1)).to_bytes(size, "little")
    return out


def encode(
    mnemonic: str,
    ops: list[Operand],
    address: int,
    loc: Location,
    fail: Callable[[AsmError], None],
    column: int,
    long_jump: bool = False,
) -> tuple[bytes, bool]:
    """Choose the form and encode: the shortest matching form, first in table order.

    Returns the bytes and whether a short jump could not reach (the caller then asks for
    the long form on every later pass, so that sizes only grow and the passes end).
    """
    forms = FORMS_BY_MNEMONIC.get(mnemonic)
    if forms is None:
        raise loc.error(f"unknown mnemonic '{mnemonic}'", column)
    if mnemonic == "imul" and len(ops) == 2 and ops[1].kind == "imm":
        ops = [ops[0], ops[0], ops[1]]  # imul r32, imm is imul r32, r32, imm
    candidates = [
        f
        for f in forms
        if len(f.operands) == len(ops)
        and all(_kind_matches(k, o, long_jump) for k, o in zip(f.operands, ops, strict=True))
    ]
    if not candidates:
        shapes = ", ".join(_describe(o) for o in ops) or "no operands"
        raise loc.error(f"'{mnemonic}' does not take {shapes}", column)
    memory = [o for o in ops if o.kind == "mem" and o.size == 0]
    encodings = [(encode_form(f, ops, address, loc, fail), f) for f in candidates]
    out_of_reach = any(e is None for e, _ in encodings)
    encodings = [(e, f) for e, f in encodings if e is not None]
    if not encodings:  # only a short form exists (LOOP, JMP SHORT) and it cannot reach
        raise loc.error(f"'{mnemonic}' target is out of range for a short jump", column)
    if memory:
        sizes = {_memory_size(f, ops) for _, f in encodings}
        if len(sizes) > 1 and len({e for e, _ in encodings}) > 1:
            raise loc.error("operation size not specified (byte, word or dword?)", memory[0].column)
    best = min(encodings, key=lambda pair: len(pair[0]))
    return best[0], out_of_reach


def _memory_size(form: Form, ops: list[Operand]) -> int:
    for kind, op in zip(form.operands, ops, strict=True):
        if op.kind == "mem":
            return {"rm8": 1, "rm16": 2, "rm32": 4, "moffs8": 1, "moffs32": 4}.get(kind, 0)
    return 0


def _describe(op: Operand) -> str:
    if op.kind == "reg":
        return {1: "a byte register", 2: "a word register", 4: "a dword register"}[op.size]
    if op.kind == "mem":
        return "a memory operand"
    if op.kind == "imm":
        return "an immediate"
    return {"sreg": "a segment register", "cr": "a control register"}[op.kind]
