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
#     lesson: 06-side-by-side
# ---

# %% [markdown]
# # Lesson 06: every kind of virtualization, side by side
#
# Each mode in `vm.MODES` runs the same toyos workloads. Costs are simulated cycles
# under a *preset*: a CPU generation whose exit and trap costs come from the papers
# (Pentium 4 to Haswell). Runs are deterministic, so you can test claims. In this lesson
# (about 25 minutes) you will:
#
# 1. predict, then measure, which mode wins where, and why;
# 2. write the ranking yourself from a comparison table;
# 3. put several guests on one host (**consolidation**, the reason virtualization took
#    over data centres) and see where the host's cycles and memory go.

# %% tags=["setup"]
import vm
from vm.compare import compare
from vm.consolidate import consolidate
from vm.lessons import Lesson

STUDENT = "your-student-id"  # <- your id: it picks your variant
lesson = Lesson("06-side-by-side", student=STUDENT)
check = lesson.check
WORKLOAD = lesson.pick("WORKLOAD", ["syscalls", "spawn", "pagetable"])
PRESET = lesson.pick("PRESET", ["pentium4", "core2", "haswell"])
HOST_MIB = lesson.pick("HOST_MIB", [64, 96, 128, 256])
print(lesson, "| modes:", ", ".join(vm.MODES))

# %% [markdown]
# ## 1. One table
#
# `compare(workloads, presets)` runs each workload in every mode under each preset and
# keeps the results. Cycles relative to native (1.0 = bare metal speed), and exits:

# %%
table = compare(["syscalls", "spawn", "pagetable"], presets=["pentium4", "haswell"])
print(table.table("pentium4"))

# %%
import widgets

widgets.CompareView(workloads=("syscalls", "spawn", "pagetable"), preset="pentium4")

# %% [markdown]
# ### Exercise 06-predict (2 points): predict, then measure
#
# Before you look at your row: rank **every mode in `vm.MODES`**, fastest (fewest
# cycles) first, for your workload under your preset. Think about what each workload
# does (system calls, process creation, page-table updates) and what each mode pays for
# it (a trap, a callout, a hypercall, nothing).

# %%
print(f"your workload: {WORKLOAD}; your preset: {PRESET}")

# %% nbgrader={"grade": false, "grade_id": "06-predict", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
_mine = compare([WORKLOAD], presets=[PRESET])
PREDICTION = sorted(vm.MODES, key=lambda m: _mine.run(PRESET, WORKLOAD, m).cycles)
### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "06-predict-check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def measured_ranking(workload, preset):
    measured = compare([workload], presets=[preset])
    return sorted(vm.MODES, key=lambda m: measured.run(preset, workload, m).cycles)


@lesson.test("06-predict")
def your_prediction(t):
    hint = "native pays nothing; then who exits least?"
    t.expect(list(PREDICTION), measured_ranking(WORKLOAD, PRESET), "fastest first", hint=hint)


check("06-predict")

# %% [markdown]
# ### Exercise 06-rank (3 points)
#
# Write `rank(table, preset, workload)`: the modes of the table (`table.modes`) from
# fewest to most cycles. `table.run(preset, workload, mode)` gives one run, with
# `.cycles`, `.exits` and `.vs_native`.


# %% nbgrader={"grade": false, "grade_id": "06-rank", "locked": false, "schema_version": 3, "solution": true, "task": false}
def rank(table, preset: str, workload: str) -> list[str]:
    ### BEGIN SOLUTION
    return sorted(table.modes, key=lambda mode: table.run(preset, workload, mode).cycles)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "06-rank-check", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
@lesson.test("06-rank")
def your_row(t):
    measured = compare([WORKLOAD], presets=[PRESET])
    t.expect(list(rank(measured, PRESET, WORKLOAD)), measured_ranking(WORKLOAD, PRESET), "rank")


