"""The VMM core: a VM's virtual CPU and devices, its event log, and the run/exit loop.

A VM is a Machine (the real CPU state the core runs, in a window of the host's memory)
plus what the guest believes it has: a vCPU (its own CPL, IF, control registers and
descriptor-table registers), a virtual interrupt controller and timer, and a console.
``VM.run`` calls the core, KVM_RUN-style, and hands each exit to the handler for its
reason; the modes (vm.hypervisor.trap_emulate, ...) supply the handlers.

Every handler charges simulated cycles from the CostModel to the guest's clock (the
guest's timer sees the VMM's time) and records what it did in a bounded event log.
"""

from __future__ import annotations

import copy
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from vm.cpu import state as S
from vm.cpu.core import run as core_run
from vm.cpu.cost import DEFAULT, CostModel
from vm.cpu.exits import ExitReason
from vm.devices.console import Console
from vm.machine import Machine, Snapshot

EVENT_LOG_SIZE = 10_000
EXIT_BUDGET = int(ExitReason.BUDGET)
NO_ERROR_CODE = -1


class Event(NamedTuple):
    """One thing the VMM did, for the timeline: when, where, what kind, and what."""

    cycle: int
    eip: int
    kind: str  # exit emulate inject reflect shadow patch hole hang stop
    text: str

    def __str__(self) -> str:
        return f"{self.cycle:>12,}  {self.eip:#010x}  {self.kind:<8} {self.text}"


class EventLog:
    """The last ``size`` events of a VM (older ones fall off the front)."""

    def __init__(self, size: int = EVENT_LOG_SIZE) -> None:
        self.events: deque[tuple[int, int, str, str]] = deque(maxlen=size)  # (plain tuples:
        self.total = 0  # events ever recorded, dropped ones included       # cheap to add)

    def add(self, cycle: int, eip: int, kind: str, text: str) -> None:
        self.events.append((cycle, eip, kind, text))
        self.total += 1

    def __iter__(self):
        return map(Event._make, self.events)

    def __len__(self) -> int:
        return len(self.events)

    def kinds(self) -> Counter:
        """How many of the kept events are of each kind."""
        return Counter(event[2] for event in self.events)

    def tail(self, n: int = 20) -> str:
        """The last n events, one per line."""
        return "\n".join(str(Event._make(event)) for event in list(self.events)[-n:])


@dataclass
class VirtualPIC:
    """The interrupt controller the guest programs (an 8259A's master, simplified)."""

    imr: int = 0xFF
    irr: int = 0
    isr: int = 0
    vector_base: int = 32

    def request(self, irq: int) -> bool:
        """Raise IRQ irq; False when it was already waiting (that tick is lost)."""
        lost = bool(self.irr & (1 << irq))
        self.irr |= 1 << irq
        return not lost

    def deliverable(self) -> int:
        """The vector to deliver now, or -1 (masked, none, or behind one in service)."""
        ready = self.irr & ~self.imr & 0xFF
        if not ready:
            return -1
        irq = (ready & -ready).bit_length() - 1
        if self.isr & ((1 << (irq + 1)) - 1):
            return -1
        return self.vector_base + irq

    def acknowledge(self, vector: int) -> None:
        irq = vector - self.vector_base
        self.irr &= ~(1 << irq)
        self.isr |= 1 << irq

    def port_out(self, port: int, value: int) -> None:
        if port == 0x21:
            self.imr = value & 0xFF
        elif value & 0xFF == 0x20:  # end of interrupt
            self.isr &= self.isr - 1

    def port_in(self, port: int) -> int:
        return self.imr if port == 0x21 else 0


@dataclass
class VirtualPIT:
    """The guest's timer: it takes a divisor, low byte then high byte, after a mode byte."""

    divisor: int = 0
    latch: int = -1

    def port_out(self, port: int, value: int) -> int:
        """Write a PIT port; the new divisor when one is complete, else 0."""
        if port == 0x43:
            self.latch = -1
            return 0
        if self.latch < 0:
            self.latch = value & 0xFF
            return 0
        self.divisor = (self.latch | (value & 0xFF) << 8) or 65536
        self.latch = -1
        return self.divisor


