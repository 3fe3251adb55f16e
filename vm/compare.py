"""Every mode side by side: each workload's simulated cycles and exits in every mode of
``vm.MODES``, under each cost preset (a CPU generation, vm.cpu.cost.PRESETS).

>>> from vm.compare import compare
>>> table = compare(["syscalls"], presets=["haswell"])
>>> run = table.run("haswell", "syscalls", "trap-emulate")
>>> run.ok, run.vs_native > 5, run.exits > 4000
(True, True, True)

Runs are deterministic, so each (preset, workload, mode) runs once per process and is
remembered; a new mode in ``vm.MODES`` joins every table with no change here. A column
may also be a mode with an option, asked for by name ("mode/option", ``COLUMN_OPTIONS``):
"hw-assist/nested" and "hw-assist/shadow" show each kind of paging under every preset,
where plain "hw-assist" has what the preset's processor has (shadow paging before EPT).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field

from vm.cpu.cost import PRESETS, preset
from vm.guest.toyos import WORKLOADS
from vm.hypervisor.modes import MODES

# Columns that are a mode with an option, and the modes they stand for in the default table.
COLUMN_OPTIONS = {
    "hw-assist/nested": ("hw-assist", {"paging": "nested"}),
    "hw-assist/shadow": ("hw-assist", {"paging": "shadow"}),
}
COLUMNS = (*MODES, *COLUMN_OPTIONS)  # every column a table can have


@dataclass(frozen=True)
class Run:
    """One workload in one mode under one preset: how it ended and what it cost."""

    preset: str
    workload: str
    mode: str
    status: str
    instructions: int
    cycles: int
    vmm_cycles: int
    idle_cycles: int
    exits: int
    exits_by_reason: dict[str, int]
    native_cycles: int  # the same workload on bare metal, under the same preset

    @property
    def ok(self) -> bool:
        return self.status == "shutdown"

    @property
    def vs_native(self) -> float:
        """Cycles relative to bare metal (1.0 = native speed)."""
        return self.cycles / max(1, self.native_cycles)

    def as_dict(self) -> dict[str, object]:
        """The figures as plain JSON values."""
        return {
            "status": self.status,
            "instructions": self.instructions,
            "cycles": self.cycles,
            "vs_native": round(self.vs_native, 4),
            "vmm_cycles": self.vmm_cycles,
            "idle_cycles": self.idle_cycles,
            "exits": self.exits,
            "exits_by_reason": dict(self.exits_by_reason),
        }


@functools.cache
def _measure(preset_name: str, workload: str, mode: str) -> tuple:
    import vm

    mode, options = COLUMN_OPTIONS.get(mode, (mode, {}))
    result = vm.boot(workload, mode, cost=preset(preset_name), **options).run()
    s = result.stats
    return (
        result.status,
        s["instructions"],
        s["cycles"],
        s["vmm_cycles"],
        s["idle_cycles"],
        s["exits"],
        tuple(s["exits_by_reason"].items()),
    )


def measure(preset_name: str, workload: str, mode: str) -> Run:
    """One run (remembered: runs are deterministic)."""
    status, instructions, cycles, vmm, idle, exits, reasons = _measure(preset_name, workload, mode)
    native = _measure(preset_name, workload, "native")[2]
    return Run(
        preset_name, workload, mode, status, instructions, cycles, vmm, idle, exits, dict(reasons),
        native,
    )  # fmt: skip


@dataclass
class Comparison:
    """Runs by (preset, workload, mode), with a text table and a JSON form."""

    presets: tuple[str, ...]
    workloads: tuple[str, ...]
    modes: tuple[str, ...]
    runs: dict[tuple[str, str, str], Run] = field(default_factory=dict)

    def run(self, preset_name: str, workload: str, mode: str) -> Run:
        """One run of the table (a mode or column it does not show is run now)."""
        key = (preset_name, workload, mode)
        if key not in self.runs:
            _names([mode], COLUMNS, "mode")
            self.runs[key] = measure(*key)
        return self.runs[key]

    @property
    def ok(self) -> bool:
        return all(run.ok for run in self.runs.values())

    def table(self, preset_name: str) -> str:
        """One preset's table: a row per workload, each mode's cycles relative to native and
        its exits."""
        model = PRESETS[preset_name]
        costs = (
            f"VM exit {model.vm_exit:,}, hypercall {model.hypercall:,}, shadow update "
            f"{model.shadow_update:,}, BT callout {model.bt_callout:,} cycles"
        )
        head = [f"preset {preset_name}: {model.cpu}", f"  ({costs})"]
        others = [mode for mode in self.modes if mode != "native"]
        rows = [["workload", "native cycles", *others]]
        for workload in self.workloads:
            native = self.run(preset_name, workload, "native")
            row = [workload, f"{native.cycles:,}"]
            for mode in others:
                run = self.run(preset_name, workload, mode)
                cell = f"{run.vs_native:.3f}x {run.exits:,}"
                row.append(cell if run.ok else f"{cell} ({run.status})")
            rows.append(row)
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
            for row in rows
        ]
        return "\n".join([*head, *lines])

    def text(self) -> str:
        """Every preset's table, with a line saying how to read them."""
        key = "each mode: cycles relative to native, then exits (VM exits, traps, hypercalls)"
        return f"{key}\n\n" + "\n\n".join(self.table(p) for p in self.presets)

    def as_dict(self) -> dict[str, object]:
        """{"modes", "workloads", "presets": {name: {cpu, costs, sources, runs: {workload:
        {mode: figures}}}}}."""
        presets = {}
        for name in self.presets:
            model = PRESETS[name]
            presets[name] = {
                "cpu": model.cpu,
                "costs": model.figures(),
                "sources": dict(model.sources),
                "runs": {
                    w: {m: self.run(name, w, m).as_dict() for m in self.modes}
                    for w in self.workloads
                },
            }
        return {"modes": list(self.modes), "workloads": list(self.workloads), "presets": presets}


def _names(given: Iterable[str] | None, known: Iterable[str], what: str) -> tuple[str, ...]:
    known = tuple(known)
    if given is None:
        return known
    if isinstance(given, str):
        given = [given]
    names = tuple(dict.fromkeys(given))
    for name in names:
        if name not in known:
            raise ValueError(f"no {what} {name!r}; choose from {', '.join(known)}")
    if not names:
        raise ValueError(f"no {what} given; choose from {', '.join(known)}")
    return names


def compare(
    workloads: Iterable[str] | None = None,
    modes: Iterable[str] | None = None,
    presets: Iterable[str] | None = None,
) -> Comparison:
    """Run each workload in each mode under each preset (default: all of them; native is
    always run, as the reference)."""
    workloads = _names(workloads, WORKLOADS, "workload")
    presets = _names(presets, PRESETS, "preset")
    modes = _names(modes, MODES, "mode") if modes is None else _names(modes, COLUMNS, "mode")
    if "native" not in modes:
        modes = ("native", *modes)
    table = Comparison(presets, workloads, modes)
    for p in presets:
        for w in workloads:
            for m in modes:
                table.runs[p, w, m] = measure(p, w, m)
    return table
