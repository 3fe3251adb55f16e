"""The monitor loop every mode runs: enter the guest, take its exit, handle it, enter again.

A VM is a Machine (the real CPU and the guest's window of the host's memory) plus a
monitor that answers the machine's exits. ``VM.run`` calls the core, KVM_RUN-style; each
exit goes to the handler its row of the mode's **exit table** names, a mapping from
(exit reason, vector) to handler, one row per kind of exit, the way kvm-hello-world's
``switch (exit_reason)`` and xv6's ``trap()`` read::

    EXIT_TABLE = (
        ExitRow(FAULT, GP, "privileged_instruction", "#GP from the guest kernel: emulate it"),
        ExitRow(FAULT, PF, "page_fault", "shadow paging decides"),
        ...
    )

A handler does the work and returns what it did, ``(kind, action, cost, text)``; the loop
then counts the exit once, records one event (vm.hypervisor.events), and re-enters the
guest: it charges the cost to the guest's clock, lets time-keeping that the exit set up
begin (a halted vCPU idles to its next tick, a timer the guest programmed starts), and
lets the mode inject a virtual interrupt that waits. Nothing else runs the core: a handler
that needs one guest instruction executed under special conditions (shadow paging's
single-stepped page-table write) sets ``step_guard`` and the loop runs that step, counted
against the budget like everything else.

The budget counts instructions and exits, so a guest that makes the VMM work without
progress still returns. A guest never raises a Python exception out of ``run``: what the
guest does ends in a status ("shutdown", "panic", "hang", "halt", "fault"), and a bug of
the VMM's own ends the one VM with status "vmm-error" and its message.
"""

from __future__ import annotations

import copy
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import NamedTuple

import numpy as np

from vm.cpu.core import run as core_run
from vm.cpu.cost import DEFAULT, CostModel
from vm.cpu.exits import ExitReason
from vm.hypervisor.devices import Board
from vm.hypervisor.events import EVENT_LOG_SIZE, EventLog
from vm.machine import Machine, Snapshot, check_budget, vector_name

DEFAULT_BUDGET = 500_000_000
NO_ERROR_CODE = -1
ANY = None  # an exit row's vector: every vector not named by another row
CALLOUT = "callout"  # a handler's kind for a translated callout: no exit happened
STEP_LIMIT = 64  # core entries one step() may take before it gives up (each counted)

EXIT_BUDGET = int(ExitReason.BUDGET)
EXIT_BREAKPOINT = int(ExitReason.BREAKPOINT)
EXIT_FAULT = int(ExitReason.FAULT)
EXIT_SOFTWARE_INTERRUPT = int(ExitReason.SOFTWARE_INTERRUPT)
EXIT_INTERRUPT = int(ExitReason.INTERRUPT)
VECTORED = frozenset({EXIT_FAULT, EXIT_SOFTWARE_INTERRUPT, EXIT_INTERRUPT})
# Exits that come after the instruction ran (EIP past it): its address is EIP - length.
AFTER_INSTRUCTION = frozenset(
    int(r)
    for r in (
        ExitReason.SOFTWARE_INTERRUPT,
        ExitReason.IO,
        ExitReason.HALT,
        ExitReason.CPUID,
        ExitReason.CR_ACCESS,
        ExitReason.INVLPG,
    )
)


def exit_kind(reason: int, vector: int) -> str:
    """The name of an exit for counting and timelines: '#GP', 'INT 0x80', 'IRQ 0', 'HLT'."""
    if reason == EXIT_FAULT:
        return vector_name(vector)
    if reason == EXIT_SOFTWARE_INTERRUPT:
        return vector_name(vector, software=True)
    if reason == EXIT_INTERRUPT:
        return f"IRQ {vector - 32}" if 32 <= vector < 40 else f"interrupt {vector:#x}"
    return {
        ExitReason.HALT: "HLT",
        ExitReason.IO: "IO",
        ExitReason.CPUID: "CPUID",
        ExitReason.CR_ACCESS: "CR access",
        ExitReason.HYPERCALL: "VMCALL",
        ExitReason.BREAKPOINT: "breakpoint",
        ExitReason.SHUTDOWN: "triple fault",
        ExitReason.NESTED_PAGE_FAULT: "nested #PF",
        ExitReason.INVLPG: "INVLPG",
        ExitReason.INTERRUPT_WINDOW: "interrupt window",
    }.get(ExitReason(reason), ExitReason(reason).name)


