"""The modes a guest can run in: one entry each, and how to make its VM.

A new mode is one more entry here (and its own file); ``vm.boot``, the command line, the
benchmarks, the views and the lessons find it through this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vm.cpu.cost import CostModel
from vm.hypervisor.binary_translation import BinaryTranslationVM
from vm.hypervisor.native import BareMetalVM
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


def _native(machine: Machine, ram_size: int, cost: CostModel, name: str, kernel_text, **_):
    return BareMetalVM(machine, cost, name)


def _trap_emulate(machine: Machine, ram_size: int, cost: CostModel, name: str, kernel_text, **o):
    return TrapEmulateVM(machine, ram_size, cost, name, kernel_text, patch=o.get("patch", True))


def _binary_translation(machine: Machine, ram_size: int, cost: CostModel, name: str, text, **_):
    return BinaryTranslationVM(machine, ram_size, cost, name, text)


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
    )
}
MODES = tuple(MODE_TABLE)


def mode(name: str) -> Mode:
    """The mode called name; a clear error names the ones there are."""
    try:
        return MODE_TABLE[name]
    except (KeyError, TypeError):
        raise ValueError(f"no mode {name!r}; choose one of {', '.join(MODES)}") from None
