"""Disassembly for traces and listings, through capstone (32-bit x86)."""

from __future__ import annotations

import functools


@functools.cache
def _engine():
    import capstone

    return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)


def disassemble(code: bytes, address: int = 0) -> list[tuple[int, int, str]]:
    """(address, size, "mnemonic operands") for each instruction capstone decodes."""
    out = []
    for insn in _engine().disasm(bytes(code), address):
        text = f"{insn.mnemonic} {insn.op_str}".strip()
        out.append((insn.address, insn.size, text))
    return out


def disassemble_one(code: bytes, address: int = 0) -> str:
    """The first instruction of code as text, or '(bad)' when capstone cannot decode it."""
    found = disassemble(code[:15], address)
    return found[0][2] if found else "(bad)"