class ExitRow(NamedTuple):
    """One row of an exit table: which exits it takes, the handler method, and why."""

    reason: ExitReason
    vector: int | None  # ANY: every vector no other row names (or a reason with none)
    handler: str  # the name of a method of the mode
    note: str  # one line a student reads


# What a handler returns: (kind or None for the exit's own name, action, cost, text), or
# None when there is nothing to count (an exit the board answered for bare metal).
Outcome = tuple[str | None, str, int, str] | None


class VMStopped(Exception):  # (it is how a run ends, not an error of ours)
    """Raised inside a handler to end the run (shutdown, panic, hang, a broken guest)."""

    def __init__(self, status: str, message: str = "", exit_code: int = -1) -> None:
        super().__init__(message or status)
        self.status = status
        self.message = message
        self.exit_code = exit_code


@dataclass
class Accounting:
    """What a VM's run cost: exits by kind, emulations, injections, shadow paging."""

    exits: Counter = field(default_factory=Counter)
    emulated: Counter = field(default_factory=Counter)
    shadow: Counter = field(default_factory=Counter)
    injected: int = 0
    reflected: int = 0
    callouts: int = 0  # binary-translation callouts (not exits)
    lost_ticks: int = 0  # timer ticks that merged with one still waiting
    vmm_cycles: int = 0  # simulated cycles charged by the VMM
    idle_cycles: int = 0  # cycles a halted vCPU waited for its next tick
    core_exits: int = 0  # every time the core returned for something (what budgets count)

    @property
    def emulations(self) -> int:
        """Guest instructions the VMM carried out instead of the CPU."""
        return sum(self.emulated.values())


@dataclass
class VMResult:
    """How a run ended, what the guest printed, and what it cost."""

    # "shutdown", "panic", "hang", "halt", "fault" or "vmm-error" (the guest is done);
    # "budget", "stopped" (a step or run_until's condition) or "breakpoint" (it can go on)
    status: str
    console: str
    exit_code: int = -1
    message: str = ""
    stats: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Did the guest shut down cleanly (exit status 0)?"""
        return self.status == "shutdown" and self.exit_code == 0


FINAL = frozenset({"shutdown", "panic", "hang", "halt", "fault", "vmm-error"})


@dataclass(frozen=True)
class VMSnapshot:
    """A whole VM: the machine (state and memory) and what the monitor knows about it."""

    machine: Snapshot
    monitor: dict[str, object]


@dataclass
class Until:
    """When run() stops early (all optional): after one step of guest progress, at an event
    of these kinds, at an address, when the console shows a text, or at an event number."""

    step: bool = False
    kinds: frozenset[str] = frozenset()
    address: int | None = None
    console: str | None = None
    seq: int | None = None


class StepGuard:
    """A handler's request: run exactly one guest instruction under special conditions
    (set ``VM.step_guard``), then ``close``. The loop runs the step; if it faults, the
    exit is handled, and a handler that can help sets ``renewed`` to try again."""

    renewed = False

    def close(self, vm: VM, completed: bool) -> None:
        """The step's instruction retired (``completed``) or the step was given up."""


