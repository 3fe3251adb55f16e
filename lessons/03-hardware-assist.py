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
#     lesson: 03-hardware-assist
# ---

# %% [markdown]
# # Lesson 03: hardware assist (VT-x)
#
# Lesson 02's VMM squeezed the guest kernel into ring 1 and patched x86's holes. In 2005
# Intel (VT-x) and AMD (AMD-V) changed the CPU instead: a new **non-root mode** in which
# the guest kernel keeps its real ring 0, and a **control structure** (Intel's VMCS) that
# says which events leave it (a *VM exit*) and, for each exit, what it was about. In this
# lesson (about 35 minutes) you will:
#
# 1. predict, then measure, what still exits under hardware assist, and what does not;
# 2. read the control structure, and decode an exit's **qualification** the way KVM does,
#    without decoding the guest's instruction;
# 3. meet **Adams & Agesen's surprise**: first-generation VT-x was *slower* than binary
#    translation on process creation and page-table work, and see **nested paging** (EPT)
#    fix it;
# 4. count the memory references of a **two-dimensional page walk**.

# %% tags=["setup"]
import vm
from vm.lessons import Lesson
from vm.lessons.helpers import first_exit

STUDENT = "your-student-id"  # <- your id: it picks your variant
lesson = Lesson("03-hardware-assist", student=STUDENT)
check = lesson.check
WORKLOAD = lesson.pick("WORKLOAD", ["syscalls", "spawn", "pagetable"])
CONFIGS = ("nested/emulated", "nested/assigned", "shadow/emulated", "shadow/assigned")
OUT_PORT = lesson.pick("OUT_PORT", range(0x20, 0x100))
IN_PORT = lesson.pick("IN_PORT", range(0x100, 0x400, 4))
REG_TO, REG_FROM = lesson.sample("REGISTERS", ["eax", "ecx", "edx", "ebx", "ebp", "esi", "edi"], 2)
ADDRESS = lesson.pick("ADDRESS", range(0x400000, 0x800000, 0x1234))
SURPRISE = lesson.pick("SURPRISE", ["spawn", "pagetable", "syscalls", "io"])
SYSTEMS = ("binary-translation", "hw-assist/shadow", "hw-assist/nested")
SOLD = {"pentium4": SYSTEMS[:2], "haswell": SYSTEMS}  # what each generation could run


def exit_reasons(workload: str, config: str) -> list[str]:
    """The kinds of exit one run of ``workload`` takes under hw-assist, configured as
    "PAGING/CONSOLE" (e.g. "nested/assigned"), sorted."""
    paging, console = config.split("/")
    result = vm.boot(workload, "hw-assist", paging=paging, console=console).run()
    return sorted(result.stats["exits_by_reason"])


def cycles(system: str, workload: str, preset: str) -> int:
    """Simulated cycles of one run: system is "binary-translation", "hw-assist/shadow" or
    "hw-assist/nested"."""
    mode, _, paging = system.partition("/")
    options = {"paging": paging} if paging else {}
    return vm.boot(workload, mode, cost=preset, **options).run().stats["cycles"]


print(lesson)

# %% [markdown]
# ## 1. Non-root mode and its control structure
#
# `vm.boot(workload, "hw-assist")` runs toyos, unmodified, in non-root mode. Before the
# first instruction, the VMM fills the control structure: which instructions exit
# (*execution controls*), which exceptions exit (the *exception bitmap*), which CR0 bits
# it owns (the *guest/host mask*: a guest read of them sees the *read shadow*), and where
# the nested page tables are.

# %%
guest = vm.boot("syscalls", "hw-assist", paging="nested")
print(guest.control_structure())

# %% [markdown]
# Watch it run. The machine view has a VMCS panel; the ring view shows the guest kernel
# at ring 0 (non-root) and the VMM beside it (root mode); the exit timeline shows what
# exits. Try `paging="shadow"`, and the `pagetable` workload.

# %%
import widgets

widgets.Lab(vm.boot("pagetable", "hw-assist", paging="shadow"))

# %% [markdown]
# ### Exercise 03-exits (2 points): predict, then measure
#
# Your workload is printed below. For each of four configurations, predict which
# **kinds of exit** a run takes (the keys of `result.stats["exits_by_reason"]`: `"IO"`,
# `"HLT"`, `"CPUID"`, `"CR access"`, `"INVLPG"`, `"#PF"`, `"IRQ 0"`,
# `"interrupt window"`, ...). A configuration is `"PAGING/CONSOLE"`:
#
# - paging `nested` (EPT: the guest's own tables are walked, the VMM's map guest-physical
#   to host memory) or `shadow` (first-generation VT-x: the VMM keeps shadow tables, as in
#   lesson 02);
# - console `emulated` (every OUT to it exits) or `assigned` (the I/O bitmap gives the
#   guest the console's ports, as device assignment does).
#
# Think first: does `int 0x80` exit? Does `mov cr3`? Who programs the timer? Write your
# prediction down, then measure with `exit_reasons(WORKLOAD, config)` and correct it:
# `EXIT_REASONS[config]` is a sorted list.

