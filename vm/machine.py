"""A bare-metal machine: the CPU core, its memory, and a Python API over the run loop.

>>> from vm.machine import Machine
>>> m = Machine()
>>> program = m.load_asm("mov eax, 6\\nimul eax, eax, 7\\nhlt")
>>> m.run()
Exit(HALT at 0x00001009)
>>> m.regs.eax
42
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from vm.cpu import state as S
from vm.cpu.core import run as core_run
from vm.cpu.cost import DEFAULT as DEFAULT_COST
from vm.cpu.cost import CostModel
from vm.cpu.exits import ExitReason
from vm.cpu.memory import flush_tlb
from vm.cpu.state import StateView

DEFAULT_MEMORY = 1 << 20
DEFAULT_LOAD_ADDRESS = 0x1000
DEFAULT_BUDGET = 100_000_000
MAX_BUDGET = 2**63 - 1  # the core counts in int64
REASONS = tuple(ExitReason)  # by value, for a quick lookup
EXIT_BREAKPOINT = int(ExitReason.BREAKPOINT)

VECTOR_NAMES = {
    0: "#DE",
    1: "#DB",
    2: "NMI",
    3: "#BP",
    4: "#OF",
    5: "#BR",
    6: "#UD",
    7: "#NM",
    8: "#DF",
    10: "#TS",
    11: "#NP",
    12: "#SS",
    13: "#GP",
    14: "#PF",
    16: "#MF",
    17: "#AC",
}


def vector_name(vector: int, software: bool = False) -> str:
    """'#GP' for 13, 'INT 0x80' for a vector an interrupt or INT n raised; with
    ``software``, what INT n raised it ('INT3' for 3, 'INT 0xe' for 14)."""
    if software:
        return "INT3" if vector == 3 else f"INT {vector:#x}"
    return VECTOR_NAMES.get(vector, f"INT {vector:#x}")


class Exit(NamedTuple):
    """Why run() returned, with that exit's arguments (a named tuple: cheap to make)."""

    reason: ExitReason
    eip: int
    vector: int = -1
    error_code: int = -1
    port: int = -1
    size: int = 0
    is_in: bool = False
    value: int = 0
    control_register: int = -1  # CR_ACCESS: which CRn; is_in is True for a read
    register: int = -1  # CR_ACCESS: the general register (0 = EAX ... 7 = EDI; -1: LMSW)
    length: int = 0  # bytes of the instruction that caused the exit (0: none did)

    def __str__(self) -> str:
        where = f"at {self.eip:#010x}"
        if self.reason == ExitReason.FAULT:
            code = f"({self.error_code:#x})" if self.error_code >= 0 else ""
            return f"{self.reason.name} {vector_name(self.vector)}{code} {where}"
        if self.reason == ExitReason.SOFTWARE_INTERRUPT:
            return f"{self.reason.name} {vector_name(self.vector, software=True)} {where}"
        if self.reason == ExitReason.INTERRUPT:
            return f"INTERRUPT vector {self.vector:#x} {where}"
        if self.reason == ExitReason.HYPERCALL:
            return f"HYPERCALL vmcall {where}"
        if self.reason == ExitReason.CR_ACCESS:
            if self.register < 0:  # LMSW
                return f"CR_ACCESS lmsw: cr{self.control_register} <- {self.value:#x} {where}"
            gpr = S.REG_NAMES[self.register]
            if self.is_in:
                return f"CR_ACCESS mov {gpr}, cr{self.control_register} {where}"
            return f"CR_ACCESS mov cr{self.control_register}, {gpr} ({self.value:#x}) {where}"
        if self.reason == ExitReason.IO:
            if self.is_in:
                return f"IO in port {self.port:#x} ({self.size} bytes) {where}"
            return f"IO out port {self.port:#x} value {self.value:#x} ({self.size} bytes) {where}"
        return f"{self.reason.name} {where}"

    def __repr__(self) -> str:
        return f"Exit({self})"


