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
#     lesson: 04-paravirt
# ---

# %% [markdown]
# # Lesson 04: paravirtualization
#
# Lesson 02's VMM worked hard to run a kernel that did not know it was virtualized. Xen
# (Barham et al., "Xen and the Art of Virtualization", SOSP 2003) asked: what if the
# kernel *knows*? In this lesson (about 30 minutes) you will:
#
# 1. read the two kernels side by side: each privileged operation becomes a **hypercall**;
# 2. see the price: the paravirtual kernel dies with **#UD on bare metal**; and Linux's
#    way around it, **pv_ops**: one binary that looks for its hypervisor at boot;
# 3. write code that finds its hypervisor before it makes a hypercall;
# 4. watch **event channels** take the place of interrupts;
# 5. **batch** page-table updates, the trick that makes paravirtual memory management
#    cheap.

# %% tags=["setup"]
import vm
from vm.lessons import Lesson
from vm.lessons.helpers import run_user_code

STUDENT = "your-student-id"  # <- your id: it picks your variant
lesson = Lesson("04-paravirt", student=STUDENT)
check = lesson.check
LIMIT = lesson.pick("LIMIT", range(3, 9))
TRACE_SEED = lesson.pick("TRACE_SEED", range(10**6))


def make_trace(seed: int, length: int = 60) -> list[tuple]:
    """A kernel's page-table work: ("set", entry, value), ("use", entry), ("switch",)."""
    import random

    rng = random.Random(seed)
    ops = []
    for _ in range(length):
        r = rng.random()
        if r < 0.6:
            ops.append(("set", rng.randrange(8), rng.randrange(1, 1 << 20) << 12 | 7))
        elif r < 0.93:
            ops.append(("use", rng.randrange(8)))
        else:
            ops.append(("switch",))
    return ops


TRACE = make_trace(TRACE_SEED)
print(lesson)

# %% [markdown]
# ## 1. Two kernels from one source
#
# toyos is built two ways from one source, the way Linux's pv_ops does it: the kernel's
# body says `op load_cr3`, and each op has a native body and a paravirtual one. Compare:

# %%
from vm.guest.toyos import KERNEL_SOURCE

source = KERNEL_SOURCE.read_text()


def macro(name: str) -> str:
    start = source.index(f"%macro {name} ")
    return source[start : source.index("%endmacro", start)].strip()


for op in ("irq_disable", "load_cr3"):
    print(macro(f"native_{op}"), "\n    ---- becomes ----")
    print(macro(f"pv_{op}"), "\n")

# %% [markdown]
# `cli` becomes a store to a mask byte the VMM shares with the guest (no trap: no POPF
# hole either), and `mov cr3, eax` becomes a request the VMM checks. The hypercall ABI:
# `vmcall` (or `int 0x82`, Xen's 32-bit gate) with the number in EAX, arguments in EBX,
# ECX, EDX, ESI, EDI, and the result in EAX.
#
# Watch the paravirtual kernel run: its exits are hypercalls, and few of them.

# %%
import widgets

widgets.Lab(vm.boot("spawn", mode="paravirt"))

# %% [markdown]
# ## 2. The price, and pv_ops
#
# A paravirtual kernel cannot boot on real hardware: `vmcall` with no VMM is an invalid
# opcode.

# %%
bare = vm.boot("spawn", mode="native", kernel="paravirt")
bare.run()
print(bare.status, "-", bare.events[-1].text)

# %% [markdown]
# Linux 2.6.23 solved it with **paravirt_ops**: one kernel whose privileged operations are
# indirect calls, patched at boot to the native or the paravirtual bodies once the kernel
# knows where it runs. It asks CPUID: leaf 1, ECX bit 31 is "a hypervisor is here".

# %%
for mode in ("native", "paravirt"):
    guest = vm.boot("spawn", mode=mode, kernel="pvops")
    result = guest.run()
    print(f"{mode:9} {guest.status:9} pv_ops: {result.stats['pv_ops']}")

# %% [markdown]
# ### Exercise 04-hypercall (3 points)
#
# Write user code (`ASK`, assembly) that asks the hypervisor its version with the
# `xen_version` hypercall (number 17, `vmcall`) and leaves it in EAX, but only when a
# hypervisor is there (CPUID leaf 1, ECX bit 31); elsewhere it leaves 0 in EAX and must
# not fault. It must end where it ends.

