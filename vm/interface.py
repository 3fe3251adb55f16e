"""One guest interface for every mode: what the views, the lessons and the grader use.

>>> import vm
>>> guest = vm.boot("syscalls", mode="trap-emulate")
>>> result = guest.run()
>>> result.ok, result.stats["exits_by_reason"]["INT 0x80"]
(True, 2008)
>>> guest.events[-1].text  # the last exit: its OUT to the exit device
'out trapped (#GP) and emulated'

Every mode in ``vm.MODES`` is booted the same way and watched the same way:
``run(budget)``, ``step()`` (exactly one guest instruction retires, or one event is
delivered to the guest, whatever exits the VMM takes inside), ``run_until(...)``,
``snapshot()``/``restore()``, ``events`` and ``on_event``, and ``view()``: a read-only
look at the guest as it believes it is and as the hardware holds it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from vm.cpu.cost import DEFAULT, CostModel, preset
from vm.guest.toyos import SYSCALL_VECTOR, WORKLOADS, install, kernel_text
from vm.hypervisor.events import Event, EventLog
from vm.hypervisor.host import Host
from vm.hypervisor.modes import KERNELS, MODES, kernel_defines
from vm.hypervisor.modes import mode as mode_spec
from vm.hypervisor.vmm import DEFAULT_BUDGET, VM, Until, VMResult, VMSnapshot
from vm.isa import REG32_NAMES
from vm.machine import Machine, check_budget

GUEST_RAM = 4 << 20  # each guest's RAM (the VMM's area, if any, comes after it)
P, RW, US = 1, 2, 4

__all__ = ["GUEST_RAM", "MODES", "WORKLOADS", "Guest", "GuestView", "boot"]


def boot(
    workload: str = "all",
    mode: str = "native",
    *,
    cost: CostModel | str = DEFAULT,
    host: Host | None = None,
    name: str = "vm",
    kernel: str | None = None,
    **options: object,
) -> Guest:
    """toyos with ``workload``, loaded and ready to run in ``mode`` (on ``host`` if given),
    with a cost model (a CostModel, or a preset's name: "pentium4", "core2", ...).

    ``kernel`` picks the toyos build ("native", "paravirt", or "pvops": one binary that
    finds out at boot where it runs); each mode has its own by default (try the
    paravirtual kernel on bare metal, and the pv_ops one in both). Options a mode takes:
    ``patch=False`` (trap-emulate: leave POPF, PUSHF and IRET alone, and see x86's hole);
    ``batch=False`` (paravirt: one hypercall per page-table update and context switch, not
    one multicall for several); ``paging="nested"`` or ``"shadow"`` (hw-assist: EPT, or
    first-generation VT-x's shadow paging; default: what the preset's processor has);
    ``console="assigned"`` (hw-assist: the console's port I/O does not exit);
    ``containers=[...]`` (containers: one container each, a workload's name, a dict or a
    vm.containers.ContainerSpec with its weight, memory limit and host name; default: one
    container running ``workload``). The containers share one kernel, so another
    ``kernel`` is refused.
    """
    if isinstance(cost, str):
        cost = preset(cost)
    spec = mode_spec(mode)
    unknown = set(options) - spec.options
    if unknown:
        takes = ", ".join(sorted(spec.options)) or "none"
        raise ValueError(
            f"mode {mode!r} takes no option {sorted(unknown)[0]!r} (it takes: {takes})"
        )
    if workload not in WORKLOADS:
        raise ValueError(f"no workload {workload!r}; choose one of {', '.join(WORKLOADS)}")
    if not isinstance(cost, CostModel):
        raise ValueError(f"cost must be a CostModel (vm.cpu.cost.PRESETS), not {cost!r}")
    build = kernel or spec.kernel
    kernel_defines(build)  # (a clear error for a kernel there is not)
    if spec.tenants is not None:  # (several tenants on the mode's one kernel)
        if build != spec.kernel:
            raise ValueError(
                f"kernel {build!r} refused: {mode} share the host's one kernel (toyos built "
                f"with {', '.join(KERNELS[spec.kernel]) or 'no define'}), so none of them can "
                f"boot a kernel of its own; a VM can (mode='native' or 'paravirt', "
                f"kernel={build!r})"
            )
        options.setdefault(spec.tenants, (workload,))
    elif build == "containers":
        raise ValueError(
            "kernel 'containers' runs only in mode='containers': it takes its containers "
            "from the host's runtime, which only that mode has"
        )
    size = GUEST_RAM + spec.vmm_area
    machine = host.new_machine(size, cost) if host is not None else Machine(size, cost)
    defines = kernel_defines(build, bool(options.get("batch", True)))
    kernel_program, user = install(machine, workload, GUEST_RAM, defines=defines)
    vm = spec.make(machine, GUEST_RAM, cost, name, kernel_text(kernel_program), **options)
    workload = getattr(vm, "tenants_workload", workload)  # (what its tenants run, if any)
    guest = Guest(vm, workload, kernel_program.symbols, user.symbols, build)
    if host is not None:
        host.guests.append(guest)
    return guest


class CPUState(NamedTuple):
    """The system registers, as the guest believes them or as the hardware holds them."""

    cpl: int
    interrupts: bool  # EFLAGS.IF
    eflags: int
    cr0: int
    cr2: int
    cr3: int
    cr4: int
    cs: int
    ss: int
    ds: int
    es: int
    fs: int
    gs: int
    gdtr: tuple[int, int]  # (base, limit)
    idtr: tuple[int, int]
    tr: int


class WalkStep(NamedTuple):
    """One step of an address translation: which table entry, where, and what it holds."""

    table: str  # "guest directory", "guest table", "shadow directory", "shadow table"
    address: int  # where the entry is (guest-physical; the VMM's tables are in its area)
    value: int  # the entry (-1: outside memory)
    index: int  # which entry of the table


class Translation(NamedTuple):
    """Every step from a guest linear address to the host's memory, read without a side
    effect (no accessed or dirty bit set, no TLB filled)."""

    linear: int
    steps: tuple[WalkStep, ...]
    physical: int  # the guest-physical address the guest's tables give (-1: not mapped)
    host: int  # the index into the host's memory the hardware would use (-1: none)
    why: str  # why the translation stops, when it does ("" when it completes)


class Process(NamedTuple):
    """A toyos process, as its kernel's process table holds it."""

    namespace: int  # its container's id (0: the machine's one namespace, no containers)
    pid: int  # its pid as its own namespace sees it
    host_pid: int  # the kernel's own number for it
    parent: int  # its parent's pid in its namespace (0: none)
    state: str  # "ready", "sleeping", "waiting" or "zombie"
    current: bool  # the one on the CPU (or last on it)


class Namespace(NamedTuple):
    """A container (or, with no containers, the whole machine) and its processes."""

    id: int  # the container's id (0: the machine's one namespace)
    hostname: str
    state: str  # "created", "running", "stopped" ("running": a machine's own namespace)
    weight: int
    memory_limit: int  # pages (0: none)
    pages: int  # frames its processes hold (containers only: the kernel counts them)
    ticks: int  # timer ticks its processes ran (containers only)
    processes: tuple[Process, ...]


PROCESS_STATES = {1: "ready", 2: "sleeping", 3: "waiting", 4: "zombie"}
CONTAINER_STATES = {1: "created", 2: "running", 3: "stopped"}


class Line(NamedTuple):
    """One disassembled instruction."""

    address: int
    code: bytes
    text: str
    current: bool  # at EIP


def _walk(read: Callable[[int], int], cr3: int, linear: int, names: tuple[str, str]):
    """Walk a two-level table for linear: (steps, frame or -1, why)."""
    directory = (cr3 & ~0xFFF) + 4 * (linear >> 22)
    pde = read(directory)
    steps = [WalkStep(names[0], directory, pde, linear >> 22)]
    if pde < 0 or not pde & P:
        return steps, -1, f"{names[0]} entry {linear >> 22} is not present"
    table = (pde & ~0xFFF) + 4 * ((linear >> 12) & 0x3FF)
    pte = read(table)
    steps.append(WalkStep(names[1], table, pte, (linear >> 12) & 0x3FF))
    if pte < 0 or not pte & P:
        return steps, -1, f"{names[1]} entry {(linear >> 12) & 0x3FF} is not present"
    return steps, pte & ~0xFFF, ""


class GuestView:
    """A read-only look at a guest at one moment: the registers, the guest's beliefs beside
    the hardware's, address translation, memory and disassembly. Nothing it does changes
    the guest (no accessed bits, no TLB fill, no cache)."""

    def __init__(self, vm: VM, status: str) -> None:
        self._vm = vm
        cpu = vm.cpu
        self.mode = vm.mode
        self.status = status
        self.registers = {name: getattr(cpu, name) for name in REG32_NAMES}
        self.registers["eip"] = cpu.eip
        self.instructions = cpu.instructions
        self.cycles = cpu.cycles
        self.hardware = CPUState(
            cpu.cs & 3,
            bool(cpu.eflags & 0x200),
            cpu.eflags,
            cpu.cr0,
            cpu.cr2,
            cpu.cr3,
            cpu.cr4,
            cpu.cs,
            cpu.ss,
            cpu.ds,
            cpu.es,
            cpu.fs,
            cpu.gs,
            (cpu.gdtr_base, cpu.gdtr_limit),
            (cpu.idtr_base, cpu.idtr_limit),
            cpu.tr,
        )
        self.guest = CPUState(**vm.believed_state(self.hardware._asdict()))
        self.registers["eflags"] = self.guest.eflags
        # the control structure (vm.cpu.vmcs.VMCS) in VMX non-root mode, else None
        self.vmcs = vm.control_structure()

    @property
    def eip(self) -> int:
        return self.registers["eip"]

    def _window_dword(self, address: int) -> int:
        window = self._vm.machine.window
        if not 0 <= address <= window.size - 4:
            return -1
        return int.from_bytes(window[address : address + 4].tobytes(), "little")

    def translate(self, linear: int) -> Translation:
        """Every step from linear to the host's memory: the guest's tables (when its
        paging is on), then the tables the hardware walks (a VMM's shadow tables)."""
        linear &= 0xFFFFFFFF
        vm, guest, hw = self._vm, self.guest, self.hardware
        ram = vm.guest_ram
        read = self._window_dword
        steps: list[WalkStep] = []
        if guest.cr0 & 0x80000000:
            walked, frame, why = _walk(
                lambda a: read(a) if a <= ram - 4 else -1,
                guest.cr3,
                linear,
                ("guest directory", "guest table"),
            )
            steps += walked
            physical = frame | (linear & 0xFFF) if frame >= 0 else -1
            if frame >= ram:
                physical, why = -1, f"the guest maps {frame:#x}, outside its RAM"
        else:
            physical, why = (linear if linear < ram else -1), ""
        if physical < 0:
            return Translation(linear, tuple(steps), -1, -1, why or "outside the guest's RAM")
        host_frame = physical & ~0xFFF
        nested = self.vmcs.nested_root if self.vmcs is not None and self.vmcs.nested_paging else -1
        if nested >= 0:  # nested paging: guest-physical -> host-physical, the VMM's tables
            directory = nested + 4 * (physical >> 22)
            pde = read(directory)
            steps.append(WalkStep("nested directory", directory, pde, physical >> 22))
            if pde < 0 or not pde & P:
                why = f"nested directory entry {physical >> 22} is not present"
                return Translation(linear, tuple(steps), physical, -1, why)
            if pde & 0x80:  # a 4 MiB nested page
                host_frame = (pde & 0xFFC00000) + (physical & 0x3FF000)
            else:
                walked, host_frame, why = _walk(
                    read, nested, physical, ("nested directory", "nested table")
                )
                steps += walked[1:]
                if host_frame < 0:
                    return Translation(linear, tuple(steps), physical, -1, why)
        elif vm.hardware_walks_other_tables() and hw.cr0 & 0x80000000:
            walked, host_frame, why = _walk(
                read, hw.cr3, linear, ("shadow directory", "shadow table")
            )
            steps += walked
            if host_frame < 0:
                return Translation(linear, tuple(steps), physical, -1, why + " (not filled yet)")
        host = vm.machine.cpu.mem_base + host_frame + (linear & 0xFFF)
        return Translation(linear, tuple(steps), physical, host, "")

    def read(self, linear: int, length: int) -> bytes:
        """Bytes of memory as the guest sees it at linear (fewer where it maps no more)."""
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise ValueError(f"length must be a non-negative integer, not {length!r}")
        window = self._vm.machine.window
        out = b""
        while len(out) < length:
            physical = self.translate(linear + len(out)).physical
            if physical < 0:
                break
            n = min(length - len(out), 4096 - (physical & 0xFFF))
            out += window[physical : physical + n].tobytes()
        return out

    def disassemble(self, before: int = 4, after: int = 8) -> list[Line]:
        """The instructions around EIP (capstone's text), EIP's marked ``current``."""
        from vm.asm.disasm import disassemble

        eip = self.eip
        for back in range(min(before * 15, eip), -1, -1):  # a start that decodes into EIP
            start = eip - back
            code = self.read(start, back + 15 * (after + 1))
            lines = disassemble(code, start)
            addresses = [address for address, _, _ in lines]
            if back == 0 or eip in addresses:
                break
        out, at_eip = [], None
        for address, size, text in lines:
            if address == eip:
                at_eip = len(out)
            out.append(Line(address, code[address - start : address - start + size], text, False))
        if at_eip is None:
            return [Line(eip, self.read(eip, 1), "(bad)", True)]
        out[at_eip] = out[at_eip]._replace(current=True)
        return out[max(0, at_eip - before) : at_eip + after + 1]


@dataclass
class Guest:
    """A guest in a mode: run it, step it, watch it, go back."""

    vm: VM
    workload: str
    kernel_symbols: dict[str, int]
    user_symbols: dict[str, int]
    kernel: str = "native"  # the toyos build (vm.hypervisor.modes.KERNELS)

    def __post_init__(self) -> None:
        self._status = "ready"
        self._runtime = None

    # ---- what it is ------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self.vm.mode

    @property
    def name(self) -> str:
        return self.vm.name

    @property
    def cost(self) -> CostModel:
        return self.vm.cost

    @property
    def console(self) -> str:
        return self.vm.board.console.text

    @property
    def consoles(self) -> dict[int, str]:
        """Each namespace's console by id: containers each have a stream of their own (0 is
        the kernel's); with no containers, 0 is the whole console."""
        board = self.vm.board
        streams = getattr(board, "streams", None)
        if streams is None:
            return {0: board.console.text}
        ids = {0, *streams, *(n.id for n in self.namespaces())}
        return {i: board.stream_text(i) for i in sorted(ids)}

    @property
    def containers(self):
        """The container runtime (vm.containers.ContainerRuntime) of a guest booted with
        mode="containers": create, start, stop, list, exec, stats."""
        if self._runtime is None:
            from vm.containers import ContainerRuntime

            self._runtime = ContainerRuntime(self)
        return self._runtime

    @property
    def status(self) -> str:
        """ "ready" before the first run, then the status the last run ended with."""
        return self._status

    @property
    def stats(self) -> dict[str, object]:
        return self._stats(self.vm.stats())

    @property
    def instructions(self) -> int:
        return self.vm.cpu.instructions

    @property
    def cycles(self) -> int:
        """Simulated cycles so far, the guest's and its VMM's together."""
        return self.vm.cpu.cycles

    @property
    def position(self) -> tuple[int, int, int]:
        """Where the guest is on its run: (cycles, instructions, events recorded). No part
        ever goes down as it runs, so two positions of one run compare (step back uses it)."""
        return (self.vm.cpu.cycles, self.vm.cpu.instructions, self.vm.events.total)

    @property
    def window(self) -> tuple[int, int, int]:
        """Where the guest lives in its host's memory: (base, size, guest RAM) in bytes;
        the window holds the guest's RAM and then its VMM's area (vm.hypervisor.vmm_area)."""
        machine = self.vm.machine
        return (machine.cpu.mem_base, machine.memory_size, self.vm.guest_ram)

    @property
    def exits_taken(self) -> int:
        """Times the core returned to the monitor for something (what budgets count)."""
        return self.vm.acct.core_exits

    @property
    def events(self) -> EventLog:
        """The last events (vm.hypervisor.events.Event records), oldest first."""
        return self.vm.events

    def on_event(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call callback(event) for every event from now on, in order; returns a function
        that stops it."""
        return self.vm.events.subscribe(callback)

    @property
    def rings(self) -> tuple[tuple[int, str], ...]:
        """Who runs at which hardware ring in this mode: ((0, "VMM"), (1, "guest kernel"),
        (3, "guest user")) under trap-and-emulate."""
        return self.vm.ring_roles

    def control_structure(self) -> object | None:
        """The hardware's control structure (a VMCS, vm.cpu.vmcs) when the guest runs in
        VMX non-root mode (hw-assist); None in every other mode."""
        return self.vm.control_structure()

    def exit_table(self) -> str:
        """The mode's exit table: which exit goes to which handler, and why."""
        return self.vm.describe_exit_table()

    # ---- running ---------------------------------------------------------------------------------
    def run(self, budget: int = DEFAULT_BUDGET) -> VMResult:
        """Run until the guest stops or ``budget`` instructions and exits are spent."""
        return self._finish(self.vm.run(budget))

    def step(self) -> VMResult:
        """Exactly one guest instruction retires or one event is delivered to the guest."""
        return self._finish(self.vm.run(DEFAULT_BUDGET, Until(step=True)))

    def run_until(
        self,
        *kinds: str,
        address: int | None = None,
        console: str | None = None,
        seq: int | None = None,
        budget: int = DEFAULT_BUDGET,
    ) -> VMResult:
        """Run until an event of one of ``kinds`` ("#GP", "INT 0x80", "IRQ 0", "inject",
        or an action such as "emulate"), EIP reaches ``address``, the console shows
        ``console``, event number ``seq`` is recorded, or the budget is spent. Status
        "stopped" says a condition was met."""
        for kind in kinds:
            if not isinstance(kind, str):
                raise ValueError(f"event kinds are strings such as '#GP', not {kind!r}")
        if address is not None:
            if isinstance(address, bool) or not isinstance(address, int):
                raise ValueError(f"address must be an integer, not {address!r}")
            if not 0 <= address <= 0xFFFFFFFF:
                raise ValueError(f"address {address:#x} is not a 32-bit address")
        if console is not None and not isinstance(console, str):
            raise ValueError(f"console must be a string, not {console!r}")
        until = Until(kinds=frozenset(kinds), address=address, console=console, seq=seq)
        return self._finish(self.vm.run(check_budget(budget), until))

    def _finish(self, result: VMResult) -> VMResult:
        self._status = result.status
        result.stats = self._stats(result.stats)
        return result

    def _stats(self, stats: dict[str, object]) -> dict[str, object]:
        vectors = self.vm.machine.stats()["vectors"]
        stats["syscalls"] = vectors.get(SYSCALL_VECTOR, 0)  # toyos's INT 0x80
        if self.kernel == "pvops":
            stats["pv_ops"] = self.pvops_path()
        return stats

    def pvops_path(self) -> str:
        """Which way the pv_ops kernel went at boot, read from its own variables:
        "paravirtual (N call sites patched)", "native (...)", or "not decided yet"."""
        symbols, ram = self.kernel_symbols, self.vm.machine.window
        if "pvops_patched" not in symbols:
            raise ValueError(f"the {self.kernel!r} kernel is not the pv_ops build")
        path = ram[symbols["pvops_path"]]
        if path == 0:
            return "not decided yet"
        at = symbols["pvops_patched"]
        patched = int.from_bytes(ram[at : at + 4].tobytes(), "little")
        if path == 2:
            return f"paravirtual ({patched} call sites patched to their paravirtual ops)"
        return "native (CPUID found no paravirtual VMM: every call site left native)"

    # ---- processes, read from the kernel's tables ---------------------------------------------
    def _kernel_dword(self, address: int) -> int:
        window = self.vm.machine.window
        if not 0 <= address <= min(self.vm.guest_ram, len(window)) - 4:
            return 0
        return int.from_bytes(window[address : address + 4].tobytes(), "little")

    def processes(self) -> tuple[Process, ...]:
        """Every live process in the kernel's process table (read only: a view, like a
        debugger's; the runtime asks the kernel instead)."""
        symbols, read = self.kernel_symbols, self._kernel_dword
        base, size = symbols["procs"], symbols["P_SIZE"]
        contained = "P_CONTAINER" in symbols
        current = read(symbols["current"])
        slots = range(base + size, base + size * symbols["MAX_PROCS"], size)  # (not idle)
        out = []
        for slot in slots:
            state = read(slot + symbols["P_STATE"])
            if state not in PROCESS_STATES:
                continue
            pid = read(slot + symbols["P_PID"])
            parent = read(slot + symbols["P_PARENT"])
            namespace, local, parent_pid = 0, pid, read(parent + symbols["P_PID"]) if parent else 0
            if contained:
                container = read(slot + symbols["P_CONTAINER"])
                namespace = read(container + symbols["C_ID"]) if container else 0
                local = read(slot + symbols["P_VPID"])
                parent_pid = read(parent + symbols["P_VPID"]) if parent else 0
            out.append(
                Process(namespace, local, pid, parent_pid, PROCESS_STATES[state], slot == current)
            )
        return tuple(out)

    def namespaces(self) -> tuple[Namespace, ...]:
        """The process tree per namespace: each container (or the one machine) with its
        processes, read from the kernel's tables without changing them."""
        processes = self.processes()
        symbols, read = self.kernel_symbols, self._kernel_dword
        if "containers" not in symbols:
            return (Namespace(0, "toyos", "running", 1, 0, 0, 0, processes),)
        out = []
        base, size = symbols["containers"], symbols["C_SIZE"]
        for index in range(symbols["MAX_CONTAINERS"]):
            entry = base + index * size
            state = read(entry + symbols["C_STATE"])
            if state not in CONTAINER_STATES:
                continue
            cid = index + 1
            length = min(read(entry + symbols["C_HOSTLEN"]), 32)
            at = entry + symbols["C_HOSTNAME"]
            name = self.vm.machine.window[at : at + length].tobytes()
            pages = read(entry + symbols["C_MEM_USED"])
            out.append(
                Namespace(
                    cid,
                    name.decode("ascii", errors="replace"),
                    CONTAINER_STATES[state],
                    read(entry + symbols["C_WEIGHT"]),
                    read(entry + symbols["C_MEM_LIMIT"]),
                    pages - (1 << 32) if pages & 0x80000000 else pages,
                    read(entry + symbols["C_TICKS"]),
                    tuple(p for p in processes if p.namespace == cid),
                )
            )
        return tuple(out)

    # ---- breakpoints, snapshots, views -----------------------------------------------------------
    @property
    def breakpoints(self) -> list[int]:
        """Addresses where a run stops (status "breakpoint") before executing them."""
        return [a for a in self.vm.machine.breakpoints if a not in self.vm.watched_addresses()]

    def add_breakpoint(self, address: int) -> None:
        self.vm.machine.add_breakpoint(address)

    def remove_breakpoint(self, address: int) -> None:
        if address not in self.vm.watched_addresses():
            self.vm.machine.remove_breakpoint(address)

    def snapshot(self) -> VMSnapshot:
        """A copy of the whole guest (machine and monitor); restore() returns to it exactly."""
        return self.vm.snapshot()

    def restore(self, snapshot: VMSnapshot) -> None:
        """Return to ``snapshot`` exactly; the breakpoints set now stay set (they are the
        debugger's, not the guest's)."""
        mine = self.breakpoints
        self.vm.restore(snapshot)
        for address in self.breakpoints:
            self.remove_breakpoint(address)
        for address in mine:
            self.add_breakpoint(address)
        self._status = self.vm.stopped.status if self.vm.stopped else "ready"

    def view(self) -> GuestView:
        """A read-only view of the guest now (see GuestView)."""
        return GuestView(self.vm, self._status)

    def __repr__(self) -> str:
        return f"Guest({self.workload!r}, mode={self.mode!r}, status={self._status!r})"
