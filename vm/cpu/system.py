"""The i386 system model: descriptors, interrupt and exception delivery, IRET, LTR.

Rare paths, so compiled as ordinary calls (not inlined into the run loop). Each returns a
status and records a fault the same way memory accesses do (FAULT_VECTOR/FAULT_ERROR in
the state), so the run loop handles a fault during delivery like any other.

Segments are flat: a selector names a GDT descriptor whose DPL decides the privilege
level; bases and limits are not applied to addresses (see README, Differences).
"""

from __future__ import annotations

from numba import types

from vm.cpu.jit import Mem, State, b1, i64, jit, pair
from vm.cpu.memory import flush_tlb, host_index_slow, load, store
from vm.cpu.state import (
    CR0,
    CR0_GUEST_HOST_MASK,
    CR0_PE,
    CR0_READ_SHADOW,
    CR2,
    CR3,
    CR4,
    CS,
    DS,
    EAX,
    EBX,
    ECX,
    EDX,
    ES,
    ESP,
    EXIT_CONTROLS,
    EXIT_CR,
    EXIT_CR_REGISTER,
    EXIT_CR_WRITE,
    EXIT_ON_CR3_LOAD,
    EXIT_ON_CR3_STORE,
    EXIT_ON_CR_ACCESS,
    EXIT_QUALIFICATION,
    EXIT_VALUE,
    FAULT_ERROR,
    FAULT_VECTOR,
    FLAG_IF,
    FLAG_IOPL,
    FLAG_TF,
    FRAME,
    FS,
    GDTR_BASE,
    GDTR_LIMIT,
    GS,
    IDTR_BASE,
    IDTR_LIMIT,
    NON_ROOT,
    SS,
    TR,
    TSS_BASE,
)
from vm.isa import POPF_WRITABLE

VECTOR_UD = 6
VECTOR_TS = 10
VECTOR_NP = 11
VECTOR_SS = 12
VECTOR_GP = 13
MASK32 = 0xFFFFFFFF

GATE_INTERRUPT = 0xE  # 32-bit interrupt gate: clears IF
GATE_TRAP = 0xF  # 32-bit trap gate: keeps IF
TSS_AVAILABLE = 0x9
TSS_BUSY = 0xB

# The flags IRET restores at any CPL (the same as POPF's); IF needs CPL <= IOPL, IOPL CPL 0.
IRET_WRITABLE = POPF_WRITABLE
NT_RF_VM = 0x4000 | 0x10000 | 0x20000


@jit(i64(State, i64, i64))
def fail(state, vector, error):
    """Record an exception raised by the system model; returns -1."""
    state[FAULT_VECTOR] = vector
    state[FAULT_ERROR] = error
    return -1


@jit(pair(i64)(Mem, State, i64))
def descriptor(mem, state, selector):
    """The 8-byte GDT descriptor of selector as (low dword, high dword), or (-1, -1).

    A null selector or one past the GDT limit raises #GP(selector).
    """
    index = selector & 0xFFF8
    if index == 0 or selector & 4 or index + 7 > state[GDTR_LIMIT]:
        fail(state, VECTOR_GP, selector & 0xFFFC)
        return -1, -1
    i = host_index_slow(mem, state, (state[GDTR_BASE] + index) & MASK32, 8, False, False)
    if i < 0:
        return -1, -1
    return load(mem, i, 4), load(mem, i + 4, 4)


@jit(i64(i64, i64))
def descriptor_base(low, high):
    """The base address of a segment descriptor."""
    return ((low >> 16) & 0xFFFF) | ((high & 0xFF) << 16) | (high & 0xFF000000)


@jit(i64(Mem, State, i64, i64))
def code_segment_dpl(mem, state, selector, error):
    """DPL of the code segment selector names, or -1 (#GP(error) when it is not one)."""
    _, high = descriptor(mem, state, selector)
    if high < 0:
        return -1
    access = (high >> 8) & 0xFF
    if access & 0x18 != 0x18:  # S = 1 and executable: a code segment
        return fail(state, VECTOR_GP, error)
    if not access & 0x80:
        return fail(state, VECTOR_NP, error)
    return (access >> 5) & 3


