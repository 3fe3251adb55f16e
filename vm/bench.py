"""`python -m vm bench`: how fast the core runs, beside Unicorn on the same bytes.

Figures (medians of several runs): guest MIPS on a compute and a memory-heavy program,
Unicorn's MIPS on the same bytes (its instruction count taken from our run of the same
program), the same compute program with NUMBA_DISABLE_JIT=1, the exit round trip, cold
compile and warm start times, and toyos's boot length and compute speed. Wall-clock
figures are benchmarks, never asserted in tests.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from vm.asm import assemble
from vm.cpu.core import run as core_run
from vm.cpu.exits import ExitReason
from vm.machine import Machine

BASE = 0x1000

COMPUTE = """
bits 32
org 0x1000
    mov ecx, {n}
    mov ebx, 1
again:
    add eax, ebx
    xor ebx, eax
    shl eax, 1
    imul edx, eax, 3
    cmp edx, ebx
    jb skip
    inc esi
skip:
    dec ecx
    jnz again
    hlt
"""

MEMORY = """
bits 32
org 0x1000
    mov esp, 0x80000
    mov ebp, {n}
round:
    mov esi, 0x20000
    mov edi, 0x30000
    mov edx, 16
copy:
    mov eax, [esi]
    add [edi], eax
    mov ebx, [esi+4]
    add ebx, [edi+edx*4]
    mov [edi+4], ebx
    push eax
    call touch
    pop eax
    add esi, 8
    add edi, 8
    dec edx
    jnz copy
    mov esi, 0x20000
    mov edi, 0x40000
    mov ecx, 16
    rep movsd
    dec ebp
    jnz round
    hlt
touch:
    xor dword [esp+4], 1
    ret
"""

EXIT_LOOP = """
bits 32
org 0x1000
again:
    out 0xe9, al
    jmp again
"""

STORM = """
bits 32
org 0x1000
    mov al, 0xfe
    out 0x21, al
    mov al, 0x34
    out 0x43, al
    mov al, 1               ; a tick every PIT count: faster than the VMM serves a tick
    out 0x40, al
    mov al, 0
    out 0x40, al
spin:
    jmp spin
