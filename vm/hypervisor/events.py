"""What a guest's monitor did, as structured records: the events behind every timeline.

Every exit the loop handles becomes one ``Event``: when (a sequence number, the guest's
instruction count and cycle), what happened (``kind``: the exit's name such as ``#GP``,
``#PF``, ``INT 0x80``, ``IRQ 0``, or a hypercall's), where (the guest's EIP and the CPL it
believes it runs at), what the VMM did about it (``action``: emulate, reflect, shadow fill,
...), the simulated cycles that cost, and one line of text. A few events come from the
VMM itself rather than from an exit: ``inject`` (a virtual interrupt delivered at VM
entry), ``patch`` (the kernel's text rewritten at load time), ``hang`` and ``stop``.

The log keeps the last ``size`` events as plain tuples (cheap to add: an exit must be
handled in a few microseconds) and hands them out as ``Event`` records. Subscribers
(``subscribe``) get each event as it is recorded, in order.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import NamedTuple

EVENT_LOG_SIZE = 10_000


class Event(NamedTuple):
    """One thing a guest's monitor handled or did."""

    seq: int  # 0, 1, 2, ... over the guest's life (dropped events keep their numbers)
    instruction: int  # guest instructions executed when it happened
    cycle: int  # the guest's clock when it happened (before the VMM's cost)
    kind: str  # the exit ("#GP", "#PF", "INT 0x80", "IRQ 0", "HLT") or "inject", "patch", ...
    eip: int  # the guest's EIP when it happened
    cpl: int  # the privilege level the guest believed it ran at
    action: str  # what the VMM did: "emulate cli", "reflect", "shadow fill", "inject", ...
    cost: int  # simulated cycles the VMM charged for it
    text: str  # one line for people

    def __str__(self) -> str:
        return (
            f"{self.seq:>6} {self.cycle:>13,}  {self.eip:#010x} ring {self.cpl}  "
            f"{self.kind:<9} {self.action:<18} {self.cost:>7,}  {self.text}"
        )


class EventLog:
    """The last ``size`` events of a guest; older ones fall off the front."""

    def __init__(self, size: int = EVENT_LOG_SIZE) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"an event log holds at least one event, not {size!r}")
        self.records: deque[tuple] = deque(maxlen=size)
        self.total = 0  # events ever recorded, dropped ones included (the next seq)
        self.subscribers: list[Callable[[Event], None]] = []

    def add(
        self,
        instruction: int,
        cycle: int,
        kind: str,
        eip: int,
        cpl: int,
        action: str,
        cost: int,
        text: str,
    ) -> None:
        """Record one event (and tell the subscribers)."""
        record = (self.total, instruction, cycle, kind, eip, cpl, action, cost, text)
        self.records.append(record)
        self.total += 1
        if self.subscribers:
            event = Event._make(record)
            for callback in self.subscribers:
                callback(event)

    def resize(self, size: int) -> None:
        """Keep the last ``size`` events from now on (the newest of those kept stay)."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"an event log holds at least one event, not {size!r}")
        self.records = deque(self.records, maxlen=size)

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event from now on; returns an unsubscribe."""
        if not callable(callback):
            raise TypeError(f"on_event needs a callable, not {callback!r}")
        self.subscribers.append(callback)
        return lambda: self.subscribers.remove(callback) if callback in self.subscribers else None

    def __iter__(self) -> Iterator[Event]:
        return map(Event._make, self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Event:
        return Event._make(self.records[index])

    def since(self, seq: int) -> list[Event]:
        """The kept events numbered ``seq`` and later."""
        first = self.total - len(self.records)
        return [Event._make(r) for r in list(self.records)[max(0, seq - first) :]]

    def kinds(self) -> Counter:
        """How many of the kept events are of each kind."""
        return Counter(record[3] for record in self.records)

    def actions(self) -> Counter:
        """How many of the kept events the VMM answered with each action."""
        return Counter(record[6] for record in self.records)

    def tail(self, n: int = 20) -> str:
        """The last n events, one per line."""
        return "\n".join(str(Event._make(r)) for r in list(self.records)[-n:] if n > 0)

    def copy_records(self) -> tuple[deque, int]:
        """What a snapshot keeps (the records are immutable tuples: a shallow copy)."""
        return self.records.copy(), self.total

    def put_records(self, saved: tuple[deque, int]) -> None:
        """Put back what copy_records returned (subscribers stay)."""
        records, self.total = saved
        self.records = records.copy()
