"""A host: one physical memory, carved into windows, one per guest machine, and the guests
that run on them, scheduled round robin.

Each guest is a Machine whose guest-physical memory is a window [base, base + size) of
the host's array; the core checks every physical access of a guest, page-table walks
included, against its window, so no guest reaches another's memory or the host's,
whatever it puts in its page tables.

>>> import vm
>>> from vm.hypervisor.host import Host
>>> host = Host(32 << 20)
>>> for i, workload in enumerate(["syscalls", "spawn", "pagetable", "io"]):
...     _ = vm.boot(workload, "trap-emulate", host=host, name=f"vm{i}")
>>> [result.ok for result in host.run()]
[True, True, True, True]
"""

from __future__ import annotations

import numpy as np

from vm.cpu.cost import DEFAULT, CostModel
from vm.cpu.state import SCRATCH_SIZE
from vm.machine import Machine

PAGE = 4096
# A host's defaults end in seconds whatever its guests do: a slice is at most this many
# instructions and exits, and a guest at most HOST_BUDGET instructions (about 4 s at 50
# MIPS) and HOST_EXITS exits (about 5 s at 5 us an exit) in all.
SLICE = 200_000
HOST_BUDGET = 200_000_000
HOST_EXITS = 1_000_000


class Host:
    """Physical memory shared by several guest machines."""

    def __init__(self, memory_size: int = 64 << 20) -> None:
        if isinstance(memory_size, bool) or not isinstance(memory_size, int):
            raise ValueError(f"a host's memory size is an int, not {memory_size!r}")
        if not PAGE <= memory_size <= 4 << 30:
            raise ValueError("a host has from 4 KiB to 4 GiB of memory")
        self.memory = np.zeros(memory_size + SCRATCH_SIZE, dtype=np.uint8)
        self.memory_size = memory_size
        self.machines: list[Machine] = []
        self.guests: list = []  # the guests booted on this host (vm.boot adds them)
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

    def run(
        self, slice_budget: int = SLICE, budget: int = HOST_BUDGET, max_exits: int = HOST_EXITS
    ) -> list:
        """Run every guest on this host side by side until each stops (run_side_by_side)."""
        return run_side_by_side(self.guests, slice_budget, budget, max_exits)


def run_side_by_side(
    guests: list,
    slice_budget: int = SLICE,
    budget: int = HOST_BUDGET,
    max_exits: int = HOST_EXITS,
    host_cycles: int | None = None,
) -> list:
    """Schedule guests round robin, a slice each (instructions and exits), until each stops
    or has used ``budget`` instructions or ``max_exits`` exits, or (with ``host_cycles``)
    until the guests together have worked that many cycles (their cycles less those they
    spent idle: the host runs someone else while a guest waits).

    Returns each guest's last result, in order. A guest sees only its own time (its
    cycles), so where the slices fall never changes what it computes or prints.
    """
    limits = [("slice_budget", slice_budget), ("budget", budget), ("max_exits", max_exits)]
    if host_cycles is not None:
        limits.append(("host_cycles", host_cycles))
    for name, value in limits:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, not {value!r}")
    results: list = [None] * len(guests)
    last: list = [None] * len(guests)
    start = [(guest.instructions, guest.exits_taken, _busy(guest)) for guest in guests]
    while any(r is None for r in results):
        for i, guest in enumerate(guests):
            if results[i] is not None:
                continue
            result = last[i] = guest.run(slice_budget)
            used = guest.instructions - start[i][0]
            exits = guest.exits_taken - start[i][1]
            if result.status != "budget" or used >= budget or exits >= max_exits:
                results[i] = result
        worked = sum(_busy(guest) - begun[2] for guest, begun in zip(guests, start, strict=True))
        if host_cycles is not None and worked >= host_cycles:  # (after a whole round)
            return [r if r is not None else last[i] for i, r in enumerate(results)]
    return results


def _busy(guest) -> int:
    """Cycles a guest has worked (its own and its VMM's), not counting those it idled."""
    return guest.cycles - guest.stats["idle_cycles"]
