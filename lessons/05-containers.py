# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: vmlab
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
#   vmlab:
#     lesson: 05-containers
# ---

# %% [markdown]
# # Lesson 05: OS-level virtualization (containers)
#
# Every VM so far brought a kernel of its own, and a VMM underneath to keep the kernels
# apart. OS-level virtualization (FreeBSD jails, Solaris Zones, OpenVZ, Linux containers)
# keeps **one kernel** and makes it tell groups of processes apart: each group, a
# *container*, gets its own view of pids and host name (*namespaces*) and its own share
# of the CPU and memory (*resource control*). No VMM, no exits. In this lesson (about 30
# minutes) you will:
#
# 1. look at **namespaces**: one kernel's process table, seen from each container and
#    from the host;
# 2. set container **weights** to give each container the share of the CPU you want;
# 3. see the price of one shared kernel: **one panic stops every container**;
# 4. measure **density**: the memory a tenant costs as a container and as a VM.

# %% tags=["setup"]
import math

import vm
from vm.consolidate import consolidate
from vm.lessons import Lesson

STUDENT = "your-student-id"  # <- your id: it picks your variant
lesson = Lesson("05-containers", student=STUDENT)
check = lesson.check
NAMES = ["alpha", "beta", "gamma", "delta", "web", "db", "cache", "queue", "mail", "dns"]
HOSTNAMES = lesson.sample("HOSTNAMES", NAMES, 3)
TENANT_WORKLOADS = lesson.sample("TENANT_WORKLOADS", ["spawn", "syscalls", "io", "pagetable"], 3)
AFTER = lesson.pick("AFTER", range(30_000, 80_000, 5_000))
TARGET = lesson.pick(
    "TARGET",
    [
        [50, 25, 25],
        [60, 20, 20],
        [50, 30, 20],
        [40, 40, 20],
        [20, 40, 40],
        [25, 50, 25],
        [30, 50, 20],
        [20, 20, 60],
        [20, 30, 50],
        [40, 20, 40],
    ],
)
NEIGHBOURS = lesson.sample("NEIGHBOURS", ["syscalls", "spawn", "io", "sleeper", "pagetable"], 2)
SLOT = lesson.pick("SLOT", [0, 1, 2])
TENANTS = lesson.pick("TENANTS", [3, 4, 5, 6, 8])
MEASURE = 20_000_000  # instructions a weights run lasts (about 23 timer ticks)


def tenants(workloads, hostnames):
    """The containers option of vm.boot: one container per workload, named."""
    return [{"workload": w, "hostname": h} for w, h in zip(workloads, hostnames, strict=True)]


def cpu_shares(weights, budget=MEASURE):
    """Three containers each running compute with these weights, for ``budget``
    instructions: each one's share of the timer ticks (the kernel's own count), in %."""
    guest = vm.boot(
        mode="containers", containers=[{"workload": "compute", "weight": w} for w in weights]
    )
    guest.run(budget)
    ticks = [n.ticks for n in guest.namespaces()]
    return [100 * t / max(1, sum(ticks)) for t in ticks]


def lineup(bad):
    """Your two neighbours with ``bad`` ("faulty" or "crasher") in slot SLOT."""
    order = list(NEIGHBOURS)
    order.insert(SLOT, bad)
    return order


def outcome(bad):
    """Run the line-up: the guest's status, and the containers whose init finished."""
    guest = vm.boot(mode="containers", containers=lineup(bad))
    result = guest.run()
    done = [cid for cid, text in guest.consoles.items() if "init: workload exited" in text]
    return {"status": result.status, "finished": done}


print(lesson)

# %% [markdown]
# ## 1. One kernel, several namespaces
#
# `vm.boot(mode="containers", containers=[...])` boots toyos built with `CONTAINERS`
# on bare metal and asks it (through its control device, as `lxc-create` and `lxc-start`
# ask Linux) to create and start one container per item: a workload's name, or a dict
# with `workload`, `weight`, `memory_limit` (4 KiB pages) and `hostname`.
#
# Each container's first process is its *init*, pid 1 **in its namespace**; the kernel
# numbers every process once more, its own way (the *host pid*). Run the view below:
# each box is a namespace, with its processes as it sees them and the host's number.

# %%
import ipywidgets

import widgets

