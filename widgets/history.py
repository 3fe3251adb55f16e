"""Going back in a guest's time: bounded checkpoints plus deterministic replay.

A guest is deterministic: from the same state it runs the same way however its run is cut
into ``run()`` and ``step()`` calls. So the past is a few checkpoints (snapshots) on one
trajectory and the replay between them. ``History`` keeps the first state (Reset goes
there) and at most ``limit`` later checkpoints, each stored as the pages that differ from
the first one, so its memory is bounded whatever the run's length.

>>> import vm
>>> guest = vm.boot("syscalls", mode="trap-emulate")
>>> history = History(guest)
>>> _ = guest.step(); eip = guest.view().eip; _ = guest.step()
>>> history.step_back() and guest.view().eip == eip
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vm.hypervisor.vmm import FINAL, VMSnapshot
from vm.machine import Snapshot

PAGE = 4096
SPACING = 200_000  # guest instructions and exits between two checkpoints
LIMIT = 32  # checkpoints kept besides the first state
BYTES_LIMIT = 64 << 20  # and at most this many bytes of them


def position(guest) -> tuple[int, int, int]:
    """Where a guest is on its trajectory (Guest.position: cycles, instructions, events)."""
    return guest.position


def units(guest) -> int:
    """What a run's budget counts: instructions and exits."""
    return guest.instructions + guest.exits_taken


@dataclass
class Checkpoint:
    """A snapshot stored as the pages that differ from the first state."""

    at: tuple[int, int, int]  # position()
    units: int
    boundary: bool  # a step ended here (stepping from here lands on step boundaries)
    state: np.ndarray
    pages: np.ndarray  # indices of the pages that differ from the first state
    data: np.ndarray  # their bytes, (len(pages), PAGE)
    monitor: dict

    @property
    def nbytes(self) -> int:
        return self.state.nbytes + self.data.nbytes + 8 * len(self.monitor.get("events", [[]])[0])


