"""Consolidation: many small systems on one powerful host (the seed's opening claim).

``consolidate(8, "trap-emulate")`` boots eight guests on one ``Host`` (one physical memory,
one CPU), runs them round robin and reports what the host did: its cycles spent on the
guests' own work, on their VMMs' work, and idle; the memory each guest holds (what the
mode reserves, its RAM and VMM area, and the frames in use); and how far each guest got.

>>> from vm.consolidate import consolidate
>>> run = consolidate(2, "paravirt", ["syscalls", "io"])
>>> [g.status for g in run.guests], run.done
(['shutdown', 'shutdown'], True)
>>> round(sum(run.utilisation.values()), 6)
1.0

How the host's time is counted: the host has one CPU and runs one guest at a time; while a
guest waits for its timer (idle), the host runs another, so the host is idle only when
every guest is. The run lasts the guests' total work or the slowest guest's own timeline,
whichever is longer: ``host_cycles = max(sum of work, longest guest's cycles)``, and
idle is what is left of it.

A mode whose guest holds several tenants (``Mode.tenants``: containers on one kernel)
gets all N in one guest; every other mode gets N guests, one each.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from vm.compare import measure
from vm.cpu.cost import PRESETS, preset
from vm.guest.toyos import WORKLOADS
from vm.hypervisor.host import Host, run_side_by_side
from vm.hypervisor.modes import MODES
from vm.hypervisor.modes import mode as mode_spec

PAGE = 4096
MIB = 1 << 20
MAX_GUESTS = 32  # each VM holds 5 MiB of host memory and a monitor in Python
MIX = ("compute", "syscalls", "spawn", "pagetable", "io", "sleeper")  # the default guests
CONSOLIDATION_SLICE = 20_000  # instructions and exits a turn (a tenth of Host's default)


@dataclass(frozen=True)
class GuestShare:
    """One guest on the host: how it ended, its time, its memory, and its progress."""

    name: str
    workload: str  # (for a guest of several tenants: theirs, joined by "+")
    tenants: int  # containers in it (1: a VM, or one system)
    status: str
    instructions: int
    cycles: int  # its own clock: its work, its VMM's, and its idle time
    vmm_cycles: int
    idle_cycles: int
    progress: float  # instructions retired / what its run takes alone (1.0: finished)
    reserved: int  # bytes of host memory it holds: its RAM and its VMM's area
    ram: int  # bytes of RAM among them
    frames_used: int  # 4 KiB frames of its RAM that hold anything
    vmm_frames_used: int  # ... and of its VMM's area

    @property
    def work(self) -> int:
        """Cycles of the guest's own work (not its VMM's, not idle)."""
        return self.cycles - self.vmm_cycles - self.idle_cycles

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "workload": self.workload,
            "tenants": self.tenants,
            "status": self.status,
            "progress": round(self.progress, 4),
            "instructions": self.instructions,
            "cycles": self.cycles,
            "work_cycles": self.work,
            "vmm_cycles": self.vmm_cycles,
            "idle_cycles": self.idle_cycles,
            "reserved_bytes": self.reserved,
            "ram_bytes": self.ram,
            "frames_used": self.frames_used,
            "vmm_frames_used": self.vmm_frames_used,
        }


@dataclass(frozen=True)
class Consolidation:
    """What one host did with N tenants (VMs or containers) of one mode."""

    mode: str
    preset: str
    tenants: int  # how many were asked for
    host_memory: int  # bytes
    guests: tuple[GuestShare, ...]

    @property
    def work(self) -> int:
        return sum(g.work for g in self.guests)

    @property
    def vmm_work(self) -> int:
        return sum(g.vmm_cycles for g in self.guests)

    @property
    def host_cycles(self) -> int:
        """How long the host ran: the guests' total work, or the longest guest's own
        timeline if that is longer (it waited on its timer with nothing else to run)."""
        busy = self.work + self.vmm_work
        return max(busy, max((g.cycles for g in self.guests), default=0))

    @property
    def utilisation(self) -> dict[str, float]:
        """Shares of the host's cycles: the guests' work, their VMMs' work, idle."""
        total = max(1, self.host_cycles)
        busy = self.work + self.vmm_work
        return {
            "guest": self.work / total,
            "vmm": self.vmm_work / total,
            "idle": (self.host_cycles - busy) / total,
        }

    @property
    def reserved(self) -> int:
        """Bytes of host memory the guests hold."""
        return sum(g.reserved for g in self.guests)

    @property
    def reserved_per_tenant(self) -> float:
        return self.reserved / self.tenants

    @property
    def frames_per_tenant(self) -> float:
        """4 KiB frames in use (RAM and VMM area) per tenant."""
        return sum(g.frames_used + g.vmm_frames_used for g in self.guests) / self.tenants

    @property
    def done(self) -> bool:
        return all(g.progress >= 1.0 for g in self.guests)

    @property
    def mean_progress(self) -> float:
        return sum(g.progress * g.tenants for g in self.guests) / self.tenants

    def as_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "preset": self.preset,
            "tenants": self.tenants,
            "guests_booted": len(self.guests),
            "host_memory_bytes": self.host_memory,
            "host_cycles": self.host_cycles,
            "work_cycles": self.work,
            "vmm_cycles": self.vmm_work,
            "utilisation": {k: round(v, 4) for k, v in self.utilisation.items()},
            "reserved_bytes": self.reserved,
            "reserved_bytes_per_tenant": round(self.reserved_per_tenant),
            "frames_used_per_tenant": round(self.frames_per_tenant, 1),
            "mean_progress": round(self.mean_progress, 4),
            "done": self.done,
            "guests": [g.as_dict() for g in self.guests],
        }

    def text(self) -> str:
        """The host's share of time and memory, then a line per guest."""
        u = self.utilisation
        lines = [
            f"{self.tenants} tenants in {len(self.guests)} {self.mode} guest(s) on one host "
            f"({self.preset} preset): {self.reserved / MIB:.1f} of "
            f"{self.host_memory / MIB:.1f} MiB of host memory reserved "
            f"({self.reserved_per_tenant / MIB:.2f} MiB and {self.frames_per_tenant:.0f} "
            "frames in use per tenant)",
            f"host time {self.host_cycles:,} cycles: guest work {u['guest']:.1%}, "
            f"VMM work {u['vmm']:.1%}, idle {u['idle']:.1%}",
        ]
        rows = [
            [
                "guest", "workload", "status", "progress", "instructions", "cycles",
                "VMM cycles", "idle cycles", "frames used", "VMM frames", "reserved",
            ]
        ]  # fmt: skip
        for g in self.guests:
            rows.append(
                [
                    g.name, g.workload, g.status, f"{g.progress:.1%}", f"{g.instructions:,}",
                    f"{g.cycles:,}", f"{g.vmm_cycles:,}", f"{g.idle_cycles:,}",
                    f"{g.frames_used:,}", f"{g.vmm_frames_used:,}", f"{g.reserved / MIB:.2f} MiB",
                ]
            )  # fmt: skip
        return "\n".join([*lines, "", *_align(rows, left=3)])


