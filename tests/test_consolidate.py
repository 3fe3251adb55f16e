"""Consolidation: N guests (VMs or containers) on one host, its time and memory, and each
guest's progress; vm.consolidate and `python -m vm consolidate`."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from test_commands import vm as vm_command

import vm
from vm.compare import measure
from vm.consolidate import consolidate
from vm.hypervisor import modes
from vm.interface import GUEST_RAM

FRAMES = GUEST_RAM // 4096


VM_MODES = [m for m in vm.MODES if modes.mode(m).tenants is None]  # (a guest per tenant)


@pytest.mark.parametrize("mode", VM_MODES)
def test_each_guest_on_a_shared_host_runs_as_it_runs_alone(mode):
    run = consolidate(3, mode, ["syscalls", "spawn", "io"])
    assert run.done and len(run.guests) == 3 and run.tenants == 3
    vmm_area = modes.mode(mode).vmm_area
    for guest in run.guests:
        alone = measure("pentium4", guest.workload, mode)
        assert (guest.status, guest.progress) == ("shutdown", 1.0)
        assert (guest.instructions, guest.cycles) == (alone.instructions, alone.cycles)
        assert guest.reserved == GUEST_RAM + vmm_area and guest.ram == GUEST_RAM
        assert 0 < guest.frames_used < FRAMES  # toyos uses a few frames of its 4 MiB
        assert (guest.vmm_frames_used > 0) == (vmm_area > 0)
    u = run.utilisation
    assert sum(u.values()) == pytest.approx(1.0)
    assert (u["vmm"] == 0) == (vmm_area == 0)  # (no VMM: bare metal, containers)
    assert run.host_cycles == run.work + run.vmm_work  # nobody idles: the host never does
    assert run.reserved_per_tenant == GUEST_RAM + vmm_area


def test_containers_share_one_guest_and_each_runs_as_it_runs_alone():
    run = consolidate(3, "containers", ["syscalls", "spawn", "io"])
    assert run.done and len(run.guests) == 1 and run.tenants == 3
    (guest,) = run.guests
    assert (guest.status, guest.workload, guest.tenants) == ("shutdown", "syscalls+spawn+io", 3)
    assert guest.vmm_cycles == 0 and run.utilisation["vmm"] == 0
    assert guest.reserved == guest.ram == GUEST_RAM and guest.vmm_frames_used == 0
    assert run.reserved_per_tenant == GUEST_RAM / 3
    # the one kernel and its containers run on the host as they run alone
    alone = vm.boot(mode="containers", containers=["syscalls", "spawn", "io"]).run().stats
    assert (guest.instructions, guest.cycles) == (alone["instructions"], alone["cycles"])


def test_a_lone_sleeper_leaves_the_host_idle_and_neighbours_fill_that_time():
    alone = consolidate(1, "paravirt", "sleeper")
    assert alone.utilisation["idle"] > 0.8
    shared = consolidate(2, "paravirt", ["sleeper", "spawn"])
    assert shared.utilisation["idle"] < alone.utilisation["idle"]
    assert shared.host_cycles == alone.host_cycles  # the spawn ran while the sleeper slept


def test_full_virtualization_spends_the_host_on_the_vmm_and_paravirt_does_not():
    te = consolidate(4, "trap-emulate", ["syscalls", "spawn", "pagetable", "io"])
    pv = consolidate(4, "paravirt", ["syscalls", "spawn", "pagetable", "io"])
    assert te.utilisation["vmm"] > 0.8 > 0.5 > pv.utilisation["vmm"]
    assert te.host_cycles > 4 * pv.host_cycles


def test_a_host_time_limit_shows_how_far_each_guest_got():
    run = consolidate(3, "trap-emulate", ["compute", "syscalls", "io"], host_cycles=3_000_000)
    assert not run.done
    assert run.work + run.vmm_work >= 3_000_000
    compute = run.guests[0]
    assert compute.status == "budget" and 0 < compute.progress < 0.2
    alone = measure("pentium4", "compute", "trap-emulate").instructions
    assert compute.progress == compute.instructions / alone
    assert 0 < run.mean_progress < 1


def test_a_mode_of_many_tenants_in_one_guest_puts_them_all_in_one(monkeypatch):
    """A mode that names Mode.tenants (containers on one kernel) gets one guest holding
    all N, booted with that option; here a stand-in: bare metal taking the option."""
    native = modes.MODE_TABLE["native"]
    seen = []

    def make(machine, ram, cost, name, text, **options):
        seen.append(options)
        return native.make(machine, ram, cost, name, text)

    shared = replace(
        native, name="shared-kernel", make=make, options=frozenset({"tenants"}), tenants="tenants"
    )
    monkeypatch.setitem(modes.MODE_TABLE, "shared-kernel", shared)
    run = consolidate(4, "shared-kernel", ["io", "syscalls"])
    assert len(run.guests) == 1 and run.tenants == 4
    assert seen == [{"tenants": ("io", "syscalls", "io", "syscalls")}]
    guest = run.guests[0]
    assert guest.tenants == 4 and guest.workload == "io+syscalls+io+syscalls"
    assert run.reserved_per_tenant == GUEST_RAM / 4
    assert run.host_memory == GUEST_RAM  # one guest's worth of memory, not four


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: consolidate(0), "guests must be a whole number from 1 to 32, not 0"),
        (lambda: consolidate(33), "from 1 to 32, not 33"),
        (lambda: consolidate(True), "not True"),
        (lambda: consolidate(2, "xen"), "no mode 'xen'"),
        (lambda: consolidate(2, "native", ["nope"]), "no workload 'nope'"),
        (lambda: consolidate(2, "native", []), "no workload given"),
        (lambda: consolidate(2, "native", cost="pentium5"), "no cost model 'pentium5'"),
        (lambda: consolidate(2, "native", host_cycles=0), "host_cycles must be"),
        (
            lambda: consolidate(4, "trap-emulate", host_memory=8 << 20),
            "4 trap-emulate guest(s) of 5 MiB need 20 MiB of host memory; the host has 8 MiB",
        ),
    ],
)
def test_bad_requests_are_clear_errors(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value)


def test_consolidate_command_one_mode_json():
    out = vm_command(
        "consolidate", "--guests", "3", "--mode", "paravirt", "--workload", "io", "--json"
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["mode"], report["tenants"], report["done"]) == ("paravirt", 3, True)
    assert set(report["utilisation"]) == {"guest", "vmm", "idle"}
    assert [g["workload"] for g in report["guests"]] == ["io"] * 3
    for guest in report["guests"]:
        assert guest["progress"] == 1.0 and guest["reserved_bytes"] == 5 << 20
        assert guest["frames_used"] > 0


def test_consolidate_command_compares_every_mode_a_line_each():
    out = vm_command("consolidate", "--guests", "2", "--workload", "io", "--preset", "haswell")
    assert out.returncode == 0, out.stderr
    assert "2 tenants on one host in each mode (haswell preset" in out.stdout
    lines = out.stdout.splitlines()
    for mode in vm.MODES:
        assert any(line.startswith(mode + " ") for line in lines), mode
