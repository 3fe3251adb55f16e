"""The modes a guest can run in: one entry each, and how to make its VM.

A new mode is one more entry here (and its own file); ``vm.boot``, the command line, the
benchmarks, the views and the lessons find it through this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vm.cpu.cost import CostModel
from vm.hypervisor.binary_translation import BinaryTranslationVM
from vm.hypervisor.containers import ContainersVM
from vm.hypervisor.hw_assist import HardwareAssistVM
from vm.hypervisor.native import BareMetalVM
from vm.hypervisor.paravirt import ParavirtVM
from vm.hypervisor.trap_emulate import TrapEmulateVM
from vm.hypervisor.vmm import VM
from vm.hypervisor.vmm_area import VMM_AREA
from vm.machine import Machine


@dataclass(frozen=True)
class Mode:
    """One way to run a guest."""

    name: str
    summary: str  # one line for menus and --help
    vmm_area: int  # bytes the VMM needs above the guest's RAM
    make: Callable[..., VM]  # (machine, ram_size, cost, name, kernel_text, **options) -> VM
    options: frozenset[str] = frozenset()  # the keyword options the mode takes
    kernel: str = "native"  # the toyos build it runs unless told otherwise (KERNELS)
    # The vm.boot option through which one guest holds several tenants (containers on one
    # kernel), given a tuple of workloads, one a tenant; None: a guest is one tenant (a VM).
    # vm.consolidate puts N tenants in one guest through it.
    tenants: str | None = None


def _native(machine: Machine, ram_size: int, cost: CostModel, name: str, kernel_text, **_):
    return BareMetalVM(machine, cost, name)


def _trap_emulate(machine: Machine, ram_size: int, cost: CostModel, name: str, kernel_text, **o):
    return TrapEmulateVM(machine, ram_size, cost, name, kernel_text, patch=o.get("patch", True))


def _binary_translation(machine: Machine, ram_size: int, cost: CostModel, name: str, text, **_):
    return BinaryTranslationVM(machine, ram_size, cost, name, text)


def _hw_assist(machine: Machine, ram_size: int, cost: CostModel, name: str, text, **o):
    paging, console = o.get("paging"), o.get("console", "emulated")
    return HardwareAssistVM(machine, ram_size, cost, name, paging=paging, console=console)


def _paravirt(machine: Machine, ram_size: int, cost: CostModel, name: str, text, **_):
    return ParavirtVM(machine, ram_size, cost, name)


def _containers(machine: Machine, ram_size: int, cost: CostModel, name: str, text, **o):
    return ContainersVM(machine, cost, name, o["containers"])


# The toyos builds, by name: the %defines each is assembled with.
KERNELS = {
    "native": (),  # privileged instructions: for bare metal (and full virtualization)
    "paravirt": ("PARAVIRT",),  # hypercalls instead: for the paravirtual VMM
    "pvops": ("PVOPS",),  # one binary for both: patches itself at boot (paravirt_ops)
    "containers": ("CONTAINERS",),  # native, with containers: for the containers mode
}


def kernel_defines(kernel: str, batch: bool = True) -> tuple[str, ...]:
    """The %defines of a toyos build (``batch=False``: a paravirtual kernel that makes one
    hypercall per page-table update and context switch, not one multicall for several)."""
    if kernel not in KERNELS:
        raise ValueError(f"no kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    defines = KERNELS[kernel]
    return defines if batch or kernel != "paravirt" else (*defines, "PARAVIRT_UNBATCHED")


MODE_TABLE: dict[str, Mode] = {
    mode.name: mode
    for mode in (
        Mode("native", "bare metal: the guest kernel owns the CPU", 0, _native),
        Mode(
            "trap-emulate",
            "full virtualization: the kernel deprivileged to ring 1, its traps emulated",
            VMM_AREA,
            _trap_emulate,
            frozenset({"patch"}),
        ),
        Mode(
            "binary-translation",
            "full virtualization: the kernel's sensitive instructions translated to callouts",
            VMM_AREA,
            _binary_translation,
        ),
        Mode(
            "hw-assist",
            "full virtualization: the kernel in VT-x's non-root mode, nested or shadow paging",
            VMM_AREA,
            _hw_assist,
            frozenset({"paging", "console"}),
        ),
        Mode(
            "paravirt",
            "paravirtualization: a kernel built to make hypercalls instead (Xen's way)",
            VMM_AREA,
            _paravirt,
            frozenset({"batch"}),
            "paravirt",
        ),
        Mode(
            "containers",
            "OS-level virtualization: containers on one shared kernel, no VMM (OpenVZ's way)",
            0,
            _containers,
            frozenset({"containers"}),
            "containers",
            tenants="containers",
        ),
    )
}
MODES = tuple(MODE_TABLE)


def mode(name: str) -> Mode:
    """The mode called name; a clear error names the ones there are."""
    try:
        return MODE_TABLE[name]
    except (KeyError, TypeError):
        raise ValueError(f"no mode {name!r}; choose one of {', '.join(MODES)}") from None
