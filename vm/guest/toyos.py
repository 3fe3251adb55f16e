"""Build toyos with vm.asm and load it into a machine (``vm.boot`` runs it, in any mode).

>>> from vm.guest.toyos import build
>>> kernel, user = build()
>>> kernel.origin, "sys_getpid" in kernel.symbols, "init" in user.symbols
(4096, True, True)
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path

from vm.asm import Program, assemble_file
from vm.machine import Machine

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
    # only in the CONTAINERS build's user image (vm.containers.CONTAINER_PROGRAMS)
    "hostname": 10,
    "rename": 11,
    "snoop": 12,
    "scribble": 13,
    "hog": 14,
    "crasher": 15,
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
    machine.cpu.timer_scale = CYCLES_PER_PIT_COUNT
    return kernel, user


def kernel_text(kernel: Program) -> tuple[int, int]:
    """Where the kernel's code is: [start, text_end), as an ELF's .text would say."""
    return kernel.origin, kernel.symbols["text_end"]
