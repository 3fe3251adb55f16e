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
#     lesson: 01-privilege
# ---

# %% [markdown]
# # Lesson 01: privilege on bare metal
#
# An operating system protects itself from its programs with help from the CPU. In this
# lesson (about 35 minutes) you will:
#
# 1. see the **rings**: which instructions only ring 0 may run, and which ones are
#    *sensitive* yet run anywhere (the seed of lesson 02's trouble);
# 2. follow an **interrupt** from ring 3 into the kernel: the stack switch and the frame
#    the CPU pushes; this is how a **system call** (`int 0x80`) enters toyos;
# 3. walk toyos's **page tables** by hand, as the CPU's MMU does.
#
# Put your student id in the first cell: it picks your variant.

# %% tags=["setup"]
import vm
from vm.lessons import Lesson
from vm.lessons.helpers import (
    USER_CODE,
    USER_DATA,
    at_ring3,
    boot_to_user,
    interrupt_frame,
    physical_reader,
)

STUDENT = "your-student-id"  # <- your id: it picks your variant
lesson = Lesson("01-privilege", student=STUDENT)
check = lesson.check
CANDIDATES = [
    "cli", "sti", "hlt", "mov eax, cr0", "mov cr3, eax", "lidt [0x2000]", "sidt [0x2000]",
    "sgdt [0x2000]", "pushf", "popf", "in al, 0x60", "out 0x60, al", "smsw eax",
    "invlpg [0x2000]", "lgdt [0x2000]", "str eax", "cpuid", "mov eax, cs",
]  # fmt: skip
MY_INSTRUCTIONS = lesson.sample("MY_INSTRUCTIONS", CANDIDATES, 6)
USER_ESP = lesson.pick("USER_ESP", range(0x6000, 0x7000, 4))
USER_EIP = lesson.pick("USER_EIP", range(0x2000, 0x2800))
ESP0 = lesson.pick("ESP0", range(0x8800, 0x9800, 16))
OFFSETS = lesson.sample("OFFSETS", range(0, 0x3000, 4), 2)
print(lesson)

# %% [markdown]
# ## 1. Rings
#
# x86 has four privilege levels, rings 0 to 3. The *current privilege level* (CPL) is
# the low two bits of CS. toyos, like Linux, uses two: its kernel at ring 0, programs at
# ring 3. An instruction that could take the machine away from the kernel (turn off
# interrupts, load a page table, halt) is *privileged*: at ring 3 it raises #GP, a
# general protection fault, and the kernel decides what happens next.

# %%
for instruction in ["add eax, 1", "cli", "mov cr3, eax"]:
    print(f"{instruction:14} at ring 3: {at_ring3(instruction)}")

# %% [markdown]
# ### Exercise 01-rings (3 points): predict, then measure
#
# For each of your six instructions, predict whether it faults (#GP) when run at ring 3,
# with IOPL 0. Fill in `FAULTS` with `True` (it raises #GP) or `False` (it runs). You
# may measure with `at_ring3(...)` after you predicted: the surprises are the point.

# %%
print("Your instructions:", MY_INSTRUCTIONS)

# %% nbgrader={"grade": false, "grade_id": "01-rings", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
PRIVILEGED = {
    "cli",
    "sti",
    "hlt",
    "mov eax, cr0",
    "mov cr3, eax",
    "lidt [0x2000]",
    "lgdt [0x2000]",
    "in al, 0x60",
    "out 0x60, al",
    "invlpg [0x2000]",
}
FAULTS = {instruction: instruction in PRIVILEGED for instruction in MY_INSTRUCTIONS}
### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "01-rings-check", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
@lesson.test("01-rings")
def first_three_predicted(t):
    for instruction in MY_INSTRUCTIONS[:3]:
        t.expect(
            FAULTS.get(instruction),
            at_ring3(instruction) == "#GP",
            f"does {instruction!r} fault at ring 3?",
            hint="privileged means: it could take control away from the kernel",
        )