"""

WARM = (
    "from vm.machine import Machine\n"
    "m = Machine(); m.load(0x1000, bytes.fromhex('b9e8030000e2fef4')); m.eip = 0x1000\n"
    "m.run(10_000)\n"
)

TARGETS = {
    "compute_vs_unicorn": (">=", 0.6),
    "memory_vs_unicorn": (">=", 0.6),
    "jit_vs_nojit": (">=", 300),
    "exit_roundtrip_us": ("<=", 0.7),
    "warm_start_s": ("<=", 1.0),
    "cold_compile_s": ("<=", 20.0),
    "boot_instructions": ("<", 200_000),
    "toyos_vs_bare_compute": (">=", 0.8),
    "trap_handler_us": ("<=", 5.0),
    "storm_us_per_unit": ("<=", 10.0),
    "compute_te_vs_native": ("<=", 1.05),
    "compute_bt_vs_native": ("<=", 1.05),
    "containers_exits": ("<=", 0),
    "containers_off_native": ("<=", 0.02),
    "containers_memory_vs_vms": ("<", 0.2),
}
DENSITY = ("syscalls", "spawn", "pagetable", "io")  # the 8 tenants' workloads, in turn
VIRTUALIZED = ("syscalls", "spawn", "pagetable", "compute")  # the targets' workloads


def _machine(code: bytes) -> Machine:
    m = Machine()
    m.load(BASE, code)
    m.eip = BASE
    return m


def core_mips(code: bytes, repeats: int) -> tuple[float, int]:
    """Median MIPS of runs of code to HLT, and its instruction count."""
    _machine(code).run(budget=1000)  # compile or load the core first
    rates = []
    count = 0
    for _ in range(repeats):
        m = _machine(code)
        start = time.perf_counter()
        ex = m.run(budget=10**10)
        elapsed = time.perf_counter() - start
        if ex.reason != ExitReason.HALT:
            raise RuntimeError(f"the benchmark program stopped with {ex}")
        count = m.instructions
        rates.append(count / elapsed / 1e6)
    return statistics.median(rates), count


def unicorn_mips(code: bytes, count: int, repeats: int) -> float:
    """Median MIPS of Unicorn on the same bytes (count: the program's instructions)."""
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
    from unicorn import x86_const as X

    rates = []
    for _ in range(repeats):
        uc = Uc(UC_ARCH_X86, UC_MODE_32)
        uc.mem_map(0, 1 << 20)
        uc.mem_write(BASE, code)
        uc.reg_write(X.UC_X86_REG_ESP, 0x80000)
        start = time.perf_counter()
        uc.emu_start(BASE, BASE + len(code) - 1 - _tail(code))
        rates.append(count / (time.perf_counter() - start) / 1e6)
    return statistics.median(rates)


def _tail(code: bytes) -> int:
    """Bytes after the program's HLT (the memory program's subroutine follows it)."""
    return len(code) - 1 - code.rindex(b"\xf4") if b"\xf4" in code else 0


def nojit_mips(n: int) -> float:
    """MIPS of the compute program with NUMBA_DISABLE_JIT=1 (in a subprocess)."""
    script = (
        "import time\nfrom vm.bench import COMPUTE, _machine\nfrom vm.asm import assemble\n"
        f"m = _machine(assemble(COMPUTE.format(n={n})).code)\n"
        "t = time.perf_counter(); m.run(10**9); t = time.perf_counter() - t\n"
        "print(m.instructions / t / 1e6)\n"
    )
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    if out.returncode:
        raise RuntimeError(out.stderr.strip().splitlines()[-1])
    return float(out.stdout.strip())


def exit_roundtrip_us(rounds: int, through_machine: bool = False) -> float:
    """Median microseconds for the core's run() to return an IO exit and be called again.

    That is the boundary a VMM loops on (vm.cpu.core.run); ``through_machine`` measures
    Machine.run instead, which also builds an Exit for Python code to read.
    """
    m = _machine(assemble(EXIT_LOOP).code)
    m.run(budget=10)
    state, memory = m.state, m.memory
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        if through_machine:
            for _ in range(rounds):
                m.run(1000)
        else:
            for _ in range(rounds):
                core_run(state, memory, 1000)
        samples.append((time.perf_counter() - start) / rounds * 1e6)
    return statistics.median(samples)


def process_seconds(env: dict[str, str], repeats: int) -> float:
    """Median wall time of a new Python process that builds a Machine and runs it."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", WARM], env=env, check=True, timeout=600)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def toyos_figures(repeats: int) -> tuple[int, float]:
    """Instructions until toyos's first user process runs; its compute workload's MIPS."""
    import vm

    guest = vm.boot("compute")
    result = guest.run_until(address=guest.user_symbols["init"])
    boot = guest.instructions if result.status == "stopped" else -1
    rates = []
    for _ in range(repeats):
        guest = vm.boot("compute")
        start = time.perf_counter()
        result = guest.run()
        rates.append(result.stats["instructions"] / (time.perf_counter() - start) / 1e6)
    return boot, statistics.median(rates)


def trap_exit_us(repeats: int) -> tuple[float, float, float]:
    """Wall time of a trap-and-emulate exit on toyos's syscalls workload (4,244 exits in
    80,000 instructions), medians over ``repeats`` runs: the exit's handler (the exit
    table's method: decode, emulate or reflect), the whole of handling it (from the core's
    return to the next entry: the table, the handler, the books, the event, VM entry),
    and from one return of the core to the next (that, plus the core and the guest's few
    instructions until the next exit). It times the handlers with the VM's
    ``handler_times`` and the core through its ``enter`` hook."""
    import vm

    vm.boot("syscalls", "trap-emulate").run()  # (warm: the decoder cache, the code paths)
    clock = time.perf_counter_ns
    handlers, handled, trips = [], [], []
    for _ in range(repeats):
        guest = vm.boot("syscalls", "trap-emulate")
        monitor = guest.vm
        core = monitor.enter
        marks: list[tuple[int, int]] = []  # (entered, returned)

        def timed(state, memory, budget, core=core, marks=marks):
            entered = clock()
            reason = core(state, memory, budget)
            marks.append((entered, clock()))
            return reason

        monitor.enter = timed
        monitor.handler_times = []
        guest.run()
        pairs = list(itertools.pairwise(marks))
        handlers.append(statistics.median(monitor.handler_times) / 1000)
        handled.append(statistics.median(b[0] - a[1] for a, b in pairs) / 1000)
        trips.append(statistics.median(b[1] - a[1] for a, b in pairs) / 1000)
    return statistics.median(handlers), statistics.median(handled), statistics.median(trips)


def storm_us_per_unit(budget: int) -> float:
    """Wall microseconds per unit of budget (an instruction or an exit) for a guest whose
    timer ticks faster than the VMM can serve it: every unit is an exit."""
    from vm.hypervisor.host import Host
    from vm.hypervisor.trap_emulate import TrapEmulateVM
    from vm.hypervisor.vmm_area import VMM_AREA
    from vm.interface import GUEST_RAM

    machine = Host(GUEST_RAM + VMM_AREA).new_machine(GUEST_RAM + VMM_AREA)
    program = assemble(STORM)
    machine.load(program.origin, program.code)
    machine.eip = program.origin
    monitor = TrapEmulateVM(machine, GUEST_RAM)
    monitor.run(1000)  # (warm)
    start = time.perf_counter()
    monitor.run(budget)
    return (time.perf_counter() - start) / budget * 1e6


def mode_table(workloads: tuple[str, ...] = VIRTUALIZED) -> dict[str, dict[str, int]]:
    """Simulated cycles of each workload in each mode (deterministic: the same every run)."""
    import vm
    from vm.hypervisor.modes import MODES

    table = {}
    for workload in workloads:
        table[workload] = {mode: vm.boot(workload, mode).run().stats["cycles"] for mode in MODES}
    return table


def density(tenants: int = 8) -> dict[str, object]:
    """Host memory of ``tenants`` containers on one kernel beside as many toyos VMs in each
    VM mode (vm.consolidate): bytes reserved, and 4 KiB frames holding anything."""
    from vm.consolidate import consolidate
    from vm.hypervisor.modes import MODE_TABLE

    containers = consolidate(tenants, "containers", DENSITY)
    out: dict[str, object] = {
        "containers_bytes": containers.reserved,
        "containers_frames": round(containers.frames_per_tenant * tenants),
        "vms": {},
    }
    for name, spec in MODE_TABLE.items():
        if spec.tenants is None:
            vms = consolidate(tenants, name, DENSITY)
            out["vms"][name] = {
                "bytes": vms.reserved,
                "frames": round(vms.frames_per_tenant * tenants),
            }
    smallest = min(v["bytes"] for v in out["vms"].values())
    out["containers_memory_vs_vms"] = containers.reserved / smallest
    return out


def measure(quick: bool = False) -> dict[str, object]:
    """Every figure, as a dict."""
    n = 20_000 if quick else 2_000_000
    repeats = 2 if quick else 5
    compute = assemble(COMPUTE.format(n=n)).code
    memory = assemble(MEMORY.format(n=n // 20)).code
    out: dict[str, object] = {}
    out["compute_mips"], compute_count = core_mips(compute, repeats)
    out["compute_unicorn_mips"] = unicorn_mips(compute, compute_count, repeats)
    out["memory_mips"], memory_count = core_mips(memory, repeats)
    out["memory_unicorn_mips"] = unicorn_mips(memory, memory_count, repeats)
    out["nojit_mips"] = nojit_mips(2_000 if quick else 25_000)
    out["exit_roundtrip_us"] = exit_roundtrip_us(2_000 if quick else 50_000)
    out["machine_run_us"] = exit_roundtrip_us(2_000 if quick else 50_000, through_machine=True)
    with tempfile.TemporaryDirectory() as empty:
        cold_env = dict(os.environ, VMLAB_CACHE_DIR=empty)
        out["cold_compile_s"] = process_seconds(cold_env, 1)
    out["warm_start_s"] = process_seconds(dict(os.environ), 1 if quick else 5)
    out["boot_instructions"], out["toyos_compute_mips"] = toyos_figures(1 if quick else 3)
    exit_figures = trap_exit_us(1 if quick else 7)
    out["trap_handler_us"], out["trap_exit_us"], out["trap_roundtrip_us"] = exit_figures
    out["storm_us_per_unit"] = storm_us_per_unit(20_000 if quick else 500_000)
    modes = mode_table(VIRTUALIZED[-1:] if quick else VIRTUALIZED)
    out["mode_cycles"] = modes
    if "compute" in modes:
        native = modes["compute"]["native"]
        out["compute_te_vs_native"] = modes["compute"]["trap-emulate"] / native
        out["compute_bt_vs_native"] = modes["compute"]["binary-translation"] / native
    from vm.compare import measure as compare_run
    from vm.guest.toyos import WORKLOADS

    # containers: the most exits of any workload, and the farthest any is from native
    runs = [compare_run("pentium4", w, "containers") for w in (modes if quick else WORKLOADS)]
    out["containers_exits"] = max(run.exits for run in runs)
    out["containers_off_native"] = max(abs(run.vs_native - 1) for run in runs)
    out["density"] = density()
    out["containers_memory_vs_vms"] = out["density"]["containers_memory_vs_vms"]
    out["compute_vs_unicorn"] = out["compute_mips"] / out["compute_unicorn_mips"]
    out["memory_vs_unicorn"] = out["memory_mips"] / out["memory_unicorn_mips"]
    out["jit_vs_nojit"] = out["compute_mips"] / out["nojit_mips"]
    out["toyos_vs_bare_compute"] = out["toyos_compute_mips"] / out["compute_mips"]
    out["machine"] = {
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "quick": quick,
    }
    return out


def verdict(key: str, value: float) -> str:
    op, target = TARGETS[key]
    ok = {">=": value >= target, "<=": value <= target, "<": value < target}[op]
    return f"target {op} {target:g}: {'PASS' if ok else 'MISS'}"


def bench_command(as_json: bool, quick: bool) -> int:
    """Print the figures (a table, or one JSON object)."""
    figures = measure(quick)
    if as_json:
        print(json.dumps(figures))
        return 0
    rows = [
        ("compute MIPS (vmlab)", "compute_mips", None),
        ("compute MIPS (Unicorn)", "compute_unicorn_mips", None),
        ("  ratio", "compute_vs_unicorn", "compute_vs_unicorn"),
        ("memory MIPS (vmlab)", "memory_mips", None),
        ("memory MIPS (Unicorn)", "memory_unicorn_mips", None),
        ("  ratio", "memory_vs_unicorn", "memory_vs_unicorn"),
        ("NUMBA_DISABLE_JIT MIPS", "nojit_mips", None),
        ("  jit / no jit", "jit_vs_nojit", "jit_vs_nojit"),
        ("exit round trip (us)", "exit_roundtrip_us", "exit_roundtrip_us"),
        ("  through Machine.run (us)", "machine_run_us", None),
        ("cold compile (s)", "cold_compile_s", "cold_compile_s"),
        ("warm start (s)", "warm_start_s", "warm_start_s"),
        ("toyos boot (instructions)", "boot_instructions", "boot_instructions"),
        ("toyos compute MIPS", "toyos_compute_mips", None),
        ("  toyos / bare compute", "toyos_vs_bare_compute", "toyos_vs_bare_compute"),
    ]
    rows += [
        ("trap-emulate exit's handler (us)", "trap_handler_us", "trap_handler_us"),
        ("  the whole exit: return to entry (us)", "trap_exit_us", None),
        ("  return to return (us)", "trap_roundtrip_us", None),
        ("timer storm (us per unit)", "storm_us_per_unit", "storm_us_per_unit"),
        ("compute, trap-emulate/native", "compute_te_vs_native", "compute_te_vs_native"),
        ("compute, translation/native", "compute_bt_vs_native", "compute_bt_vs_native"),
        ("containers: most exits", "containers_exits", "containers_exits"),
        ("  farthest from native", "containers_off_native", "containers_off_native"),
        (
            "  8 on one kernel / 8 VMs' memory",
            "containers_memory_vs_vms",
            "containers_memory_vs_vms",
        ),
    ]
    for label, key, target in rows:
        if key not in figures:
            continue
        value = figures[key]
        text = f"{value:,.3f}" if isinstance(value, float) else f"{value:,}"
        print(f"{label:<30}{text:>14}   {verdict(target, value) if target else ''}")
    print()
    print(modes_text(figures["mode_cycles"]))
    print()
    print(density_text(figures["density"]))
    return 0


def density_text(figures: dict[str, object]) -> str:
    """8 containers beside 8 VMs of each mode: host memory reserved and frames in use."""
    mib = 1 << 20
    lines = [
        f"8 tenants ({', '.join(DENSITY)} in turn): host memory reserved, frames in use",
        f"  containers on one kernel  {figures['containers_bytes'] / mib:6.1f} MiB  "
        f"{figures['containers_frames']:5,} frames",
    ]
    for mode, vm_figures in figures["vms"].items():
        ratio = figures["containers_bytes"] / vm_figures["bytes"]
        lines.append(
            f"  8 VMs, {mode:<18}{vm_figures['bytes'] / mib:6.1f} MiB  "
            f"{vm_figures['frames']:5,} frames   (containers: {ratio:.3f} of it)"
        )
    return "\n".join(lines)


def modes_text(table: dict[str, dict[str, int]]) -> str:
    """Simulated cycles by workload and mode, with each mode's ratio to native."""
    from vm.hypervisor.modes import MODES

    lines = [f"{'simulated cycles':<16}" + "".join(f"{mode:>28}" for mode in MODES)]
    for workload, cycles in table.items():
        native = cycles["native"]
        cells = "".join(f"{cycles[mode]:>18,} ({cycles[mode] / native:6.2f}x)" for mode in MODES)
        shape = ""
        if workload != "compute":
            ordered = native < cycles["binary-translation"] < cycles["trap-emulate"]
            shape = f"   native < translation < trap-emulate: {'PASS' if ordered else 'MISS'}"
        lines.append(f"{workload:<16}{cells}{shape}")
    return "\n".join(lines)
