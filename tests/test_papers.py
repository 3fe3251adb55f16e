"""The papers, checked as tests: orderings and ratios of simulated cycles, never exact
numbers.

Each check names the paper and the figure or table whose claim it checks, and the vmlab
table it reads (``python -m vm compare ...``: cycles relative to native, per preset; or
``python -m vm consolidate``). Each covers the modes vmlab has (``vm.MODES``), so a new
mode joins the checks with no change here; a check about a mode vmlab does not have yet
is skipped, and the reason names that mode. A check runs under each cost preset whose
CPU generation the paper's claim is about.
"""

from __future__ import annotations

import pytest

import vm
from vm.compare import compare
from vm.consolidate import consolidate
from vm.cpu.cost import PRESETS

# The techniques of full virtualization: the unmodified kernel under a VMM.
SOFTWARE_FULL = ("trap-emulate", "binary-translation")  # what a 2003 VMM could do
OS_HEAVY = ("syscalls", "spawn", "pagetable", "io")  # lmbench-like: the kernel at work
# Barham et al. measured on a 2.4 GHz Xeon, a NetBurst processor (the Pentium 4's core).
NETBURST = tuple(name for name, p in PRESETS.items() if "NetBurst" in p.cpu)
# First-generation VT-x: exits in hardware, but no nested paging (no EPT).
FIRST_GENERATION = tuple(name for name, p in PRESETS.items() if not p.nested_paging)
GENERATIONS = tuple(sorted(PRESETS, key=lambda name: -PRESETS[name].vm_exit))


def need(mode: str) -> None:
    """Skip, naming the mode, when vmlab does not have it yet."""
    if mode not in vm.MODES:
        pytest.skip(f"needs the {mode!r} mode, which vmlab does not have yet (vm.MODES)")


def test_the_checks_cover_the_generations_they_say():
    assert NETBURST == ("pentium4", "prescott")
    assert set(FIRST_GENERATION) == {"pentium4", "prescott", "core2"}
    assert GENERATIONS[0] == "pentium4" and GENERATIONS[-1] == "haswell"


# ---- Barham et al., 'Xen and the Art of Virtualization', SOSP 2003 ---------------------------


@pytest.mark.parametrize("preset", NETBURST)
def test_barham_2003_figure3_compute_runs_near_native_in_every_mode(preset):
    """Barham et al. 2003, Figure 3 (relative performance; SPEC INT2000: native Linux,
    XenoLinux, VMware Workstation and UML all within a few percent). Table: `python -m vm
    compare --workload compute --preset PRESET`. Every mode within 5% of native (compute
    exits only on timer ticks; the later generations' cheaper exits only bring it closer,
    which the exit-latency check below covers)."""
    table = compare(["compute"], presets=[preset])
    for mode in vm.MODES:
        run = table.run(preset, "compute", mode)
        assert run.ok and run.vs_native <= 1.05, f"{mode}\n{table.table(preset)}"


@pytest.mark.parametrize("preset", NETBURST)
def test_barham_2003_figure3_os_heavy_work_costs_full_virtualization_far_more(preset):
    """Barham et al. 2003, Figure 3 (the OS-intensive benchmarks: OSDB, dbench, SPEC WEB99)
    and Table 3 (lmbench processes): a VMM that traps or translates the unmodified kernel
    (VMware Workstation) falls far behind paravirtualization (Xen) on work that exercises
    the kernel. Table: `python -m vm compare --workload syscalls --workload spawn
    --workload pagetable --workload io --preset PRESET`. Each full-virtualization mode at
    least 1.5 times paravirtualization's cycles on each such workload, and trap-and-emulate
    above binary translation."""
    need("paravirt")
    table = compare(OS_HEAVY, presets=[preset])
    for workload in OS_HEAVY:
        pv = table.run(preset, workload, "paravirt").cycles
        for mode in SOFTWARE_FULL:
            full = table.run(preset, workload, mode).cycles
            assert full >= 1.5 * pv, f"{mode} on {workload}\n{table.table(preset)}"
        te, bt = (table.run(preset, workload, m).cycles for m in SOFTWARE_FULL)
        assert te > bt, f"{workload}\n{table.table(preset)}"


@pytest.mark.parametrize("preset", NETBURST)
def test_barham_2003_figure3_paravirtualization_is_near_native(preset):
    """Barham et al. 2003, Figure 3 (XenoLinux within a few percent of native Linux on
    every macro-benchmark) and Table 3 (lmbench's null call: Xen about native, its system
    calls going straight to the guest kernel). Table: `python -m vm compare --workload all
    --workload syscalls --preset PRESET`. Paravirtualization within 10% of native on the
    mixed workload and within 15% on system calls; on the mix its overhead (cycles over
    native's) at most a quarter of trap-and-emulate's or binary translation's."""
    need("paravirt")
    table = compare(["all", "syscalls"], presets=[preset])
    pv = table.run(preset, "all", "paravirt").vs_native
    assert pv <= 1.10, table.table(preset)
    assert table.run(preset, "syscalls", "paravirt").vs_native <= 1.15, table.table(preset)
    for mode in SOFTWARE_FULL:
        full = table.run(preset, "all", mode).vs_native
        assert pv - 1 <= (full - 1) / 4, f"{mode}\n{table.table(preset)}"