### BEGIN HIDDEN TESTS
@lesson.test("01-rings", hidden=True)
def last_three_predicted(t):
    for instruction in MY_INSTRUCTIONS[3:]:
        t.expect(FAULTS.get(instruction), at_ring3(instruction) == "#GP", instruction)


### END HIDDEN TESTS

check("01-rings")

# %% [markdown]
# > **In real systems.** `sidt`, `sgdt`, `smsw`, `str`, `pushf` and `mov eax, cs` read
# > privileged state yet run at any ring: x86 has 17 such *sensitive, unprivileged*
# > instructions (Robin & Irvine, "Analysis of the Intel Pentium's ability to support a
# > secure virtual machine monitor", USENIX Security 2000). Popek and Goldberg (CACM 1974)
# > showed that a machine can be virtualized by trap-and-emulate only if every sensitive
# > instruction is privileged. x86 fails the test; lesson 02 shows what that costs.
# > (Intel later added UMIP, which makes `sgdt`/`sidt`/`smsw`/`str` fault at ring 3.)
#
# ## 2. Interrupts and system calls
#
# When an interrupt or `int n` arrives, the CPU reads the gate for vector n in the IDT
# (the interrupt descriptor table). If the gate leads from ring 3 into ring 0 code, the
# CPU switches stacks: it loads the kernel's stack pointer (ESP0) from the TSS, then
# pushes the user's SS and ESP, EFLAGS, CS and the return EIP, and jumps to the handler.
# `iret` pops them all back. toyos's system calls are `int 0x80` (as Linux's were) with
# the call's number in EAX. Watch toyos make them, live, on bare metal:

# %%
import widgets

guest = vm.boot("syscalls", mode="native")
widgets.Lab(guest)

# %% [markdown]
# ### Exercise 01-frame (3 points)
#
# Write `kernel_stack(user_esp, eflags, next_eip, esp0)`: what the CPU leaves when a ring
# 3 program at stack `user_esp` runs `int 0x80` (the next instruction is at `next_eip`)
# through a DPL-3 gate, with the TSS's ESP0 = `esp0`. Return `(esp, dwords)`: the
# handler's ESP, and the five dwords from ESP upward. The selectors are `USER_CODE`
# and `USER_DATA` (their RPL is 3: the CPL the program ran at).

# %%
print(f"Your user stack {USER_ESP:#x}, int 0x80 at {USER_EIP:#x}, ESP0 {ESP0:#x}")
print("user selectors:", hex(USER_CODE), hex(USER_DATA))


# %% nbgrader={"grade": false, "grade_id": "01-frame", "locked": false, "schema_version": 3, "solution": true, "task": false}
def kernel_stack(user_esp: int, eflags: int, next_eip: int, esp0: int) -> tuple[int, list[int]]:
    ### BEGIN SOLUTION
    esp = esp0 - 5 * 4
    return esp, [next_eip, USER_CODE, eflags, user_esp, USER_DATA]
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "01-frame-check", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
@lesson.test("01-frame")
def your_frame(t):
    esp, dwords = interrupt_frame(USER_ESP, USER_EIP, ESP0)
    mine_esp, mine = kernel_stack(USER_ESP, 0x202, USER_EIP + 2, ESP0)
    t.expect(mine_esp, esp, "ESP in the handler", hint="five dwords below ESP0")
    names = ["EIP", "CS", "EFLAGS", "ESP", "SS"]
    for i, name in enumerate(names):
        got = list(mine)[i] if len(list(mine)) > i else None
        t.expect(got, dwords[i], f"the user's {name} at ESP+{4 * i}", hint="SS is pushed first")


### BEGIN HIDDEN TESTS
@lesson.test("01-frame", hidden=True)
def other_numbers(t):
    esp, dwords = interrupt_frame(0x5000, 0x3100, 0xA000, eflags=0x246)
    t.expect(list(kernel_stack(0x5000, 0x246, 0x3102, 0xA000)), [esp, dwords], "another frame")


### END HIDDEN TESTS

check("01-frame")

