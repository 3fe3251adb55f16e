"""A host: one physical memory, carved into windows, one per guest machine, and the VMs
that run on them, scheduled round robin.

Each guest is a Machine whose guest-physical memory is a window [base, base + size) of
the host's array; the core checks every physical access of a guest, page-table walks
included, against its window, so no guest reaches another's memory or the host's,
whatever it puts in its page tables. The VMMs of vm.hypervisor build on this.

>>> from vm.hypervisor.host import Host
>>> from vm.hypervisor.modes import boot
>>> host = Host(32 << 20)
>>> for i, workload in enumerate(["syscalls", "spawn", "pagetable", "io"]):
...     _ = boot("trap-emulate", workload, host=host, name=f"vm{i}")
>>> [result.ok for result in host.run()]
[True, True, True, True]
"""

from __future__ import annotations

import numpy as np

from vm.cpu import state as S
from vm.cpu.cost import DEFAULT, CostModel
from vm.machine import Machine

PAGE = 4096


class Host:
    """Physical memory shared by several guest machines."""

    def __init__(self, memory_size: int = 64 << 20) -> None:
        if not isinstance(memory_size, int) or not PAGE <= memory_size <= 4 << 30:
            raise ValueError("a host has from 4 KiB to 4 GiB of memory")
        self.memory = np.zeros(memory_size + S.SCRATCH_SIZE, dtype=np.uint8)
        self.memory_size = memory_size
        self.machines: list[Machine] = []
        self.vms: list = []  # the VMs booted on this host (vm.hypervisor.modes.boot adds them)
        self._next = 0

    def new_machine(self, memory_size: int, cost: CostModel = DEFAULT) -> Machine:
        """A guest machine with memory_size bytes of the host's memory (page-aligned)."""
        size = -(-memory_size // PAGE) * PAGE
        if self._next + size > self.memory_size:
            free = self.memory_size - self._next
            raise ValueError(f"the host has {free:,} bytes left, not {size:,}")
        machine = Machine(memory_size=size, cost=cost, host_memory=self.memory, base=self._next)
        self._next += size
        self.machines.append(machine)
        return machine

    def run(self, slice_instructions: int = 200_000, budget: int = 500_000_000) -> list:
        """Run every VM on this host side by side until each stops (see run_side_by_side)."""
        return run_side_by_side(self.vms, slice_instructions, budget)


def run_side_by_side(vms: list, slice_instructions: int = 200_000, budget: int = 500_000_000):
    """Schedule several VMs round robin, a slice of instructions each, until all stop.

    Returns each VM's result, in order. A VM's guest sees only its own time (its
    cycles), so where the slices fall never changes what it computes or prints.
    """
    if slice_instructions < 1:
        raise ValueError("slice_instructions must be positive")
    results = [None] * len(vms)
    used = [0] * len(vms)
    while any(r is None for r in results):
        for i, vm in enumerate(vms):
            if results[i] is not None:
                continue
            result = vm.run(slice_instructions)
            used[i] += slice_instructions
            if result.status != "budget" or used[i] >= budget:
                results[i] = result
    return results
