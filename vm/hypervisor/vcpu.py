"""The vCPU: the registers a guest believes its CPU has, kept by the VMM.

Under a VMM that deprivileges the guest kernel, the real CPU's control registers,
descriptor-table registers and interrupt flag belong to the VMM. What the guest loaded into
them (with MOV CRn, LGDT, LIDT, LTR, CLI and STI, all emulated) lives here, and the VMM
answers the guest's reads from here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from vm.cpu.state import CR0_PE, CR0_PG


@dataclass(slots=True)
class VCPU:
    """What the guest believes its CPU is."""

    vif: bool = False  # the guest's EFLAGS.IF (the real IF stays 1 while it runs)
    cr0: int = CR0_PE
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    gdtr: tuple[int, int] = (0, 0)  # (base, limit)
    idtr: tuple[int, int] = (0, 0)
    tr: int = 0
    tss_base: int = 0  # the guest's TSS (linear), where ESP0/SS0 are

    @property
    def paging(self) -> bool:
        """Has the guest turned paging on (CR0.PG)?"""
        return bool(self.cr0 & CR0_PG)

    def copy(self) -> VCPU:
        return VCPU(*(getattr(self, f.name) for f in fields(self)))

    def load(self, other: VCPU) -> None:
        """Take other's registers (this object stays: the VMM's services hold it)."""
        for f in fields(self):
            setattr(self, f.name, getattr(other, f.name))