def summary(runs: Iterable[Consolidation]) -> str:
    """Several modes' consolidations side by side, a line each."""
    rows = [
        [
            "mode", "tenants", "guests", "host cycles", "guest work", "VMM work", "idle",
            "MiB/tenant", "frames/tenant", "progress",
        ]
    ]  # fmt: skip
    for run in runs:
        u = run.utilisation
        rows.append(
            [
                run.mode, str(run.tenants), str(len(run.guests)), f"{run.host_cycles:,}",
                f"{u['guest']:.1%}", f"{u['vmm']:.1%}", f"{u['idle']:.1%}",
                f"{run.reserved_per_tenant / MIB:.2f}", f"{run.frames_per_tenant:.0f}",
                f"{run.mean_progress:.1%}",
            ]
        )  # fmt: skip
    return "\n".join(_align(rows, left=1))


def _align(rows: list[list[str]], left: int) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]


def _frames_in_use(memory: np.ndarray) -> int:
    """4 KiB frames of memory that hold any non-zero byte."""
    pages = memory[: len(memory) // PAGE * PAGE].reshape(-1, PAGE)
    return int(np.count_nonzero(pages.any(axis=1)))


def _check_count(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low:,} to {high:,}, not {value!r}")
    return value


def consolidate(
    guests: int = 8,
    mode: str = "trap-emulate",
    workloads: Iterable[str] | str | None = None,
    cost: str = "pentium4",
    host_memory: int | None = None,
    host_cycles: int | None = None,
    slice_budget: int = CONSOLIDATION_SLICE,
) -> Consolidation:
    """Put ``guests`` tenants of ``mode`` on one host and run them round robin.

    ``workloads`` are given to the tenants in turn (default: MIX); ``cost`` is a preset's
    name; ``host_memory`` (bytes) defaults to what the guests need; ``host_cycles`` stops
    the run once the guests have worked that many cycles (default: run until each is done).
    """
    tenants = _check_count("guests", guests, 1, MAX_GUESTS)
    spec = mode_spec(mode)
    if cost not in PRESETS:
        preset(cost)  # (a clear error naming the presets)
    if workloads is None:
        workloads = MIX
    elif isinstance(workloads, str):
        workloads = [workloads]
    workloads = list(workloads)
    if not workloads:
        raise ValueError(f"no workload given; choose from {', '.join(WORKLOADS)}")
    for workload in workloads:
        if workload not in WORKLOADS:
            raise ValueError(f"no workload {workload!r}; choose from {', '.join(WORKLOADS)}")
    if host_cycles is not None:
        _check_count("host_cycles", host_cycles, 1, 1 << 62)
    each = [workloads[i % len(workloads)] for i in range(tenants)]
    plan = _plan(spec, each)  # [(name, workload for vm.boot, its tenants' workloads, options)]
    from vm.interface import GUEST_RAM

    needed = len(plan) * (GUEST_RAM + spec.vmm_area)
    if host_memory is None:
        host_memory = needed
    elif isinstance(host_memory, bool) or not isinstance(host_memory, int) or host_memory < 1:
        raise ValueError(f"host_memory is a number of bytes, not {host_memory!r}")
    if host_memory < needed:
        raise ValueError(
            f"{len(plan)} {mode} guest(s) of {(GUEST_RAM + spec.vmm_area) / MIB:g} MiB need "
            f"{needed / MIB:g} MiB of host memory; the host has {host_memory / MIB:g} MiB"
        )
    import vm

    host = Host(host_memory)
    booted = [
        vm.boot(workload, mode, cost=cost, host=host, name=name, **options)
        for name, workload, _, options in plan
    ]
    results = run_side_by_side(booted, slice_budget, host_cycles=host_cycles)
    shares = []
    for (name, _, theirs, options), guest, result in zip(plan, booted, results, strict=True):
        base, size, ram = guest.window
        window = host.memory[base : base + size]
        stats = result.stats
        finished = result.status != "budget"
        shares.append(
            GuestShare(
                name=name,
                workload="+".join(theirs),
                tenants=len(theirs),
                status=result.status,
                instructions=stats["instructions"],
                cycles=stats["cycles"],
                vmm_cycles=stats["vmm_cycles"],
                idle_cycles=stats["idle_cycles"],
                progress=1.0
                if finished
                else stats["instructions"] / _alone(cost, mode, theirs, options),
                reserved=size,
                ram=ram,
                frames_used=_frames_in_use(window[:ram]),
                vmm_frames_used=_frames_in_use(window[ram:]),
            )
        )
    return Consolidation(mode, cost, tenants, host_memory, tuple(shares))


def _plan(spec, each: list[str]) -> list[tuple[str, str, tuple[str, ...], dict]]:
    """The guests to boot: one per tenant, or one holding them all (Mode.tenants)."""
    if spec.tenants is None:
        return [(f"vm{i}", w, (w,), {}) for i, w in enumerate(each)]
    return [("host0", each[0], tuple(each), {spec.tenants: tuple(each)})]


def _alone(cost: str, mode: str, theirs: tuple[str, ...], options: dict) -> int:
    """Instructions the same guest takes to finish when it runs alone."""
    if not options:
        return max(1, measure(cost, theirs[0], mode).instructions)
    import vm

    return max(1, vm.boot(theirs[0], mode, cost=cost, **options).run().stats["instructions"])


def consolidate_modes(
    guests: int = 8,
    modes: Iterable[str] | None = None,
    workloads: Iterable[str] | str | None = None,
    cost: str = "pentium4",
    host_cycles: int | None = None,
) -> list[Consolidation]:
    """The same consolidation in each mode (default: every mode in vm.MODES)."""
    modes = MODES if modes is None else tuple(modes)
    return [consolidate(guests, m, workloads, cost, host_cycles=host_cycles) for m in modes]
