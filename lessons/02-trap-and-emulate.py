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
#     lesson: 02-trap-and-emulate
# ---

# %% [markdown]
# # Lesson 02: full virtualization by trap-and-emulate
#
# The same toyos kernel you met in lesson 01, not changed by a byte, now runs under a
# hypervisor (a *virtual machine monitor*, VMM). In this lesson (about 40 minutes) you
# will:
#
# 1. see **deprivileging**: the guest kernel runs at ring 1, so its privileged
#    instructions trap (an *exit*) to the VMM;
# 2. write part of the VMM's **emulator**: do what the guest meant, on the registers it
#    believes it has (the vCPU);
# 3. see **shadow paging**, the tables the CPU really walks;
# 4. meet x86's **POPF hole**, patch it, and see binary translation do it wholesale;
# 5. write guest code that **detects the VMM** (the red pill).

# %% tags=["setup"]
import vm
from vm.asm import assemble
from vm.cpu.decode import decode_form
from vm.isa import REG32_NAMES
from vm.lessons import Lesson
from vm.lessons.helpers import boot_with_sites, kernel_code, run_user_code

STUDENT = "your-student-id"  # <- your id: it picks your variant
lesson = Lesson("02-trap-and-emulate", student=STUDENT)
check = lesson.check
CR_VALUES = {
    "cr0": lesson.pick("CR0", [0x80000011, 0x80010011, 0x80000031]),
    "cr2": lesson.pick("CR2", range(0x400000, 0x800000, 0x1004)),
    "cr3": lesson.pick("CR3", range(0x100000, 0x200000, 0x1000)),
}
MOVES = ["mov eax, cr3", "mov ebx, cr3", "mov ecx, cr2", "mov esi, cr0", "mov edi, cr2"]
MOVES = lesson.sample("MOVES", MOVES, 2)
print(lesson)

# %% [markdown]
# ## 1. Deprivileging: every privileged instruction is an exit
#
# `vm.boot(workload, mode="trap-emulate")` loads toyos as it is. The VMM puts the guest
# kernel at ring 1 (ring compression), keeps the real IDT for itself, and runs the
# guest until something traps. Each trap is an exit; the VMM's **exit table** says which
# handler answers which exit:

# %%
guest = vm.boot("syscalls", mode="trap-emulate")
print(guest.exit_table())
guest.run_until("#GP")
print(guest.events[-1])
view = guest.view()
print(f"the guest believes CPL {view.guest.cpl}; the hardware runs it at CPL {view.hardware.cpl}")

# %% [markdown]
# Watch it live: the ring view shows each trap to the VMM, its emulation and the return;
# the exit timeline counts them by kind.

# %%
import widgets

widgets.Lab(vm.boot("syscalls", mode="trap-emulate"))

# %% [markdown]
# ### Exercise 02-exits (2 points): predict, then measure
#
# toyos's `syscalls` workload makes 2,000 `getpid` system calls (`int 0x80`, and `iret`
# back to user mode). Predict how many exits **one** system call costs in each mode, on
# average (whole numbers): under trap-and-emulate (every trap is an exit), under binary
# translation (the kernel's sensitive instructions become callouts, not exits) and
# paravirtualized (the guest kernel installed its own system-call gate). Then measure:
# `vm.boot("syscalls", mode=...).run().stats["exits_by_reason"]`.

# %% nbgrader={"grade": false, "grade_id": "02-exits", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
EXITS_PER_SYSCALL = {"trap-emulate": 2, "binary-translation": 1, "paravirt": 0}
### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "02-exits-check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def measured_per_call(mode):
    return round(vm.boot("syscalls", mode=mode).run().stats["exits"] / 2000)


@lesson.test("02-exits")
def trap_and_emulate(t):
    hint = "the call traps in, and the way back out (iret) traps too"
    mine = EXITS_PER_SYSCALL.get("trap-emulate")
    t.expect(mine, measured_per_call("trap-emulate"), "exits per call, trap-and-emulate", hint=hint)


### BEGIN HIDDEN TESTS
@lesson.test("02-exits", hidden=True)
def the_others(t):
    for mode in ("binary-translation", "paravirt"):
        t.expect(EXITS_PER_SYSCALL.get(mode), measured_per_call(mode), mode)


### END HIDDEN TESTS

check("02-exits")

# %% [markdown]
# ## 2. The emulator
#
# On a #GP from the guest kernel, the VMM decodes the instruction at the guest's EIP
# (with the CPU's own decoder) and carries it out on the **vCPU**: the interrupt flag and
# control registers the guest *believes* it has. The real ones stay the VMM's. `decode_form`
# gives the decoded instruction: `ins.name` (`"cli"`, `"mov_from_cr"`, ...), `ins.reg`
# and `ins.rm` (the ModRM fields), `ins.length`.

# %%
ins = decode_form(assemble("mov ebx, cr3").code)
print(ins.name, "reg (the CR) =", ins.reg, " rm (the register) =", REG32_NAMES[ins.rm])