class VM:
    """A virtual machine: a Machine and the monitor loop that answers its exits.

    A mode subclasses it: it sets up the real CPU, lists its ``EXIT_TABLE`` and writes
    the handlers; it says what the guest believes (``believed_cpl``, ``believed_state``)
    where that differs from the hardware.
    """

    mode = "vm"
    # The CPL the guest believes it runs at, by the hardware's ring (bare hardware: the
    # same; ring compression says otherwise). A table, not a method: every exit asks.
    believed_cpl: tuple[int, int, int, int] = (0, 1, 2, 3)
    # Who runs at which hardware ring in this mode (for views: a picture of the rings).
    ring_roles: tuple[tuple[int, str], ...] = ((0, "guest kernel"), (3, "guest user"))
    EXIT_TABLE: tuple[ExitRow, ...] = (
        ExitRow(ExitReason.HALT, ANY, "halted", "HLT: nothing wakes the CPU"),
        ExitRow(ExitReason.SHUTDOWN, ANY, "triple_fault", "a fault while delivering #DF"),
        ExitRow(ExitReason.BREAKPOINT, ANY, "breakpoint", "a breakpoint someone set"),
    )

    def __init__(
        self,
        machine: Machine,
        cost: CostModel = DEFAULT,
        name: str = "vm",
        log_size: int = EVENT_LOG_SIZE,
        board: Board | None = None,
    ) -> None:
        self.machine = machine
        self.cpu = machine.cpu  # the real CPU's state, by name
        self.state: np.ndarray = machine.state
        self.host_memory: np.ndarray = machine.memory
        self.cost = cost
        self.name = name
        self.board = board if board is not None else Board()
        self.events = EventLog(log_size)
        self.acct = Accounting()
        self.stopped: VMStopped | None = None
        self.step_guard: StepGuard | None = None
        self.events_waiting = False  # at entry: a virtual interrupt may wait (ask the mode)
        self.idle_until = -1  # at entry: the vCPU idles until this cycle (a halted guest)
        self.arm_timer = 0  # at entry: start the real timer with this period (cycles)
        self.enter = core_run  # the core's run(); a benchmark may wrap it to time exits
        self.handler_times: list[int] | None = None  # a list: each handler's nanoseconds
        self.after_exit: Callable[[], None] | None = None  # a check after each exit (tests)
        self._dispatch, self._kinds = self._bind_exit_table()

    # ---- the exit table ------------------------------------------------------------------------
    @classmethod
    def exit_rows(cls) -> tuple[ExitRow, ...]:
        """This mode's rows: its own, then those of the classes it extends (first match
        wins, and a row for one vector wins over a row for ANY)."""
        rows: list[ExitRow] = []
        for klass in cls.__mro__:
            rows.extend(klass.__dict__.get("EXIT_TABLE", ()))
        return tuple(rows)

    def _bind_exit_table(self) -> tuple[list[Callable[[], Outcome]], list[str]]:
        """The table as a flat list by reason * 256 + vector, of bound handlers."""
        size = (max(ExitReason) + 1) * 256
        dispatch: list[Callable[[], Outcome]] = [self.unexpected_exit] * size
        kinds = [exit_kind(slot // 256, slot % 256) for slot in range(size)]
        taken = [0] * size  # 2: by a row for this vector, 1: by a row for ANY
        for row in self.exit_rows():
            handler = getattr(self, row.handler)
            vectors = range(256) if row.vector is ANY else [row.vector]
            rank = 1 if row.vector is ANY else 2
            for vector in vectors:
                slot = int(row.reason) * 256 + vector
                if taken[slot] < rank:
                    dispatch[slot], taken[slot] = handler, rank
        return dispatch, kinds

    def describe_exit_table(self) -> str:
        """The exit table as a student reads it: reason, vector, handler, what it is for."""
        lines, seen = [], set()
        for row in self.exit_rows():
            if (row.reason, row.vector) in seen:
                continue  # (a mode's own row for these exits replaces the one it extends)
            seen.add((row.reason, row.vector))
            vector = "any" if row.vector is ANY else exit_kind(int(row.reason), row.vector)
            lines.append(f"{row.reason.name:<18} {vector:<10} {row.handler:<24} {row.note}")
        return "\n".join(lines)

    # ---- what the guest believes -----------------------------------------------------------------
    def virtual_cpl(self) -> int:
        """The privilege level the guest believes it runs at (see ``believed_cpl``)."""
        return self.believed_cpl[self.cpu.cs & 3]

    def virtual_if(self) -> bool:
        """The interrupt flag as the guest believes it."""
        return bool(self.cpu.eflags & 0x200)

    def believed_state(self, hardware: dict[str, object]) -> dict[str, object]:
        """The system registers as the guest believes them, given the hardware's (by the
        names of vm.interface.CPUState); bare hardware: the same."""
        return hardware

    def hardware_walks_other_tables(self) -> bool:
        """Does the CPU walk tables other than the guest's (a VMM's shadow tables)?"""
        return False

    def control_structure(self) -> object | None:
        """The hardware's control structure for this guest (vm.cpu.vmcs.VMCS) when it runs
        in VMX non-root mode; None for every other mode."""
        return None

    @property
    def guest_ram(self) -> int:
        """Bytes of the guest's RAM (a VMM's area, if any, lies after it)."""
        return self.machine.memory_size

    def watched_addresses(self) -> set[int]:
        """Breakpoints the monitor itself set (not a user's)."""
        return set()

    # ---- running -------------------------------------------------------------------------------
    def run(self, budget: int = DEFAULT_BUDGET, until: Until | None = None) -> VMResult:
        """Run the guest until it stops, ``until`` says so, or ``budget`` is spent (resumable).

        The budget counts instructions and exits: a guest that makes no progress (a timer
        faster than the VMM serves it) still returns, with status "budget".
        """
        budget = check_budget(budget)
        if self.stopped is not None:
            return self.result()
        until = until or Until()
        added = until.address is not None and until.address not in self.machine.breakpoints
        if added:
            self.machine.add_breakpoint(until.address)
        try:
            return self._loop(budget, until)
        except Pause as pause:
            return self.result(pause.status)
        except VMStopped as stop:
            return self.stop(stop)
        except Exception as error:  # a bug of the VMM's: this VM ends, the host goes on
            where = traceback.extract_tb(error.__traceback__)[-1]
            message = (
                f"internal VMM error: {type(error).__name__}: {error} "
                f"(at {where.filename.rsplit('/', 1)[-1]}:{where.lineno}; please report it)"
            )
            return self.stop(VMStopped("vmm-error", message))
        finally:
            if added:
                self.machine.remove_breakpoint(until.address)

    def _loop(self, budget: int, until: Until) -> VMResult:
        """The loop itself: enter, handle the exit, check what ``until`` watches, again."""
        cpu, acct = self.cpu, self.acct
        state, memory, enter = self.state, self.host_memory, self.enter
        start, exits = cpu.instructions, 0
        stepping = until.step
        watching = stepping or until.kinds or until.console is not None or until.seq is not None
        seq_before = self.events.total
        console_from = len(self.board.console.data)
        progress_before = self.progress()
        while True:
            left = budget - (cpu.instructions - start) - exits
            if left <= 0:
                return self.result("budget")
            guard = self.step_guard
            if guard is None:
                reason = enter(state, memory, 1 if stepping else left)
            else:  # one guarded instruction (vm.hypervisor.shadow.TableWriteStep)
                before = cpu.instructions
                reason = enter(state, memory, 1)
                guard.renewed = False
                if cpu.instructions != before:  # it retired
                    self.step_guard = None
                    guard.close(self, True)
                    self.enter_guest(0)
            if reason != EXIT_BUDGET:
                exits += 1
                acct.core_exits += 1
                if reason == EXIT_BREAKPOINT and cpu.eip == until.address:
                    cpu.skip_breakpoint = 1  # (a later run goes on past it)
                    return self.result("stopped")
                self.handle_exit(reason)
                if self.board.exit_status is not None:  # the guest powered off
                    code = self.board.exit_status
                    status = "shutdown" if code == 0 else "panic"
                    return self.stop(VMStopped(status, exit_code=code))
                if guard is not None and self.step_guard is guard and not guard.renewed:
                    self.step_guard = None  # the step faulted and nothing could help
                    guard.close(self, False)
            if watching:
                if until.step and (self.progress() != progress_before or exits >= STEP_LIMIT):
                    return self.result("stopped")
                if self.events.total != seq_before and (until.kinds or until.seq is not None):
                    for event in self.events.since(seq_before):
                        if event.kind in until.kinds or event.action in until.kinds:
                            return self.result("stopped")
                        if until.seq is not None and event.seq >= until.seq:
                            return self.result("stopped")
                    seq_before = self.events.total
                if until.console is not None and len(self.board.console.data) != console_from:
                    text = self.board.console.data[console_from:].decode("utf-8", "replace")
                    if until.console in text:
                        return self.result("stopped")

    def progress(self) -> int:
        """A count that grows whenever the guest makes progress: an instruction retires
        (in the core or emulated by the VMM) or an event is delivered to it."""
        acct = self.acct
        cpu = self.cpu
        return (
            cpu.instructions
            + cpu.stat_interrupts
            + acct.emulations
            + acct.reflected
            + acct.injected
        )

    def stop(self, stop: VMStopped) -> VMResult:
        """End the run for good with this status."""
        self.stopped = stop
        if stop.status != "shutdown":
            text = f"{stop.status}: {stop.message}".rstrip(": ")
            self.note("stop", stop.status, text.splitlines()[0] if text else stop.status)
        return self.result()

    def handle_exit(self, reason: int) -> None:
        """Hand one exit to its handler; count it, record it, and re-enter the guest."""
        cpu = self.cpu
        slot = reason * 256 + (cpu.exit_vector & 0xFF if reason in VECTORED else 0)
        eip = cpu.eip
        if reason in AFTER_INSTRUCTION:
            eip = (eip - cpu.exit_instruction_length) & 0xFFFFFFFF
        instruction, cycle, cpl = cpu.instructions, cpu.cycles, self.believed_cpl[cpu.cs & 3]
        try:
            if self.handler_times is None:
                outcome = self._dispatch[slot]()
            else:  # (the benchmark's measure of a handler: python -m vm bench)
                started = perf_counter_ns()
                outcome = self._dispatch[slot]()
                self.handler_times.append(perf_counter_ns() - started)
        except VMStopped as stop:  # the exit ends the guest: it still counts
            kind = self._kinds[slot]
            self.acct.exits[kind] += 1
            text = (stop.message or stop.status).splitlines()[0]
            self.events.add(instruction, cycle, kind, eip, cpl, stop.status, 0, text)
            raise
        if outcome is None:  # (nothing to count: a device answered, a watch point passed)
            self.enter_guest(0)
            return
        kind, action, cost, text = outcome
        acct = self.acct
        if kind is None:
            kind = self._kinds[slot]
        if kind == CALLOUT:
            acct.callouts += 1
        else:
            acct.exits[kind] += 1
        self.events.add(instruction, cycle, kind, eip, cpl, action, cost, text)
        cpu.cycles += cost  # the VMM's time passes on the guest's clock
        acct.vmm_cycles += cost
        if self.idle_until >= 0 or self.arm_timer or self.events_waiting:
            self.enter_guest(0)
        if self.after_exit is not None and self.step_guard is None:
            self.after_exit()

    def enter_guest(self, cost: int) -> None:
        """VM entry after an exit: the VMM's time passes on the guest's clock (its timer
        sees it too), a halted vCPU idles to its next tick, a timer the guest programmed
        starts, and a virtual interrupt that waits may be injected."""
        cpu = self.cpu
        if cost:
            cpu.cycles += cost
            self.acct.vmm_cycles += cost
        if self.idle_until >= 0:
            if self.idle_until > cpu.cycles:
                self.acct.idle_cycles += self.idle_until - cpu.cycles
                cpu.cycles = self.idle_until
            self.idle_until = -1
        if self.arm_timer:
            self.start_timer(self.arm_timer)
            self.arm_timer = 0
        if self.events_waiting and self.step_guard is None:
            outcome = self.inject_pending()  # (the mode's virtual interrupt may be taken)
            if outcome is not None:
                kind, action, cost, text = outcome
                self.note(kind, action, text, cost)
                cpu.cycles += cost
                self.acct.vmm_cycles += cost
                cpu.skip_breakpoint = 0  # (EIP moved: a breakpoint there is a new one)

    def note(self, kind: str, action: str, text: str, cost: int = 0, eip: int = -1) -> None:
        """Record an event that is not an exit (an injection, a patch, a hang)."""
        cpu = self.cpu
        where = cpu.eip if eip < 0 else eip
        self.events.add(
            cpu.instructions, cpu.cycles, kind, where, self.virtual_cpl(), action, cost, text
        )

    # ---- what modes override ---------------------------------------------------------------------
    def inject_pending(self) -> Outcome:
        """At VM entry, with ``events_waiting``: deliver a waiting virtual interrupt if the
        guest can take it (and clear ``events_waiting`` when none waits any more)."""
        self.events_waiting = False
        return None

    def start_timer(self, period: int) -> None:
        """The guest programmed its timer: the real one ticks at its rate, and each tick
        exits to the VMM (the real PIC passes IRQ 0 only). (Set ``arm_timer``: the loop
        calls this at VM entry, once the exit's cost is on the clock.)"""
        cpu = self.cpu
        cpu.timer_period = period
        cpu.timer_next = cpu.cycles + period
        cpu.pic_imr = 0xFE
        self.note("timer", "program", f"a tick every {period:,} cycles")

    def unexpected_exit(self) -> Outcome:
        raise VMStopped("fault", f"unexpected exit {self.machine.last_exit()}")

    def halted(self) -> Outcome:
        raise VMStopped("halt", f"HLT at {self.cpu.eip - 1:#x} with nothing to wake the CPU")

    def triple_fault(self) -> Outcome:
        raise VMStopped("fault", "triple fault: the CPU shut down")

    def breakpoint(self) -> Outcome:
        """A breakpoint someone set (a lesson, a test): the run stops there."""
        self.cpu.skip_breakpoint = 1  # (a later run goes on past it)
        raise Pause("breakpoint")

    # ---- results -------------------------------------------------------------------------------
    def result(self, status: str | None = None) -> VMResult:
        """How things stand: the status, the console, and the statistics."""
        stop = self.stopped
        if status is None:
            status = stop.status if stop else "budget"
        message = stop.message if stop else ""
        code = stop.exit_code if stop else -1
        return VMResult(status, self.board.console.text, code, message, self.stats())

    def stats(self) -> dict[str, object]:
        """Instructions, cycles and exits (total and by kind), and the mode's counters."""
        machine = self.machine.stats()
        acct = self.acct
        return {
            "mode": self.mode,
            "instructions": machine["instructions"],
            "cycles": machine["cycles"],
            "vmm_cycles": acct.vmm_cycles,
            "idle_cycles": machine["idle_cycles"] + acct.idle_cycles,  # halted, waiting
            "exits": sum(acct.exits.values()),
            "exits_by_reason": dict(sorted(acct.exits.items())),
            "emulated": dict(sorted(acct.emulated.items())),
            "injected": acct.injected,
            "reflected": acct.reflected,
            "callouts": acct.callouts,
            "lost_ticks": acct.lost_ticks,
            "shadow": dict(sorted(acct.shadow.items())),
            "page_walks": machine["page_walks"],
            "tlb_flushes": machine["tlb_flushes"],
            "interrupts": machine["interrupts"],  # delivered by the real CPU
            "faults": machine["faults"],  # exceptions the real CPU raised, by name
        }

    # ---- snapshots -----------------------------------------------------------------------------
    def snapshot(self) -> VMSnapshot:
        """A copy of the whole VM; restore() returns to it, and the run goes on identically."""
        return VMSnapshot(self.machine.snapshot(), self.save_monitor())

    def restore(self, snapshot: VMSnapshot) -> None:
        """Put the VM back as it was when the snapshot was taken."""
        if not isinstance(snapshot, VMSnapshot) or snapshot.monitor.get("mode") != self.mode:
            raise ValueError(f"restore() takes a snapshot of this {self.mode} VM")
        self.machine.restore(snapshot.machine)
        self.load_monitor(snapshot.monitor)

    def save_monitor(self) -> dict[str, object]:
        """The monitor's own state, copied (modes add theirs)."""
        return {
            "mode": self.mode,
            "board": self.board.copy(),
            "events": self.events.copy_records(),
            "acct": copy.deepcopy(self.acct),
            "stopped": self.stopped,
            "step_guard": copy.deepcopy(self.step_guard),
            "timing": (self.idle_until, self.arm_timer, self.events_waiting),
        }

    def load_monitor(self, saved: dict[str, object]) -> None:
        """Put back what save_monitor() copied."""
        self.board = saved["board"].copy()
        self.events.put_records(saved["events"])
        self.acct = copy.deepcopy(saved["acct"])
        self.stopped = saved["stopped"]
        self.step_guard = copy.deepcopy(saved["step_guard"])
        self.idle_until, self.arm_timer, self.events_waiting = saved["timing"]


class Pause(Exception):  # (it is how a run pauses, not an error)
    """Raised inside a handler to return from run() with a status the guest can go on from
    (a breakpoint)."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status
