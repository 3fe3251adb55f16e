"""HostView: several guests on one host, side by side.

The host's physical memory as a strip coloured by owner (each guest's RAM, its VMM's area
after it, what is free) and each guest's progress. Run shares the frames between the guests
round robin, a slice each, as ``Host.run`` does, without blocking the kernel.

>>> import vm
>>> from vm.hypervisor.host import Host
>>> host = Host(16 << 20)
>>> _ = vm.boot("syscalls", "trap-emulate", host=host, name="a")
>>> _ = vm.boot("io", "native", host=host, name="b")
>>> view = HostView(host)
>>> view.run_slices(3); "a: syscalls" in view.strip.value
True
"""

from __future__ import annotations

import asyncio
import time

import ipywidgets as W

from vm.hypervisor.vmm import FINAL
from widgets import render as R
from widgets.controller import FRAME_RATE, GUEST_SHARE

SLICE = 20_000  # instructions and exits a guest runs per turn


def regions(host) -> list[tuple[int, int, str, str]]:
    """(start, length, colour, label) for each guest's RAM and its VMM's area."""
    out = []
    for i, guest in enumerate(host.guests):
        base, size, ram = guest.window
        colour = R.OWNER_COLOURS[i % len(R.OWNER_COLOURS)]
        out.append((base, ram, colour, f"{guest.name}: {guest.workload}"))
        if size > ram:
            out.append((base + ram, size - ram, "#3c4043", f"{guest.name}'s VMM"))
    return out


class HostView(W.VBox):
    """A host's memory by owner and its guests' progress, with Run / Pause, Step (one
    slice each) and Reset."""

    def __init__(self, host, slice_budget: int = SLICE) -> None:
        self.host = host
        self.slice = slice_budget
        self.run_button = W.Button(description="Run all", icon="play", button_style="success")
        self.step_button = W.Button(description="One slice each", icon="step-forward")
        self.reset_button = W.Button(description="Reset", icon="undo")
        self.strip = W.HTML()
        self.progress = W.HTML()
        super().__init__(
            [
                W.HTML(R.STYLE),
                W.HBox([self.run_button, self.step_button, self.reset_button]),
                self.strip,
                self.progress,
            ]
        )
        self.add_class("vmlab")
        self.running = False
        self._task: asyncio.Task | None = None
        self._first = [guest.snapshot() for guest in host.guests]
        self.run_button.on_click(lambda _: self.toggle_run())
        self.step_button.on_click(lambda _: self.run_slices(1))
        self.reset_button.on_click(lambda _: self.reset())
        self.refresh()

    def run_slices(self, n: int = 1) -> None:
        """Give each guest that can go on ``n`` slices, round robin, then draw."""
        for _ in range(n):
            for guest in self.host.guests:
                if guest.status not in FINAL:
                    guest.run(self.slice)
        self.refresh()

    def reset(self) -> None:
        """Every guest back to where it was when the view was made."""
        self.running = False
        for guest, snap in zip(self.host.guests, self._first, strict=False):
            guest.restore(snap)
        self.refresh()

    def toggle_run(self) -> None:
        """Run if paused, pause if running."""
        if self.running:
            self.running = False
            return
        self.running = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = asyncio.get_event_loop()
        self._task = loop.create_task(self.run_frames())

    async def run_frames(self, frames: int | None = None) -> None:
        """Run round robin a frame at a time until every guest stops or Pause."""
        self.running = True
        self.run_button.description, self.run_button.icon = "Pause", "pause"
        period = 1 / FRAME_RATE
        drawn = 0
        try:
            while self.running and any(g.status not in FINAL for g in self.host.guests):
                start = time.perf_counter()
                while self.running and time.perf_counter() < start + period * GUEST_SHARE:
                    for guest in self.host.guests:
                        if guest.status not in FINAL:
                            guest.run(self.slice)
                    await asyncio.sleep(0)
                self.refresh()
                drawn += 1
                if frames is not None and drawn >= frames:
                    break
                await asyncio.sleep(max(0.0, start + period - time.perf_counter()))
        finally:
            self.running = False
            self.run_button.description, self.run_button.icon = "Run all", "play"
            self.refresh()

    def refresh(self) -> None:
        """Draw the memory strip and the guests' progress."""
        host = self.host
        strip = R.memory_strip_svg(host.memory_size, regions(host))
        used = sum(length for _, length, _, _ in regions(host))
        most = max((g.instructions for g in host.guests), default=0) or 1
        rows = []
        for i, guest in enumerate(host.guests):
            colour = R.OWNER_COLOURS[i % len(R.OWNER_COLOURS)]
            share = guest.instructions / most
            bar = (
                f'<div style="width:160px;background:#e8eaed"><div style="width:{160 * share:.0f}'
                f'px;height:10px;background:{colour}"></div></div>'
            )
            last = guest.console.rstrip("\n").rsplit("\n", 1)[-1][-40:]
            rows.append(
                (
                    f'<span style="color:{colour}">&#9632;</span> {R.esc(guest.name)}',
                    R.esc(guest.workload),
                    R.esc(guest.mode),
                    R.esc(guest.status),
                    f"{guest.instructions:,}",
                    f"{guest.cycles:,}",
                    f"{guest.stats['exits']:,}",
                    bar,
                    R.esc(last),
                )
            )
        head = ("guest", "workload", "mode", "status", "instructions", "cycles", "exits", "")
        head += ("console",)
        with self.strip.hold_sync():
            self.strip.value = (
                f"<h4>Host memory: {host.memory_size >> 20} MiB, {used >> 20} MiB given to "
                f"{len(host.guests)} guests</h4>" + strip
            )
        with self.progress.hold_sync():
            self.progress.value = R.table(rows, head)
