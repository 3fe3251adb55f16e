"""The console: bytes a guest writes to a port, collected as text."""

from __future__ import annotations

DEBUG_PORT = 0xE9  # Bochs' and QEMU's debug console
COM1_PORT = 0x3F8  # the first serial port's data register


class Console:
    """Collects OUT bytes; ``text`` decodes them (invalid UTF-8 shows as U+FFFD)."""

    PORTS = (DEBUG_PORT, COM1_PORT)

    def __init__(self, limit: int = 1 << 20) -> None:
        self.data = bytearray()
        self.limit = limit  # a guest that writes forever cannot fill the host's memory
        self.dropped = 0

    def write(self, value: int) -> None:
        """One byte from the guest."""
        if len(self.data) < self.limit:
            self.data.append(value & 0xFF)
        else:
            self.dropped += 1

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")