@jit(i64(Mem, State, i64, i64))
def push_frame(mem, state, esp, count):
    """Push the FRAME slots 0..count of the state (first pushed first) at esp; the new ESP,
    or -1."""
    new_esp = (esp - 4 * count) & MASK32
    i = host_index_slow(mem, state, new_esp, 4 * count, True, False)
    if i < 0:
        return -1
    for k in range(count):
        store(mem, i + 4 * (count - 1 - k), 4, state[FRAME + k])
    return new_esp


@jit(types.Tuple((b1, i64, i64))(Mem, State, i64, i64, i64, i64, b1))
def deliver(mem, state, vector, error, return_eip, flags, software):
    """Deliver an interrupt or exception through the IDT -> (ok, new EIP, new EFLAGS).

    ``error`` >= 0 is pushed as the error code; ``software`` is INT n / INT3 (the gate's
    DPL is checked against the CPL).
    On a privilege change the new stack comes from the TSS (ESP0/SS0 or ESP1/SS1).
    """
    ext = 0 if software else 1
    gate_error = vector * 8 + 2 + ext
    if vector * 8 + 7 > state[IDTR_LIMIT]:
        fail(state, VECTOR_GP, gate_error)
        return False, return_eip, flags
    i = host_index_slow(mem, state, (state[IDTR_BASE] + vector * 8) & MASK32, 8, False, False)
    if i < 0:
        return False, return_eip, flags
    low = load(mem, i, 4)
    high = load(mem, i + 4, 4)
    gate_type = (high >> 8) & 0x1F
    gate_dpl = (high >> 13) & 3
    cpl = state[CS] & 3
    if gate_type != GATE_INTERRUPT and gate_type != GATE_TRAP:
        fail(state, VECTOR_GP, gate_error)
        return False, return_eip, flags
    if software and cpl > gate_dpl:
        fail(state, VECTOR_GP, gate_error)
        return False, return_eip, flags
    if not high & 0x8000:
        fail(state, VECTOR_NP, gate_error)
        return False, return_eip, flags
    selector = (low >> 16) & 0xFFFF
    offset = (low & 0xFFFF) | (high & 0xFFFF0000)
    new_cpl = code_segment_dpl(mem, state, selector, (selector & 0xFFFC) + ext)
    if new_cpl < 0:
        return False, return_eip, flags
    if new_cpl > cpl:
        fail(state, VECTOR_GP, (selector & 0xFFFC) + ext)
        return False, return_eip, flags
    n = 0
    esp = state[ESP]
    new_ss = state[SS]
    if new_cpl < cpl:  # to an inner ring: switch to the stack the TSS gives for it
        if state[TR] == 0:
            fail(state, VECTOR_TS, ext)
            return False, return_eip, flags
        stack_at = (state[TSS_BASE] + 4 + 8 * new_cpl) & MASK32  # ESPn, SSn
        j = host_index_slow(mem, state, stack_at, 8, False, False)
        if j < 0:
            return False, return_eip, flags
        state[FRAME] = state[SS]
        state[FRAME + 1] = esp
        n = 2
        esp = load(mem, j, 4)
        new_ss = load(mem, j + 4, 4) & 0xFFFF
    state[FRAME + n] = flags
    state[FRAME + n + 1] = state[CS]
    state[FRAME + n + 2] = return_eip
    n += 3
    if error >= 0 and not software:
        state[FRAME + n] = error
        n += 1
    new_esp = push_frame(mem, state, esp, n)
    if new_esp < 0:
        return False, return_eip, flags
    state[ESP] = new_esp
    state[SS] = new_ss
    state[CS] = (selector & 0xFFFC) | new_cpl
    flags &= ~(FLAG_TF | NT_RF_VM)
    if gate_type == GATE_INTERRUPT:
        flags &= ~FLAG_IF
    return True, offset, flags


