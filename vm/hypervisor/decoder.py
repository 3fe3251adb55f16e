"""The VMM's own small x86 decoder: enough to emulate the instructions that trap.

A trap-and-emulate VMM must look at the instruction that faulted to know what the guest
meant. It needs only the privileged and sensitive forms (and, to translate a kernel, the
length of every instruction). Lengths come from vm.isa, the same table the CPU uses.
"""

from __future__ import annotations

from typing import NamedTuple

from vm.cpu.decode import instruction_length as cpu_instruction_length


class Instruction(NamedTuple):
    """One decoded instruction: what the emulator needs to carry it out."""

    mnemonic: str  # "cli", "out", "mov_to_cr", "lgdt", ...
    length: int
    reg: int = 0  # ModRM.reg (the CR number, the segment register, the /digit)
    rm: int = 0  # ModRM.rm when the operand is a register (mod == 3)
    is_memory: bool = False  # the operand is in memory at ``address`` (see effective_address)
    # mod, base, index, scale, displacement, has_sib (base/index -1: none)
    modrm: tuple[int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0)
    port: int = -1  # IN/OUT imm8 (-1: the port is in DX)
    size: int = 4  # operand size in bytes (IN/OUT: 1 or 4)
    is_in: bool = False


# ModRM.reg of 0F 01 and 0F 00 memory forms.
GROUP_0F01 = {0: "sgdt", 1: "sidt", 2: "lgdt", 3: "lidt", 4: "smsw", 6: "lmsw", 7: "invlpg"}
GROUP_0F00 = {0: "sldt", 1: "str", 2: "lldt", 3: "ltr"}
ONE_BYTE = {0xFA: "cli", 0xFB: "sti", 0xF4: "hlt", 0x9C: "pushf", 0x9D: "popf", 0xCF: "iret"}


def _modrm(code: bytes, at: int) -> tuple[int, tuple[int, int, int, int, int, int], int, int]:
    """(bytes used, (mod, base, index, scale, disp, has_sib), reg, rm) of a 32-bit ModRM."""
    byte = code[at]
    mod, reg, rm = byte >> 6, (byte >> 3) & 7, byte & 7
    used = 1
    base, index, scale, has_sib = rm, -1, 0, 0
    if mod != 3 and rm == 4:
        sib = code[at + 1]
        used += 1
        has_sib = 1
        scale, index, base = sib >> 6, (sib >> 3) & 7, sib & 7
        if index == 4:
            index = -1
        if base == 5 and mod == 0:
            base = -1
            disp = int.from_bytes(code[at + used : at + used + 4], "little")
            return used + 4, (mod, base, index, scale, disp, has_sib), reg, rm
    if mod == 0 and rm == 5:
        disp = int.from_bytes(code[at + used : at + used + 4], "little")
        return used + 4, (mod, -1, -1, 0, disp, 0), reg, rm
    disp = 0
    if mod == 1:
        disp = int.from_bytes(code[at + used : at + used + 1], "little", signed=True)
        used += 1
    elif mod == 2:
        disp = int.from_bytes(code[at + used : at + used + 4], "little")
        used += 4
    return used, (mod, base, index, scale, disp, has_sib), reg, rm


def decode(code: bytes) -> Instruction | None:
    """The instruction at the start of ``code`` when it is one the VMM emulates, else None."""
    if not code:
        return None
    op = code[0]
    if op in ONE_BYTE:
        return Instruction(ONE_BYTE[op], 1)
    if op in (0xE4, 0xE5, 0xE6, 0xE7):  # IN AL/EAX, imm8;  OUT imm8, AL/EAX
        return Instruction(
            "in" if op < 0xE6 else "out", 2, port=code[1], size=4 if op & 1 else 1, is_in=op < 0xE6
        )
    if op in (0xEC, 0xED, 0xEE, 0xEF):  # IN AL/EAX, DX;  OUT DX, AL/EAX
        return Instruction(
            "in" if op < 0xEE else "out", 1, size=4 if op & 1 else 1, is_in=op < 0xEE
        )
    if op == 0x8E:  # MOV Sreg, r/m16
        used, modrm, reg, rm = _modrm(code, 1)
        return Instruction("mov_to_sreg", 1 + used, reg, rm, modrm[0] != 3, modrm)
    if op != 0x0F or len(code) < 3:
        return None
    op2 = code[1]
    if op2 in (0x20, 0x22):  # MOV r32, CRn;  MOV CRn, r32
        reg, rm = (code[2] >> 3) & 7, code[2] & 7
        return Instruction("mov_from_cr" if op2 == 0x20 else "mov_to_cr", 3, reg, rm)
    if op2 in (0x00, 0x01):
        used, modrm, reg, rm = _modrm(code, 2)
        group = GROUP_0F01 if op2 == 0x01 else GROUP_0F00
        if op2 == 0x01 and modrm[0] == 3:
            return None  # VMCALL and friends: not emulated (they raise #UD)
        if reg not in group:
            return None
        return Instruction(group[reg], 2 + used, reg, rm, modrm[0] != 3, modrm)
    return None


def effective_address(instruction: Instruction, registers: list[int]) -> int:
    """The linear address of a memory operand, from the general registers (flat segments)."""
    _, base, index, scale, disp, _ = instruction.modrm
    address = disp
    if base >= 0:
        address += registers[base]
    if index >= 0:
        address += registers[index] << scale
    return address & 0xFFFFFFFF


def instruction_length(code: bytes) -> int:
    """The length of any instruction the CPU knows, as its decoder sees it (0: unknown)."""
    return cpu_instruction_length(code)