class Registers:
    """The general registers by name: ``m.regs.eax``, ``m.regs["esp"] = 0x8000``.

    Reads and writes go straight to the machine's state array. Byte registers (al, ah,
    ...) and eip/eflags work too.
    """

    def __init__(self, state: np.ndarray) -> None:
        object.__setattr__(self, "_state", state)

    def _slot(self, name: str) -> int:
        name = name.lower()
        if name in S.REG_NAMES:
            return S.REG_NAMES.index(name)
        if name == "eip":
            return S.EIP
        if name == "eflags":
            return S.EFLAGS
        raise KeyError(f"no register named {name!r} (try one of {', '.join(S.REG_NAMES)})")

    def __getitem__(self, name: str) -> int:
        if name.lower() in S.REG8_NAMES:
            r = S.REG8_NAMES.index(name.lower())
            value = int(self._state[r & 3])
            return (value >> 8) & 0xFF if r & 4 else value & 0xFF
        return int(self._state[self._slot(name)])

    def __setitem__(self, name: str, value: int) -> None:
        value = _as_u32(value, name)
        if name.lower() in S.REG8_NAMES:
            if value > 0xFF:
                raise ValueError(f"{name} is a byte register: {value:#x} does not fit")
            r = S.REG8_NAMES.index(name.lower())
            old = int(self._state[r & 3])
            shift = 8 if r & 4 else 0
            self._state[r & 3] = (old & ~(0xFF << shift) & 0xFFFFFFFF) | (value << shift)
            return
        self._state[self._slot(name)] = value

    def __getattr__(self, name: str) -> int:
        try:
            return self[name]
        except KeyError as error:
            raise AttributeError(str(error)) from None

    def __setattr__(self, name: str, value: int) -> None:
        try:
            self[name] = value
        except KeyError as error:
            raise AttributeError(str(error)) from None

    def as_dict(self) -> dict[str, int]:
        """All eight general registers and EIP as a dict."""
        out = {name: int(self._state[i]) for i, name in enumerate(S.REG_NAMES)}
        out["eip"] = int(self._state[S.EIP])
        return out

    def __repr__(self) -> str:
        parts = [f"{name}={value:#010x}" for name, value in self.as_dict().items()]
        return "Registers(" + " ".join(parts) + ")"


def check_budget(budget: object) -> int:
    """A run's budget as an int: an int or a numpy integer (not a bool) from 1 to
    2**63 - 1 instructions; ValueError for anything else."""
    if budget.__class__ is int and 0 < budget <= MAX_BUDGET:
        return budget
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer):
        raise ValueError(f"budget must be a positive integer, not {budget!r}")
    if not 1 <= int(budget) <= MAX_BUDGET:
        raise ValueError(f"budget must be from 1 to 2**63 - 1 instructions, not {int(budget)}")
    return int(budget)


