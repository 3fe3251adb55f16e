"""What drives a guest for the views: steps, runs in frames, going back, and refreshing.

One ``Controller`` per guest (``controller_for(guest)`` finds or makes it), shared by every
view of that guest. Running never blocks the kernel: ``play()`` starts an asyncio task on
the kernel's event loop that advances the guest a budget at a time and refreshes the
views once per frame; ``pause()`` answers at once. Each view gets a ``Frame`` (the guest's
view now and at the last frame, the events since) and changes its widgets inside
``hold_sync``: one message per widget per frame, never one per instruction.

>>> import vm
>>> from widgets import controller_for
>>> guest = vm.boot("syscalls", mode="trap-emulate")
>>> control = controller_for(guest)
>>> control.step_n(3).status
'stopped'
>>> control.step_back()
True
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from vm.hypervisor.events import Event
from vm.hypervisor.vmm import FINAL, VMResult
from widgets.history import History, position

SPEEDS = {  # label: guest instructions per second (None: as fast as the machine goes)
    "100/s": 100,
    "1k/s": 1_000,
    "10k/s": 10_000,
    "100k/s": 100_000,
    "1M/s": 1_000_000,
    "max": None,
}
FRAME_RATE = 10  # frames per second while running
GUEST_SHARE = 0.75  # of each frame, the guest's time; the rest is the views'
CHUNK_SECONDS = 0.02  # the longest the guest runs before the kernel may answer Pause


@dataclass
class Frame:
    """What a view draws from: the guest now, at the last frame, and what happened since."""

    guest: object  # vm Guest
    view: object  # GuestView now
    previous: object | None  # GuestView at the last frame (None after a jump)
    events: list[Event]  # events recorded since the last frame (after a jump: none)
    jumped: bool  # the guest went back (Step back, Reset, an event clicked)
    running: bool
    message: str
    stats: dict = field(default_factory=dict)


class Controller:
    """Drives one guest: step, run in frames, pause, step back, reset, go to an event."""

    def __init__(self, guest, frame_rate: int = FRAME_RATE, speed: str = "1M/s") -> None:
        self.guest = guest
        self.history = History(guest)
        self.frame_rate = frame_rate
        self.speed = speed
        self.views: list = []  # objects with update(frame)
        self.listeners: list[Callable[[Controller], None]] = []  # told when running changes
        self.running = False
        self.message = ""
        self.frames = 0
        self.rate = 2_000_000.0  # instructions and exits per second, measured as it runs
        self._task: asyncio.Task | None = None
        self._pending: tuple | None = None  # (loop, handle) of a draw that waits
        self._drawn_at = 0.0
        self._previous = guest.view()
        self._seen = guest.events.total
        self._jumped = False

    # ---- views -------------------------------------------------------------------------------
    def attach(self, view) -> None:
        """Refresh ``view`` (it has ``update(frame)``) with every frame, starting now."""
        if view not in self.views:
            self.views.append(view)
        view.update(self._frame(peek=True))

    def refresh(self, now: bool = True) -> Frame | None:
        """Draw every view once (each inside hold_sync: one message per changed widget).
        With ``now=False`` and an event loop running, a draw sooner than a frame after the
        last one waits for the frame's time (clicks faster than frames are coalesced)."""
        if not now:
            wait = self._drawn_at + 1.0 / self.frame_rate - time.perf_counter()
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if wait > 0 and loop is not None:
                if self._pending is None or self._pending[0] is not loop:
                    self._pending = (loop, loop.call_later(wait, self._draw_pending))
                return None
        return self._draw()

    def _draw_pending(self) -> None:
        self._pending = None
        self._draw()

    def _draw(self) -> Frame:
        if self._pending is not None:
            self._pending[1].cancel()
            self._pending = None
        frame = self._frame()
        for view in list(self.views):
            view.update(frame)
        self.frames += 1
        self._drawn_at = time.perf_counter()
        return frame

    def _frame(self, peek: bool = False) -> Frame:
        guest = self.guest
        view = guest.view()
        total = guest.events.total
        if self._jumped:
            events, previous = [], None
        else:
            events = guest.events.since(self._seen) if total != self._seen else []
            previous = self._previous
        frame = Frame(
            guest, view, previous, events, self._jumped, self.running, self.message, guest.stats
        )
        if not peek:
            self._seen, self._previous, self._jumped = total, view, False
        return frame

    def _notify(self) -> None:
        for listener in list(self.listeners):
            listener(self)

    # ---- moving --------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """The guest has stopped for good (shut down, panicked, faulted...)."""
        return self.guest.status in FINAL

    def _say(self, result: VMResult) -> VMResult:
        if result.status in FINAL:
            self.message = f"{result.status}" + (f": {result.message}" if result.message else "")
        elif result.status == "breakpoint":
            self.message = f"breakpoint at {self.guest.view().eip:#010x}"
        else:
            self.message = ""
        return result

    def step(self) -> VMResult:
        """One guest step (an instruction retires or an event is delivered), then a frame."""
        return self.step_n(1)

    def step_n(self, n: int) -> VMResult:
        """n steps (fewer if the guest stops), then a frame."""
        self.pause()
        result = None
        for _ in range(max(1, int(n))):
            result = self.guest.step()
            if result.status not in ("stopped", "budget"):
                break
        self.history.note(boundary=True, force=True)
        self._say(result)
        self.refresh(now=False)
        return result

    def run_until(self, *kinds: str, budget: int = 50_000_000) -> VMResult:
        """Run to the next event of one of ``kinds`` (none: any event), then a frame. The
        guest runs in chunks, so a long search is seen as frames (use play_until to keep
        the kernel free)."""
        self.pause()
        result = None
        for step in self._until_chunks(kinds, budget):
            result = step
        self.refresh()
        return result

    def _until_chunks(self, kinds: tuple[str, ...], budget: int):
        """Advance toward the next event of ``kinds`` a chunk at a time (a generator)."""
        guest = self.guest
        seq = None if kinds else guest.events.total
        left = budget
        while left > 0:
            chunk = min(left, self._chunk())
            start = time.perf_counter()
            before = guest.instructions + guest.exits_taken
            result = guest.run_until(*kinds, seq=seq, budget=chunk)
            self._measure(guest.instructions + guest.exits_taken - before, start)
            left -= chunk
            self.history.note()
            self._say(result)
            yield result
            if result.status != "budget":
                return
        self.message = f"no such event in {budget:,} instructions"

    def _chunk(self) -> int:
        return max(1_000, int(self.rate * CHUNK_SECONDS))

    def _measure(self, done: int, start: float) -> None:
        spent = time.perf_counter() - start
        if done > 1_000 and spent > 0:
            self.rate = 0.7 * self.rate + 0.3 * (done / spent)

    def step_back(self) -> bool:
        """Back to where the last step before now ended (exact: snapshots and replay)."""
        self.pause()
        went = self.history.step_back()
        self.message = "" if went else "this is the first state"
        self._jumped = True
        self.refresh(now=False)
        return went

    def reset(self) -> None:
        """Back to the state the guest had when the views were made."""
        self.pause()
        self.history.reset()
        self.message = "reset"
        self._jumped = True
        self.refresh(now=False)

    def goto_event(self, seq: int) -> bool:
        """To the moment event ``seq`` was recorded (the state just after its exit)."""
        self.pause()
        went = self.history.goto_event(seq)
        self.message = f"at event {seq}" if went else f"event {seq} cannot be reached"
        self._jumped = True
        self.refresh()
        return went

    def toggle_breakpoint(self, address: int) -> bool:
        """Set or clear a breakpoint at address; returns whether one is set now."""
        if address in self.guest.breakpoints:
            self.guest.remove_breakpoint(address)
        else:
            self.guest.add_breakpoint(address)
        self.refresh()
        return address in self.guest.breakpoints

    # ---- running in frames ---------------------------------------------------------------------
    def frame_budget(self) -> int | None:
        """Instructions a frame may run at the chosen speed (None: as many as fit)."""
        per_second = SPEEDS.get(self.speed)
        return None if per_second is None else max(1, per_second // self.frame_rate)

    async def run_frames(self, frames: int | None = None, kinds: tuple[str, ...] | None = None):
        """Run (or, with ``kinds``, run to the next such event) at the chosen speed, drawing
        a frame every 1/frame_rate s, until paused, stopped or after ``frames`` frames."""
        guest = self.guest
        self.running = True
        self._notify()
        period = 1.0 / self.frame_rate
        seq = guest.events.total if kinds == () else None
        drawn = 0
        try:
            while self.running and not self.done:
                start = time.perf_counter()
                quota = self.frame_budget()
                deadline = start + period * GUEST_SHARE
                stop = False
                while self.running and time.perf_counter() < deadline:
                    chunk = self._chunk() if quota is None else min(quota, self._chunk())
                    if chunk <= 0:
                        break
                    t = time.perf_counter()
                    before = guest.instructions + guest.exits_taken
                    if kinds is None:
                        result = guest.run(chunk)
                    else:
                        result = guest.run_until(*kinds, seq=seq, budget=chunk)
                    done = guest.instructions + guest.exits_taken - before
                    self._measure(done, t)
                    if quota is not None:
                        quota -= max(done, 1)
                    # a checkpoint every ~0.1 s of running (at least History.spacing apart)
                    self.history.note(spacing=int(self.rate * 0.1))
                    if result.status != "budget":
                        self._say(result)
                        stop = True
                        break
                    await asyncio.sleep(0)  # the kernel may take a Pause click here
                if stop:
                    self.running = False
                self.refresh()
                drawn += 1
                if frames is not None and drawn >= frames:
                    break
                await asyncio.sleep(max(0.0, start + period - time.perf_counter()))
        finally:
            self.running = False
            self._task = None
            self.refresh()
            self._notify()

    def play(self, kinds: tuple[str, ...] | None = None) -> asyncio.Task | None:
        """Start running on the kernel's event loop (kinds: to the next such event; () for
        any event). Returns the task; pause() stops it within a frame."""
        if self._task is not None or self.done:
            return self._task
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = asyncio.get_event_loop()
        self.running = True
        self._task = loop.create_task(self.run_frames(kinds=kinds))
        return self._task

    def pause(self) -> None:
        """Stop running (the task ends at its next chunk, within a frame)."""
        if self.running:
            self.running = False
            self._notify()

    def __repr__(self) -> str:
        return f"Controller({self.guest!r}, at {position(self.guest)})"


_CONTROLLERS: weakref.WeakValueDictionary[int, Controller] = weakref.WeakValueDictionary()


def controller_for(guest_or_controller) -> Controller:
    """The one Controller of a guest (made on first use), so that every view of a guest
    moves with the same controls."""
    if isinstance(guest_or_controller, Controller):
        return guest_or_controller
    key = id(guest_or_controller)
    control = _CONTROLLERS.get(key)
    if control is None or control.guest is not guest_or_controller:
        control = Controller(guest_or_controller)
        _CONTROLLERS[key] = control  # (kept while a view holds it)
    return control