# %% [markdown]
# ### Exercise 02-emulate (3 points)
#
# Write `emulate(ins, cpu, vcpu)` for three instructions:
# - `cli`: the guest's interrupts off (`vcpu.vif = False`); `sti`: on;
# - `mov_from_cr` (`MOV r32, CRn`): put the guest's CRn (`vcpu.cr0`, `cr2`, `cr3` or
#   `cr4`; n is `ins.reg`) into general register `ins.rm` of `cpu` (its attributes are
#   `REG32_NAMES`: `cpu.eax`, `cpu.ecx`, ...).
#
# The hidden tests plug your emulator into the VMM and run toyos on it.


# %% nbgrader={"grade": false, "grade_id": "02-emulate", "locked": false, "schema_version": 3, "solution": true, "task": false}
def emulate(ins, cpu, vcpu) -> None:
    ### BEGIN SOLUTION
    if ins.name == "cli":
        vcpu.vif = False
    elif ins.name == "sti":
        vcpu.vif = True
    elif ins.name == "mov_from_cr":
        value = {0: vcpu.cr0, 2: vcpu.cr2, 3: vcpu.cr3, 4: vcpu.cr4}[ins.reg]
        setattr(cpu, REG32_NAMES[ins.rm], value)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "02-emulate-check", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def fresh_vmm():
    vmm = vm.boot("syscalls", mode="trap-emulate").vm
    for name, value in CR_VALUES.items():
        setattr(vmm.vcpu, name, value)
    return vmm


@lesson.test("02-emulate")
def cli_and_sti(t):
    vmm = fresh_vmm()
    seen = []
    for source in ("sti", "cli", "sti"):
        emulate(decode_form(assemble(source).code), vmm.cpu, vmm.vcpu)
        seen.append(bool(vmm.vcpu.vif))
    t.expect(seen, [True, False, True], "the virtual IF after sti, cli, sti")


@lesson.test("02-emulate")
def your_moves(t):
    for source in MOVES:
        vmm = fresh_vmm()
        ins = decode_form(assemble(source).code)
        emulate(ins, vmm.cpu, vmm.vcpu)
        register, cr = source[4:7], source[9:]
        hint = "the guest's CR, from the vCPU"
        t.expect(getattr(vmm.cpu, register), CR_VALUES[cr], f"{register} after {source}", hint=hint)


### BEGIN HIDDEN TESTS
@lesson.test("02-emulate", hidden=True)
def toyos_runs_on_your_emulator(t):
    guest = vm.boot("spawn", mode="trap-emulate")
    vmm = guest.vm
    for name in ("cli", "sti", "mov_from_cr"):
        vmm.emulator.handlers[name] = lambda ins, eip: emulate(ins, vmm.cpu, vmm.vcpu)
    result = guest.run()
    reference = vm.boot("spawn", mode="trap-emulate")
    expected = reference.run()
    t.expect([result.ok, guest.console], [expected.ok, reference.console], "toyos on yours")


### END HIDDEN TESTS

check("02-emulate")

# %% [markdown]
# ## 3. Shadow paging
#
# The guest's CR3 points at *its* page tables, which map guest-physical addresses. The
# CPU must walk tables that reach the host's memory: the VMM keeps **shadow** tables,
# filled lazily on *hidden* page faults, and write-protects the guest's tables so that
# each change to them traps and is mirrored. That is why toyos's page-table work is so
# expensive here (Adams & Agesen's "ptemod").

# %%
for workload in ("compute", "pagetable"):
    result = vm.boot(workload, mode="trap-emulate").run()
    print(f"{workload:10} exits: {result.stats['exits_by_reason']}")
    print(f"{'':10} shadow: {result.stats['shadow']}")

# %% [markdown]
# ## 4. The POPF hole, and patching it
#
# At ring 1, `popf` cannot change IF, and it does not trap either: it silently keeps
# the old value. toyos (like Linux's `spin_unlock_irqrestore`) turns interrupts back on
# with POPF, so unpatched, its idle loop halts with interrupts off and never wakes:

# %%
hung = vm.boot("sleeper", mode="trap-emulate", patch=False)
hung.run()
print(hung.status, "-", hung.events[-1].text[:400])

# %% [markdown]
# The VMM's fix: at load time, find every PUSHF, POPF and IRET in the kernel's code and
# overwrite each with INT3 (a one-byte trap); the INT3 exit's handler emulates what was
# there. Finding them is the subtle part: x86 instructions have different lengths, so a
# byte `9D` (POPF) may just be part of another instruction's immediate.
#
# ### Exercise 02-popf (3 points)
#
# Write `find_sites(code, start)`: the addresses of every `pushf`, `popf` and `iret` in
# `code` (the kernel's text, which starts at address `start`). Walk it instruction by
# instruction: `decode_form(chunk)` decodes the instruction at the start of `chunk`
# (`.name`, `.length`), and returns None for bytes that are no instruction.

# %%
code, start = kernel_code()
print(f"toyos's kernel text: {len(code)} bytes at {start:#x}")
print("bytes that look like pushf/popf/iret:", sum(b in (0x9C, 0x9D, 0xCF) for b in code))


