"""Guest memory as the guest sees it: linear addresses through the guest's own page tables.

A VMM reads and writes guest memory on the guest's behalf all the time: an IDT gate and the
TSS to deliver an interrupt, the stack to push a frame or to emulate IRET, a descriptor
table to emulate LGDT. It must use the guest's translations (its CR0.PG and CR3), not the
real ones, and it must fault where the CPU would: an address the guest does not map, or a
write to a page it maps read-only (a guest kernel's writes obey CR0.WP, taken as set), is a
page fault for the guest (``GuestPageFault``), never a read of somebody else's memory.

Every physical address here is guest-physical: an index into the VM's window, checked
against the guest's RAM. Like a CPU, this keeps a small cache of translations (a dict by
page, bounded) that the VMM empties whenever the guest changes what an address means
(``forget``: CR3 and CR0 loads, INVLPG, a write to one of its page tables).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np

from vm.cpu.state import CR0_PG
from vm.hypervisor.vcpu import VCPU

PAGE = 4096
P, RW, US, ACCESSED, DIRTY = 1, 2, 4, 0x20, 0x40
PF_PRESENT, PF_WRITE = 1, 2  # #PF error-code bits (the VMM acts at the guest's ring 0)
CACHE_LIMIT = 4096  # translations kept before the cache starts over (a TLB's bound)
_DWORDS = [struct.Struct(f"<{n}I") for n in range(16)]  # n little-endian dwords, unaligned


class GuestFault(Exception):  # (an exception the guest gets, raised to unwind the VMM)
    """What the CPU would raise in the guest for what the VMM was asked to do: the
    exception's vector and error code (-1: none)."""

    def __init__(self, vector: int, error: int = -1) -> None:
        super().__init__(f"vector {vector} (error {error:#x})")
        self.vector = vector
        self.error = error


class GuestPageFault(GuestFault):
    """An access the CPU would refuse with #PF: CR2 = linear, and the error code."""

    def __init__(self, linear: int, error: int) -> None:
        super().__init__(14, error)
        self.linear = linear