# %%
print(f"your workload: {WORKLOAD}")
trapped = vm.boot(WORKLOAD, "trap-emulate").run().stats["exits_by_reason"]
print("the kinds of exit under trap-and-emulate:", sorted(trapped))

# %% nbgrader={"grade": false, "grade_id": "03-exits", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
EXIT_REASONS = {config: exit_reasons(WORKLOAD, config) for config in CONFIGS}
### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "03-exits-check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def predicted(config):
    if not isinstance(EXIT_REASONS, dict):
        return "EXIT_REASONS is not a dict"
    mine = EXIT_REASONS.get(config)
    return sorted(mine) if isinstance(mine, list | tuple | set) else mine


@lesson.test("03-exits")
def nested_paging_console_assigned(t):
    hint = "system calls and CR3 loads stay in the guest; who owns the timer and the PIC?"
    config = "nested/assigned"
    t.expect(predicted(config), exit_reasons(WORKLOAD, config), config, hint=hint)


@lesson.test("03-exits")
def shadow_paging_console_emulated(t):
    hint = "shadow paging needs CR3 loads and #PF to exit, as in lesson 02"
    config = "shadow/emulated"
    t.expect(predicted(config), exit_reasons(WORKLOAD, config), config, hint=hint)


### BEGIN HIDDEN TESTS
@lesson.test("03-exits", hidden=True)
def the_other_two(t):
    for config in ("nested/emulated", "shadow/assigned"):
        t.expect(predicted(config), exit_reasons(WORKLOAD, config), config)


### END HIDDEN TESTS

check("03-exits")

# %% [markdown]
# > **In real systems.** Intel's SDM, Vol. 3C, the chapters "Virtual Machine Control
# > Structures" and "VMX Non-Root Operation", lists the controls: CR3-load and -store exiting,
# > INVLPG exiting, the exception bitmap, the I/O bitmaps, the CR0/CR4 guest/host masks.
# > KVM sets them in `vmx.c` (`setup_vmcs_config`); with EPT on it turns CR3 and INVLPG
# > exiting *off*. Device assignment (VFIO) hands the guest a real device, so its port and
# > MMIO accesses stop exiting.
#
# ## 2. Exit qualifications
#
# Lesson 02's VMM had to decode the guest's instruction to find out what it wanted. A
# VT-x exit comes with a **qualification**, a number whose bits say it (Intel SDM Vol. 3C,
# "Exit Qualification for Control-Register Accesses" and "... for I/O Instructions"):
#
# | exit | bits of the qualification |
# |---|---|
# | I/O (`IO`) | 2:0 size − 1 (0: 1 byte, 3: 4 bytes); 3 direction (1 = IN); 6 port from an immediate (1) or DX (0); 31:16 the port |
# | control register (`CR_ACCESS`) | 3:0 the CR; 5:4 access type (0 = MOV to CR, 1 = MOV from CR); 11:8 the general register (0 EAX, 1 ECX, 2 EDX, 3 EBX, 4 ESP, 5 EBP, 6 ESI, 7 EDI) |
# | `INVLPG` | the linear address |
#
# `first_exit(source)` runs a few instructions in non-root mode on a bare machine and
# returns what the hardware reported at the first exit:

# %%
for source in ("mov edx, 0x3f8\nout dx, al", "mov ebx, cr3", "invlpg [0x1000]"):
    info = first_exit(source)
    print(f"{source!r:30} {info['reason']:10} qualification {info['qualification']:#010x}")

# %% [markdown]
# ### Exercise 03-qualification (3 points)
#
# Write `decode(info)`, for `info` as `first_exit` returns it:
# - an `IO` exit: `{"direction": "in" or "out", "port": ..., "size": bytes}`;
# - a `CR_ACCESS` exit: `{"access": "to" or "from", "cr": n, "register": "ebx"}` (the
#   register's name, lower case);
# - an `INVLPG` exit: `{"address": ...}`.
#
# Use the bits, not `vm.cpu.vmcs.describe_exit` (which does it for the VMM's log).

# %%
print("your instructions:")
for source in (f"out {OUT_PORT:#x}, al", f"mov edx, {IN_PORT:#x}\nin eax, dx", f"mov cr3, {REG_TO}",
               f"mov {REG_FROM}, cr3", f"invlpg [{ADDRESS:#x}]"):  # fmt: skip
    print(f"  {source!r:34} {first_exit(source)}")