# %% [markdown]
# > **In real systems.** Intel SDM Vol. 3, §6.12.1 ("Exception- and Interrupt-Handler
# > Procedures") describes exactly this frame. Linux on 32-bit x86 entered system calls by
# > `int $0x80` until `sysenter` (Pentium II) and `syscall` made the entry cheaper; an
# > `int 0x80` cost ~200+ cycles on a Pentium 4, which is why the lmbench "null call" is a
# > benchmark at all (McVoy & Staelin, USENIX 1996).
#
# ## 3. Paging
#
# toyos gives each process its own address space. CR3 holds the physical address of a
# *page directory*: 1024 entries, each mapping 4 MiB through a *page table* of 1024
# entries, each mapping one 4 KiB page. A linear address splits into 10 bits of directory
# index, 10 bits of table index and 12 bits of offset. An entry holds a frame address
# (the top 20 bits) and flags: P (bit 0, present), RW (bit 1), US (bit 2, user may use it),
# A and D. Watch one address walk through toyos's tables:

# %%
guest = boot_to_user("syscalls")
view = guest.view()
print(f"a user process runs at ring {view.guest.cpl}; CR3 = {view.guest.cr3:#x}")
for step in view.translate(view.eip).steps:
    print(f"  {step.table:16} entry {step.index:4} at {step.address:#08x}: {step.value:#010x}")
print(f"  -> physical {view.translate(view.eip).physical:#x}")

# %%
widgets.PageTableView(guest, follow="eip")

# %% [markdown]
# ### Exercise 01-paging (4 points)
#
# Write `translate(read32, cr3, linear)`: the physical address the MMU reaches for
# `linear`, or `-1` if a directory or table entry on the way is not present.
# `read32(physical)` reads a dword of physical memory. Ignore the other flags.


# %% nbgrader={"grade": false, "grade_id": "01-paging", "locked": false, "schema_version": 3, "solution": true, "task": false}
def translate(read32, cr3: int, linear: int) -> int:
    ### BEGIN SOLUTION
    directory_entry = read32((cr3 & ~0xFFF) + 4 * (linear >> 22))
    if not directory_entry & 1:
        return -1
    table_entry = read32((directory_entry & ~0xFFF) + 4 * ((linear >> 12) & 0x3FF))
    if not table_entry & 1:
        return -1
    return (table_entry & ~0xFFF) | (linear & 0xFFF)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "01-paging-check", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
def walk_check(t, linears):
    guest = boot_to_user("syscalls")
    view = guest.view()
    read32 = physical_reader(guest)
    for linear in linears:
        want = view.translate(linear).physical
        hint = "directory index: linear >> 22; table index: (linear >> 12) & 0x3ff"
        mine = translate(read32, view.guest.cr3, linear)
        t.expect(mine, want, f"translate({linear:#x})", hint=hint)


@lesson.test("01-paging")
def user_code_and_kernel(t):
    walk_check(t, [0x400000 + OFFSETS[0], 0x1000 + OFFSETS[1]])


@lesson.test("01-paging")
def not_present(t):
    walk_check(t, [0xA0000000 + OFFSETS[0]])


### BEGIN HIDDEN TESTS
@lesson.test("01-paging", hidden=True)
def more_addresses(t):
    walk_check(t, [0x400FFF, 0x3FFFFC, 0x00000000 + OFFSETS[1], 0xFFFFF000, 0x401000 + OFFSETS[0]])


### END HIDDEN TESTS

check("01-paging")

# %% [markdown]
# > **In real systems.** The i386 introduced this two-level scheme (Intel SDM Vol. 3,
# > §4.3); x86-64 walks four or five levels. The TLB caches translations, so the kernel
# > must `invlpg` after changing an entry (toyos does). Under a hypervisor the guest's
# > CR3 is not the one the CPU walks: lesson 02's shadow page tables and lesson 03's
# > nested paging are two answers to "whose page tables?".
#
# ## What's next
#
# Lesson 02 runs this same kernel, unmodified, at ring 1 under a hypervisor, and every
# privileged instruction you predicted above becomes a trap the VMM must emulate.