class GuestMemory:
    """A guest's RAM (the first ``ram_size`` bytes of its window) as its kernel sees it.

    ``vcpu`` holds the guest's own CR0 (is its paging on?) and CR3 (where is its page
    directory?), not the real CPU's. ``protected`` is the set of guest frames whose writes
    someone must hear of (shadow paging's write-protected page tables);
    ``on_table_write(frame, before)`` is called after such a write.
    """

    def __init__(self, window: np.ndarray, ram_size: int, vcpu: VCPU) -> None:
        self.bytes = memoryview(window)  # the window, as Python ints (fast to index)
        self.words = window.view(np.uint32)  # the same, as dwords (page tables)
        self.dwords = memoryview(self.words)
        self.ram_size = ram_size
        self.vcpu = vcpu
        self.cache: dict[int, int] = {}  # linear page -> guest frame | RW (of PDE & PTE)
        self.protected: set[int] = set()
        self.on_table_write: Callable[[int, np.ndarray], object] | None = None

    # ---- translation -------------------------------------------------------------------------
    def read_physical(self, address: int) -> int:
        """A dword of guest-physical memory, or -1 outside the guest's RAM."""
        if not 0 <= address <= self.ram_size - 4:
            return -1
        return self.dwords[address >> 2]

    def walk(self, linear: int, cr3: int | None = None) -> tuple[int, int, int, int]:
        """(PDE address, PDE, PTE address, PTE) of linear in the guest's tables; -1 for what
        is not there. Reads only: no accessed or dirty bit changes."""
        cr3 = self.vcpu.cr3 if cr3 is None else cr3
        pde_at = (cr3 & ~0xFFF) + 4 * (linear >> 22)
        pde = self.read_physical(pde_at)
        if pde < 0 or not pde & P:
            return pde_at, pde, -1, -1
        pte_at = (pde & ~0xFFF) + 4 * ((linear >> 12) & 0x3FF)
        return pde_at, pde, pte_at, self.read_physical(pte_at)

    def _entry(self, linear: int) -> int:
        """frame | RW of linear's page, or -1 when the guest maps none (within its RAM)."""
        entry = self.cache.get(linear >> 12)
        if entry is not None:
            return entry
        if not self.vcpu.cr0 & CR0_PG:
            frame, rights = linear & ~0xFFF, RW
        else:
            _, pde, _, pte = self.walk(linear)
            if pde < 0 or pte < 0 or not pde & pte & P:
                return -1
            frame, rights = pte & ~0xFFF, pde & pte & RW
        if not 0 <= frame < self.ram_size:
            return -1
        if len(self.cache) >= CACHE_LIMIT:
            self.cache.clear()
        self.cache[linear >> 12] = frame | rights
        return frame | rights

    def translate(self, linear: int, write: bool = False) -> int:
        """The guest-physical address of linear (raises GuestPageFault where the CPU would)."""
        entry = self._entry(linear)
        if entry < 0:
            raise GuestPageFault(linear, PF_WRITE if write else 0)
        if write and not entry & RW:
            raise GuestPageFault(linear, PF_WRITE | PF_PRESENT)
        return (entry & ~0xFFF) | (linear & 0xFFF)

    def forget(self) -> None:
        """The guest changed what its addresses mean: drop every cached translation."""
        self.cache.clear()

    # ---- reads -------------------------------------------------------------------------------
    # (The common case, a cached page and an access inside it, is written out in each method:
    # an exit's handler makes a dozen of these, and a call less each is a microsecond.)
    def read(self, linear: int, size: int = 4) -> int:
        """A little-endian value at a guest linear address."""
        offset = linear & 0xFFF
        if offset <= PAGE - size:
            entry = self.cache.get((linear >> 12) & 0xFFFFF)
            if entry is None:
                physical = self.translate(linear & 0xFFFFFFFF)
            else:
                physical = (entry & ~0xFFF) | offset
            if size == 4:
                if not physical & 3:
                    return self.dwords[physical >> 2]
                return _DWORDS[1].unpack_from(self.bytes, physical)[0]
            return int.from_bytes(self.bytes[physical : physical + size], "little")
        return int.from_bytes(self.read_bytes(linear, size, strict=True), "little")

    def read_dwords(self, linear: int, count: int) -> list[int]:
        """count dwords from linear up (a stack frame, an IDT gate, a descriptor)."""
        offset = linear & 0xFFF
        if offset <= PAGE - 4 * count:
            entry = self.cache.get((linear >> 12) & 0xFFFFF)
            if entry is None:
                physical = self.translate(linear & 0xFFFFFFFF)
            else:
                physical = (entry & ~0xFFF) | offset
            if not physical & 3:
                return self.dwords[physical >> 2 : (physical >> 2) + count].tolist()
            return list(_DWORDS[count].unpack_from(self.bytes, physical))
        return [self.read(linear + 4 * k) for k in range(count)]

    def read_bytes(self, linear: int, size: int, strict: bool = False) -> bytes:
        """size bytes at linear; fewer where the guest maps no more (or a GuestPageFault
        when ``strict``)."""
        chunks, got = [], 0
        while got < size:
            at = (linear + got) & 0xFFFFFFFF
            try:
                physical = self.translate(at)
            except GuestPageFault:
                if strict:
                    raise
                break
            n = min(size - got, PAGE - (physical & 0xFFF))
            chunks.append(self.bytes[physical : physical + n])
            got += n
        return b"".join(chunks)

    # ---- writes ------------------------------------------------------------------------------
    def write(self, linear: int, value: int, size: int = 4) -> None:
        """Store a value as the guest kernel would (its page tables' protection honoured,
        and whoever watches a page table told)."""
        linear &= 0xFFFFFFFF
        if size == 4 and not linear & 3:
            physical = self.translate(linear, write=True)
            if physical & ~0xFFF not in self.protected:
                self.dwords[physical >> 2] = value & 0xFFFFFFFF
                return
        data = (value & 0xFFFFFFFF).to_bytes(4, "little")[:size]
        targets = [self.translate(linear + k, write=True) for k in range(size)]  # fault first
        watched = {p & ~0xFFF for p in targets} & self.protected
        before = {frame: self.words[frame >> 2 : (frame >> 2) + 1024].copy() for frame in watched}
        for k, physical in enumerate(targets):
            self.bytes[physical] = data[k]
        if watched and self.on_table_write is not None:
            for frame in sorted(watched):
                self.on_table_write(frame, before[frame])
            self.forget()

    def push(self, esp: int, values: list[int]) -> int:
        """Push values (first pushed first) onto the guest stack at esp; the new ESP.

        Every slot is checked before anything is written, so a push that faults leaves
        memory as it was (the CPU's delivery is restartable the same way)."""
        top = (esp - 4 * len(values)) & 0xFFFFFFFF
        if not esp & 3 and top >> 12 == ((esp - 1) & 0xFFFFFFFF) >> 12:  # one page
            entry = self.cache.get(top >> 12)
            if entry is not None and entry & RW:
                physical = (entry & ~0xFFF) | (top & 0xFFF)
            else:
                physical = self.translate(top, write=True)
            if physical & ~0xFFF not in self.protected:
                i = (physical >> 2) + len(values)
                dwords = self.dwords
                for value in values:  # (a plain loop beats building an array for a few words)
                    i -= 1
                    dwords[i] = value & 0xFFFFFFFF
                return top
        for k in range(len(values)):  # check every slot first, then write
            self.translate((esp - 4 * (k + 1)) & 0xFFFFFFFF, write=True)
        for value in values:
            esp = (esp - 4) & 0xFFFFFFFF
            self.write(esp, value)
        return esp