# %% nbgrader={"grade": false, "grade_id": "04-hypercall", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
ASK = """
    mov eax, 1
    cpuid
    xor eax, eax
    bt ecx, 31
    jnc .bare
    mov eax, 17
    vmcall
.bare:
"""
### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "04-hypercall-check", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
@lesson.test("04-hypercall")
def the_version_under_xen(t):
    regs = run_user_code(ASK, "paravirt")
    expected = run_user_code("mov eax, 17\nvmcall", "paravirt")["eax"]
    t.expect([regs["finished"], regs["eax"]], [1, expected], "[finished, EAX] paravirtualized")


@lesson.test("04-hypercall")
def no_fault_on_bare_metal(t):
    regs = run_user_code(ASK, "native")
    what = "[finished, EAX] on bare metal"
    t.expect([regs["finished"], regs["eax"]], [1, 0], what, hint="vmcall is #UD there: ask CPUID")


### BEGIN HIDDEN TESTS
@lesson.test("04-hypercall", hidden=True)
def full_virtualization_is_not_xen(t):
    for mode in ("trap-emulate", "binary-translation"):
        regs = run_user_code(ASK, mode)
        t.expect([regs["finished"], regs["eax"]], [1, 0], mode)


### END HIDDEN TESTS

check("04-hypercall")

# %% [markdown]
# > **In real systems.** Xen's hypercall page and Linux's `paravirt_ops` (Zach Amsden
# > et al., "VMI" and "paravirt_ops", Ottawa Linux Symposium 2006/2007). Hypervisors
# > announce themselves through CPUID leaf 0x40000000 ("XenVMMXenVMM", "KVMKVMKVM",
# > "Microsoft Hv"; here "vmlabvmlabPV"); KVM guests use paravirtual clocks and
# > interrupts (kvm-clock, PV EOI) the same way today.

# %% [markdown]
# ## 3. Events, not interrupts
#
# A paravirtual guest has no interrupt controller to program and no IDT entry for the
# timer. At boot it registers a *vcpu_info* page it shares with the VMM and an *event
# callback* (one multicall, below). When the real timer ticks, the VMM marks **event
# channel 0** pending in that page; the next time it enters the guest it calls the
# callback, with the event mask byte set, the way the CPU clears IF when it delivers an
# interrupt. The guest's `cli` and `sti` are stores to that mask byte: no trap at all.

# %%
events = vm.boot("sleeper", mode="paravirt")
events.run_until("inject")  # to the first event delivered to the guest
for event in events.events:
    if event.kind in ("IRQ 0", "inject") or "set_callbacks" in event.text:
        print(event)
now = events.view()
believed, held = bool(now.guest.eflags & 0x200), bool(now.hardware.eflags & 0x200)
print(f"IF the guest believes: {believed} - IF the CPU holds: {held}")

# %% [markdown]
# In the callback the guest believes interrupts are off (its mask byte is set), while the
# CPU's IF stays on: the VMM, not the guest, owns the real interrupts. Xen calls these
# *event channels*: one per virtual interrupt source (timer, each virtual device, an IPI),
# bits in a shared page the guest scans, and a hypercall to send one to another domain.
#
# > **In real systems.** Xen's `vcpu_info` holds `evtchn_upcall_pending` and
# > `evtchn_upcall_mask` (xen/include/public/xen.h); Linux's Xen code turns them into
# > ordinary IRQs (drivers/xen/events/). KVM's paravirtual EOI and async page faults use
# > the same trick of a page shared with the host.
#
# ## 4. Batching
#
# Every hypercall is an exit. Xen's `mmu_update` takes a *list* of page-table updates and
# `multicall` several hypercalls, so the kernel queues changes and sends them together,
# only when it must: when it is about to *use* a mapping it changed, switches address
# space, or the queue is full. Batching on and off, in exits:

# %%
for batch in (True, False):
    result = vm.boot("spawn", mode="paravirt", batch=batch).run()
    print(f"batch={batch!s:5} {result.stats['exits']:4} exits: {result.stats['exits_by_reason']}")

# %% [markdown]
# ### Exercise 04-batching (4 points)
#
# A kernel's page-table work is a list of operations (your `TRACE`):
# `("set", entry, value)` changes an entry, `("use", entry)` is the kernel touching memory
# through that entry, `("switch",)` loads a new address space. Write
# `run_kernel(ops, limit, hypercall, use, switch)` that carries them out:
# - call `hypercall(updates)` with a list of at most `limit` `(entry, value)` pairs to send
#   updates to the VMM (one exit each call); keep them in order;
# - call `use(entry)` for each use and `switch()` for each switch: by then every update to
#   that entry (for a switch: every update) must have been sent;
# - make **as few hypercalls as possible**.

