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
#     lesson: 00-machine
# ---

# %% [markdown]
# # Lesson 00: the machine
#
# Before we virtualize a computer we need one. vmlab's CPU runs a real subset of 32-bit
# x86: the same bytes, the same registers, the same faults as an i386. In this lesson
# (about 30 minutes) you will:
#
# 1. read and change the **registers** of a running CPU,
# 2. **step** it one instruction at a time and predict what it does,
# 3. use the **assembler** and encode an instruction by hand,
# 4. make it **fault** on purpose, and see that a fault leaves the CPU ready to restart
#    the instruction (the property every hypervisor in this course depends on).
#
# Put your student id in the first cell: it picks *your* numbers for the exercises (the
# grader uses the same id, so solve your own variant). `check("00-...")` after an
# exercise runs its public tests; more tests run when it is graded.

# %% tags=["setup"]
from vm.asm import assemble
from vm.lessons import Lesson
from vm.lessons.helpers import outcome, run_asm
from vm.machine import Machine

STUDENT = "your-student-id"  # <- your id: it picks your variant
lesson = Lesson("00-machine", student=STUDENT)
check = lesson.check
OPERATION = lesson.pick("OPERATION", ["ebx * ecx + edx", "(ebx + ecx) * edx", "ebx * ebx - ecx"])
NUMBERS = {
    "ebx": lesson.pick("EBX", range(3, 60)),
    "ecx": lesson.pick("ECX", range(3, 60)),
    "edx": lesson.pick("EDX", range(3, 60)),
}
LOOP_COUNT = lesson.pick("LOOP_COUNT", range(4, 13))
ENCODE = lesson.pick("ENCODE", ["add", "sub", "xor", "cmp"])
FAULT = lesson.pick("FAULT", ["#DE", "#UD", "#GP"])
print(lesson)

# %% [markdown]
# ## 1. Registers
#
# A `Machine` is a CPU with 1 MiB of memory, at ring 0 (the most privileged level), with
# flat memory. `load_asm` assembles NASM-syntax source and points EIP at it; `run()` runs
# until something needs the outside world and returns that *exit* (here: HLT).

# %%
m = Machine()
m.load_asm("""
    mov eax, 7
    mov ebx, 5
    add eax, ebx      ; eax = 12
    hlt
""")
print(m.run())
print(m.regs)

# %% [markdown]
# Registers are plain numbers you can read and set from Python: `m.regs.eax`,
# `m.regs["ecx"] = 3`. EFLAGS holds the condition flags the last arithmetic left: ZF (the
# result was zero), SF (negative), CF (unsigned carry), OF (signed overflow).
#
# **Try it:** change `add` to `sub eax, 7` and look at ZF (bit 6 of EFLAGS).

# %%
m = run_asm("mov eax, 7\nsub eax, 7\nhlt")
print(f"eax={m.regs.eax}  eflags={m.eflags:#x}  ZF={(m.eflags >> 6) & 1}")

# %% [markdown]
# ### Exercise 00-registers (3 points)
#
# The test puts numbers in EBX, ECX and EDX. Write assembly that leaves **your**
# operation (printed below) in EAX and then halts. Use only `mov`, `add`, `sub`, `imul`
# and `hlt`.

# %%
print("Your operation: eax =", OPERATION)

# %% nbgrader={"grade": false, "grade_id": "00-registers", "locked": false, "schema_version": 3, "solution": true, "task": false}
# SOURCE: your assembly, one string (EAX = your operation, then hlt)
### BEGIN SOLUTION
SOURCE = {
    "ebx * ecx + edx": "mov eax, ebx\nimul eax, ecx\nadd eax, edx\nhlt",
    "(ebx + ecx) * edx": "mov eax, ebx\nadd eax, ecx\nimul eax, edx\nhlt",
    "ebx * ebx - ecx": "mov eax, ebx\nimul eax, ebx\nsub eax, ecx\nhlt",
}[OPERATION]
### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "00-registers-check", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def operation(ebx, ecx, edx):
    return eval(OPERATION, {}, {"ebx": ebx, "ecx": ecx, "edx": edx}) & 0xFFFFFFFF


@lesson.test("00-registers")
def eax_holds_your_operation(t):
    m = run_asm(SOURCE, setup=NUMBERS)
    t.expect(outcome(m), "HALT", "how the program ended", hint="end it with hlt")
    t.expect(m.regs.eax, operation(**NUMBERS), f"EAX = {OPERATION} with {NUMBERS}")