### BEGIN HIDDEN TESTS
@lesson.test("06-rank", hidden=True)
def other_rows(t):
    for workload, preset in (("io", "core2"), ("syscalls", "haswell")):
        measured = compare([workload], presets=[preset])
        ranking = list(rank(measured, preset, workload))
        t.expect(ranking, measured_ranking(workload, preset), f"{workload} on {preset}")


### END HIDDEN TESTS

check("06-rank")

# %% [markdown]
# > **In real systems.** Three papers in one table:
# > - Barham et al., *Xen and the Art of Virtualization* (SOSP 2003), Figure 3:
# >   paravirtualized Linux within a few percent of native, full virtualization far
# >   behind on OS-intensive work (system calls, process creation).
# > - Adams & Agesen, *A Comparison of Software and Hardware Techniques for x86
# >   Virtualization* (ASPLOS 2006): binary translation beat first-generation VT-x on
# >   `forkwait` (process creation) because every exit cost thousands of cycles.
# > - Bugnion, Nieh & Tsafrir, *Hardware and Software Support for Virtualization*
# >   (Morgan & Claypool 2017): exit latency fell from ~1,900 cycles (Prescott) to ~500
# >   (Haswell): compare the two presets above.
# >
# > `tests/test_papers.py` checks these shapes on every commit.
#
# ## 2. Consolidation
#
# One host, several guests, run round robin. Where do the host's cycles go?

# %%
for mode in vm.MODES:
    if mode == "native":
        continue
    host = consolidate(3, mode, workloads=["syscalls"])
    shares = ", ".join(f"{k} {v:.1%}" for k, v in host.utilisation.items())
    print(f"{mode:20} {shares}")

# %% [markdown]
# Memory is the other limit. Each guest *reserves* its RAM and its VMM's area, but
# *uses* far fewer frames. Hypervisors that share or reclaim memory (VMware's ballooning
# and content-based page sharing: Waldspurger, OSDI 2002) or containers that share one
# kernel (Soltesz et al., EuroSys 2007) fit more tenants into the same host.
#
# ### Exercise 06-density (3 points)
#
# Write `fit(host, host_bytes)`: for a consolidation run `host` (its `host.guests` each
# have `.reserved` bytes, and `.frames_used` and `.vmm_frames_used` 4 KiB frames),
# how many guests like the largest one fit in `host_bytes` of memory: return
# `(by_reservation, by_use)`, whole guests.

# %%
print(f"your host: {HOST_MIB} MiB")


# %% nbgrader={"grade": false, "grade_id": "06-density", "locked": false, "schema_version": 3, "solution": true, "task": false}
def fit(host, host_bytes: int) -> tuple[int, int]:
    ### BEGIN SOLUTION
    reserved = max(g.reserved for g in host.guests)
    used = max(g.frames_used + g.vmm_frames_used for g in host.guests) * 4096
    return host_bytes // reserved, host_bytes // used
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "06-density-check", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def density(host, host_bytes):
    reserved = max(g.reserved for g in host.guests)
    used = max(g.frames_used + g.vmm_frames_used for g in host.guests) * 4096
    return [host_bytes // reserved, host_bytes // used]


@lesson.test("06-density")
def your_host(t):
    host = consolidate(2, "trap-emulate", workloads=[WORKLOAD])
    mine = list(fit(host, HOST_MIB << 20))
    hint = "frames are 4 KiB; count the VMM's frames too"
    t.expect(mine, density(host, HOST_MIB << 20), "(by reservation, by use)", hint=hint)


### BEGIN HIDDEN TESTS
@lesson.test("06-density", hidden=True)
def other_modes(t):
    for mode in ("paravirt", "binary-translation"):
        host = consolidate(2, mode, workloads=["spawn"])
        t.expect(list(fit(host, 3 << 30)), density(host, 3 << 30), mode)


### END HIDDEN TESTS

check("06-density")

# %% [markdown]
# ## What you have seen
#
# The same kernel ran on bare metal, trapped and emulated (lesson 02), translated, and
# paravirtualized (lesson 04), in VT-x's non-root mode (lesson 03), and shared by
# containers (lesson 05). The costs moved with the CPU generation; the shapes the papers
# reported did not.