# %%
print(f"your limit: {LIMIT}; your trace starts {TRACE[:6]} ... ({len(TRACE)} operations)")


# %% nbgrader={"grade": false, "grade_id": "04-batching", "locked": false, "schema_version": 3, "solution": true, "task": false}
def run_kernel(ops, limit, hypercall, use, switch) -> None:
    ### BEGIN SOLUTION
    queue = []

    def flush():
        if queue:
            hypercall(list(queue))
            queue.clear()

    for op in ops:
        if op[0] == "set":
            queue.append((op[1], op[2]))
            if len(queue) == limit:
                flush()
        elif op[0] == "use":
            if any(entry == op[1] for entry, _ in queue):
                flush()
            use(op[1])
        else:
            flush()
            switch()
    flush()
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "04-batching-check", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
class ToyVMM:
    """The VMM's side: the page table it holds, the calls, and what went wrong."""

    def __init__(self, ops, limit):
        self.ops, self.limit = ops, limit
        self.table, self.calls, self.problems = {}, 0, []
        self.sets = [(op[1], op[2]) for op in ops if op[0] == "set"]
        self.sent = []

    def hypercall(self, updates):
        self.calls += 1
        if not 1 <= len(updates) <= self.limit:
            self.problems.append(f"a hypercall with {len(updates)} updates")
        for entry, value in updates:
            self.table[entry] = value
            self.sent.append((entry, value))


def replay(ops, limit):
    """Run the student's kernel on a ToyVMM that follows the trace step by step."""
    vmm = ToyVMM(ops, limit)
    position = {"i": 0, "sets": 0}

    def advance_to(kind):
        while position["i"] < len(ops):
            op = ops[position["i"]]
            position["i"] += 1
            if op[0] == "set":
                position["sets"] += 1
            elif op[0] == kind:
                return
        vmm.problems.append(f"a {kind} the trace does not have here")

    def use(entry):
        advance_to("use")
        wanted = [v for e, v in vmm.sets[: position["sets"]] if e == entry]
        if wanted and vmm.table.get(entry) != wanted[-1]:
            vmm.problems.append(f"entry {entry} used before its update was sent")

    def switch():
        advance_to("switch")
        if len(vmm.sent) < position["sets"]:
            vmm.problems.append("a switch with updates not sent")

    run_kernel(list(ops), limit, vmm.hypercall, use, switch)
    if vmm.sent != vmm.sets:
        vmm.problems.append("the updates sent are not the trace's, in its order")
    return vmm


def fewest_calls(ops, limit):
    """The fewest hypercalls that do the trace (send only when you must)."""
    calls, queued = 0, []
    for op in ops:
        if op[0] == "set":
            queued.append(op[1])
            if len(queued) == limit:
                calls, queued = calls + 1, []
        elif (op[0] == "use" and op[1] in queued) or op[0] == "switch":
            calls, queued = calls + (1 if queued else 0), []
    return calls + (1 if queued else 0)


@lesson.test("04-batching")
def correct_on_your_trace(t):
    vmm = replay(TRACE, LIMIT)
    t.expect(vmm.problems[:1], [], "what went wrong", hint="send before a use of that entry")


@lesson.test("04-batching")
def fewer_calls_than_updates(t):
    vmm = replay(TRACE, LIMIT)
    sets = sum(op[0] == "set" for op in TRACE)
    t.expect(vmm.calls < sets, True, f"fewer hypercalls than the {sets} updates (batched)?")


### BEGIN HIDDEN TESTS
@lesson.test("04-batching", hidden=True)
def as_few_as_possible(t):
    for seed, limit in ((TRACE_SEED, LIMIT), (7, 1), (8, 16), (9, 4)):
        ops = make_trace(seed)
        vmm = replay(ops, limit)
        t.expect([vmm.problems[:1], vmm.calls], [[], fewest_calls(ops, limit)], f"trace {seed}")


### END HIDDEN TESTS

check("04-batching")

# %% [markdown]
# > **In real systems.** Barham et al. (SOSP 2003, §3.3.1): "Xen ... allows guest OSes to
# > batch update requests", and the Xen paper's Figure 3 shows Linux on Xen within a few
# > percent of native on SPEC INT, and far ahead of VMware Workstation and UML on the
# > OS-intensive benchmarks. Lesson 06 checks those shapes on this machine.