guest = vm.boot(mode="containers", containers=tenants(TENANT_WORKLOADS, HOSTNAMES))
controls = widgets.Controls(guest, speed="1M/s")
ipywidgets.VBox([controls, widgets.ProcessTreeView(controls.control)])

# %% [markdown]
# The same, read from the kernel's tables: `guest.namespaces()` gives one `Namespace`
# per container (`id`, `hostname`, `state`, `weight`, `ticks`, ..., and `processes`);
# each `Process` has `namespace`, `pid` (in its namespace), `host_pid` (the kernel's),
# `parent` and `state`.

# %%
peek = vm.boot(mode="containers", containers=tenants(TENANT_WORKLOADS, HOSTNAMES))
peek.run(AFTER)
for namespace in peek.namespaces():
    print(namespace.id, namespace.hostname, namespace.state)
    for p in namespace.processes:
        print(f"    pid {p.pid} (host pid {p.host_pid}), parent {p.parent}, {p.state}")

# %% [markdown]
# ### Exercise 05-namespaces (2 points)
#
# Write `host_pids(guest)`: for each container, by its host name, a dict from each of its
# processes' pid (as the container sees it) to the host pid: for example
# `{"web": {1: 2, 2: 5}, "db": {1: 3}}`. Then look at your answer for the guest below
# (your containers, after `AFTER` instructions): can two containers both have a pid 2?
# Can two processes have the same host pid?


# %% nbgrader={"grade": false, "grade_id": "05-namespaces", "locked": false, "schema_version": 3, "solution": true, "task": false}
def host_pids(guest) -> dict:
    ### BEGIN SOLUTION
    return {n.hostname: {p.pid: p.host_pid for p in n.processes} for n in guest.namespaces()}
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "05-namespaces-check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def kernel_table(guest):
    """(host name, pid, host pid) of every process, from the kernel's process table."""
    names = {n.id: n.hostname for n in guest.namespaces()}
    return sorted((names[p.namespace], p.pid, p.host_pid) for p in guest.processes())


def answered(guest):
    mine = host_pids(guest)
    if not isinstance(mine, dict) or not all(isinstance(v, dict) for v in mine.values()):
        return "not a dict of dicts" if mine is not None else None
    return sorted((name, pid, host) for name, pids in mine.items() for pid, host in pids.items())


@lesson.test("05-namespaces")
def your_containers(t):
    guest = vm.boot(mode="containers", containers=tenants(TENANT_WORKLOADS, HOSTNAMES))
    guest.run(AFTER)
    hint = "one entry per container (its hostname), pid -> host_pid for each of its processes"
    t.expect(answered(guest), kernel_table(guest), "(host name, pid, host pid)", hint=hint)


### BEGIN HIDDEN TESTS
@lesson.test("05-namespaces", hidden=True)
def other_line_ups(t):
    for workloads, after in ((["spawn", "spawn", "io", "sleeper"], 60_000), (["io"], 20_000)):
        names = NAMES[-len(workloads) :]
        guest = vm.boot(mode="containers", containers=tenants(workloads, names))
        guest.run(after)
        t.expect(answered(guest), kernel_table(guest), f"{workloads} after {after}")


### END HIDDEN TESTS

check("05-namespaces")

# %% [markdown]
# > **In real systems.** Linux has eight namespaces (mount, UTS for the host name, IPC,
# > PID, network, user, cgroup, time: `man 7 namespaces`); a PID namespace's first
# > process is its init, pid 1, and the same task has another pid in its parent's
# > namespace (`NSpid` in `/proc/PID/status`). OpenVZ (2005) and Linux-VServer did this
# > with a patched kernel before it was merged into Linux (Soltesz et al., "Container-based
# > Operating System Virtualization", EuroSys 2007).
#
# ## 2. Weights
#
# Under contention the kernel shares the CPU **by container**, not by process: each round
# of its scheduler gives every container as many timer ticks as its **weight** (OpenVZ's
# CPU units, cgroups' `cpu.weight`). Try it: three containers running `compute`, and the
# share of the ticks each got.

# %%
for weights in ([1, 1, 1], [2, 1, 1], [1, 2, 3]):
    print(weights, [f"{share:.0f}%" for share in cpu_shares(weights)])

# %% [markdown]
# ### Exercise 05-weights (3 points)
#
# Write `weights_for(percent)`: given the share each container should get, in whole
# percent (they add up to 100), the **smallest** whole weights (1 to 100) that give it.
# Keep them small: a round lasts as many ticks as the weights add up to, so a measurement
# of a few dozen ticks only sees the ratio if the rounds are short. Your target is below;
# the public test runs three containers with your weights and measures.

