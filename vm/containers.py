"""The container runtime: what vzctl (OpenVZ) or lxc-* do, for toyos's containers.

Containers share one kernel, toyos built with CONTAINERS, running on bare metal (the
"containers" mode: no VMM, no VM exits). Each has its own pid numbers, host name and
console stream, a CPU weight and a memory limit in 4 KiB pages. The runtime talks to the
kernel only through its control device (vm.hypervisor.containers): it queues a request,
the kernel answers it at its next poll (every timer tick, and whenever it idles).

>>> import vm
>>> guest = vm.boot(mode="containers", containers=["syscalls", {"workload": "io", "weight": 2}])
>>> rt = guest.containers
>>> result = guest.run()
>>> result.ok, [c.state for c in rt.list()]
(True, ['stopped', 'stopped'])
>>> rt.console(1)
'syscalls: 2000 getpid calls\\ninit: workload exited with 0\\n'

The calls that need an answer (``create``, ``start``, ``exec``, ``stop``, ``destroy``,
``stats`` and ``list`` while the kernel runs) run the guest until the kernel answers, at
most ANSWER_BUDGET instructions. The kernel powers off once no container runs and no
request waits; after that, ``stats`` and ``list`` give what it last said.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from vm.guest.toyos import PROGRAMS, WORKLOADS
from vm.hypervisor.containers import (
    CREATE,
    DESTROY,
    EXEC,
    HOSTNAME,
    START,
    STATS,
    STOP,
    ContainerBoard,
)

# Programs only the CONTAINERS build's user image has: namespaces, and escape attempts.
CONTAINER_PROGRAMS = ("hostname", "rename", "snoop", "scribble", "hog", "crasher")
PROGRAMS_IN_CONTAINERS = (*WORKLOADS, *CONTAINER_PROGRAMS)
MAX_CONTAINERS = 16  # the kernel's MAX_CONTAINERS
MAX_WEIGHT = 100
HOSTNAME_MAX = 32
MAX_PAGES = 1 << 20
ANSWER_SLICE = 100_000  # instructions and exits between looks for the kernel's answer
ANSWER_BUDGET = 20_000_000  # at most this many before giving up on it
STATES = {0: "free", 1: "created", 2: "running", 3: "stopped"}
KERNEL = "containers"  # the one kernel every container shares


@dataclass(frozen=True)
class ContainerSpec:
    """What a container runs and the limits it runs under."""

    workload: str  # a program of PROGRAMS_IN_CONTAINERS
    weight: int = 1  # CPU weight: under contention, CPU in proportion to it
    # 4 KiB frames its processes may hold (0: no limit): 4 for each process (its page
    # directory, page table, stack and kernel stack) and one for each page it maps
    memory_limit: int = 0
    hostname: str = ""  # its host name ("" : ct<id>)


@dataclass(frozen=True)
class ContainerStats:
    """A container as the kernel reported it (at ``cycle``)."""

    id: int
    state: str  # "created", "running" or "stopped"
    weight: int
    memory_limit: int
    pages: int  # frames its processes hold
    ticks: int  # timer ticks its processes ran
    exit_code: int  # its init's (-9: stopped by the host); meaningful once stopped
    refused: int  # frames its memory limit refused it
    hostname: str
    processes: int
    cycle: int

    @classmethod
    def from_record(cls, words: tuple[int, ...], cycle: int) -> ContainerStats:
        """Decode a record: C_ID .. the host name (17 dwords), then the processes."""
        if len(words) < 18:
            raise ValueError(f"a container's record has 18 dwords, not {len(words)}")

        def signed(word: int) -> int:
            return word - (1 << 32) if word & 0x80000000 else word

        name = b"".join(w.to_bytes(4, "little") for w in words[9:17])
        length = min(words[8], HOSTNAME_MAX)
        return cls(
            id=words[0],
            state=STATES.get(words[1], f"state {words[1]}"),
            weight=words[2],
            memory_limit=words[3],
            pages=signed(words[4]),
            ticks=words[5],
            exit_code=signed(words[6]),
            refused=words[7],
            hostname=name[:length].decode("ascii", errors="replace"),
            processes=words[17],
            cycle=cycle,
        )


def _whole(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, not {value!r}")
    return value


def _program(name: str, value: object) -> int:
    if value not in PROGRAMS_IN_CONTAINERS:
        raise ValueError(
            f"{name} {value!r} is no program; choose one of {', '.join(PROGRAMS_IN_CONTAINERS)}"
        )
    return PROGRAMS[value]


def _hostname(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.isascii() or len(value) > HOSTNAME_MAX:
        raise ValueError(f"{name} must be ASCII text of at most {HOSTNAME_MAX} characters")
    return value


def container_spec(given: object, where: str = "container") -> ContainerSpec:
    """A ContainerSpec from a workload's name, a mapping of its fields, or a ContainerSpec;
    a clear ValueError names what is wrong."""
    if isinstance(given, str):
        given = ContainerSpec(given)
    elif isinstance(given, Mapping):
        known = {f.name for f in fields(ContainerSpec)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"{where} has no field {unknown[0]!r} (it has {', '.join(known)})")
        if "workload" not in given:
            raise ValueError(f"{where} needs a workload")
        given = ContainerSpec(**given)
    if not isinstance(given, ContainerSpec):
        raise ValueError(f"{where} must be a workload's name, a dict or a ContainerSpec")
    _program(f"{where}.workload", given.workload)
    _whole(f"{where}.weight", given.weight, 1, MAX_WEIGHT)
    _whole(f"{where}.memory_limit", given.memory_limit, 0, MAX_PAGES)
    _hostname(f"{where}.hostname", given.hostname)
    return given


def container_specs(containers: object) -> tuple[ContainerSpec, ...]:
    """Each container of vm.boot's ``containers`` option, checked."""
    if isinstance(containers, (str, Mapping, ContainerSpec)):
        containers = [containers]
    if not isinstance(containers, Iterable):
        raise ValueError("containers must be a list of workloads, dicts or ContainerSpecs")
    listed = list(itertools.islice(containers, MAX_CONTAINERS + 1))  # (never endless)
    specs = tuple(container_spec(c, f"containers[{i}]") for i, c in enumerate(listed))
    if not 1 <= len(specs) <= MAX_CONTAINERS:
        given = "more" if len(specs) > MAX_CONTAINERS else "none"
        raise ValueError(f"containers must list from 1 to {MAX_CONTAINERS}, not {given}")
    return specs