@jit(types.Tuple((b1, i64, i64))(Mem, State, i64))
def iret(mem, state, flags):
    """IRET: pop EIP, CS, EFLAGS (and ESP, SS to an outer ring) -> (ok, EIP, EFLAGS)."""
    cpl = state[CS] & 3
    esp = state[ESP]
    i = host_index_slow(mem, state, esp, 12, False, cpl == 3)
    if i < 0:
        return False, 0, flags
    new_eip = load(mem, i, 4)
    new_cs = load(mem, i + 4, 4) & 0xFFFF
    new_flags = load(mem, i + 8, 4)
    rpl = new_cs & 3
    if rpl < cpl:
        fail(state, VECTOR_GP, new_cs & 0xFFFC)
        return False, 0, flags
    dpl = code_segment_dpl(mem, state, new_cs, new_cs & 0xFFFC)
    if dpl < 0:
        return False, 0, flags
    if dpl != rpl:
        fail(state, VECTOR_GP, new_cs & 0xFFFC)
        return False, 0, flags
    new_esp = (esp + 12) & MASK32
    new_ss = state[SS]
    if rpl > cpl:  # back to an outer ring: its stack comes off this one
        j = host_index_slow(mem, state, new_esp, 8, False, cpl == 3)
        if j < 0:
            return False, 0, flags
        new_esp = load(mem, j, 4)
        new_ss = load(mem, j + 4, 4) & 0xFFFF
    writable = IRET_WRITABLE
    if cpl == 0:
        writable |= FLAG_IOPL
    if cpl <= (flags & FLAG_IOPL) >> 12:
        writable |= FLAG_IF
    state[ESP] = new_esp
    state[SS] = new_ss
    state[CS] = new_cs
    return True, new_eip, (flags & ~writable) | (new_flags & writable) | 2


@jit(b1(Mem, State, i64))
def load_task_register(mem, state, selector):
    """LTR: load TR from an available TSS descriptor and mark it busy; False on a fault."""
    low, high = descriptor(mem, state, selector)
    if high < 0:
        return False
    if (high >> 8) & 0x1F != TSS_AVAILABLE:
        fail(state, VECTOR_GP, selector & 0xFFFC)
        return False
    high_at = (state[GDTR_BASE] + (selector & 0xFFF8) + 4) & MASK32
    i = host_index_slow(mem, state, high_at, 4, True, False)
    if i < 0:
        return False
    store(mem, i, 4, (high & ~0x1F00) | (TSS_BUSY << 8))
    state[TR] = selector & 0xFFFF
    state[TSS_BASE] = descriptor_base(low, high)
    return True


@jit(b1(Mem, State, i64, b1))
def check_data_selector(mem, state, selector, is_stack):
    """May selector be loaded into a data segment register (SS when is_stack)? Records #GP."""
    error = selector & 0xFFFC
    cpl = state[CS] & 3
    if error == 0:  # the null selector: fine for DS ES FS GS, never for SS
        if is_stack:
            fail(state, VECTOR_GP, 0)
            return False
        return True
    _, high = descriptor(mem, state, selector)
    if high < 0:
        return False
    access = (high >> 8) & 0xFF
    dpl = (access >> 5) & 3
    if is_stack:
        ok = access & 0x1A == 0x12 and selector & 3 == cpl and dpl == cpl  # writable data
    else:
        readable = access & 0x18 == 0x10 or access & 0x1A == 0x1A  # data, or readable code
        ok = readable and dpl >= max(cpl, selector & 3)
    if not ok:
        fail(state, VECTOR_GP, error)
        return False
    if not access & 0x80:
        fail(state, VECTOR_SS if is_stack else VECTOR_NP, error)
        return False
    return True


SYSTEM_OK = 0
SYSTEM_FAULT = 1
SYSTEM_BLOCK_INTERRUPTS = 2  # MOV SS: the next instruction runs before any interrupt
SYSTEM_EXIT_CR_ACCESS = 3  # the VMM emulates a control-register access (EXIT_ON_CR_ACCESS)

# Segment registers in ModRM.reg order (ES CS SS DS FS GS): their state slots.
SREG_SLOTS = (ES, CS, SS, DS, FS, GS)
# Control registers CR0..CR7 (only 0, 2, 3, 4 exist): their state slots, -1 for none.
CR_SLOTS = (CR0, -1, CR2, CR3, CR4, -1, -1, -1)
# CPUID leaf 0 vendor string "vmlabvmlab86" in EBX, EDX, ECX order.
CPUID_VENDOR = (0x616C6D76, 0x6C6D7662, 0x36386261)
# The CR0 bits LMSW loads: PE MP EM TS (it sets PE but cannot clear it).
CR0_MSW = 0xF

# Each function below is one branch of the core's run loop (vm.cpu.core), named by its
# form's handler family in vm.isa. Privilege (#GP(0) at CPL > 0, or by IOPL) was checked
# before they run, from the table (Form.privileged); the sensitive-but-unprivileged ones
# (SGDT, SIDT, SLDT, STR, SMSW, MOV from CS, CPUID) run at any CPL and reveal the real
# state, exactly as on x86: that is what breaks classic trap-and-emulate.


