"""The guest's descriptor tables as the VMM checks them: what the CPU checks, at the
privilege level the guest believes it runs at.

When a VMM emulates MOV to a segment register, LTR, IRET or the delivery of an interrupt,
it must refuse what the CPU would refuse, with the same exception and error code, or the
guest sees a different machine under the VMM than on bare metal. These are the i386's
rules as vm/cpu/system.py applies them in the core (``descriptor``,
``check_data_selector``, ``code_segment_dpl``, ``load_task_register``), applied to the
guest's own GDT and its virtual CPL. Like the CPU, they read each descriptor from the
guest's memory when it is used (a kernel may fill in a descriptor after its LGDT, as
toyos does its TSS's base).
"""

from __future__ import annotations

from vm.hypervisor.guest_memory import GuestFault, GuestMemory
from vm.hypervisor.vcpu import VCPU

VECTOR_GP, VECTOR_NP, VECTOR_SS = 13, 11, 12
TSS_AVAILABLE, TSS_BUSY = 0x9, 0xB


def descriptor_base(low: int, high: int) -> int:
    """The base address of a segment descriptor."""
    return ((low >> 16) & 0xFFFF) | ((high & 0xFF) << 16) | (high & 0xFF000000)


class GuestDescriptors:
    """The guest's GDT (where its GDTR says, in its memory), with the CPU's checks."""

    def __init__(self, memory: GuestMemory, vcpu: VCPU) -> None:
        self.memory = memory
        self.vcpu = vcpu  # (its GDTR: the guest's table's base and limit)

    def lookup(self, selector: int) -> tuple[int, int]:
        """(low, high) of selector's descriptor; #GP(selector) for null, LDT or past the
        limit (and #PF where the guest does not map its table)."""
        base, limit = self.vcpu.gdtr
        index = selector & 0xFFF8
        if index == 0 or selector & 4 or index + 7 > limit:
            raise GuestFault(VECTOR_GP, selector & 0xFFFC)
        low, high = self.memory.read_dwords(base + index, 2)
        return low, high

    def code_segment_dpl(self, selector: int, error: int) -> int:
        """The DPL of the code segment selector names (#GP(error) if it is not one, #NP(error)
        if it is not present)."""
        base, limit = self.vcpu.gdtr  # (lookup, written out: IRET and every delivery ask)
        index = selector & 0xFFF8
        if index == 0 or selector & 4 or index + 7 > limit:
            raise GuestFault(VECTOR_GP, selector & 0xFFFC)
        access = (self.memory.read(base + index + 4) >> 8) & 0xFF  # (the high dword)
        if access & 0x18 != 0x18:  # S = 1 and executable
            raise GuestFault(VECTOR_GP, error)
        if not access & 0x80:
            raise GuestFault(VECTOR_NP, error)
        return (access >> 5) & 3

    def check_data_selector(self, selector: int, is_stack: bool, cpl: int) -> None:
        """May selector be loaded into a data segment register (SS when is_stack) at cpl?"""
        error = selector & 0xFFFC
        if error == 0:  # the null selector: fine for DS ES FS GS, never for SS
            if is_stack:
                raise GuestFault(VECTOR_GP, 0)
            return
        _, high = self.lookup(selector)
        access = (high >> 8) & 0xFF
        dpl = (access >> 5) & 3
        if is_stack:  # a writable data segment at exactly the CPL
            ok = access & 0x1A == 0x12 and selector & 3 == cpl and dpl == cpl
        else:  # data, or readable code, that the CPL and RPL may use
            readable = access & 0x18 == 0x10 or access & 0x1A == 0x1A
            ok = readable and dpl >= max(cpl, selector & 3)
        if not ok:
            raise GuestFault(VECTOR_GP, error)
        if not access & 0x80:
            raise GuestFault(VECTOR_SS if is_stack else VECTOR_NP, error)

    def task_state_segment(self, selector: int) -> tuple[int, int]:
        """LTR's checks: selector names an available TSS -> (its base, its high dword)."""
        low, high = self.lookup(selector)
        if (high >> 8) & 0x1F != TSS_AVAILABLE:
            raise GuestFault(VECTOR_GP, selector & 0xFFFC)
        return descriptor_base(low, high), high

    def mark_busy(self, selector: int, high: int) -> None:
        """LTR marks the TSS descriptor busy, in the guest's GDT."""
        base = self.vcpu.gdtr[0]
        self.memory.write(base + (selector & 0xFFF8) + 4, (high & ~0x1F00) | (TSS_BUSY << 8))