def _name_words(name: str) -> list[int]:
    """A host name as the hostname request carries it: its length, then 8 dwords."""
    raw = name.encode("ascii").ljust(HOSTNAME_MAX, b"\0")
    return [len(name)] + [int.from_bytes(raw[i : i + 4], "little") for i in range(0, 32, 4)]


def submit(control, spec: ContainerSpec, cid: int) -> None:
    """Queue create, hostname and start for a container on a control device (answered at
    the kernel's next poll: the containers vm.boot is given wait there as the kernel boots)."""
    spec = container_spec(spec)
    cid = _whole("cid", cid, 1, MAX_CONTAINERS)
    control.post(CREATE, cid, spec.weight, spec.memory_limit)
    control.post(HOSTNAME, cid, *_name_words(spec.hostname or f"ct{cid}"))
    control.post(START, cid, PROGRAMS[spec.workload])


class ContainerRuntime:
    """Create, start, stop, list and exec in the containers of one kernel (a guest booted
    in the "containers" mode), through the kernel's control device."""

    def __init__(self, guest) -> None:
        if not isinstance(guest.vm.board, ContainerBoard):
            raise ValueError(f"a {guest.mode} guest has no containers (boot mode='containers')")
        self.guest = guest

    @property
    def _control(self):
        return self.guest.vm.board.control  # (the board a restore put back, not a stale one)

    # ---- requests ----------------------------------------------------------------------------
    def create(
        self,
        cid: int | None = None,
        *,
        weight: int = 1,
        memory_limit: int = 0,
        hostname: str | None = None,
        kernel: str | None = None,
    ) -> int:
        """A new container (stopped until ``start``); its id. ``kernel`` other than the
        shared one is refused: a container runs on the host's kernel, never its own."""
        if kernel is not None and kernel != KERNEL:
            raise ValueError(
                f"kernel {kernel!r} refused: containers share the host's one kernel (toyos "
                f"built with CONTAINERS); a container cannot boot a kernel of its own. A "
                f"VM can: vm.boot(..., mode='paravirt' or 'native', kernel={kernel!r})"
            )
        _whole("weight", weight, 1, MAX_WEIGHT)
        _whole("memory_limit", memory_limit, 0, MAX_PAGES)
        if cid is None:
            taken = {c.id for c in self.list()}
            free = [i for i in range(1, MAX_CONTAINERS + 1) if i not in taken]
            if not free:
                raise ValueError(f"all {MAX_CONTAINERS} container ids are taken")
            cid = free[0]
        cid = _whole("cid", cid, 1, MAX_CONTAINERS)
        name = _hostname("hostname", f"ct{cid}" if hostname is None else hostname)
        if self._ask(CREATE, cid, weight, memory_limit)[0] != 0:
            raise ValueError(f"cid {cid} refused: the kernel has a container {cid} already")
        self._ask(HOSTNAME, cid, *_name_words(name))
        return cid

    def start(self, cid: int, workload: str) -> int:
        """Run a created container: its init starts ``workload``. Its init's pid (1)."""
        program = _program("workload", workload)
        return self._ok(self._ask(START, self._cid(cid), program), f"start {cid}")

    def exec(self, cid: int, workload: str, argument: int = 0) -> int:
        """One more process in a running container; its pid there."""
        program = _program("workload", workload)
        _whole("argument", argument, 0, 0xFFFFFFFF)
        return self._ok(self._ask(EXEC, self._cid(cid), program, argument), f"exec in {cid}")

    def stop(self, cid: int) -> None:
        """Kill every process of a running container."""
        self._ok(self._ask(STOP, self._cid(cid)), f"stop {cid}")

    def destroy(self, cid: int) -> None:
        """Give back the id of a container that does not run."""
        self._ok(self._ask(DESTROY, self._cid(cid)), f"destroy {cid}")

    def stats(self, cid: int) -> ContainerStats:
        """A container's figures: asked of the kernel while it runs, else the last it said."""
        cid = self._cid(cid)
        if self.guest.vm.stopped is None:
            words, cycle = self._ask(STATS, cid, cycle=True)
            if len(words) > 1:
                return ContainerStats.from_record(words, cycle)
        known = self._last_known().get(cid)
        if known is None:
            raise ValueError(f"cid {cid}: the kernel has no such container")
        return known

    def list(self) -> list[ContainerStats]:
        """Every container the kernel has, by id."""
        if self.guest.vm.stopped is not None:
            return [s for _, s in sorted(self._last_known().items()) if s.state != "free"]
        control = self._control
        seqs = [control.post(STATS, cid) for cid in range(1, MAX_CONTAINERS + 1)]
        self._wait(seqs[-1])
        out = []
        for seq in seqs:
            record = control.replies.get(seq)
            if record is not None and len(record.words) > 1:
                out.append(ContainerStats.from_record(record.words, record.cycle))
        return out

    def console(self, cid: int) -> str:
        """A container's own console stream (0: the kernel's)."""
        _whole("cid", cid, 0, MAX_CONTAINERS)
        return self.guest.vm.board.stream_text(cid)

    @property
    def reports(self) -> list[ContainerStats]:
        """The kernel's reports, in order: a container's figures as it stopped."""
        return [ContainerStats.from_record(r.words, r.cycle) for r in self._control.reports]

    # ---- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _cid(cid: object) -> int:
        return _whole("cid", cid, 1, MAX_CONTAINERS)

    @staticmethod
    def _ok(words: tuple[int, ...], what: str) -> int:
        value = words[0] if words else 0xFFFFFFFF
        if value == 0xFFFFFFFF:
            raise ValueError(f"{what}: refused by the kernel (no such container, or not now)")
        return value

    def _ask(self, op: int, *args: int, cycle: bool = False):
        """Post a request and run the guest until the kernel answers it."""
        if self.guest.vm.stopped is not None:
            raise ValueError(
                f"the kernel is not running (status {self.guest.status!r}): nothing to ask"
            )
        seq = self._control.post(op, *args)
        record = self._wait(seq)
        return (record.words, record.cycle) if cycle else record.words

    def _wait(self, seq: int):
        for _ in range(ANSWER_BUDGET // ANSWER_SLICE):
            record = self._control.replies.get(seq)
            if record is not None:
                return record
            if self.guest.vm.stopped is not None:
                break
            self.guest.run(ANSWER_SLICE)
        record = self._control.replies.get(seq)
        if record is None:
            raise ValueError(
                f"the kernel did not answer (status {self.guest.status!r}); "
                "it answers at its timer ticks and when idle, while a container runs"
            )
        return record

    def _last_known(self) -> dict[int, ContainerStats]:
        """Each container's latest record, from replies and reports, by the cycle it came."""
        control = self._control
        records = [r for r in control.replies.values() if len(r.words) >= 18]
        records += control.reports
        known: dict[int, ContainerStats] = {}
        for record in sorted(records, key=lambda r: r.cycle):
            stats = ContainerStats.from_record(record.words, record.cycle)
            known[stats.id] = stats
        return known