@jit(i64(State, i64, i64))
def fail_status(state, vector, error):
    """Record an exception; SYSTEM_FAULT."""
    fail(state, vector, error)
    return SYSTEM_FAULT


@jit(b1(Mem, State, i64, i64, i64, i64, b1))
def store_word_or_dword(mem, state, mod, rm, ea, value, user):
    """SMSW/STR/SLDT/MOV r/m, Sreg: a dword to a register, a word to memory; True on a fault."""
    if mod == 3:
        state[rm] = value & MASK32
        return False
    i = host_index_slow(mem, state, ea, 2, True, user)
    if i < 0:
        return True
    store(mem, i, 2, value)
    return False


@jit(b1(Mem, State, b1, i64, b1))
def store_table_register(mem, state, idt, ea, user):
    """SGDT m / SIDT m: store the table's limit (word) and base (dword); True on a fault."""
    i = host_index_slow(mem, state, ea, 6, True, user)
    if i < 0:
        return True
    store(mem, i, 2, state[IDTR_LIMIT] if idt else state[GDTR_LIMIT])
    store(mem, i + 2, 4, state[IDTR_BASE] if idt else state[GDTR_BASE])
    return False


@jit(b1(Mem, State, b1, i64, b1))
def load_table_register(mem, state, idt, ea, user):
    """LGDT m / LIDT m: load the table's limit (word) and base (dword); True on a fault."""
    i = host_index_slow(mem, state, ea, 6, False, user)
    if i < 0:
        return True
    if idt:
        state[IDTR_LIMIT] = load(mem, i, 2)
        state[IDTR_BASE] = load(mem, i + 2, 4)
    else:
        state[GDTR_LIMIT] = load(mem, i, 2)
        state[GDTR_BASE] = load(mem, i + 2, 4)
    return False


# CR_ACCESS qualification (VT-x's layout): bits 3:0 the CR, 5:4 the access type, 11:8
# the general register, 31:16 LMSW's source operand.
CR_ACCESS_TO_CR = 0
CR_ACCESS_FROM_CR = 1
CR_ACCESS_LMSW = 3


@jit(i64(State, i64, b1, i64, i64))
def exit_cr_access(state, cr, write, register, value):
    """Record a control-register access for the VMM to emulate (EIP is past it): which
    CRn, read or write, the general register (-1 for LMSW) and the value a write writes,
    and the same as VT-x's qualification; SYSTEM_EXIT_CR_ACCESS."""
    state[EXIT_CR] = cr
    state[EXIT_CR_WRITE] = 1 if write else 0
    state[EXIT_CR_REGISTER] = register
    state[EXIT_VALUE] = value
    if register < 0:
        kind = CR_ACCESS_LMSW
    else:
        kind = CR_ACCESS_TO_CR if write else CR_ACCESS_FROM_CR
    gpr = register & 0xF if register >= 0 else 0
    lmsw = (value & 0xFFFF) << 16 if register < 0 else 0
    state[EXIT_QUALIFICATION] = (cr & 0xF) | (kind << 4) | (gpr << 8) | lmsw
    return SYSTEM_EXIT_CR_ACCESS


@jit(i64(State))
def cr0_as_read(state):
    """CR0 as MOV r32, CR0 and SMSW read it: in VMX non-root mode the bits the VMM owns
    (CR0_GUEST_HOST_MASK) come from the read shadow."""
    if not state[NON_ROOT]:
        return state[CR0]
    mask = state[CR0_GUEST_HOST_MASK]
    return ((state[CR0] & ~mask) | (state[CR0_READ_SHADOW] & mask)) & MASK32


@jit(i64(State, i64, i64))
def mov_from_cr(state, cr, rm):
    """MOV r32, CRn (the decoder admits CR0 CR2 CR3 CR4 only)."""
    slot = CR_SLOTS[cr & 7]
    if slot < 0:
        return fail_status(state, VECTOR_UD, -1)
    controls = state[EXIT_CONTROLS]
    if controls & EXIT_ON_CR_ACCESS:  # the VMM emulates it (EIP is past it)
        return exit_cr_access(state, cr, False, rm, 0)
    if slot == CR3 and state[NON_ROOT] and controls & EXIT_ON_CR3_STORE:  # CR3-store exiting
        return exit_cr_access(state, cr, False, rm, 0)
    state[rm] = cr0_as_read(state) if slot == CR0 else state[slot]
    return SYSTEM_OK