# %%
print(f"your target: {TARGET} (percent of the CPU for containers 1, 2, 3)")


# %% nbgrader={"grade": false, "grade_id": "05-weights", "locked": false, "schema_version": 3, "solution": true, "task": false}
def weights_for(percent: list[int]) -> list[int]:
    ### BEGIN SOLUTION
    common = math.gcd(*percent)
    return [p // common for p in percent]
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "05-weights-check", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def smallest(percent):
    common = math.gcd(*percent)
    return [p // common for p in percent]


def your_weights(percent):
    mine = weights_for(list(percent))
    return list(mine) if isinstance(mine, list | tuple) else mine


@lesson.test("05-weights")
def measured_shares_meet_your_target(t):
    weights = your_weights(TARGET)
    hint = "weights in the ratio of the shares, and small"
    what = f"each share within 5 points of {TARGET}"
    if not isinstance(weights, list) or len(weights) != len(TARGET):
        t.expect(f"not three weights: {weights!r}", True, what, hint=hint)
        return
    shares = cpu_shares(weights)
    close = all(abs(s - p) <= 5 for s, p in zip(shares, TARGET, strict=True))
    what += f" (measured: {[round(s) for s in shares]})"
    t.expect(close, True, what, hint=hint)


@lesson.test("05-weights")
def the_smallest_weights(t):
    t.expect(your_weights(TARGET), smallest(TARGET), f"weights for {TARGET}")


### BEGIN HIDDEN TESTS
@lesson.test("05-weights", hidden=True)
def other_targets(t):
    for percent in ([34, 33, 33], [10, 20, 30, 40], [100], [12, 88], [25, 25, 25, 25]):
        t.expect(your_weights(percent), smallest(percent), str(percent))


### END HIDDEN TESTS

check("05-weights")

# %% [markdown]
# > **In real systems.** Linux's CFS gives each cgroup CPU time in proportion to
# > `cpu.weight` (1 to 10,000, default 100; `cpu.shares` in cgroup v1); `cpu.max` caps it
# > instead. OpenVZ's fair scheduler did it by "CPU units" per container, Solaris Zones by
# > FSS shares. Memory is limited the same way per container (`memory.max`): here
# > `memory_limit`, in pages (try the `hog` program with a limit).
#
# ## 3. One kernel: one panic
#
# A container is only as isolated as the kernel is correct. `faulty` is a program that
# touches kernel memory from user mode: the kernel kills it, like any bad process.
# `crasher` hands a system call a pointer the *kernel* then trips over: a kernel panic.
#
# ### Exercise 05-panic (2 points): predict, then measure
#
# Your line-up is printed below: your two neighbours, and `faulty` or `crasher` in slot
# `SLOT`. For each, predict the guest's status at the end of `guest.run()` (`"shutdown"`,
# `"panic"`, ...) and which containers (ids 1, 2, 3) **finished**: their init printed
# `init: workload exited`. Write `PREDICTION[bad] = {"status": ..., "finished": [...]}`,
# then measure with `outcome(bad)` (and read `guest.consoles`).

# %%
for bad in ("faulty", "crasher"):
    print(f"{bad:8} line-up: {lineup(bad)}")

# %% nbgrader={"grade": false, "grade_id": "05-panic", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
PREDICTION = {bad: outcome(bad) for bad in ("faulty", "crasher")}
### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "05-panic-check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def predicted(bad):
    if not isinstance(PREDICTION, dict):
        return "PREDICTION is not a dict"
    mine = PREDICTION.get(bad)
    if not isinstance(mine, dict):
        return mine
    finished = mine.get("finished")
    finished = sorted(finished) if isinstance(finished, list | tuple | set) else finished
    return {"status": mine.get("status"), "finished": finished}


@lesson.test("05-panic")
def a_kernel_panic(t):
    hint = "how many kernels are there for the three containers?"
    t.expect(predicted("crasher"), outcome("crasher"), "with crasher", hint=hint)


### BEGIN HIDDEN TESTS
@lesson.test("05-panic", hidden=True)
def a_faulting_process(t):
    t.expect(predicted("faulty"), outcome("faulty"), "with faulty")


### END HIDDEN TESTS

check("05-panic")

# %%
guest = vm.boot(mode="containers", containers=lineup("crasher"))
guest.run()
print(guest.consoles[0])

# %% [markdown]
# The same cannot happen between VMs: each has its own kernel, and the VMM does not care
# what a guest kernel does to itself. And a container cannot bring a kernel of its own:

# %%
try:
    vm.boot("syscalls", mode="containers", kernel="paravirt")
except ValueError as refused:
    print(refused)

# %% [markdown]
# > **In real systems.** A container shares the host kernel's bugs: a kernel bug
# > exploited from inside one (Dirty COW, CVE-2016-5195) reaches every other, and so does
# > a hole in the runtime (the runc escape, CVE-2019-5736). That is why public clouds
# > run containers inside lightweight VMs: Kata Containers, AWS Firecracker (Agache et
# > al., NSDI 2020), or behind Google's gVisor (a user-space kernel).
#
# ## 4. Density
#
# What a container saves is memory: no kernel, no VMM area and no RAM reservation of its
# own. `consolidate(n, mode)` puts n tenants of a mode on one host (containers: all in
# one guest over one kernel; every other mode: a VM each) and says what each guest holds
# (`run.guests`: `.reserved` bytes, and `.frames_used` and `.vmm_frames_used` 4 KiB
# frames that hold anything) and how many tenants there are (`run.tenants`).

# %%
for mode in ("containers", "paravirt", "hw-assist"):
    print(consolidate(4, mode, ["spawn", "io"]).text().splitlines()[0])

# %% [markdown]
# ### Exercise 05-density (2 points)
#
# Write `bytes_per_tenant(run)`: the memory a tenant really uses, in bytes: every
# guest's frames in use (its RAM's and its VMM area's) times 4096, shared out over the
# tenants, rounded down to a whole byte. Then see how many of your tenants fit in a 1 GiB
# host each way.


# %% nbgrader={"grade": false, "grade_id": "05-density", "locked": false, "schema_version": 3, "solution": true, "task": false}
def bytes_per_tenant(run) -> int:
    ### BEGIN SOLUTION
    frames = sum(g.frames_used + g.vmm_frames_used for g in run.guests)
    return frames * 4096 // run.tenants
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "05-density-check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def in_use(run):
    return sum(g.frames_used + g.vmm_frames_used for g in run.guests) * 4096 // run.tenants


@lesson.test("05-density")
def as_containers(t):
    run = consolidate(TENANTS, "containers", TENANT_WORKLOADS)
    hint = "one guest holds every container: share its frames out"
    t.expect(bytes_per_tenant(run), in_use(run), f"{TENANTS} containers", hint=hint)


@lesson.test("05-density")
def as_vms(t):
    run = consolidate(TENANTS, "paravirt", TENANT_WORKLOADS)
    hint = "count the VMM area's frames too"
    t.expect(bytes_per_tenant(run), in_use(run), f"{TENANTS} paravirtual VMs", hint=hint)


### BEGIN HIDDEN TESTS
@lesson.test("05-density", hidden=True)
def other_runs(t):
    for n, mode in ((7, "containers"), (3, "hw-assist")):
        run = consolidate(n, mode, ["syscalls", "spawn"])
        t.expect(bytes_per_tenant(run), in_use(run), f"{n} tenants, {mode}")


### END HIDDEN TESTS

check("05-density")

# %%
GIB = 1 << 30
for mode in ("containers", "paravirt"):
    run = consolidate(TENANTS, mode, TENANT_WORKLOADS)
    each = bytes_per_tenant(run)
    print(
        f"{mode:10} {each / 1024:7.1f} KiB in use per tenant: {GIB // each:6,} fit in 1 GiB "
        f"by use, {GIB * run.tenants // run.reserved:5,} by reservation"
    )

# %% [markdown]
# > **In real systems.** Soltesz et al. (EuroSys 2007) measured Linux-VServer against Xen:
# > containers matched native performance and packed more guests per host, because
# > there is one kernel and one page cache. The price is the one you saw in section 3, and
# > that every tenant must run the host's kernel.
#
# ## What you have seen
#
# Containers virtualize the operating system's *names* (pids, host names) and *shares*
# (CPU, memory), not the hardware: no VMM, no exits, native speed (lesson 06 has them in
# its table), the densest packing, and one kernel for everyone, with its bugs.
