"""Build toyos with vm.asm and boot it on a bare-metal Machine.

>>> from vm.guest.toyos import ToyOS
>>> result = ToyOS("compute").run()
>>> result.status, result.console.splitlines()[1]
('shutdown', 'compute: checksum c71365d3')
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field
from pathlib import Path

from vm.asm import Program, assemble_file
from vm.cpu import state as S
from vm.cpu.cost import DEFAULT, CostModel
from vm.cpu.exits import ExitReason
from vm.devices.console import Console
from vm.machine import Exit, Machine

GUEST_DIR = Path(__file__).resolve().parent
KERNEL_SOURCE = GUEST_DIR / "toyos.asm"
USER_SOURCE = GUEST_DIR / "user.asm"

KERNEL_ADDRESS = 0x1000
USER_IMAGE_ADDRESS = 0x80000
BOOT_ARGS = 0x0FF0  # workload, user image size, memory size, timer divisor
EXIT_PORT = 0xF4  # the kernel writes its exit status here (0 = clean shutdown)
SYSCALL_VECTOR = 0x80  # toyos's system calls: INT 0x80, as Linux's
MAX_USER_IMAGE = 4 * 4096
# The PIT counts once every CYCLES_PER_PIT_COUNT simulated cycles, so toyos's default
# divisor (20,000) ticks every 1,000,000 cycles: 1 kHz on a 1 GHz CPU, Linux's HZ=1000.
CYCLES_PER_PIT_COUNT = 50

# spawn() numbers of the user programs (the table at the start of user.asm).
PROGRAMS = {
    "init": 0,
    "compute": 1,
    "syscalls": 2,
    "spawn": 3,
    "pagetable": 4,
    "io": 5,
    "child": 6,
    "faulty": 7,
    "sleeper": 8,
    "all": 9,
}
WORKLOADS = ("compute", "syscalls", "spawn", "pagetable", "io", "faulty", "sleeper", "all")


@functools.cache
def build(defines: tuple[str, ...] = ()) -> tuple[Program, Program]:
    """The kernel and user programs, assembled by vm.asm (cached per set of defines)."""
    names = {name: 1 for name in defines}
    kernel = assemble_file(KERNEL_SOURCE, defines=names)
    user = assemble_file(USER_SOURCE, defines=names)
    if len(user.code) > MAX_USER_IMAGE:
        raise ValueError(f"the user image is {len(user.code)} bytes; {MAX_USER_IMAGE} fit")
    return kernel, user


def install(
    machine: Machine,
    workload: str,
    ram_size: int,
    timer_divisor: int = 20000,
    defines: tuple[str, ...] = (),
) -> tuple[Program, Program]:
    """Load toyos (kernel, user image, boot arguments) into a machine's first ram_size bytes
    and point EIP at the kernel; returns the kernel and user programs."""
    if workload not in PROGRAMS:
        raise ValueError(f"no workload {workload!r}; choose one of {', '.join(WORKLOADS)}")
    if not 1000 <= timer_divisor <= 0xFFFF:
        raise ValueError("timer_divisor must be from 1000 to 65535 PIT counts")
    kernel, user = build(tuple(defines))
    machine.load(KERNEL_ADDRESS, kernel.code)
    machine.load(USER_IMAGE_ADDRESS, user.code)
    boot = struct.pack("<IIII", PROGRAMS[workload], len(user.code), ram_size, timer_divisor)
    machine.load(BOOT_ARGS, boot)
    machine.eip = KERNEL_ADDRESS
    machine.state[S.TIMER_SCALE] = CYCLES_PER_PIT_COUNT
    return kernel, user


def kernel_text(kernel: Program) -> tuple[int, int]:
    """Where the kernel's code is: [start, text_end), as an ELF's .text would say."""
    return kernel.origin, kernel.symbols["text_end"]


@dataclass
class RunResult:
    """What a toyos run did: how it ended, what it printed, and what it cost."""

    status: str  # "shutdown", "panic", "budget", "fault" or "halt"
    console: str
    exit: Exit
    exit_code: int = -1
    stats: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "shutdown" and self.exit_code == 0


class ToyOS:
    """toyos on a bare-metal Machine: ring 0 kernel, devices in the core and in Python."""

    def __init__(
        self,
        workload: str = "all",
        memory_size: int = 4 << 20,
        timer_divisor: int = 20000,
        cost: CostModel = DEFAULT,
        defines: tuple[str, ...] = (),
        machine: Machine | None = None,
    ) -> None:
        """``machine``: run on this one (e.g. a window of a Host) instead of a new one."""
        if machine is None:
            machine = Machine(memory_size=memory_size, cost=cost)
        self.machine = m = machine
        self.kernel, self.user = install(m, workload, m.memory_size, timer_divisor, defines)
        self.workload = workload
        m.state[S.EXC_EXIT_BITMAP] = 0  # bare metal: the guest's IDT takes every exception
        m.state[S.EXIT_CONTROLS] = 0  # the PIC and PIT answer in the core
        self.cost = cost
        self.console = Console()

    def run(self, budget: int = 500_000_000) -> RunResult:
        """Run until the kernel shuts down, panics, or budget instructions have run."""
        m = self.machine
        start = m.instructions
        ex = m.last_exit()
        while True:
            left = budget - (m.instructions - start)
            if left <= 0:
                return self._result("budget", ex)
            ex = m.run(budget=left)
            if ex.reason == ExitReason.IO:
                if ex.port == EXIT_PORT and not ex.is_in:
                    status = "shutdown" if ex.value == 0 else "panic"
                    return self._result(status, ex, exit_code=ex.value)
                if ex.port in Console.PORTS and not ex.is_in:
                    self.console.write(ex.value)
                elif ex.is_in:
                    m.complete_in(0xFF if ex.size == 1 else 0xFFFFFFFF)  # no device there
                continue
            if ex.reason == ExitReason.BUDGET:
                continue
            status = {ExitReason.HALT: "halt", ExitReason.SHUTDOWN: "fault"}.get(ex.reason, "fault")
            return self._result(status, ex)

    def _result(self, status: str, ex: Exit, exit_code: int = -1) -> RunResult:
        return RunResult(status, self.console.text, ex, exit_code, self.stats())

    def stats(self) -> dict[str, object]:
        """Counters of the run so far (see Machine.stats), and toyos's system calls."""
        stats = self.machine.stats()
        stats["syscalls"] = stats["vectors"].get(SYSCALL_VECTOR, 0)
        return stats