class History:
    """Checkpoints of one guest's run, for Step back, Reset and going to an event."""

    def __init__(self, guest, limit: int = LIMIT, spacing: int = SPACING) -> None:
        self.guest = guest
        self.limit = limit
        self.spacing = spacing
        first = guest.snapshot()
        self.root = first
        self._root_pages = first.machine.memory.reshape(-1, PAGE)
        self.checkpoints: list[Checkpoint] = [self._store(first, True)]
        self.replays = 0  # how many replays going back took (for tests and curiosity)

    # ---- storing -------------------------------------------------------------------------------
    def _store(self, snap: VMSnapshot, boundary: bool) -> Checkpoint:
        memory = snap.machine.memory
        if memory.size % PAGE == 0:
            pages_now = memory.reshape(-1, PAGE)
            changed = np.nonzero((pages_now != self._root_pages).any(axis=1))[0]
            data = pages_now[changed].copy()
        else:  # (a window that is not whole pages: keep it all)
            changed, data = np.array([-1]), memory.copy()
        return Checkpoint(
            position(self.guest),
            units(self.guest),
            boundary,
            snap.machine.state,
            changed,
            data,
            snap.monitor,
        )

    def _snapshot_of(self, checkpoint: Checkpoint) -> VMSnapshot:
        if len(checkpoint.pages) and checkpoint.pages[0] < 0:
            memory = checkpoint.data.copy()
        else:
            pages = self._root_pages.copy()
            pages[checkpoint.pages] = checkpoint.data
            memory = pages.reshape(-1)
        return VMSnapshot(Snapshot(checkpoint.state.copy(), memory), checkpoint.monitor)

    @property
    def nbytes(self) -> int:
        """Bytes the checkpoints hold (besides the first state)."""
        return sum(c.nbytes for c in self.checkpoints[1:])

    def note(self, boundary: bool = False, force: bool = False, spacing: int = 0) -> None:
        """The guest moved on (a step, a frame of a run): keep a checkpoint if it is at
        least ``spacing`` (default ``self.spacing``) units from the last one, or ``force``."""
        last = self.checkpoints[-1]
        here = position(self.guest)
        if here <= last.at:
            if here == last.at and boundary and not last.boundary:
                last.boundary = True
            return
        if not force and units(self.guest) - last.units < max(spacing, self.spacing):
            return
        self.checkpoints.append(self._store(self.guest.snapshot(), boundary))
        self._thin()

    def _thin(self) -> None:
        """Over the limit, drop the checkpoint whose neighbours are closest (the first
        state and the newest stay): what is kept stays spread over the whole run, so no
        replay is much longer than the run divided by the limit."""
        cps = self.checkpoints
        while len(cps) > self.limit + 1 or (len(cps) > 2 and self.nbytes > BYTES_LIMIT):
            drop = min(range(1, len(cps) - 1), key=lambda i: cps[i + 1].units - cps[i - 1].units)
            del cps[drop]

    def _insert(self, boundary: bool) -> None:
        """Keep a checkpoint here, in order among the others (after a jump back)."""
        here = position(self.guest)
        at = [c.at for c in self.checkpoints]
        if here in at:
            return
        index = sum(1 for a in at if a < here)
        self.checkpoints.insert(index, self._store(self.guest.snapshot(), boundary))
        self._thin()

    # ---- going back ----------------------------------------------------------------------------
    def _restore(self, checkpoint: Checkpoint) -> None:
        guest = self.guest
        keep = guest.breakpoints  # (restore keeps them; a replay must not stop on them)
        guest.restore(self._snapshot_of(checkpoint))
        for address in guest.breakpoints:
            guest.remove_breakpoint(address)
        self._wanted = keep

    def _put_breakpoints_back(self) -> None:
        for address in getattr(self, "_wanted", []):
            if address not in self.guest.breakpoints:
                self.guest.add_breakpoint(address)
        self._wanted = []

    def reset(self) -> None:
        """Back to the first state (the breakpoints stay)."""
        self._restore(self.checkpoints[0])
        self._put_breakpoints_back()

    def _run_units(self, budget: int) -> bool:
        """Replay ``budget`` units; False if the guest stopped on the way (it must not)."""
        self.replays += 1
        result = self.guest.run(budget)
        return result.status == "budget"

    def _steps_to(self, checkpoint: Checkpoint, skip: int, target: tuple) -> int:
        """From checkpoint, replay ``skip`` units then step until at or past target: the
        number of steps taken (-1: the fast-forward already went past)."""
        self._restore(checkpoint)
        if skip > 0 and not self._run_units(skip):
            return -1
        if position(self.guest) >= target:
            return -1
        count = 0
        while position(self.guest) < target:
            result = self.guest.step()
            count += 1
            if result.status in FINAL and position(self.guest) < target:
                return -1
        return count

    def step_back(self) -> bool:
        """Go to the last place a step() ended before where the guest is now. False if
        there is none (the first state)."""
        target = position(self.guest)
        here_units = units(self.guest)
        here = self.guest.snapshot()
        try:
            for checkpoint in reversed(self.checkpoints):
                if checkpoint.at >= target:
                    continue
                gap = here_units - checkpoint.units
                margin = 64
                while True:
                    skip = gap - margin if gap > margin else 0
                    count = self._steps_to(checkpoint, skip, target)
                    if count >= 2 or (count == 1 and skip == 0 and checkpoint.boundary):
                        self._restore(checkpoint)
                        if skip:
                            self._run_units(skip)
                            if skip > 10_000:  # (the next step back starts from here)
                                self._insert(False)
                        for _ in range(count - 1):
                            self.guest.step()
                        return True
                    if skip == 0:
                        break  # no step ends between this checkpoint and target: go earlier
                    margin *= 8
            self.guest.restore(here)  # nothing before: stay where we were
            return False
        finally:
            self._put_breakpoints_back()

    def goto_event(self, seq: int) -> bool:
        """Go to the moment event ``seq`` was recorded (the state just after it). False if
        the run has not reached it yet or it is older than every checkpoint."""
        if not 0 <= seq < self.guest.events.total:
            return False
        try:
            for checkpoint in reversed(self.checkpoints):
                if checkpoint.at[2] <= seq:
                    self._restore(checkpoint)
                    self.replays += 1
                    result = self.guest.run_until(seq=seq)
                    if result.status == "stopped" and self.guest.events.total > seq:
                        self._insert(False)
                        return True
                    return False
            return False
        finally:
            self._put_breakpoints_back()
