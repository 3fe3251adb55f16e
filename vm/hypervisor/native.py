"""Bare metal: no hypervisor at all, run by the same loop so every mode is watched alike.

The guest kernel runs at ring 0 on the real CPU; its interrupt controller and timer are
the ones inside the core, and exceptions go through its own IDT without exiting. The only
exits are port I/O to the devices emulated in Python (the console, the exit device), which
the board answers; they cost the guest nothing but the IN or OUT itself, and they are not
VM exits (a bare-metal run has none).
"""

from __future__ import annotations

from vm.cpu.cost import DEFAULT, CostModel
from vm.cpu.exits import ExitReason
from vm.hypervisor.vmm import ANY, VM, ExitRow, Outcome, VMStopped
from vm.machine import Machine


class BareMetalVM(VM):
    """A machine with no VMM: the guest owns the CPU."""

    mode = "native"
    EXIT_TABLE = (
        ExitRow(ExitReason.IO, ANY, "port_io", "IN/OUT to a Python device: the board answers"),
        ExitRow(ExitReason.FAULT, ANY, "fault", "an exception someone made exit (a test)"),
        ExitRow(ExitReason.SOFTWARE_INTERRUPT, ANY, "fault", "INT n someone made exit"),
    )

    def __init__(self, machine: Machine, cost: CostModel = DEFAULT, name: str = "vm") -> None:
        super().__init__(machine, cost, name)
        cpu = self.cpu
        cpu.exc_exit_bitmap = 0  # the guest's IDT takes every exception
        cpu.exit_controls = 0  # the PIC and PIT answer in the core; INT n goes to the IDT

    def port_io(self) -> Outcome:
        """The console or the exit device (or nothing: IN reads all ones)."""
        cpu = self.cpu
        port, size = cpu.exit_port, cpu.exit_size
        if cpu.exit_is_in:
            value = self.board.port_in(port, size)
            if size == 1:
                cpu.eax = (cpu.eax & 0xFFFFFF00) | (value & 0xFF)
            else:
                cpu.eax = value & 0xFFFFFFFF
        else:
            self.board.port_out(port, cpu.exit_value, size)
        return None

    def fault(self) -> Outcome:
        raise VMStopped("fault", str(self.machine.last_exit()))

    def triple_fault(self) -> Outcome:
        """The CPU shut down; a paravirtual kernel's hypercall is the usual reason here."""
        eip = self.cpu.eip
        code = self.machine.read(eip, 3) if eip + 3 <= self.machine.memory_size else b""
        if code == b"\x0f\x01\xc1" or code[:2] == b"\xcd\x82":
            gate = "VMCALL" if code[0] == 0x0F else "INT 0x82"
            raise VMStopped(
                "fault",
                f"triple fault: the kernel's hypercall ({gate} at {eip:#x}) raises #UD on bare "
                "metal, where no hypervisor answers it: a paravirtual kernel needs its VMM",
            )
        return super().triple_fault()
