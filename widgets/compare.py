"""CompareView: the ``python -m vm run --compare`` table as a chart, for every workload.

Cycles and exits of each workload in each mode, under a cost preset chosen from
``vm.cpu.cost.PRESETS``. The runs are deterministic, so each (preset, workload, mode) is
run once and cached, in memory and on disk beside the compiled core (keyed by a hash of
vm's sources, so a change to the VM runs them again).

>>> row = compare_runs("pentium4", ["syscalls"])[("syscalls", "native")]
>>> row["status"], row["exits"]
('shutdown', 0)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import ipywidgets as W

import vm
from vm.compare import measure
from vm.cpu.cost import PRESETS
from vm.cpu.jit import cache_dir
from widgets import render as R

DEFAULT_WORKLOADS = ("syscalls", "spawn", "pagetable", "io", "compute")
METRICS = {
    "cycles": "simulated cycles",
    "exits": "exits",
    "slowdown": "cycles / native",
}
_MEMORY: dict[tuple[str, str, str], dict] = {}


def _source_hash() -> str:
    digest = hashlib.sha256()
    root = Path(vm.__file__).parent
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".asm"):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _disk_file() -> Path:
    return cache_dir().parent / f"compare-{_source_hash()}.json"


def _load_disk() -> None:
    try:
        saved = json.loads(_disk_file().read_text())
    except (OSError, ValueError):
        return
    for key, row in saved.items():
        _MEMORY.setdefault(tuple(key.split("|")), row)


def _save_disk() -> None:
    try:
        path = _disk_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = {"|".join(key): row for key, row in _MEMORY.items()}
        path.write_text(json.dumps(rows))
    except OSError:  # (a read-only cache is fine: the results are kept in memory)
        pass


def compare_runs(preset: str, workloads, modes=vm.MODES) -> dict[tuple[str, str], dict]:
    """{(workload, mode): {status, instructions, cycles, exits}} under a cost preset: the
    runs of vm.compare, kept on disk too (a notebook's first chart needs no runs)."""
    if not _MEMORY:
        _load_disk()
    out, ran = {}, False
    for workload in workloads:
        for mode in modes:
            key = (preset, workload, mode)
            if key not in _MEMORY:
                run = measure(preset, workload, mode)
                _MEMORY[key] = {
                    "status": run.status,
                    "instructions": run.instructions,
                    "cycles": run.cycles,
                    "exits": run.exits,
                }
                ran = True
            out[(workload, mode)] = _MEMORY[key]
    if ran:
        _save_disk()
    return out


class CompareView(W.VBox):
    """Cycles and exits per mode and workload as a chart (log scale where it helps), with
    a cost-preset picker.

    >>> view = CompareView(workloads=["syscalls"])
    >>> "syscalls" in view.chart.value
    True
    """

    def __init__(self, workloads=DEFAULT_WORKLOADS, preset: str = "pentium4") -> None:
        self.preset = W.Dropdown(options=list(PRESETS), value=preset, description="cost")
        self.workloads = W.SelectMultiple(
            options=list(vm.WORKLOADS), value=tuple(workloads), rows=4, description="workloads"
        )
        self.metric = W.ToggleButtons(options=list(METRICS), value="cycles")
        self.log_scale = W.Checkbox(value=True, description="log scale")
        self.chart = W.HTML()
        self.numbers = W.HTML()
        super().__init__(
            [
                W.HTML(R.STYLE),
                W.HBox([self.preset, self.workloads]),
                W.HBox([self.metric, self.log_scale]),
                self.chart,
                self.numbers,
            ]
        )
        self.add_class("vmlab")
        for widget in (self.preset, self.workloads, self.metric, self.log_scale):
            widget.observe(lambda _: self.redraw(), names="value")
        self.redraw()

    def redraw(self) -> None:
        """Run what is not cached yet and draw the chart and the table."""
        workloads = list(self.workloads.value) or ["syscalls"]
        runs = compare_runs(self.preset.value, workloads)
        metric = self.metric.value
        values = {}
        for (workload, mode), row in runs.items():
            if metric == "slowdown":
                values[(workload, mode)] = row["cycles"] / max(
                    1, runs[(workload, "native")]["cycles"]
                )
            else:
                values[(workload, mode)] = row[metric]
        log = self.log_scale.value and metric != "slowdown"
        title = f"{METRICS[metric]} per workload and mode ({self.preset.value})"
        chart = R.bar_chart_svg(workloads, vm.MODES, values, title, log=log)
        rows = []
        for workload in workloads:
            native = runs[(workload, "native")]["cycles"] or 1
            for mode in vm.MODES:
                row = runs[(workload, mode)]
                rows.append(
                    (
                        R.esc(workload),
                        R.esc(mode),
                        R.esc(row["status"]),
                        f"{row['instructions']:,}",
                        f"{row['cycles']:,}",
                        f"{row['cycles'] / native:.2f}x",
                        f"{row['exits']:,}",
                    )
                )
        head = ("workload", "mode", "status", "instructions", "cycles", "vs native", "exits")
        with self.chart.hold_sync():
            self.chart.value = chart
        with self.numbers.hold_sync():
            self.numbers.value = R.table(rows, head)