# %% nbgrader={"grade": false, "grade_id": "03-qualification", "locked": false, "schema_version": 3, "solution": true, "task": false}
def decode(info: dict) -> dict:
    ### BEGIN SOLUTION
    q = info["qualification"]
    if info["reason"] == "IO":
        direction = "in" if q & 8 else "out"
        return {"direction": direction, "port": q >> 16, "size": (q & 7) + 1}
    if info["reason"] == "CR_ACCESS":
        names = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"]
        access = "from" if (q >> 4) & 3 == 1 else "to"
        return {"access": access, "cr": q & 0xF, "register": names[(q >> 8) & 7]}
    if info["reason"] == "INVLPG":
        return {"address": q}
    return {}
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "03-qualification-check", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def decoded(source):
    answer = decode(first_exit(source))
    return dict(answer) if isinstance(answer, dict) else answer


@lesson.test("03-qualification")
def your_out(t):
    hint = "the port is in bits 31:16; bit 3 is the direction; bits 2:0 the size minus 1"
    expected = {"direction": "out", "port": OUT_PORT, "size": 1}
    t.expect(decoded(f"out {OUT_PORT:#x}, al"), expected, f"out {OUT_PORT:#x}, al", hint=hint)


@lesson.test("03-qualification")
def your_mov_to_cr3(t):
    hint = "bits 11:8 name the register (0 eax, 1 ecx, 2 edx, 3 ebx, ...)"
    expected = {"access": "to", "cr": 3, "register": REG_TO}
    t.expect(decoded(f"mov cr3, {REG_TO}"), expected, f"mov cr3, {REG_TO}", hint=hint)


### BEGIN HIDDEN TESTS
@lesson.test("03-qualification", hidden=True)
def your_others(t):
    cases = [
        (f"mov edx, {IN_PORT:#x}\nin eax, dx", {"direction": "in", "port": IN_PORT, "size": 4}),
        (f"mov {REG_FROM}, cr3", {"access": "from", "cr": 3, "register": REG_FROM}),
        (f"invlpg [{ADDRESS:#x}]", {"address": ADDRESS}),
    ]
    for source, expected in cases:
        t.expect(decoded(source), expected, source.replace("\n", "; "))


@lesson.test("03-qualification", hidden=True)
def more_cases(t):
    cases = [
        ("mov edx, 0xe9\nout dx, al", {"direction": "out", "port": 0xE9, "size": 1}),
        ("in al, 0x60", {"direction": "in", "port": 0x60, "size": 1}),
        ("mov edx, 0xfff0\nout dx, eax", {"direction": "out", "port": 0xFFF0, "size": 4}),
        ("mov edi, cr3", {"access": "from", "cr": 3, "register": "edi"}),
        ("mov cr3, eax", {"access": "to", "cr": 3, "register": "eax"}),
        ("mov ecx, 0x80000011\nmov cr0, ecx", {"access": "to", "cr": 0, "register": "ecx"}),
        ("invlpg [0xfffff000]", {"address": 0xFFFFF000}),
    ]
    for source, expected in cases:
        t.expect(decoded(source), expected, source.replace("\n", "; "))


### END HIDDEN TESTS

check("03-qualification")

# %% [markdown]
# > **In real systems.** KVM's `handle_io` and `handle_cr` (arch/x86/kvm/vmx/vmx.c) do
# > exactly this with the qualification they read from the VMCS (`vmx_get_exit_qual`);
# > for a string instruction (`rep outsb`) or an MMIO access the qualification is not
# > enough and KVM falls back on its instruction emulator. AMD-V calls it `EXITINFO1` in
# > the VMCB.
#
# ## 3. Adams & Agesen's surprise
#
# Hardware assist removes the traps of lesson 02 and the translation of binary
# translation. It should be faster everywhere. Adams & Agesen (VMware) measured the first
# VT-x processors against their binary translator ("A Comparison of Software and Hardware
# Techniques for x86 Virtualization", ASPLOS 2006) and found the opposite on OS-heavy
# work: a VM exit cost about 2,000 cycles on a Pentium 4, and with no hardware help for
# the MMU, every guest page-table change and page fault is an exit (shadow paging). A
# binary translator handles those with a cheap callout. Nested paging (AMD's NPT with
# Barcelona, 2007-08; Intel's EPT with Nehalem, 2008; Bhargava et al., "Accelerating
# Two-Dimensional Page Walks for Virtualized Systems", ASPLOS 2008) removed those exits,
# and exits got cheaper with each generation (Haswell: about 500 cycles).
#
# ### Exercise 03-surprise (2 points): predict, then measure
#
# For your workload (below), rank the systems each generation could run, fastest first:
# the Pentium 4 (2005: binary translation, or VT-x with shadow paging) and the Haswell
# (2013: and VT-x with nested paging). `RANKING["pentium4"]` lists the two in
# `SOLD["pentium4"]`, `RANKING["haswell"]` the three. Predict first, then measure with
# `cycles(system, SURPRISE, preset)`, or the command line:
# `python -m vm compare --workload spawn --preset pentium4`.

