"""What the VMM decodes: the instructions that trap, named for its emulators.

A trap-and-emulate VMM must look at the instruction that faulted to know what the guest
meant. It decodes with the CPU's own decoder (vm.cpu.decode, built from vm.isa), so the
VMM and the CPU never disagree on a length, a ModRM byte or an effective address; this
module only names the privileged and sensitive forms.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from vm.cpu.decode import MAX_INSTRUCTION, OPINFO, decode_again
from vm.cpu.decode import effective_address as cpu_effective_address
from vm.cpu.decode import instruction_length as cpu_instruction_length


class Instruction(NamedTuple):
    """One decoded instruction: what the emulator needs to carry it out."""

    mnemonic: str  # "cli", "out", "mov_to_cr", "lgdt", ...
    length: int
    code: bytes  # its bytes (for its effective address, which depends on the registers)
    reg: int = 0  # ModRM.reg (the CR number, the segment register, the /digit)
    rm: int = 0  # ModRM.rm when the operand is a register
    is_memory: bool = False  # the operand is in memory (see effective_address)
    port: int = -1  # IN/OUT imm8 (-1: the port is in DX)
    size: int = 4  # operand size in bytes (IN/OUT: 1 or 4)
    is_in: bool = False


ONE_BYTE = {0xFA: "cli", 0xFB: "sti", 0xF4: "hlt", 0x9C: "pushf", 0x9D: "popf", 0xCF: "iret"}
GROUP_0F01 = {0: "sgdt", 1: "sidt", 2: "lgdt", 3: "lidt", 4: "smsw", 7: "invlpg"}  # by /digit
GROUP_0F00 = {0: "sldt", 1: "str", 3: "ltr"}
OP_0F = 256  # opcode indexes after 0F (as vm.cpu.decode numbers them)


def _buffer(code: bytes) -> np.ndarray:
    buf = np.zeros(MAX_INSTRUCTION + 16, dtype=np.uint8)
    data = code[:MAX_INSTRUCTION]
    buf[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    return buf


def decode(code: bytes) -> Instruction | None:
    """The instruction at the start of ``code`` when it is one the VMM emulates, else None."""
    no_registers = np.zeros(8, dtype=np.int64)  # (the effective address is not needed yet)
    length, op, _, mod, reg, rm, _, imm = decode_again(_buffer(code), 0, no_registers, OPINFO)
    if length == 0 or length > len(code):
        return None
    code = bytes(code[:length])
    if op in ONE_BYTE:
        return Instruction(ONE_BYTE[op], length, code)
    if 0xE4 <= op <= 0xE7 or 0xEC <= op <= 0xEF:  # IN/OUT with imm8, or with DX
        port = imm if op < 0xEC else -1
        is_in = not op & 2
        size = 4 if op & 1 else 1
        return Instruction(
            "in" if is_in else "out", length, code, port=port, size=size, is_in=is_in
        )
    if op == 0x8E:  # MOV Sreg, r/m16
        return Instruction("mov_to_sreg", length, code, reg, rm, mod != 3)
    if op in (OP_0F + 0x20, OP_0F + 0x22):  # MOV r32, CRn;  MOV CRn, r32
        return Instruction(
            "mov_from_cr" if op == OP_0F + 0x20 else "mov_to_cr", length, code, reg, rm
        )
    group = {OP_0F + 0x01: GROUP_0F01, OP_0F + 0x00: GROUP_0F00}.get(op)
    if group is None or reg not in group or (op == OP_0F + 0x01 and mod == 3):
        return None  # (0F 01 with mod 3 is VMCALL and friends: #UD, not emulated)
    return Instruction(group[reg], length, code, reg, rm, mod != 3)


def effective_address(instruction: Instruction, state: np.ndarray) -> int:
    """The linear address of a memory operand, with the registers in ``state`` (flat)."""
    return int(cpu_effective_address(_buffer(instruction.code), 0, state, OPINFO))


def instruction_length(code: bytes) -> int:
    """The length of any instruction the CPU knows, as its decoder sees it (0: unknown)."""
    return cpu_instruction_length(code)