@dataclass
class VCPU:
    """What the guest believes its CPU is: the registers the VMM keeps for it."""

    vif: bool = False  # the guest's EFLAGS.IF (the real IF stays 1 while it runs)
    cr0: int = S.CR0_PE
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    gdtr: tuple[int, int] = (0, 0)  # (base, limit)
    idtr: tuple[int, int] = (0, 0)
    tr: int = 0
    tss_base: int = 0  # the guest's TSS (linear), where ESP0/SS0 are

    @property
    def paging(self) -> bool:
        return bool(self.cr0 & S.CR0_PG)


@dataclass
class Accounting:
    """What a VM's run cost: exits by reason, emulations, injections, shadow paging."""

    exits: Counter = field(default_factory=Counter)
    emulated: Counter = field(default_factory=Counter)
    shadow: Counter = field(default_factory=Counter)
    injected: int = 0
    reflected: int = 0
    callouts: int = 0  # binary-translation callouts
    lost_ticks: int = 0  # timer ticks that merged with one still waiting
    vmm_cycles: int = 0  # simulated cycles charged by the VMM


class VMStopped(Exception):
    """Raised inside a handler to end the run (shutdown, panic, hang, a broken guest)."""

    def __init__(self, status: str, message: str = "", exit_code: int = -1) -> None:
        super().__init__(message or status)
        self.status = status
        self.message = message
        self.exit_code = exit_code


@dataclass
class VMResult:
    """How a VM's run ended, what its guest printed, and what it cost."""

    status: str  # "shutdown", "panic", "budget", "hang", "halt", "fault" or "breakpoint"
    console: str
    exit_code: int = -1
    message: str = ""
    stats: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "shutdown" and self.exit_code == 0


EXIT_PORT = 0xF4  # toyos's exit port: the guest writes its status here


@dataclass(frozen=True)
class VMSnapshot:
    """A whole VM: the machine (state and memory) and what the VMM knows about it."""

    machine: Snapshot
    vmm: dict[str, object]


