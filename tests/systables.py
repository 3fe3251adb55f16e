"""Build i386 system tables (GDT, IDT, TSS, page tables) in a Machine's memory from Python.

For tests of the system model: a test lays out the tables, points GDTR/IDTR/TR/CR3 at
them, and runs a few instructions. toyos builds the same tables in assembly.
"""

from __future__ import annotations

import struct

from vm.cpu import state as S
from vm.machine import Machine

GDT = 0x500
IDT = 0x800
TSS = 0x1000 - 0x68
KERNEL_CODE, KERNEL_DATA = 0x08, 0x10
RING1_CODE, RING1_DATA = 0x19, 0x21
USER_CODE, USER_DATA = 0x2B, 0x33
TSS_SELECTOR = 0x38
KERNEL_STACK = 0x9000
RING1_STACK = 0xA000


def segment(access: int, base: int = 0, limit: int = 0xFFFFF) -> bytes:
    """An 8-byte flat segment descriptor (4 KiB granularity, 32-bit)."""
    low = (limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    high = ((base >> 16) & 0xFF) | (access << 8) | (limit & 0xF0000) | (0xC << 20)
    high |= base & 0xFF000000
    return struct.pack("<II", low, high)


def gate(offset: int, selector: int = KERNEL_CODE, dpl: int = 0, trap: bool = False) -> bytes:
    """An 8-byte 32-bit interrupt (or trap) gate."""
    kind = 0xF if trap else 0xE
    low = (offset & 0xFFFF) | (selector << 16)
    high = (offset & 0xFFFF0000) | 0x8000 | (dpl << 13) | (kind << 8)
    return struct.pack("<II", low, high)


def protected_machine(memory_size: int = 1 << 20) -> Machine:
    """A Machine with a GDT (rings 0, 1, 3), an empty IDT and a loaded TSS, at ring 0."""
    m = Machine(memory_size=memory_size)
    gdt = b"".join(
        [
            bytes(8),
            segment(0x9A),  # 0x08 ring 0 code
            segment(0x92),  # 0x10 ring 0 data
            segment(0xBA),  # 0x18 ring 1 code
            segment(0xB2),  # 0x20 ring 1 data
            segment(0xFA),  # 0x28 ring 3 code
            segment(0xF2),  # 0x30 ring 3 data
            segment(0x89, base=TSS, limit=0x67)[:6] + bytes([0x00, 0x00]),  # 0x38 TSS (byte gran.)
        ]
    )
    m.load(GDT, gdt)
    tss = bytearray(0x68)
    struct.pack_into("<IIII", tss, 4, KERNEL_STACK, KERNEL_DATA, RING1_STACK, RING1_DATA)
    m.load(TSS, bytes(tss))
    m.state[S.GDTR_BASE], m.state[S.GDTR_LIMIT] = GDT, len(gdt) - 1
    m.state[S.IDTR_BASE], m.state[S.IDTR_LIMIT] = IDT, 256 * 8 - 1
    m.state[S.TR], m.state[S.TSS_BASE] = TSS_SELECTOR, TSS
    m.state[S.EXC_EXIT_BITMAP] = 0  # exceptions go through the IDT
    m.state[S.EXIT_CONTROLS] = S.EXIT_ON_HLT  # so do INT n; HLT ends the test
    m.regs.esp = KERNEL_STACK
    return m


def set_gate(m: Machine, vector: int, handler: int, dpl: int = 0, trap: bool = False) -> None:
    """Point IDT entry vector at handler (ring 0 code)."""
    m.load(IDT + 8 * vector, gate(handler, dpl=dpl, trap=trap))


def enter_ring(m: Machine, cpl: int, eip: int, esp: int) -> None:
    """Make the machine run at ring cpl from eip with stack esp."""
    code = {0: KERNEL_CODE, 1: RING1_CODE, 3: USER_CODE}[cpl]
    data = {0: KERNEL_DATA, 1: RING1_DATA, 3: USER_DATA}[cpl]
    m.state[S.CS], m.state[S.SS] = code, data
    m.eip = eip
    m.regs.esp = esp


def identity_paging(m: Machine, directory: int = 0x20000, user: bool = True) -> None:
    """Map the first 4 MiB 1:1 (present, writable, user if asked) and turn paging on."""
    table = directory + 0x1000
    flags = 0x7 if user else 0x3
    m.load(directory, struct.pack("<I", table | flags) + bytes(4092))
    m.load(table, b"".join(struct.pack("<I", (i << 12) | flags) for i in range(1024)))
    m.state[S.CR3] = directory
    m.state[S.CR0] |= S.CR0_PG
    m.state[S.TLB_TAGS : S.TLB_TAGS + S.TLB_ENTRIES] = -1


def set_pte(m: Machine, linear: int, value: int, directory: int = 0x20000) -> None:
    """Write the page-table entry of a linear address (in the table identity_paging built)."""
    table = directory + 0x1000
    m.write32(table + 4 * ((linear >> 12) & 0x3FF), value)