# ---- Soltesz et al., 'Container-based Operating System Virtualization', EuroSys 2007 -------


@pytest.mark.parametrize("preset", PRESETS)
def test_soltesz_2007_containers_run_at_native_speed_and_beat_paravirtualization(preset):
    """Soltesz et al. 2007, the efficiency comparison of Linux-VServer, Xen and native
    Linux (micro- and macro-benchmarks): containers, sharing one kernel with no VMM, run
    at native speed, at least as fast as the paravirtualized VM. Table: `python -m vm
    compare --preset PRESET`. Within 10% of native on every workload, and no slower than
    paravirt on the OS-heavy ones. (No exits: every preset.)"""
    need("containers")
    workloads = ("compute", *OS_HEAVY, "all")
    table = compare(workloads, presets=[preset])
    for workload in workloads:
        run = table.run(preset, workload, "containers")
        assert run.ok and run.vs_native <= 1.10, f"{workload}\n{table.table(preset)}"
        if workload in OS_HEAVY and "paravirt" in vm.MODES:
            pv = table.run(preset, workload, "paravirt").cycles
            assert run.cycles <= pv, f"{workload}\n{table.table(preset)}"


def test_soltesz_2007_containers_are_far_denser_than_vms():
    """Soltesz et al. 2007, the scalability comparison (many guests on one host: Linux-
    VServer's containers against Xen's VMs): N containers share one kernel, so a host holds
    far more of them. Table: `python -m vm consolidate --guests 8` (MiB/tenant,
    frames/tenant). Each container holds at most half the host memory a VM of any mode
    holds, reserved and in use."""
    need("containers")
    mix = ["syscalls", "spawn", "pagetable", "io"]
    containers = consolidate(8, "containers", mix)
    assert containers.done
    for mode in vm.MODES:
        if mode in ("native", "containers"):
            continue
        vms = consolidate(8, mode, mix)
        why = (
            f"{mode}: a container holds {containers.reserved_per_tenant:,.0f} bytes "
            f"({containers.frames_per_tenant:.1f} frames in use), a VM "
            f"{vms.reserved_per_tenant:,.0f} ({vms.frames_per_tenant:.1f}); containers in "
            f"{len(containers.guests)} guest(s) (Mode.tenants puts them in one)"
        )
        assert containers.reserved_per_tenant <= vms.reserved_per_tenant / 2, why
        assert containers.frames_per_tenant <= vms.frames_per_tenant / 2, why


# ---- Adams and Agesen, 'A Comparison of Software and Hardware Techniques for x86
# Virtualization', ASPLOS 2006 -----------------------------------------------------------------


@pytest.mark.parametrize("preset", FIRST_GENERATION)
def test_adams_agesen_2006_first_generation_hardware_loses_to_translation_on_mmu_work(preset):
    """Adams & Agesen 2006, Figure 4 (ptemod: 391 cycles under binary translation, 12,733
    on the hardware VMM) and their forkwait test (process creation: BT 36.9 s, hardware
    106.4 s): first-generation hardware assist, with shadow paging and no nested paging,
    is slower than binary translation on page-table updates and process creation. Table:
    `python -m vm compare --workload spawn --workload pagetable --preset PRESET`. Under each
    generation without nested paging, hw-assist at least 1.5 times binary translation's
    cycles on both."""
    need("hw-assist")
    table = compare(["spawn", "pagetable"], presets=[preset])
    for workload in ("spawn", "pagetable"):
        hw = table.run(preset, workload, "hw-assist")
        bt = table.run(preset, workload, "binary-translation")
        assert hw.ok and bt.ok
        shadow = vm.boot(workload, "hw-assist", cost=preset).run().stats["shadow"]
        assert shadow, f"hw-assist kept no shadow page tables under {preset} (no EPT there)"
        assert hw.cycles >= 1.5 * bt.cycles, f"{workload}\n{table.table(preset)}"


# ---- Bugnion, Nieh & Tsafrir, 'Hardware and Software Support for Virtualization' (2017) ----


def test_bugnion_exit_latency_by_generation_makes_each_vm_cheaper_in_turn():
    """Bugnion, Nieh & Tsafrir, the table of VM exit latency by processor generation (with
    Adams & Agesen 2006, Table 1, for Pentium 4 and Core 2): as exits get cheaper, so does
    every VM. Table: `python -m vm compare --workload syscalls --workload spawn --workload
    pagetable --workload io` (every preset). Each mode's cycles relative to native never
    rise from one generation to the next, and fall for every mode that takes exits."""
    table = compare(OS_HEAVY, presets=GENERATIONS)
    for workload in OS_HEAVY:
        for mode in vm.MODES:
            ratios = [table.run(p, workload, mode).vs_native for p in GENERATIONS]
            assert ratios == sorted(ratios, reverse=True), f"{mode} on {workload}: {ratios}"
            if table.run(GENERATIONS[0], workload, mode).exits:
                assert ratios[-1] < ratios[0], f"{mode} on {workload}: {ratios}"