class VM:
    """A virtual machine: a Machine, a vCPU, virtual devices, and the exit loop.

    Subclasses set up the real CPU for their mode and implement ``handle_<reason>``
    methods (``handle_fault``, ``handle_interrupt``, ...), one per exit reason.
    """

    mode = "vm"

    def __init__(
        self,
        machine: Machine,
        cost: CostModel = DEFAULT,
        name: str = "vm",
        log_size: int = EVENT_LOG_SIZE,
    ) -> None:
        self.machine = machine
        self.state: np.ndarray = machine.state
        self.sv = memoryview(machine.state)  # the same slots, as Python ints (fast to index)
        self.memory: np.ndarray = machine.memory
        self.cost = cost
        self.name = name
        self.vcpu = VCPU()
        self.pic = VirtualPIC()
        self.pit = VirtualPIT()
        self.console = Console()
        self.log = EventLog(log_size)
        self.acct = Accounting()
        self.stopped: VMStopped | None = None
        # handle_<reason> for each exit reason, indexed by its number (None: unexpected)
        self._handlers = [getattr(self, f"handle_{r.name.lower()}", None) for r in ExitReason]
        if self._handlers[ExitReason.SOFTWARE_INTERRUPT] is None:  # (until the exit table)
            self._handlers[ExitReason.SOFTWARE_INTERRUPT] = self._handlers[ExitReason.FAULT]

    # ---- snapshots ----------------------------------------------------------------------------
    # The VMM's own state, copied by snapshot() (subclasses add theirs).
    snapshot_fields = ("vcpu", "pic", "pit", "console", "log", "acct", "stopped")

    def _vmm_state(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.snapshot_fields}

    def snapshot(self) -> VMSnapshot:
        """A copy of the whole VM; restore() returns to it, and the run goes on identically."""
        return VMSnapshot(self.machine.snapshot(), copy.deepcopy(self._vmm_state()))

    def restore(self, snapshot: VMSnapshot) -> None:
        """Put the VM back as it was when the snapshot was taken."""
        self.machine.restore(snapshot.machine)
        for name, value in copy.deepcopy(snapshot.vmm).items():
            self._restore_field(name, value)

    def _restore_field(self, name: str, value: object) -> None:
        setattr(self, name, value)

    # ---- time and the log -----------------------------------------------------------------
    def charge(self, cycles: int) -> None:
        """Add VMM time to the guest's clock (its timer sees it too)."""
        self.sv[S.CYCLES] += cycles
        self.acct.vmm_cycles += cycles

    def record(self, kind: str, text: str, eip: int | None = None) -> None:
        """Log an event at the current cycle (and EIP, unless given)."""
        st = self.sv
        log = self.log
        log.events.append((st[S.CYCLES], st[S.EIP] if eip is None else eip, kind, text))
        log.total += 1

    # ---- devices the guest reaches through port I/O ----------------------------------------
    def port_out(self, port: int, value: int, size: int) -> None:
        """The guest wrote a port (emulated IN/OUT or an IO exit)."""
        if port in Console.PORTS:
            self.console.write(value)
        elif port == EXIT_PORT:
            status = "shutdown" if value & 0xFF == 0 else "panic"
            raise VMStopped(status, exit_code=value & 0xFF)
        elif port in (0x20, 0x21):
            self.pic.port_out(port, value)
        elif port in (0x40, 0x43):
            divisor = self.pit.port_out(port, value)
            if divisor:
                self.start_timer(divisor)

    def port_in(self, port: int, size: int) -> int:
        if port in (0x20, 0x21):
            return self.pic.port_in(port)
        return 0xFF if size == 1 else 0xFFFFFFFF  # no device there

    def start_timer(self, divisor: int) -> None:
        """Program the real timer to tick at the guest's rate; its ticks exit to the VMM."""
        st = self.state
        period = divisor * max(1, int(st[S.TIMER_SCALE]))
        st[S.TIMER_PERIOD] = period
        st[S.TIMER_NEXT] = st[S.CYCLES] + period
        st[S.PIC_IMR] = 0xFE  # the real PIC passes IRQ 0, which exits (EXIT_ON_INTERRUPT)
        self.record("emulate", f"virtual PIT: a tick every {period:,} cycles")

    # ---- the run loop -----------------------------------------------------------------------
    def run(self, budget: int = 500_000_000) -> VMResult:
        """Run the guest until it stops or ``budget`` is spent (resumable).

        The budget counts instructions and exits: a guest that makes no progress (a
        timer faster than the VMM can serve it) still returns, with status "budget".
        """
        if not isinstance(budget, int) or budget < 1:
            raise ValueError(f"budget must be a positive integer, not {budget!r}")
        if self.stopped is not None:
            return self.result()
        st = self.sv
        end = st[S.INSTRUCTIONS] + budget
        handlers = self._handlers
        state, memory, pic = self.state, self.memory, self.pic
        exits = 0
        try:
            while True:
                left = end - st[S.INSTRUCTIONS] - exits
                if left <= 0:
                    return self.result("budget")
                if pic.irr:  # a virtual interrupt is waiting
                    self.inject_interrupt()
                reason = core_run(state, memory, left)
                if reason == EXIT_BUDGET:
                    continue
                exits += 1
                handler = handlers[reason]
                if handler is None:
                    raise VMStopped("fault", f"unexpected exit {self.machine.last_exit(reason)}")
                handler()
        except VMStopped as stop:
            self.stopped = stop
            if stop.status not in ("shutdown",):
                self.record("stop", f"{stop.status}: {stop.message}".rstrip(": "))
            return self.result()

    def inject_interrupt(self) -> None:
        """Before entering the guest, with a virtual IRQ waiting: deliver it if the guest's
        IF allows (the modes say how)."""

    def handle_shutdown(self) -> None:
        raise VMStopped("fault", "triple fault: the CPU shut down")

    def result(self, status: str | None = None) -> VMResult:
        stop = self.stopped
        if status is None:
            status = stop.status if stop else "budget"
        message = stop.message if stop else ""
        code = stop.exit_code if stop else -1
        return VMResult(status, self.console.text, code, message, self.stats())

    def stats(self) -> dict[str, object]:
        """Instructions, cycles and exits (total and by reason), and the mode's counters."""
        machine_stats = self.machine.stats()
        acct = self.acct
        return {
            "mode": self.mode,
            "instructions": machine_stats["instructions"],
            "cycles": machine_stats["cycles"],
            "vmm_cycles": acct.vmm_cycles,
            "exits": sum(acct.exits.values()),
            "exits_by_reason": dict(sorted(acct.exits.items())),
            "emulated": dict(sorted(acct.emulated.items())),
            "injected": acct.injected,
            "reflected": acct.reflected,
            "callouts": acct.callouts,
            "lost_ticks": acct.lost_ticks,
            "shadow": dict(sorted(acct.shadow.items())),
            "page_walks": machine_stats["page_walks"],
        }
