"""Injection and reflection: delivering an interrupt or exception to the guest kernel
through its own IDT and TSS, exactly as the CPU would at the guest's privilege level.

Under a VMM that owns the real IDT, every exception, INT n and timer tick comes to the VMM
first; what belongs to the guest is *reflected* into it (an exception, a system call) or
*injected* (a virtual interrupt, when the guest's virtual IF allows). The VMM must do what
the CPU's delivery does (vm/cpu/system.py ``deliver`` and vm/cpu/core.py ``raise_event``),
checks included, against the guest's state, not the real one:

- the gate must be within the guest's IDT limit, an interrupt or trap gate, present, and
  for INT n and INT3 its DPL must allow the CPL *the guest believes* it runs at (under ring
  compression its kernel runs at ring 1 but believes it is at ring 0);
- the gate's code segment must be a present code segment of the guest's GDT;
- to an inner ring, the new stack comes from the guest's TSS;
- the frame holds the guest's view of EFLAGS (its virtual IF) and of CS;
- a fault on the way (a missing gate, an unmapped stack) becomes what the CPU makes of it:
  for INT n the fault is raised at the INT instead; for an exception a double fault; a
  fault while delivering the double fault shuts the guest down (a triple fault).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vm.cpu.state import FLAG_IF, FLAG_TF
from vm.hypervisor.guest_memory import GuestFault, GuestPageFault
from vm.hypervisor.vmm import VMStopped
from vm.machine import vector_name

if TYPE_CHECKING:
    from vm.hypervisor.trap_emulate import TrapEmulateVM

VECTOR_DF, VECTOR_NP, VECTOR_GP = 8, 11, 13
GATE_INTERRUPT, GATE_TRAP = 0xE, 0xF
NT_RF_VM = 0x4000 | 0x10000 | 0x20000  # cleared by delivery, with TF


class Reflector:
    """Delivers events into the guest kernel of one VM (see the module's docstring).

    The VM says where a vector's gate is (``vm.gate(vector)``: the guest's IDT, or a
    paravirtual guest's trap table) and which stack an inner ring gets
    (``vm.inner_stack(cpl)``: the guest's TSS, or what the guest told the VMM). Its kernel
    runs at ``kernel_ring`` (1); the CPL whose gates it may use is ``vm.believed_cpl``.
    Under ring compression (``compress_selectors``) the guest sees RPL 0 where the CPU
    holds ``kernel_ring``, so the frames it finds carry its view (a paravirtual guest knows
    its ring and sees the CPU's selectors). These rules are written out here, not called:
    delivery is the hottest path of a VMM, and a call less is a microsecond less per
    system call.
    """

    def __init__(self, vm: TrapEmulateVM, kernel_ring: int = 1, compress: bool = True) -> None:
        self.vm = vm
        self.cpu = vm.cpu
        self.vcpu = vm.vcpu
        self.memory = vm.memory
        self.descriptors = vm.descriptors
        self.kernel_ring = kernel_ring
        self.seen_ring = kernel_ring if compress else -1  # the RPL shown as 0 (-1: none)
        self.believed_cpl = vm.believed_cpl
        self.gate = vm.gate
        self.inner_stack = vm.inner_stack
        self.emulation = vm.cost.emulation  # what a delivery costs the VMM

    def deliver(
        self,
        vector: int,
        error: int,
        return_eip: int,
        software: bool = False,
        length: int = 0,
    ) -> int:
        """Deliver vector (with error code ``error`` >= 0, for an exception that has one),
        returning to ``return_eip``; ``software`` for INT n and INT3 (``length``: the
        instruction's bytes). Returns the cycles it cost; a guest that cannot take even
        the double fault is shut down (VMStopped "fault": a triple fault)."""
        try:
            self._deliver(vector, error, return_eip, software)
            self.vm.acct.reflected += 1  # (_done, written out: the common case)
            return self.emulation
        except GuestFault as fault:
            self._fault_seen(fault)
            try:
                if software:  # the INT instruction faults instead, at the instruction
                    try:
                        self._deliver(fault.vector, fault.error, return_eip - length, False)
                        return self._done()
                    except GuestFault as second:
                        self._fault_seen(second)
                elif vector == VECTOR_DF:
                    raise
                self._deliver(VECTOR_DF, 0, return_eip, False)
            except GuestFault as last:
                self._fault_seen(last)
                raise VMStopped(
                    "fault", f"triple fault: {vector_name(vector)} could not be delivered"
                ) from None
        return self._done()

    def _done(self) -> int:
        self.vm.acct.reflected += 1
        return self.emulation

    def _fault_seen(self, fault: GuestFault) -> None:
        if isinstance(fault, GuestPageFault):
            self.vcpu.cr2 = fault.linear  # the CPU sets CR2 as the fault happens

    def _deliver(self, vector: int, error: int, return_eip: int, software: bool) -> None:
        cpu, vcpu, memory, ring = self.cpu, self.vcpu, self.memory, self.kernel_ring
        ext = 0 if software else 1
        gate_error = vector * 8 + 2 + ext
        low, high = self.gate(vector, gate_error)
        gate_type = (high >> 8) & 0x1F
        cs = cpu.cs
        cpl = self.believed_cpl[cs & 3]
        if gate_type != GATE_INTERRUPT and gate_type != GATE_TRAP:
            raise GuestFault(VECTOR_GP, gate_error)
        if software and cpl > (high >> 13) & 3:
            raise GuestFault(VECTOR_GP, gate_error)
        if not high & 0x8000:
            raise GuestFault(VECTOR_NP, gate_error)
        selector = (low >> 16) & 0xFFFF
        new_cpl = self.descriptors.code_segment_dpl(selector, (selector & 0xFFFC) + ext)
        if new_cpl > cpl:
            raise GuestFault(VECTOR_GP, (selector & 0xFFFC) + ext)
        eflags = cpu.eflags
        guest_eflags = eflags & ~FLAG_IF | (FLAG_IF if vcpu.vif else 0)
        seen = self.seen_ring
        guest_cs = cs & ~3 if cs & 3 == seen else cs
        esp, new_ss = cpu.esp, -1
        if new_cpl < cpl:  # to an inner ring: the stack the guest's TSS gives for it
            esp, new_ss = self.inner_stack(new_cpl, ext)
            ss = cpu.ss
            frame = [ss & ~3 if ss & 3 == seen else ss, cpu.esp, guest_eflags, guest_cs, return_eip]
        else:
            frame = [guest_eflags, guest_cs, return_eip]
        if error >= 0 and not software:
            frame.append(error)
        cpu.esp = memory.push(esp, frame)  # (faults before anything changes)
        if new_ss >= 0:
            new_ss &= 0xFFFF
            cpu.ss = new_ss | ring if new_ss & 3 == 0 and new_ss & ~3 else new_ss
        cpu.cs = (selector & 0xFFFC) | (new_cpl or ring)
        cpu.eip = (low & 0xFFFF) | (high & 0xFFFF0000)
        cpu.eflags = eflags & ~(FLAG_TF | NT_RF_VM) | FLAG_IF  # (the real IF stays on)
        if gate_type == GATE_INTERRUPT:
            vcpu.vif = False