@lesson.test("00-registers")
def other_registers_kept(t):
    m = run_asm(SOURCE, setup=NUMBERS)
    t.expect(m.regs.esi, 0, "ESI (nobody asked you to change it)")


### BEGIN HIDDEN TESTS
@lesson.test("00-registers", hidden=True)
def other_numbers(t):
    for numbers in ({"ebx": 1, "ecx": 2, "edx": 3}, {"ebx": 1000, "ecx": 77, "edx": 5}):
        m = run_asm(SOURCE, setup=numbers)
        t.expect(m.regs.eax, operation(**numbers), f"EAX with {numbers}")


### END HIDDEN TESTS

check("00-registers")

# %% [markdown]
# ## 2. Stepping
#
# `m.step()` executes exactly one instruction. `m.instructions` counts instructions
# retired and `m.cycles` the simulated cycles they cost (a cost model, not a real CPU's
# timing). Step this loop and watch EIP and ECX:

# %%
m = Machine()
m.load_asm("mov ecx, 3\nagain:\nadd eax, ecx\nloop again\nhlt")
for _ in range(5):
    m.step()
    print(f"eip={m.eip:#x} ecx={m.regs.ecx} eax={m.regs.eax} instructions={m.instructions}")

# %% [markdown]
# The same machine, live: toyos (this course's guest OS) booted on bare metal. Press
# **Step** and **Run** and watch the registers and the disassembly follow.

# %%
import vm
import widgets

guest = vm.boot("compute", mode="native")
widgets.Lab(guest)

# %% [markdown]
# ### Exercise 00-stepping (2 points): predict, then measure
#
# Without running it, predict for the program below with your `LOOP_COUNT`: how many
# instructions it retires in total (HLT counts), and EIP after exactly 4 steps.
# Then check with `check`.

# %% tags=["setup"]
PROGRAM = f"""
    mov ecx, {LOOP_COUNT}
    xor eax, eax
again:
    add eax, ecx
    dec ecx
    jnz again
    hlt
"""

# %%
for line in Machine().load_asm(PROGRAM).listing:  # address, bytes, source
    print(f"{line.address:#06x}  {line.data.hex(' '):16} {line.text}")

# %% nbgrader={"grade": false, "grade_id": "00-stepping", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
INSTRUCTIONS = 2 + 3 * LOOP_COUNT + 1
EIP_AFTER_4_STEPS = 0x1000 + 5 + 2 + 2 + 1  # mov, xor, add, dec: at jnz
### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "00-stepping-check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
@lesson.test("00-stepping")
def instructions_predicted(t):
    m = run_asm(PROGRAM)
    t.expect(INSTRUCTIONS, m.instructions, "instructions retired", hint="3 per loop turn")


### BEGIN HIDDEN TESTS
@lesson.test("00-stepping", hidden=True)
def eip_predicted(t):
    m = Machine()
    m.load_asm(PROGRAM)
    for _ in range(4):
        m.step()
    t.expect(EIP_AFTER_4_STEPS, m.eip, "EIP after 4 steps")


### END HIDDEN TESTS

check("00-stepping")

# %% [markdown]
# ## 3. The assembler
#
# `vm.asm.assemble` turns source into bytes, and the bytes equal NASM's (`nasm -f bin`):
# the tests check every instruction form against NASM. x86 often has two encodings for
# one instruction; assemblers pick the shortest. `add eax, 5` fits the immediate in a
# signed byte (`83 /0 ib`), `add eax, 300` does not (`05 id`):

# %%
for source in ["add eax, 5", "add eax, 300", "add eax, -128", "sub eax, 1000"]:
    print(f"{source:16} {assemble(source).code.hex(' ')}")

# %% [markdown]
# > **In real systems.** Intel's manual (SDM Vol. 2, the opcode map in Appendix A) lists
# > both forms: `05 id` (ADD EAX, imm32) and `83 /0 ib` (ADD r/m32, imm8, sign-extended).
# > The ModRM byte `C0 + reg` after `83` names the register; the `/digit` (0 for ADD, 5
# > SUB, 6 XOR, 7 CMP) sits in its middle bits. A VMM that emulates an instruction starts
# > exactly here: decoding these bytes.
#
# ### Exercise 00-encoding (3 points)
#
# Write `encode(imm)`: the bytes NASM produces for **your** instruction with EAX and the
# immediate `imm` (-2**31 <= imm < 2**31), choosing the short form when the immediate fits
# in a signed byte. Do not call the assembler.

# %%
print(f"Your instruction: {ENCODE} eax, imm")


