"""toyos under each mode, behind one interface: what the CLI, the benchmarks and lessons use.

>>> from vm.hypervisor.modes import boot
>>> vm = boot("trap-emulate", "syscalls")
>>> result = vm.run()
>>> result.ok, result.stats["exits_by_reason"]["INT 0x80"]
(True, 2008)
"""

from __future__ import annotations

from vm.cpu.cost import DEFAULT, CostModel
from vm.guest.toyos import ToyOS, install, kernel_text
from vm.hypervisor.host import Host
from vm.hypervisor.trap_emulate import VMM_AREA, BinaryTranslationVM, TrapEmulateVM
from vm.hypervisor.vmm import VM, VMResult

MODES = ("native", "trap-emulate", "binary-translation")
GUEST_RAM = 4 << 20


class NativeVM:
    """toyos on bare metal, with the same run() and result shape as the VMs."""

    mode = "native"

    def __init__(self, workload: str, cost: CostModel = DEFAULT, machine=None, **_) -> None:
        self.toyos = ToyOS(workload, memory_size=GUEST_RAM, cost=cost, machine=machine)
        self.machine = self.toyos.machine
        self.log = ()

    def run(self, budget: int = 500_000_000) -> VMResult:
        result = self.toyos.run(budget)
        stats = dict(result.stats)
        stats.update(mode="native", vmm_cycles=0, exits=0, exits_by_reason={})
        message = str(result.exit) if result.status == "fault" else ""
        return VMResult(result.status, result.console, result.exit_code, message, stats)


def boot(
    mode: str,
    workload: str,
    cost: CostModel = DEFAULT,
    host: Host | None = None,
    patch: bool = True,
    name: str = "vm",
) -> VM | NativeVM:
    """toyos, loaded and ready to run() in ``mode`` (on ``host`` when given)."""
    if mode not in MODES:
        raise ValueError(f"no mode {mode!r}; choose one of {', '.join(MODES)}")
    size = GUEST_RAM if mode == "native" else GUEST_RAM + VMM_AREA
    machine = host.new_machine(size, cost) if host is not None else None
    if mode == "native":
        vm = NativeVM(workload, cost, machine)
    else:
        if machine is None:
            machine = Host(size).new_machine(size, cost)
        kernel, _ = install(machine, workload, GUEST_RAM)
        kind = TrapEmulateVM if mode == "trap-emulate" else BinaryTranslationVM
        vm = kind(machine, GUEST_RAM, cost, name, kernel_text=kernel_text(kernel), patch=patch)
    if host is not None:
        host.vms.append(vm)
    return vm
