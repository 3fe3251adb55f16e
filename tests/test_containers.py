"""Containers on one shared toyos kernel (issue 12): namespaces, resource control, the
runtime, and the seed's claims (native speed, no exits; one kernel, so one kernel's panic
is everybody's; no kernel of a container's own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vm
from vm.compare import measure
from vm.containers import ContainerSpec
from vm.guest.toyos import WORKLOADS

ROOT = Path(__file__).resolve().parent.parent
KERNEL_LINES = ("toyos: booting\n", "toyos: halt\n")


def alone_natively(workload: str) -> str:
    """The workload's console run alone on bare metal, less the kernel's own lines."""
    text = vm.boot(workload).run().console
    for line in KERNEL_LINES:
        text = text.replace(line, "", 1)
    return text


def run_containers(*containers, **options):
    guest = vm.boot(mode="containers", containers=list(containers), **options)
    return guest, guest.run()


# ---- the seed's claims -----------------------------------------------------------------------


@pytest.mark.parametrize("workload", WORKLOADS)
def test_a_container_runs_with_no_exits_within_2_percent_of_native(workload):
    native = measure("pentium4", workload, "native")
    container = measure("pentium4", workload, "containers")
    assert container.ok and native.ok
    assert container.exits == 0 and container.vmm_cycles == 0
    assert abs(container.vs_native - 1) <= 0.02, (workload, container.vs_native)


def test_a_kernel_panic_from_one_container_stops_every_container():
    guest, result = run_containers("compute", "crasher", "sleeper")
    assert result.status == "panic"
    assert "PANIC: kernel exception 14" in guest.consoles[0]  # (the kernel's own stream)
    assert "crasher: handing the kernel an unmapped buffer" in guest.consoles[2]
    for cid in (1, 3):  # neither of the others finished
        assert "init: workload exited" not in guest.consoles[cid]
    assert {n.state for n in guest.namespaces()} == {"running"}  # (stopped mid-run)


def test_asking_for_another_kernel_in_a_container_is_refused_with_the_reason():
    for kernel in ("native", "paravirt", "pvops"):
        with pytest.raises(ValueError, match="refused: containers share the host's one kernel"):
            vm.boot("syscalls", mode="containers", kernel=kernel)
    guest = vm.boot("sleeper", mode="containers")
    with pytest.raises(ValueError, match=r"refused: .*cannot boot a kernel of its own"):
        guest.containers.create(kernel="paravirt")
    with pytest.raises(ValueError, match="runs only in mode='containers'"):
        vm.boot("syscalls", mode="native", kernel="containers")


# ---- namespaces ----------------------------------------------------------------------------------


def test_each_container_console_is_its_workload_alone_natively():
    workloads = ("syscalls", "spawn", "pagetable", "io", "faulty", "sleeper")
    guest, result = run_containers(*workloads)
    assert result.ok and result.stats["exits"] == 0
    for cid, workload in enumerate(workloads, start=1):
        assert guest.consoles[cid] == alone_natively(workload), workload
    assert guest.consoles[0] == "".join(KERNEL_LINES)


def test_pids_are_per_container_and_the_kernel_keeps_its_own():
    guest = vm.boot(mode="containers", containers=["spawn", "spawn", "syscalls"])
    guest.run(40_000)
    processes = guest.processes()
    for cid in (1, 2, 3):
        pids = sorted(p.pid for p in processes if p.namespace == cid)
        assert pids[:2] == [1, 2], (cid, processes)  # each has its own init and pid 2
    host_pids = [p.host_pid for p in processes]
    assert len(set(host_pids)) == len(host_pids)
    trees = {n.id: {p.pid: p.parent for p in n.processes} for n in guest.namespaces()}
    assert all(tree[1] == 0 and tree[2] == 1 for tree in trees.values())


def test_host_names_are_per_container():
    guest, result = run_containers(
        {"workload": "hostname", "hostname": "alpha"},
        {"workload": "rename", "hostname": "beta"},
        "hostname",
    )
    assert result.ok
    assert guest.consoles[1] == "hostname: alpha\nhostname: alpha\ninit: workload exited with 0\n"
    assert guest.consoles[2] == "hostname: renamed\ninit: workload exited with 0\n"
    assert guest.consoles[3].startswith("hostname: ct3\nhostname: ct3\n")
    assert [s.hostname for s in guest.containers.list()] == ["alpha", "renamed", "ct3"]


# ---- isolation: each escape is refused or contained, the others' results unchanged -----------


NEIGHBOURS = ("syscalls", "spawn", "pagetable")


def check_neighbours(guest, first: int = 2) -> None:
    for cid, workload in enumerate(NEIGHBOURS, start=first):
        assert guest.consoles[cid] == alone_natively(workload), workload


def test_a_container_cannot_reach_another_containers_processes_or_memory():
    guest, result = run_containers("snoop", *NEIGHBOURS)
    assert result.ok
    snoop = guest.consoles[1]
    assert "snoop: kill or wait got through to other pids: 0\n" in snoop
    assert "snoop: bad pointers and numbers the kernel took: 0\n" in snoop
    assert "toyos: process 2 killed by exception 14" in snoop  # reading others' memory
    check_neighbours(guest)


def test_a_container_cannot_write_the_console_itself():
    guest, result = run_containers("scribble", *NEIGHBOURS)
    assert result.ok
    assert "toyos: process 2 killed by exception 13" in guest.consoles[1]
    assert "!" not in guest.console
    check_neighbours(guest)


def test_the_memory_limit_refuses_the_container_that_passes_it():
    limit = 40
    guest, result = run_containers({"workload": "hog", "memory_limit": limit}, *NEIGHBOURS)
    assert result.ok
    # init and hog hold 4 frames each; the rest of the limit is hog's pages
    assert guest.consoles[1].startswith(f"hog: mapped {limit - 8} pages, then the kernel refused")
    stats = guest.containers.stats(1)
    assert stats.refused == 1 and stats.pages == 0 and stats.memory_limit == limit
    check_neighbours(guest)
    unlimited, _ = run_containers("hog")
    assert int(unlimited.consoles[1].split()[2]) > 10 * limit


def test_a_spawn_past_the_memory_limit_is_refused():
    guest, result = run_containers({"workload": "spawn", "memory_limit": 10}, "syscalls")
    assert result.ok
    assert guest.consoles[1] == "spawn: could not create a process\ninit: workload exited with 1\n"
    assert guest.consoles[2] == alone_natively("syscalls")


def run_until_a_report(guest, slices: int = 2_000) -> None:
    """Run until the kernel reports a container stopped (at most ``slices`` slices)."""
    for _ in range(slices):
        if guest.containers.reports or guest.vm.stopped is not None:
            break
        guest.run(200_000)
    assert guest.containers.reports, guest.status


def share_of_cpu(weights: tuple[int, int]) -> tuple[float, int, int]:
    """Two containers run compute with these weights until the first finishes: the CPU
    the first got over the second's, in cycles (the first's work is what it takes alone,
    the rest of the time went to the second), and each one's timer ticks as the kernel
    counted them (the second's asked at the next tick)."""
    alone = vm.boot(mode="containers", containers=["compute"])
    alone.run()
    work = alone.containers.reports[0].cycle
    guest = vm.boot(
        mode="containers",
        containers=[{"workload": "compute", "weight": w} for w in weights],
    )
    rt = guest.containers
    run_until_a_report(guest)
    first = rt.reports[0]
    assert first.id == 1
    second = rt.stats(2)
    return work / (first.cycle - work), first.ticks, second.ticks


@pytest.mark.parametrize("weights", [(2, 1), (1, 1)])
def test_cpu_weights_share_the_cpu_within_10_percent_of_their_ratio(weights):
    """Measured in cycles over the run, within 10% of the weights' ratio; the kernel's own
    tick counts agree to within one round of its scheduler (a tick per unit of weight)."""
    ratio = weights[0] / weights[1]
    share, first_ticks, second_ticks = share_of_cpu(weights)
    assert abs(share / ratio - 1) <= 0.10, share
    assert abs(first_ticks - ratio * second_ticks) <= sum(weights), (first_ticks, second_ticks)


def test_more_processes_do_not_get_a_container_more_than_its_weight():
    """Container 1 runs three compute processes, container 2 one, both of weight 1: the
    scheduler shares the CPU by container, so container 2 still gets half of it (finishing
    at twice its time alone), not a quarter."""
    alone = vm.boot(mode="containers", containers=["compute"])
    alone.run()
    work = alone.containers.reports[0].cycle
    guest = vm.boot(mode="containers", containers=["compute", "compute"])
    rt = guest.containers
    pids = [rt.exec(1, "compute"), rt.exec(1, "compute")]
    assert len(set(pids)) == 2 and 1 not in pids  # (pids of container 1's namespace)
    run_until_a_report(guest)
    second = rt.reports[0]
    assert second.id == 2 and second.exit_code == 0
    assert abs(second.cycle / (2 * work) - 1) <= 0.10, second.cycle / work
    assert abs(rt.stats(1).ticks / second.ticks - 1) <= 0.10


# ---- the runtime ---------------------------------------------------------------------------------


def test_the_runtime_creates_starts_execs_lists_and_stops_through_the_kernel():
    guest = vm.boot(mode="containers", containers=["compute", "compute"])
    rt = guest.containers
    cid = rt.create(hostname="web", weight=3, memory_limit=200)
    assert cid == 3
    assert [(s.id, s.state) for s in rt.list()] == [(1, "running"), (2, "running"), (3, "created")]
    assert rt.start(cid, "sleeper") == 1
    assert rt.exec(cid, "io") == 3  # (its init is 1, the sleeper init started 2)
    with pytest.raises(ValueError, match="refused by the kernel"):
        rt.start(cid, "io")  # (it runs already)
    rt.stop(2)
    result = guest.run()
    assert result.ok
    stats = {s.id: s for s in rt.list()}
    assert stats[2].exit_code == -9 and "compute: checksum" not in rt.console(2)
    assert stats[3].hostname == "web" and stats[3].weight == 3
    assert "sleeper: slept and yielded" in rt.console(3) and "io: line 40" in rt.console(3)
    assert rt.console(1) == alone_natively("compute")
    with pytest.raises(ValueError, match="not running"):
        rt.create()


def test_bad_arguments_get_clear_errors():
    cases = [
        ({"containers": [{"workload": "nope"}]}, r"containers\[0\]\.workload 'nope'"),
        ({"containers": ["io", {"workload": "io", "weight": 0}]}, r"containers\[1\]\.weight"),
        ({"containers": [{"workload": "io", "memory_limit": -1}]}, "memory_limit"),
        ({"containers": [{"workload": "io", "hostname": "x" * 33}]}, "hostname"),
        ({"containers": [{"workload": "io", "cpu": 2}]}, "no field 'cpu'"),
        ({"containers": [3]}, "a workload's name"),
        ({"containers": ["io"] * 17}, "from 1 to 16, not more"),
        ({"containers": []}, "from 1 to 16, not none"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            vm.boot(mode="containers", **options)
    rt = vm.boot(mode="containers", containers=[ContainerSpec("sleeper")]).containers
    for call, message in [
        (lambda: rt.start(0, "io"), "cid"),
        (lambda: rt.start(2, "nope"), "workload 'nope'"),
        (lambda: rt.create(weight=101), "weight"),
        (lambda: rt.create(1), "cid 1 refused"),
        (lambda: rt.console(99), "cid"),
        (lambda: rt.stats(5), "no such container"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(ValueError, match="has no containers"):
        vm.boot("io").containers.list()


# ---- determinism -----------------------------------------------------------------------------


MIX = ["spawn", {"workload": "pagetable", "weight": 2}, "io", "hostname"]


def fingerprint() -> dict:
    guest, result = run_containers(*MIX)
    reports = [(s.id, s.ticks, s.cycle, s.exit_code) for s in guest.containers.reports]
    return {"cycles": result.stats["cycles"], "consoles": guest.consoles, "reports": reports}


def test_runs_are_deterministic_and_a_snapshot_replays_exactly():
    first = fingerprint()
    assert fingerprint() == first
    guest = vm.boot(mode="containers", containers=MIX)
    guest.run(150_000)
    snap = guest.snapshot()
    end = guest.run()
    consoles = guest.consoles
    guest.restore(snap)
    assert guest.run().stats == end.stats and guest.consoles == consoles
    assert {str(k): v for k, v in consoles.items()} == {
        str(k): v for k, v in first["consoles"].items()
    }


def test_the_same_without_the_jit():
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        pytest.skip("already without the JIT")
    code = (
        "import json, vm\n"
        "g = vm.boot(mode='containers', containers=['syscalls', 'sleeper', 'hostname'])\n"
        "r = g.run()\n"
        "print(json.dumps([r.stats['cycles'], r.stats['instructions'], g.consoles]))\n"
    )
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr
    cycles, instructions, consoles = json.loads(done.stdout)
    guest, result = run_containers("syscalls", "sleeper", "hostname")
    assert [cycles, instructions] == [result.stats["cycles"], result.stats["instructions"]]
    assert consoles == {str(k): v for k, v in guest.consoles.items()}


# ---- the command line ----------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "vm", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_the_command_line_runs_containers_and_says_what_is_wrong():
    out = cli("run", "--mode", "containers", "--container", "hostname:hostname=alpha",
              "--container", "hog:memory=30,weight=2", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["stats"]["exits"] == 0
    assert report["consoles"]["1"].startswith("hostname: alpha\n")
    assert [c["memory_limit"] for c in report["containers"]] == [0, 30]
    out = cli("run", "--mode", "containers", "--containers", "2", "--workload", "io")
    assert out.returncode == 0 and out.stdout.count("io: line 40") == 2
    for args, message in [
        (["--mode", "native", "--containers", "2"], "are for --mode containers"),
        (["--mode", "containers", "--container", "io:cpu=2"], "'cpu=2' is not weight=W"),
        (["--mode", "containers", "--container", "nope"], "'nope' is no program"),
        (["--mode", "containers", "--kernel", "pvops"], "refused: containers share"),
    ]:
        out = cli("run", *args)
        assert out.returncode == 2 and message in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


# ---- the views -----------------------------------------------------------------------------------


def test_the_process_tree_view_shows_each_namespace_over_one_kernel_and_changes_nothing():
    widgets = pytest.importorskip("widgets")
    guest = vm.boot(
        mode="containers",
        containers=[{"workload": "spawn", "hostname": "alpha"}, {"workload": "io", "weight": 2}],
    )
    guest.run(30_000)
    before = (guest.position, guest.consoles, guest.namespaces())
    html = widgets.ProcessTreeView(guest).trees.value
    assert (guest.position, guest.consoles, guest.namespaces()) == before
    assert "container 1 &middot; alpha" in html and "container 2 &middot; ct2" in html
    assert "weight 2" in html and "containers build" in html
    for namespace in guest.namespaces():
        for process in namespace.processes:
            assert f"pid {process.pid} ({process.state}; kernel pid {process.host_pid})" in html
    native = widgets.ProcessTreeView(vm.boot("spawn")).trees.value
    assert "the machine's one namespace" in native