@jit(i64(State, i64, i64))
def mov_to_cr(state, cr, rm):
    """MOV CRn, r32. CR0.PE stays set; a CR0 or CR3 write forgets every translation.

    In VMX non-root mode a CR0 write that would change a bit the VMM owns (its value
    differs from the read shadow's) exits, as does a CR3 load with CR3-load exiting."""
    slot = CR_SLOTS[cr & 7]
    if slot < 0:
        return fail_status(state, VECTOR_UD, -1)
    value = state[rm]
    if state[EXIT_CONTROLS] & EXIT_ON_CR_ACCESS:
        return exit_cr_access(state, cr, True, rm, value)
    if state[NON_ROOT]:
        if slot == CR3 and state[EXIT_CONTROLS] & EXIT_ON_CR3_LOAD:
            return exit_cr_access(state, cr, True, rm, value)
        if slot == CR0:
            mask = state[CR0_GUEST_HOST_MASK]
            if (value ^ state[CR0_READ_SHADOW]) & mask:
                return exit_cr_access(state, cr, True, rm, value)
            value = (state[CR0] & mask) | (value & ~mask & MASK32)  # owned bits stay
    if slot == CR0:
        value |= CR0_PE  # protected mode cannot be left (see README, Differences)
    state[slot] = value
    if slot == CR0 or slot == CR3:  # new translations: forget the old ones
        flush_tlb(state)
    return SYSTEM_OK


@jit(i64(State, i64))
def load_machine_status_word(state, value):
    """LMSW: CR0's PE MP EM TS from the low 4 bits of value; PE cannot be cleared. With
    EXIT_ON_CR_ACCESS (or, in non-root mode, a change to a bit the VMM owns) it exits as a
    CR0 write of the value it would leave (register -1)."""
    cr0 = (state[CR0] & ~(CR0_MSW & ~CR0_PE)) | (value & CR0_MSW)
    if state[EXIT_CONTROLS] & EXIT_ON_CR_ACCESS:
        return exit_cr_access(state, 0, True, -1, cr0)
    if state[NON_ROOT]:
        mask = state[CR0_GUEST_HOST_MASK] & CR0_MSW
        shadow = state[CR0_READ_SHADOW]
        wanted = (shadow & ~(CR0_MSW & ~CR0_PE)) | (value & CR0_MSW)
        if (wanted ^ shadow) & mask:
            return exit_cr_access(state, 0, True, -1, wanted)
        cr0 = (state[CR0] & (mask | ~CR0_MSW)) | (value & CR0_MSW & ~mask) | (state[CR0] & CR0_PE)
    state[CR0] = cr0
    return SYSTEM_OK


@jit(i64(Mem, State, i64, i64))
def mov_to_sreg(mem, state, sreg, selector):
    """MOV Sreg, r/m16 (not CS: the decoder admits ES SS DS FS GS only)."""
    if sreg == 1 or sreg > 5:
        return fail_status(state, VECTOR_UD, -1)
    if not check_data_selector(mem, state, selector, sreg == 2):
        return SYSTEM_FAULT
    state[SREG_SLOTS[sreg]] = selector
    return SYSTEM_BLOCK_INTERRUPTS if sreg == 2 else SYSTEM_OK


@jit(b1(Mem, State, i64, i64, i64, i64, b1))
def mov_from_sreg(mem, state, sreg, mod, rm, ea, user):
    """MOV r/m, Sreg (MOV r/m, CS reveals the CPL); True on a fault."""
    if sreg > 5:
        fail(state, VECTOR_UD, -1)
        return True
    return store_word_or_dword(mem, state, mod, rm, ea, state[SREG_SLOTS[sreg]], user)


@jit(types.none(State))
def cpuid(state):
    """CPUID: leaf 0 (the highest leaf and the vendor), and leaf 1 for every other."""
    if state[EAX] == 0:  # leaf 0: the highest leaf, and the vendor string
        state[EAX] = 1
        state[EBX] = CPUID_VENDOR[0]
        state[EDX] = CPUID_VENDOR[1]
        state[ECX] = CPUID_VENDOR[2]
    else:  # leaf 1: family 3 (an i386), no feature bits
        state[EAX] = 0x300
        state[EBX] = 0
        state[ECX] = 0
        state[EDX] = 0