def _as_index(value: object, what: str) -> int:
    """A non-negative integer argument (an int or numpy integer, not a bool) as an int."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{what} must be an integer, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, not {value}")
    return int(value)


def _as_u32(value: int, what: str) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool):
        raise TypeError(f"{what} must be an integer, not {type(value).__name__}")
    value = int(value)
    if not -(1 << 31) <= value <= 0xFFFFFFFF:
        raise ValueError(f"{what} = {value:#x} does not fit in 32 bits")
    return value & 0xFFFFFFFF


@dataclass(frozen=True)
class Snapshot:
    """A copy of a whole machine (state, memory) that restore() puts back."""

    state: np.ndarray
    memory: np.ndarray


def _check_host_memory(memory: object) -> None:
    """The host memory the core runs on must be a writable, C-contiguous 1-D uint8 array."""
    if not isinstance(memory, np.ndarray):
        raise TypeError(f"host_memory must be a numpy array, not {type(memory).__name__}")
    if memory.dtype != np.uint8 or memory.ndim != 1:
        shape = f"{memory.ndim}-D {memory.dtype}"
        raise ValueError(f"host_memory must be a 1-D uint8 array, not {shape}")
    if not memory.flags.c_contiguous or not memory.flags.writeable:
        raise ValueError("host_memory must be contiguous and writable (not a strided view)")


class Machine:
    """A CPU with flat memory (physical = linear), at ring 0, ready to run code.

    By default the machine owns its memory. Given ``host_memory`` and ``base`` it runs
    in the window [base, base + memory_size) of a larger array that other machines share
    (vm.hypervisor.host): its physical address 0 is host index ``base``, and the core
    lets it reach nothing outside the window.
    """

    def __init__(
        self,
        memory_size: int = DEFAULT_MEMORY,
        cost: CostModel = DEFAULT_COST,
        host_memory: np.ndarray | None = None,
        base: int = 0,
    ) -> None:
        if (
            isinstance(memory_size, bool)
            or not isinstance(memory_size, int)
            or not 4096 <= memory_size <= 1 << 30
        ):
            raise ValueError(f"memory_size must be an int from 4096 to 1 GiB, not {memory_size!r}")
        if not isinstance(cost, CostModel):
            raise TypeError(f"cost must be a CostModel, not {type(cost).__name__}")
        base = _as_index(base, "base")
        if host_memory is None:
            if base:
                raise ValueError("base is the window's place in host_memory: give host_memory")
            host_memory = np.zeros(memory_size + S.SCRATCH_SIZE, dtype=np.uint8)
        else:
            _check_host_memory(host_memory)
            if base + memory_size > host_memory.size - S.SCRATCH_SIZE:
                raise ValueError("the machine's window does not fit in the host's memory")
        self.state = S.new_state()
        cost.apply(self.state)
        self.cost = cost
        self.memory = host_memory  # what the core runs on
        self.window = host_memory[base : base + memory_size]  # this machine's RAM (a view)
        self.state[S.MEM_BASE] = base
        self.state[S.MEM_SIZE] = memory_size
        self.state[S.ESP] = memory_size  # the stack grows down from the top of memory
        self.regs = Registers(self.state)
        self.cpu = StateView.from_buffer(self.state)  # every slot by name: m.cpu.cr3
        self.program = None  # the last Program loaded by load_asm, for listings

    # ---- memory ---------------------------------------------------------------------------
    @property
    def memory_size(self) -> int:
        """Bytes of guest memory."""
        return int(self.state[S.MEM_SIZE])

    def _check_range(self, address: object, length: object) -> tuple[int, int]:
        """(address, length) as ints when they name bytes of this machine's RAM."""
        if isinstance(address, bool) or not isinstance(address, int | np.integer) or address < 0:
            raise ValueError(f"address must be a non-negative integer, not {address!r}")
        if isinstance(length, bool) or not isinstance(length, int | np.integer) or length < 0:
            raise ValueError(f"length must be a non-negative integer, not {length!r}")
        address, length = int(address), int(length)
        if address + length > self.memory_size:
            size = self.memory_size
            raise ValueError(f"{length} bytes at {address:#x} do not fit in {size:#x} bytes of RAM")
        return address, length

    def load(self, address: int, data: bytes) -> None:
        """Copy bytes into memory at address."""
        data = bytes(data)
        address, length = self._check_range(address, len(data))
        self.window[address : address + length] = np.frombuffer(data, dtype=np.uint8)

    write = load

    def read(self, address: int, length: int) -> bytes:
        """Bytes of memory."""
        address, length = self._check_range(address, length)
        return self.window[address : address + length].tobytes()

    def read32(self, address: int) -> int:
        """A little-endian dword of memory."""
        return int.from_bytes(self.read(address, 4), "little")

    def write32(self, address: int, value: int) -> None:
        """Store a little-endian dword."""
        self.load(address, _as_u32(value, "value").to_bytes(4, "little"))

    def load_asm(self, source: str, address: int = DEFAULT_LOAD_ADDRESS, **kw):
        """Assemble NASM-syntax source at address, load it, and point EIP at it."""
        from vm.asm import assemble

        program = assemble(source, origin=address, **kw)
        self.load(address, program.code)
        self.eip = address
        self.program = program
        return program

    # ---- registers ------------------------------------------------------------------------
    @property
    def eip(self) -> int:
        return int(self.state[S.EIP])

    @eip.setter
    def eip(self, value: int) -> None:
        self.state[S.EIP] = _as_u32(value, "eip")

    @property
    def eflags(self) -> int:
        return int(self.state[S.EFLAGS])

    @eflags.setter
    def eflags(self, value: int) -> None:
        self.state[S.EFLAGS] = _as_u32(value, "eflags") | S.EFLAGS_FIXED

    @property
    def cpl(self) -> int:
        """Current privilege level (CS.RPL)."""
        return int(self.state[S.CS]) & 3

    @property
    def instructions(self) -> int:
        """Instructions retired since the machine was made."""
        return int(self.state[S.INSTRUCTIONS])

    @property
    def cycles(self) -> int:
        """Simulated cycles since the machine was made."""
        return int(self.state[S.CYCLES])

    def stats(self) -> dict[str, object]:
        """Counters since the machine was made: instructions, cycles, interrupts, faults."""
        st = self.state
        counts = {v: int(st[S.VECTOR_COUNTS + v]) for v in range(256) if st[S.VECTOR_COUNTS + v]}
        return {
            "instructions": int(st[S.INSTRUCTIONS]),
            "cycles": int(st[S.CYCLES]),
            "interrupts": int(st[S.STAT_INTERRUPTS]),
            "faults": {vector_name(v): n for v, n in counts.items() if v < 32},
            "vectors": counts,
            "page_walks": int(st[S.STAT_PAGE_WALKS]),
            "tlb_flushes": int(st[S.STAT_TLB_FLUSHES]),
            "idle_cycles": int(st[S.STAT_IDLE_CYCLES]),  # a HLT waiting for the timer
        }

    def flush_tlb(self) -> None:
        """Forget every cached translation, as a CR3 write does (counted in the stats)."""
        flush_tlb(self.state)

    def set_soft_int_exits(self, vectors) -> None:
        """Which INT n vectors exit to Python (SOFTWARE_INTERRUPT) instead of going through
        the IDT: an iterable of vectors, ``"all"``, or ``()`` for none."""
        exits = np.zeros(S.SOFT_INT_EXITS_SIZE, dtype=np.int64)
        if vectors == "all":
            exits[:] = 0xFFFFFFFF
        else:
            for vector in vectors:
                if not isinstance(vector, int | np.integer) or not 0 <= vector <= 255:
                    raise ValueError(f"a vector is from 0 to 255, not {vector!r}")
                exits[vector >> 5] |= 1 << (vector & 31)
        self.state[S.SOFT_INT_EXITS : S.SOFT_INT_EXITS + S.SOFT_INT_EXITS_SIZE] = exits
        if exits.any():
            self.state[S.EXIT_CONTROLS] |= S.EXIT_ON_SOFT_INT
        else:
            self.state[S.EXIT_CONTROLS] &= ~S.EXIT_ON_SOFT_INT

    # ---- breakpoints ----------------------------------------------------------------------
    @property
    def breakpoints(self) -> list[int]:
        """Addresses where run() stops before executing the instruction."""
        n = int(self.state[S.N_BREAKPOINTS])
        return [int(a) for a in self.state[S.BREAKPOINTS : S.BREAKPOINTS + n]]

    def add_breakpoint(self, address: int) -> None:
        """Stop (exit BREAKPOINT) before executing the instruction at address."""
        address = _as_u32(address, "breakpoint address")
        points = self.breakpoints
        if address in points:
            return
        if len(points) >= S.MAX_BREAKPOINTS:
            raise ValueError(f"at most {S.MAX_BREAKPOINTS} breakpoints")
        self.state[S.BREAKPOINTS + len(points)] = address
        self.state[S.N_BREAKPOINTS] = len(points) + 1

    def remove_breakpoint(self, address: int) -> None:
        """Forget a breakpoint (no error if there is none)."""
        address = _as_u32(address, "breakpoint address")
        points = [a for a in self.breakpoints if a != address]
        self.state[S.BREAKPOINTS : S.BREAKPOINTS + len(points)] = points
        self.state[S.N_BREAKPOINTS] = len(points)

    # ---- running --------------------------------------------------------------------------
    def run(self, budget: int = DEFAULT_BUDGET) -> Exit:
        """Run until an exit (at most ``budget`` instructions) and return it."""
        if budget.__class__ is not int or not 0 < budget <= MAX_BUDGET:
            budget = check_budget(budget)
        state = self.state
        if state[S.EXIT_REASON] == EXIT_BREAKPOINT:
            state[S.SKIP_BREAKPOINT] = 1  # resume past the breakpoint we stopped at
        return self.last_exit(core_run(state, self.memory, int(budget)))

    def step(self) -> Exit:
        """Execute one instruction."""
        return self.run(1)

    def last_exit(self, reason: int | None = None) -> Exit:
        """The Exit of the last run, read from the state slots."""
        # One read of the slots EIP .. EXIT_VALUE (they are contiguous): exits are hot.
        slots = self.state[S.EIP : S.EXIT_VALUE + 1].tolist()
        at = -S.EIP
        reason = REASONS[slots[at + S.EXIT_REASON] if reason is None else int(reason)]
        eip = slots[0]
        if reason == ExitReason.IO:
            return Exit(
                reason,
                eip,
                port=slots[at + S.EXIT_PORT],
                size=slots[at + S.EXIT_SIZE],
                is_in=slots[at + S.EXIT_IS_IN] == 1,
                value=slots[at + S.EXIT_VALUE],
                length=int(self.state[S.EXIT_INSTRUCTION_LENGTH]),
            )
        length = int(self.state[S.EXIT_INSTRUCTION_LENGTH])
        if reason == ExitReason.FAULT:
            return Exit(
                reason, eip, slots[at + S.EXIT_VECTOR], slots[at + S.EXIT_ERROR], length=length
            )
        if reason == ExitReason.SOFTWARE_INTERRUPT:
            return Exit(reason, eip, slots[at + S.EXIT_VECTOR], length=length)
        if reason == ExitReason.INTERRUPT:
            return Exit(reason, eip, slots[at + S.EXIT_VECTOR])
        if reason == ExitReason.HYPERCALL:  # EIP at the VMCALL: the VMM moves it past
            return Exit(reason, eip, length=length)
        if reason == ExitReason.CR_ACCESS:
            return Exit(
                reason,
                eip,
                is_in=slots[at + S.EXIT_CR_WRITE] == 0,
                value=slots[at + S.EXIT_VALUE],
                control_register=slots[at + S.EXIT_CR],
                register=slots[at + S.EXIT_CR_REGISTER],
                length=length,
            )
        if reason in (ExitReason.HALT, ExitReason.CPUID, ExitReason.INVLPG):
            return Exit(reason, eip, length=length)  # (EIP is past the instruction)
        return Exit(reason, eip)

    def complete_in(self, value: int) -> None:
        """Answer an IN exit: put value into AL or EAX (by the access size)."""
        if self.state[S.EXIT_REASON] != ExitReason.IO or not self.state[S.EXIT_IS_IN]:
            raise RuntimeError("complete_in() answers an IN exit, and the last exit was not one")
        if int(self.state[S.EXIT_SIZE]) == 1:
            self.regs.al = _as_u32(value, "value") & 0xFF
        else:
            self.regs.eax = value

    # ---- snapshots ------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """A copy of the whole machine; restore() returns to it exactly."""
        return Snapshot(self.state.copy(), self.window.copy())

    def restore(self, snapshot: Snapshot) -> None:
        """Put the machine back as it was when the snapshot was taken.

        A snapshot of another machine of the same memory size may be restored (a clone):
        its state and RAM are copied into this machine's, which keeps its own place in
        the host's memory (the guest-physical window is never taken from a snapshot).
        """
        if not isinstance(snapshot, Snapshot):
            raise TypeError(f"restore() takes a Snapshot, not {type(snapshot).__name__}")
        state, memory = snapshot.state, snapshot.memory
        if (
            not isinstance(state, np.ndarray)
            or state.shape != self.state.shape
            or (state.dtype != np.int64)
        ):
            raise ValueError("this snapshot's state is not a state array of this CPU")
        if not isinstance(memory, np.ndarray) or memory.shape != self.window.shape:
            raise ValueError("this snapshot is of a machine with a different memory size")
        base, size = self.state[S.MEM_BASE], self.state[S.MEM_SIZE]
        self.state[:] = state
        self.state[S.MEM_BASE], self.state[S.MEM_SIZE] = base, size
        self.window[:] = memory