# %%
print(f"your workload: {SURPRISE}; the systems: {SOLD}")

# %% nbgrader={"grade": false, "grade_id": "03-surprise", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
RANKING = {
    preset: sorted(systems, key=lambda s: cycles(s, SURPRISE, preset))
    for preset, systems in SOLD.items()
}
### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "03-surprise-check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def measured_ranking(workload, preset):
    return sorted(SOLD[preset], key=lambda s: cycles(s, workload, preset))


def your_ranking(preset):
    if not isinstance(RANKING, dict):
        return "RANKING is not a dict"
    mine = RANKING.get(preset)
    return list(mine) if isinstance(mine, list | tuple) else mine


@lesson.test("03-surprise")
def pentium4(t):
    hint = "what does each system pay for a page-table write, a page fault, a system call?"
    measured = measured_ranking(SURPRISE, "pentium4")
    t.expect(your_ranking("pentium4"), measured, "on the Pentium 4", hint=hint)


### BEGIN HIDDEN TESTS
@lesson.test("03-surprise", hidden=True)
def haswell(t):
    t.expect(your_ranking("haswell"), measured_ranking(SURPRISE, "haswell"), "on the Haswell")


### END HIDDEN TESTS

check("03-surprise")

# %% [markdown]
# The whole table, every workload (the shapes `tests/test_papers.py` checks on every
# commit; nested paging on a Pentium 4 is hypothetical: no processor of its day had it):

# %%
for preset in ("pentium4", "haswell"):
    for workload in ("syscalls", "spawn", "pagetable"):
        row = {s: cycles(s, workload, preset) for s in SYSTEMS}
        text = "  ".join(f"{s} {c / 1e6:5.2f}M" for s, c in row.items())
        print(f"{preset:8} {workload:9} {text}")

# %% [markdown]
# > **In real systems.** Adams & Agesen 2006, Figure 4: `ptemod` (page-table writes) cost
# > 391 cycles under binary translation and 12,733 on the hardware VMM; `forkwait` took
# > 36.9 s under BT and 106.4 s on VT-x; system calls were the hardware's win (no exit at
# > all). VMware kept using binary translation for many 32-bit guests until nested paging
# > arrived; today KVM, Hyper-V, Xen HVM and VMware all rely on VT-x/AMD-V with
# > EPT/NPT.
#
# ## 4. The two-dimensional walk
#
# With nested paging the CPU walks the guest's tables, but each entry it reads is at a
# *guest-physical* address, which must itself go through the nested tables. `translate`
# shows the steps for one address (read-only, no TLB):

# %%
guest = vm.boot("spawn", "hw-assist", paging="nested")
guest.run(60_000)
view = guest.view()
where = view.translate(view.eip)
for step in where.steps:
    print(f"{step.table:17} entry {step.index:4} at {step.address:#010x} = {step.value:#010x}")
print(f"linear {where.linear:#x} -> guest-physical {where.physical:#x} -> host {where.host:#x}")

# %% [markdown]
# `translate` lists the guest's two entries and the nested entry for the final
# guest-physical address. The hardware does more: the guest's entries are at
# guest-physical addresses too (the addresses above), so reading each one takes a nested
# lookup of its own first (here the same nested directory entry, a 4 MiB page that covers
# them all).
#
# Count a full walk with a TLB miss everywhere: a guest with *n*-level tables on nested
# tables of *m* levels. Each of the guest's *n* entries, and the final guest-physical
# address, needs an *m*-step nested walk; then the *n* guest entries themselves are read:
# (*n* + 1)·*m* + *n* = (*n* + 1)(*m* + 1) − 1 references. x86-64 (4 and 4): 24, against 4
# natively. toyos: *n* = 2, and this VMM backs the guest with 4 MiB nested pages (*m* =
# 1): 5, not 8 with 4 KiB nested pages. That is why KVM backs guests with huge pages,
# and why the TLB (and Intel's paging-structure caches) matter so much more under nested
# paging (Bhargava et al. 2008).

# %%
for n, m in ((2, 0), (2, 1), (2, 2), (4, 0), (4, 4)):
    print(f"guest levels {n}, nested levels {m}: {(n + 1) * (m + 1) - 1:2} memory references")

# %% [markdown]
# ## What you have seen
#
# Hardware assist makes x86 classically virtualizable: the guest kernel keeps ring 0, no
# POPF hole, no patching, no translation. The cost moved into the exits: how many (the
# control structure decides), and how expensive each one is (the CPU generation decides).
# Lesson 06 puts hw-assist beside every other mode.
