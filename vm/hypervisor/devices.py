"""The devices a guest reaches through port I/O: the board every mode puts around a guest.

- The console (ports 0xE9 and 0x3F8, vm.devices.console).
- The exit device on port 0xF4 (like QEMU's isa-debug-exit): the byte written is the
  guest's exit status, 0 a clean shutdown; toyos ends the machine through it.
- Under a VMM, the guest's own interrupt controller and timer. They are the core's device
  model (vm.cpu.devices, the same functions bare metal runs in the core) run on a device
  state of the guest's own: the VMM owns the real controller and timer, and the guest's
  port I/O to them exits and lands here, as KVM emulates a guest's PIC and PIT. Calling a
  compiled function costs about a microsecond, which is nothing beside the exit that got
  us here, and it keeps one implementation of each device.
- Any other port: nothing is there (IN reads all ones).
"""

from __future__ import annotations

from vm.cpu.devices import (
    LOW_BYTE_SEEN,
    PIT_CHANNEL0,
    acknowledge_irq,
    deliverable_irq,
    device_io,
    is_core_port,
)
from vm.cpu.state import StateView, new_state
from vm.devices.console import Console

EXIT_DEVICE_PORT = 0xF4  # the guest writes its exit status here (0 = clean shutdown)


class Board:
    """The console and the exit device: what every mode, bare metal included, provides."""

    def __init__(self) -> None:
        self.console = Console()
        self.exit_status: int | None = None  # what the guest wrote to the exit device

    @property
    def powered_off(self) -> bool:
        """Has the guest written its exit status (the machine is done)?"""
        return self.exit_status is not None

    def port_out(self, port: int, value: int, size: int) -> int:
        """The guest wrote a port; returns the guest timer's new period in cycles when the
        write completed a divisor (a VMM then arms the real timer), else 0."""
        if port in Console.PORTS:
            self.console.write(value)
        elif port == EXIT_DEVICE_PORT and self.exit_status is None:
            self.exit_status = value & 0xFF
        return 0

    def port_in(self, port: int, size: int) -> int:
        """The guest read a port: nothing answers, so all ones."""
        return 0xFF if size == 1 else 0xFFFFFFFF

    def copy(self) -> Board:
        """A copy for a snapshot."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.console = Console(self.console.limit)
        other.console.data = bytearray(self.console.data)
        other.console.dropped = self.console.dropped
        return other


class VirtualBoard(Board):
    """The board of a guest under a VMM: the console, the exit device, and the guest's own
    interrupt controller and timer (the core's device model on a state of their own)."""

    def __init__(self, timer_scale: int) -> None:
        super().__init__()
        self.device_state = new_state()
        self.devices = StateView.from_buffer(self.device_state)  # .pic_irr, .timer_period ...
        self.devices.timer_scale = timer_scale

    def copy(self) -> VirtualBoard:
        other = super().copy()
        other.device_state = self.device_state.copy()
        other.devices = StateView.from_buffer(other.device_state)
        return other

    def port_out(self, port: int, value: int, size: int) -> int:
        if not is_core_port(port):
            return super().port_out(port, value, size)
        completes = port == PIT_CHANNEL0 and self.devices.pit_latch & LOW_BYTE_SEEN
        device_io(self.device_state, port, False, value, 0)
        return self.devices.timer_period if completes else 0

    def port_in(self, port: int, size: int) -> int:
        if is_core_port(port):
            return int(device_io(self.device_state, port, True, 0, 0))
        return super().port_in(port, size)

    # ---- interrupts ------------------------------------------------------------------------
    def request(self, irq: int) -> bool:
        """Raise IRQ irq; False when it was already waiting (that tick merges and is lost)."""
        lost = bool(self.devices.pic_irr & (1 << irq))
        self.devices.pic_irr |= 1 << irq
        return not lost

    @property
    def waiting(self) -> bool:
        """Is any IRQ requested (masked or not)?"""
        return self.devices.pic_irr != 0

    def deliverable(self) -> int:
        """The vector the controller would deliver now, or -1 (changes nothing)."""
        irq = deliverable_irq(self.device_state)
        return -1 if irq < 0 else self.devices.pic_vector_base + irq

    def acknowledge(self) -> int:
        """Take the IRQ to deliver now (it goes in service): its vector, or -1."""
        return int(acknowledge_irq(self.device_state))

    @property
    def vector_base(self) -> int:
        return self.devices.pic_vector_base

    @property
    def imr(self) -> int:
        return self.devices.pic_imr

    @property
    def timer_divisor(self) -> int:
        """The guest timer's divisor in PIT counts (0: never programmed)."""
        scale = max(1, self.devices.timer_scale)
        return self.devices.timer_period // scale
