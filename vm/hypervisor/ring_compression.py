"""Ring compression: the guest kernel runs at ring 1, believing it runs at ring 0.

A VMM that keeps ring 0 for itself (VMware's before VT-x, Xen's paravirtual guests) runs
the guest kernel at ring 1 and its user code at ring 3. The real GDT is the guest's, copied
at its LGDT with every ring-0 code and data segment moved to ring 1; the real IDT and TSS
are the VMM's (vm.hypervisor.vmm_area). Selectors go back and forth: the guest loads and
sees RPL 0 where the CPU holds RPL 1, and the privilege level the guest believes it runs
at is 0 whenever the CPU is at ring 1.
"""

from __future__ import annotations

import numpy as np

from vm.hypervisor.guest_memory import GuestMemory
from vm.hypervisor.vmm_area import IDT_LINEAR, TSS_LINEAR, VMMArea
from vm.machine import Machine

KERNEL_RING = 1
RING1_CODE, RING1_DATA = 0x09, 0x11  # the reset GDT's flat segments, at ring 1
RESET_GDT = (0x0000FFFF, 0x00CFBA00, 0x0000FFFF, 0x00CFB200)  # ring 1 code, ring 1 data
MAX_DESCRIPTORS = 8192  # a GDT's limit is at most 0xFFFF


class RingCompression:
    """The real CPU's segments and descriptor tables for a guest kernel at ring 1."""

    def __init__(self, machine: Machine, area: VMMArea, memory: GuestMemory) -> None:
        self.cpu = machine.cpu
        self.memory = memory
        self.gdt_linear = area.gdt_linear
        words = machine.window.view(np.uint32)
        self.real_gdt = words[area.gdt >> 2 : (area.gdt >> 2) + 2 * MAX_DESCRIPTORS]  # a view
        self.descriptors = MAX_DESCRIPTORS  # how many the real GDT may hold now (not zero)
        self.loaded: tuple[bytes, int] = (b"", -1)  # the guest's table the real one was made of

    def reset(self) -> None:
        """The real CPU as the VMM starts the guest: the reset segments (CS and SS flat,
        the data segments null) at ring 1, the VMM's own IDT and TSS."""
        cpu = self.cpu
        self.forget()
        self.real_gdt[:] = 0
        self.real_gdt[2:6] = RESET_GDT
        cpu.gdtr_base = self.gdt_linear
        cpu.gdtr_limit = 0x17
        cpu.idtr_base = IDT_LINEAR
        cpu.idtr_limit = 0x7FF
        cpu.tss_base = TSS_LINEAR
        cpu.cs, cpu.ss = RING1_CODE, RING1_DATA
        cpu.ds = cpu.es = cpu.fs = cpu.gs = 0

    def load_gdt(self, base: int, limit: int) -> None:
        """The guest's LGDT: the real GDT made from the guest's, ring 0 code and data moved
        to ring 1. (The VMM copies the table at LGDT time, where the CPU reads each
        descriptor when a segment is loaded: what the guest writes into its GDT later, or
        does not map, the CPU at ring 1 does not see. The VMM's own checks read the
        guest's table when they need it: vm.hypervisor.descriptors.)"""
        limit &= 0xFFFF
        count = min((limit + 1) // 8, MAX_DESCRIPTORS)
        data = self.memory.read_bytes(base, 8 * count)
        if (data, limit) == self.loaded:  # (the same table again: nothing to make)
            return
        self.loaded = (data, limit)
        real = self.real_gdt
        real[: len(data) // 4] = np.frombuffer(data, dtype=np.uint32, count=len(data) // 4)
        real[len(data) // 4 : 2 * max(count, self.descriptors)] = 0  # (what the guest has not)
        high = real[1 : 2 * count : 2]
        ring0_segment = ((high & 0x1000) != 0) & (((high >> 13) & 3) == 0)  # S = 1, DPL 0
        high[ring0_segment] |= 1 << 13
        real[:2] = 0  # (the null descriptor)
        self.descriptors = count
        self.cpu.gdtr_limit = limit

    def forget(self) -> None:
        """The real GDT was put back from a snapshot: the next LGDT makes it anew."""
        self.loaded = (b"", -1)
        self.descriptors = MAX_DESCRIPTORS

    @staticmethod
    def real_selector(selector: int) -> int:
        """A selector the guest loads, as the CPU must hold it: RPL 0 becomes RPL 1."""
        return selector | KERNEL_RING if selector & 3 == 0 and selector & ~3 else selector

    @staticmethod
    def guest_selector(real: int) -> int:
        """A selector the CPU holds, as the guest sees it: its kernel's ring 1 shows as 0."""
        return real & ~3 if real & 3 == KERNEL_RING else real

    def virtual_cpl(self) -> int:
        """The privilege level the guest believes it runs at."""
        ring = self.cpu.cs & 3
        return 0 if ring == KERNEL_RING else ring