# %% nbgrader={"grade": false, "grade_id": "02-popf", "locked": false, "schema_version": 3, "solution": true, "task": false}
def find_sites(code: bytes, start: int) -> list[int]:
    ### BEGIN SOLUTION
    sites, at = [], 0
    while at < len(code):
        ins = decode_form(code[at : at + 15])
        if ins is None:
            break
        if ins.name in ("pushf", "popf", "iret"):
            sites.append(start + at)
        at += ins.length
    return sites
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "02-popf-check", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def true_sites():
    guest = vm.boot("syscalls", mode="trap-emulate")
    return sorted(guest.vm.sites)


@lesson.test("02-popf")
def sleeper_wakes_with_your_patch(t):
    guest = boot_with_sites("sleeper", find_sites(*kernel_code()))
    guest.run()
    hint = "a POPF left unpatched loses IF; a byte patched mid-instruction breaks code"
    t.expect(guest.status, "shutdown", "how the sleeper ended with your patch", hint=hint)


@lesson.test("02-popf")
def exactly_the_sites(t):
    mine = sorted(find_sites(*kernel_code()))
    t.expect(len(mine), len(true_sites()), "how many sites", hint="a 9D byte is not always POPF")


### BEGIN HIDDEN TESTS
@lesson.test("02-popf", hidden=True)
def same_sites_and_workloads(t):
    mine = sorted(find_sites(*kernel_code()))
    t.expect(mine == true_sites(), True, "the very sites")
    for workload in ("spawn", "io"):
        guest = boot_with_sites(workload, mine)
        guest.run()
        t.expect(guest.status, "shutdown", workload)


### END HIDDEN TESTS

check("02-popf")

# %% [markdown]
# > **In real systems.** VMware's first product (1999) ran x86 guests by **binary
# > translation**: kernel code was translated block by block, each sensitive instruction
# > replaced with a call into the VMM (Adams & Agesen, "A Comparison of Software and
# > Hardware Techniques for x86 Virtualization", ASPLOS 2006; Bugnion et al., "Bringing
# > Virtualization to the x86 Architecture with the Original VMware Workstation", TOCS
# > 2012). A callout costs far less than a trap. Compare the two in simulated cycles:

# %%
for mode in ("native", "trap-emulate", "binary-translation"):
    result = vm.boot("spawn", mode=mode).run()
    print(f"{mode:20} {result.stats['cycles']:>12,} cycles  {result.stats['exits']:>6} exits")

# %% [markdown]
# ## 5. The red pill
#
# `sidt` is sensitive but not privileged (lesson 01): user code can read where the IDT
# is. Under the VMM the real IDT is the VMM's, high in memory, and `sidt` shows *that*
# one (Rutkowska's "Red Pill", 2004). `run_user_code(source, mode)` runs a few
# instructions as toyos user code at ring 3 and returns the registers after them:

# %%
peek = "sub esp, 8\nsidt [esp]\nmov eax, [esp+2]\nadd esp, 8"
for mode in ("native", "trap-emulate"):
    print(f"{mode:14} IDT base {run_user_code(peek, mode)['eax']:#010x}")

# %% [markdown]
# ### Exercise 02-redpill (3 points)
#
# Write user code (`DETECT`, assembly) that leaves **1 in EAX under any VMM and 0 on
# bare metal**, and restores ESP. It must end where it ends (no jumps out).

# %% nbgrader={"grade": false, "grade_id": "02-redpill", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
DETECT = """
    sub esp, 8
    sidt [esp]
    mov ebx, [esp+2]
    add esp, 8
    xor eax, eax
    cmp ebx, 0xc0000000
    jb .bare
    mov eax, 1
.bare:
"""
### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "02-redpill-check", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
@lesson.test("02-redpill")
def bare_metal_says_0(t):
    regs = run_user_code(DETECT, "native")
    t.expect([regs["finished"], regs["eax"]], [1, 0], "[it finished, EAX] on bare metal")


@lesson.test("02-redpill")
def trap_and_emulate_says_1(t):
    regs = run_user_code(DETECT, "trap-emulate")
    what = "[it finished, EAX] under trap-and-emulate"
    t.expect([regs["finished"], regs["eax"]], [1, 1], what, hint="where is the IDT?")


### BEGIN HIDDEN TESTS
@lesson.test("02-redpill", hidden=True)
def every_vmm_says_1(t):
    for mode in ("binary-translation", "paravirt"):
        regs = run_user_code(DETECT, mode)
        t.expect([regs["finished"], regs["eax"]], [1, 1], mode)


### END HIDDEN TESTS

check("02-redpill")

# %% [markdown]
# > **In real systems.** Red-pill tricks (SIDT, timing, CPUID's hypervisor bit) are how
# > malware avoids sandboxes, and why Intel's VT-x (lesson 03) and UMIP exist. Hardware
# > assist made x86 classically virtualizable: every sensitive instruction can be made to
# > exit. Adams & Agesen's surprise was that early VT-x was *slower* than binary
# > translation, because each exit cost thousands of cycles.
