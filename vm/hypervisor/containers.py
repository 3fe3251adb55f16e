"""Containers, OpenVZ's way: one toyos kernel (the CONTAINERS build) on bare metal, its
processes grouped into containers. No VMM at all, so no VM exits.

What the host adds to a bare-metal board is two devices, reached by port I/O:

- the **control device** (ports 0xF0-0xF2): the host's runtime (vm.containers) queues
  requests (create, hostname, start, exec, stop, stats, destroy); the kernel polls it at
  every timer tick and whenever it idles, reads each request and its arguments with IN and
  answers with a *record* of dwords written with OUT. The kernel also sends a record of
  its own when a container stops (a report). This is the whole interface between the
  runtime and the kernel: the runtime never reads or writes the kernel's memory.
- **console streams** (port 0xEA): before a container's bytes the kernel names whose they
  are, so each container's console is a stream of its own (0 is the kernel's). The host's
  console still shows every byte, in the order written.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass

from vm.cpu.cost import DEFAULT, CostModel
from vm.hypervisor.devices import Board
from vm.hypervisor.native import BareMetalVM
from vm.machine import Machine

CONTROL_PORT = 0xF0  # IN: the next request's operation (0: none); OUT: a record ends
CONTROL_DATA = 0xF1  # IN: the request's next argument; OUT: the record's next dword
CONTROL_PENDING = 0xF2  # IN: how many requests wait
STREAM_PORT = 0xEA  # OUT: whose console the next bytes are (0: the kernel's own)

# Requests, by operation number (the kernel's control_table).
CREATE, HOSTNAME, START, EXEC, STOP, STATS, DESTROY = range(1, 8)
OPERATIONS = {
    CREATE: "create",
    HOSTNAME: "hostname",
    START: "start",
    EXEC: "exec",
    STOP: "stop",
    STATS: "stats",
    DESTROY: "destroy",
}
RECORD_REPLY = 1  # the answer to the request being served
RECORD_REPORT = 2  # the kernel's own news: a container stopped
MAX_RECORD = 32  # dwords in a record (a container's record has 18)
MAX_QUEUE = 256  # requests waiting
MAX_REPORTS = 1024  # reports kept
MAX_STREAMS = 256  # console streams (one byte names one)


@dataclass(frozen=True)
class Request:
    """One request to the kernel: its number (its answer's key), operation, arguments."""

    seq: int
    op: int
    args: tuple[int, ...]


@dataclass(frozen=True)
class Record:
    """What the kernel wrote: a reply (to request ``seq``) or a report, at a cycle."""

    kind: int
    seq: int  # the request a reply answers (-1: a report)
    words: tuple[int, ...]
    cycle: int


class ControlDevice:
    """The host's side of the control ports: a queue of requests, and the records back."""

    def __init__(self) -> None:
        self.queue: deque[Request] = deque()
        self.serving: Request | None = None
        self.arguments: deque[int] = deque()
        self.words: list[int] = []
        self.replies: dict[int, Record] = {}
        self.reports: list[Record] = []
        self.next_seq = 1

    def post(self, op: int, *args: int) -> int:
        """Queue a request; its number, under which its reply will be found."""
        if len(self.queue) >= MAX_QUEUE:
            raise ValueError(f"{MAX_QUEUE} requests already wait for the kernel")
        seq = self.next_seq
        self.next_seq += 1
        self.queue.append(Request(seq, op, tuple(a & 0xFFFFFFFF for a in args)))
        return seq

    def port_in(self, port: int) -> int:
        if port == CONTROL_PORT:  # the next request (one left unanswered gets no reply)
            if not self.queue:
                self.serving = None
                return 0
            self.serving = self.queue.popleft()
            self.arguments = deque(self.serving.args)
            self.words = []
            return self.serving.op
        if port == CONTROL_DATA:
            return self.arguments.popleft() if self.arguments else 0
        return len(self.queue)  # CONTROL_PENDING

    def port_out(self, port: int, value: int, cycle: int) -> None:
        if port == CONTROL_DATA:
            if len(self.words) < MAX_RECORD:
                self.words.append(value & 0xFFFFFFFF)
            return
        words, self.words = tuple(self.words), []
        if value == RECORD_REPLY and self.serving is not None:
            seq = self.serving.seq
            self.replies[seq] = Record(RECORD_REPLY, seq, words, cycle)
            self.serving = None
        elif value == RECORD_REPORT and len(self.reports) < MAX_REPORTS:
            self.reports.append(Record(RECORD_REPORT, -1, words, cycle))


class ContainerBoard(Board):
    """A bare-metal board with the control device and a console stream per container."""

    def __init__(self, clock) -> None:
        super().__init__()
        self.clock = clock  # () -> the CPU's cycles now (records carry when they came)
        self.control = ControlDevice()
        self.streams: dict[int, bytearray] = {}
        self.stream = 0

    def port_out(self, port: int, value: int, size: int) -> int:
        if port == STREAM_PORT:
            self.stream = value & 0xFF
        elif port in (CONTROL_PORT, CONTROL_DATA):
            self.control.port_out(port, value, self.clock())
        else:
            room = len(self.console.data) < self.console.limit
            known = self.stream in self.streams or len(self.streams) < MAX_STREAMS
            if port in self.console.PORTS and room and known:
                self.streams.setdefault(self.stream, bytearray()).append(value & 0xFF)
            return super().port_out(port, value, size)
        return 0

    def port_in(self, port: int, size: int) -> int:
        if port in (CONTROL_PORT, CONTROL_DATA, CONTROL_PENDING):
            return self.control.port_in(port) & (0xFF if size == 1 else 0xFFFFFFFF)
        return super().port_in(port, size)

    def stream_text(self, stream: int) -> str:
        """What was written on one stream (0: the kernel's own)."""
        return bytes(self.streams.get(stream, b"")).decode("utf-8", errors="replace")

    def copy(self) -> ContainerBoard:
        other = super().copy()
        other.control = copy.deepcopy(self.control)
        other.streams = {k: bytearray(v) for k, v in self.streams.items()}
        return other


class ContainersVM(BareMetalVM):
    """The CONTAINERS kernel on bare metal, with the control device and console streams."""

    mode = "containers"
    ring_roles = ((0, "guest kernel (one, shared by every container)"), (3, "guest user"))

    def __init__(
        self, machine: Machine, cost: CostModel = DEFAULT, name: str = "vm", containers=()
    ) -> None:
        """``containers``: what vm.containers.container_specs takes; their create, hostname
        and start requests wait for the kernel, which takes them as it boots."""
        from vm.containers import container_specs, submit

        tenants = container_specs(containers)
        super().__init__(machine, cost, name)
        self.board = ContainerBoard(self.clock)
        for cid, spec in enumerate(tenants, start=1):
            submit(self.board.control, spec, cid)
        self.tenants_workload = "+".join(spec.workload for spec in tenants)

    def clock(self) -> int:
        return self.cpu.cycles