# %% nbgrader={"grade": false, "grade_id": "00-encoding", "locked": false, "schema_version": 3, "solution": true, "task": false}
def encode(imm: int) -> bytes:
    ### BEGIN SOLUTION
    digit = {"add": 0, "sub": 5, "xor": 6, "cmp": 7}[ENCODE]
    if -128 <= imm <= 127:
        return bytes([0x83, 0xC0 | (digit << 3), imm & 0xFF])
    return bytes([0x05 | (digit << 3)]) + (imm & 0xFFFFFFFF).to_bytes(4, "little")
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "00-encoding-check", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
@lesson.test("00-encoding")
def short_form(t):
    t.expect(encode(5).hex(" "), assemble(f"{ENCODE} eax, 5").code.hex(" "), f"{ENCODE} eax, 5")


@lesson.test("00-encoding")
def long_form(t):
    want = assemble(f"{ENCODE} eax, 0x12345").code.hex(" ")
    t.expect(encode(0x12345).hex(" "), want, f"{ENCODE} eax, 0x12345", hint="little-endian")


### BEGIN HIDDEN TESTS
@lesson.test("00-encoding", hidden=True)
def boundaries(t):
    for imm in (127, 128, -128, -129, -1, 0x7FFFFFFF, -(2**31)):
        want = assemble(f"{ENCODE} eax, {imm}").code.hex(" ")
        t.expect(encode(imm).hex(" "), want, f"{ENCODE} eax, {imm}")


### END HIDDEN TESTS

check("00-encoding")

# %% [markdown]
# ## 4. Faults
#
# When an instruction cannot complete, the CPU raises an *exception* (a fault): #DE for a
# division by zero, #UD for bytes that are no instruction, #GP for a general protection
# violation (here: touching memory beyond the machine's RAM), #PF for a page fault. A bare
# `Machine` hands every fault to Python as a `FAULT` exit. The important part: **EIP
# still points at the faulting instruction** and nothing it did is half-done, so whoever
# handles the fault can fix the cause and run the instruction again.

# %%
m = run_asm("mov eax, 1\nxor edx, edx\nmov ecx, 0\nboom:\ndiv ecx\nhlt")
print(m.exit, "| boom is at", hex(m.program.symbols["boom"]))
m.regs.ecx = 1  # fix the cause...
print(m.run(), "eax =", m.regs.eax)  # ...and the same div runs again, and completes

# %% [markdown]
# > **In real systems.** Intel SDM Vol. 3, §6.5 and §6.15: faults are reported with the
# > saved EIP on the faulting instruction "so that the instruction can be restarted";
# > traps (INT3, INT n) report the instruction after. Popek and Goldberg (1974) built the
# > theory of virtualization on exactly this: a privileged instruction in a deprivileged
# > guest must *trap*, cleanly, so the monitor can emulate it and resume.
#
# ### Exercise 00-faults (2 points)
#
# Write a program that raises **your** fault at an instruction labelled `boom:`, and
# executes nothing after it.

# %%
print("Your fault:", FAULT)

# %% nbgrader={"grade": false, "grade_id": "00-faults", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
FAULT_SOURCE = {
    "#DE": "xor edx, edx\nxor ecx, ecx\nboom:\ndiv ecx\nhlt",
    "#UD": "nop\nboom:\ndb 0x0f, 0x0b\nhlt",
    "#GP": "nop\nboom:\nmov eax, [0xfffffff0]\nhlt",
}[FAULT]
### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "00-faults-check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
@lesson.test("00-faults")
def your_fault(t):
    m = run_asm(FAULT_SOURCE)
    t.expect(outcome(m), FAULT, "how the program ended")


@lesson.test("00-faults")
def at_boom(t):
    m = run_asm(FAULT_SOURCE)
    boom = m.program.symbols.get("boom")
    t.expect(m.exit.eip, boom, "EIP at the fault (the label boom)", hint="label it boom:")


### BEGIN HIDDEN TESTS
@lesson.test("00-faults", hidden=True)
def restartable(t):
    m = run_asm(FAULT_SOURCE)
    before = m.instructions
    again = m.run()
    t.expect(
        [outcome(m), again.eip, m.instructions],
        [FAULT, m.program.symbols.get("boom"), before],
        "the same fault again",
    )


### END HIDDEN TESTS

check("00-faults")

# %% [markdown]
# ## What's next
#
# Lesson 01 adds privilege: rings, interrupts, system calls and paging, and the guest OS
# toyos that uses them. Everything a hypervisor does later is built from these exits.
