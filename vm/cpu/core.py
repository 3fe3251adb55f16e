"""The jitted core: run the CPU until something needs the outside world, return an exit.

``run(state, mem, budget)`` is the only entry point, like KVM's KVM_RUN: it executes at
most ``budget`` instructions and returns an exit reason (vm.cpu.exits) with that exit's
arguments in the state's EXIT_* slots. It never calls back into Python, never raises,
never allocates, and checks every memory index.

Each instruction goes through four stages, the way a simple pipelined CPU does it:

1. decode (vm.cpu.decode): prefixes, opcode, ModRM/SIB, effective address, immediate;
2. operands: the ACCESS table (built from vm.isa) says whether the r/m operand is read
   (into ``src``) or written, and whether the stack is pushed or popped; every address
   is checked here, before anything changes;
3. execute: an if/elif on the opcode, each branch commented with its Intel form;
4. write back: the r/m result and a pushed dword are stored (they cannot fault now).

A fault leaves the machine as it was before the instruction (EIP on the faulting
instruction), so every fault is restartable.

Hot state lives in locals while the loop runs: EIP, the lazy flags (vm.cpu.flags) and
the counters; everything is written back to ``state`` before returning.
"""

from __future__ import annotations

import numpy as np
from numba import types

from vm.cpu.alu import (
    MASK32,
    alu,
    get_reg,
    rotate,
    set_reg,
    shift,
    sign_extend,
    size_mask,
    trunc_div,
    udiv64,
    umul32,
)
from vm.cpu.decode import (
    ACC_CPL0,
    ACC_POP,
    ACC_PRIVILEGED,
    ACC_PUSH,
    ACC_READ,
    ACC_SIZE_SHIFT,
    ACC_WRITE,
    ACCESS,
    MAX_INSTRUCTION,
    OPINFO,
    decode,
    decode_again,
    decode_exact,
    effective_address,
)
from vm.cpu.devices import acknowledge_irq, device_io, irq_waiting, is_core_port, take_irq
from vm.cpu.exits import (
    EXIT_BREAKPOINT,
    EXIT_BUDGET,
    EXIT_CPUID,
    EXIT_CR_ACCESS,
    EXIT_FAULT,
    EXIT_HALT,
    EXIT_HYPERCALL,
    EXIT_INTERRUPT,
    EXIT_INTERRUPT_WINDOW,
    EXIT_INVLPG,
    EXIT_IO,
    EXIT_NESTED_PAGE_FAULT,
    EXIT_NONE,
    EXIT_SHUTDOWN,
    EXIT_SOFTWARE_INTERRUPT,
)
from vm.cpu.flags import (
    LOP_CFOF,
    LOP_DEC,
    LOP_INC,
    LOP_LOGIC,
    LOP_NONE,
    LOP_SUB,
    carry_flag,
    condition,
    condition_holds,
    get_cf,
    get_zf,
    materialize,
)
from vm.cpu.jit import Mem, State, b1, i64, jit, pair
from vm.cpu.memory import (
    PAGE_MASK,
    VECTOR_NPF,
    host_index,
    host_index_slow,
    invalidate_page,
    load,
    read32,
    store,
    tlb_lookup,
    translate,
    write32,
)
from vm.cpu.state import (
    BREAKPOINTS,
    COST_EXCEPTION,
    COST_IO,
    COST_PAGE_WALK,
    COST_TABLE,
    CR0,
    CR0_PG,
    CR2,
    CS,
    CYCLES,
    EAX,
    EBP,
    ECX,
    EDI,
    EDX,
    EFLAGS,
    EFLAGS_FIXED,
    EIP,
    ENTRY_ERROR,
    ENTRY_INTERRUPTION,
    EPT_ENABLE,
    EPT_POINTER,
    ESI,
    ESP,
    EVENT_DELIVER_ERROR,
    EVENT_EXTERNAL,
    EVENT_HARDWARE_EXCEPTION,
    EVENT_SOFTWARE_INTERRUPT,
    EVENT_TYPE_SHIFT,
    EVENT_VALID,
    EXC_EXIT_BITMAP,
    EXIT_CONTROLS,
    EXIT_ERROR,
    EXIT_INSTRUCTION_LENGTH,
    EXIT_IS_IN,
    EXIT_ON_CPUID,
    EXIT_ON_HLT,
    EXIT_ON_INTERRUPT,
    EXIT_ON_INTERRUPT_WINDOW,
    EXIT_ON_INVLPG,
    EXIT_ON_IO,
    EXIT_ON_SOFT_INT,
    EXIT_ON_VMCALL,
    EXIT_PORT,
    EXIT_QUALIFICATION,
    EXIT_REASON,
    EXIT_SIZE,
    EXIT_VALUE,
    EXIT_VECTOR,
    EXIT_VECTORING,
    EXIT_VECTORING_ERROR,
    FAULT_ERROR,
    FAULT_VECTOR,
    FLAG_CF,
    FLAG_DF,
    FLAG_IF,
    FLAG_IOPL,
    INSTRUCTIONS,
    MAX_BREAKPOINTS,
    MEM_BASE,
    MEM_SIZE,
    N_BREAKPOINTS,
    NON_ROOT,
    PIC_IRR,
    PIC_VECTOR_BASE,
    SCRATCH_SIZE,
    SKIP_BREAKPOINT,
    SOFT_INT_EXITS,
    STAT_IDLE_CYCLES,
    STAT_INTERRUPTS,
    STAT_PAGE_WALKS,
    STATE_SIZE,
    TIMER_NEXT,
    TIMER_PERIOD,
    TLB_ENTRIES,
    TLB_TAGS,
    TLB_VALUES,
    TR,
    VECTOR_COUNTS,
)
from vm.cpu.system import (
    SYSTEM_BLOCK_INTERRUPTS,
    SYSTEM_EXIT_CR_ACCESS,
    SYSTEM_FAULT,
    cpuid,
    cr0_as_read,
    deliver,
    iret,
    load_machine_status_word,
    load_table_register,
    load_task_register,
    mov_from_cr,
    mov_from_sreg,
    mov_to_cr,
    mov_to_sreg,
    store_table_register,
    store_word_or_dword,
)
from vm.isa import FORM_SLOTS, HANDLER_FAMILIES, OPCODE_INDEXES, POPF_WRITABLE, form_slots

VECTOR_DE = 0  # divide error
VECTOR_BP = 3  # breakpoint (INT3)
VECTOR_UD = 6  # invalid opcode
VECTOR_DF = 8  # double fault
VECTOR_GP = 13  # general protection
VECTOR_PF = 14  # page fault
NO_ERROR_CODE = -1


# Which branch of run() executes each form slot (opcode index * 8 + ModRM.reg), derived
# from the handler family of the table's rows (vm.isa Form.handler); H_UD for every slot
# that is no form. A chain of "handler == H_..." tests compiles to one jump through a table.
FAMILY = {name: number for number, name in enumerate(HANDLER_FAMILIES)}
H_UD = FAMILY["ud"]
H_MOV_STORE = FAMILY["mov_store"]
H_MOV_LOAD = FAMILY["mov_load"]
H_ALU = FAMILY["alu"]
H_JCC = FAMILY["jcc"]
H_INC_DEC_REG = FAMILY["inc_dec_reg"]
H_PUSH_REG = FAMILY["push_reg"]
H_POP_REG = FAMILY["pop_reg"]
H_ALU_IMM = FAMILY["alu_imm"]
H_CALL_REL = FAMILY["call_rel"]
H_RET = FAMILY["ret"]
H_RET_IMM = FAMILY["ret_imm"]
H_JMP_REL8 = FAMILY["jmp_rel8"]
H_JMP_REL32 = FAMILY["jmp_rel32"]
H_MOV_R8_IMM = FAMILY["mov_r8_imm"]
H_MOV_R32_IMM = FAMILY["mov_r32_imm"]
H_TEST_RM = FAMILY["test_rm"]
H_TEST_ACC = FAMILY["test_acc"]
H_LEA = FAMILY["lea"]
H_MOV_RM_IMM = FAMILY["mov_rm_imm"]
H_SHIFT = FAMILY["shift"]
H_GROUP3 = FAMILY["group3"]
H_GROUP5 = FAMILY["group5"]
H_PUSH_IMM32 = FAMILY["push_imm32"]
H_PUSH_IMM8 = FAMILY["push_imm8"]
H_POP_RM = FAMILY["pop_rm"]
H_NOP = FAMILY["nop"]
H_XCHG_EAX = FAMILY["xchg_eax"]
H_XCHG_RM = FAMILY["xchg_rm"]
H_SETCC = FAMILY["setcc"]
H_MOVZX = FAMILY["movzx"]
H_MOVSX = FAMILY["movsx"]
H_IMUL = FAMILY["imul"]
H_BT = FAMILY["bt"]
H_LOOP = FAMILY["loop"]
H_LEAVE = FAMILY["leave"]
H_PUSHAD = FAMILY["pushad"]
H_POPAD = FAMILY["popad"]
H_PUSHF = FAMILY["pushf"]
H_POPF = FAMILY["popf"]
H_CWDE = FAMILY["cwde"]
H_CDQ = FAMILY["cdq"]
H_MOV_MOFFS = FAMILY["mov_moffs"]
H_STRING = FAMILY["string"]
H_CLC = FAMILY["clc"]
H_STC = FAMILY["stc"]
H_CMC = FAMILY["cmc"]
H_CLD = FAMILY["cld"]
H_STD = FAMILY["std"]
H_INT3 = FAMILY["int3"]
H_INT = FAMILY["int"]
H_HLT = FAMILY["hlt"]
H_CLI_STI = FAMILY["cli_sti"]
H_IO = FAMILY["io"]
H_IRET = FAMILY["iret"]
H_SGDT_SIDT = FAMILY["sgdt_sidt"]
H_LGDT_LIDT = FAMILY["lgdt_lidt"]
H_SMSW = FAMILY["smsw"]
H_LMSW = FAMILY["lmsw"]
H_INVLPG = FAMILY["invlpg"]
H_SLDT_STR = FAMILY["sldt_str"]
H_LTR = FAMILY["ltr"]
H_MOV_FROM_CR = FAMILY["mov_from_cr"]
H_MOV_TO_CR = FAMILY["mov_to_cr"]
H_MOV_FROM_SREG = FAMILY["mov_from_sreg"]
H_MOV_TO_SREG = FAMILY["mov_to_sreg"]
H_CPUID = FAMILY["cpuid"]
H_UD2 = FAMILY["ud2"]
H_VMCALL = FAMILY["vmcall"]
HANDLER = np.zeros(FORM_SLOTS, dtype=np.int64)
for (_slot, _), _form in form_slots().items():
    HANDLER[_slot] = FAMILY[_form.family]
# The same by opcode index, which the decoder knows first (so the jump waits for the opcode
# byte only): the family all its forms share; or H_SLOW for the rare opcodes whose forms are
# privileged (Form.privileged: checked before the operand stage) or whose ModRM digit picks
# the family (0F 00, 0F 01), for HANDLER and ACCESS to say. The common forms pay one test.
H_SLOW = -1
OP_HANDLER = np.zeros(OPCODE_INDEXES, dtype=np.int64)
for _op in range(OPCODE_INDEXES):
    _slots = slice(_op * 8, _op * 8 + 8)
    _families = set(HANDLER[_slots].tolist()) - {H_UD}
    if len(_families) > 1 or (ACCESS[_slots] & ACC_PRIVILEGED).any():
        OP_HANDLER[_op] = H_SLOW
    elif _families:
        OP_HANDLER[_op] = _families.pop()


@jit(b1(State, i64, i64))
def raise_fault(state, vector, error):
    """Record an exception for the instruction being executed; returns True."""
    state[FAULT_VECTOR] = vector
    state[FAULT_ERROR] = error
    return True


@jit(b1(State, i64))
def io_allowed(state, flags):
    """IN, OUT, CLI and STI need CPL <= IOPL."""
    return (state[CS] & 3) <= ((flags & FLAG_IOPL) >> 12)


@jit(b1(State, i64, i64))
def privilege_allows(state, access, flags):
    """May this privileged form run now (ACC_CPL0: at CPL 0; ACC_IOPL: at CPL <= IOPL)?"""
    if access & ACC_CPL0:
        return (state[CS] & 3) == 0
    return io_allowed(state, flags)


@jit(
    types.Tuple((b1, i64, i64, i64, i64, i64))(
        Mem, State, i64, i64, i64, i64, i64, i64, i64, i64, b1
    )
)
def string_step(mem, state, kind, size, step, lop, la, lb, lres, lmask, user):
    """One iteration of MOVS/CMPS/STOS/LODS/SCAS (kind = the opcode with bit 0 clear).

    Returns (ok, lop, la, lb, lres, lmask): CMPS and SCAS set the flags of a SUB.
    """
    esi = state[ESI]
    edi = state[EDI]
    if kind == 0xA4 or kind == 0xA6 or kind == 0xAC:  # these read [ESI]
        i = host_index(mem, state, esi, size, False, user)
        if i < 0:
            return False, lop, la, lb, lres, lmask
        a = load(mem, i, size)
    else:
        a = get_reg(state, EAX, size)
    if kind == 0xAC:  # LODS: AL/EAX = [ESI]
        set_reg(state, EAX, size, a)
        state[ESI] = (esi + step) & MASK32
        return True, lop, la, lb, lres, lmask
    j = host_index(mem, state, edi, size, kind == 0xA4 or kind == 0xAA, user)
    if j < 0:
        return False, lop, la, lb, lres, lmask
    if kind == 0xA4 or kind == 0xAA:  # MOVS: [EDI] = [ESI];  STOS: [EDI] = AL/EAX
        store(mem, j, size, a)
        if kind == 0xA4:
            state[ESI] = (esi + step) & MASK32
        state[EDI] = (edi + step) & MASK32
        return True, lop, la, lb, lres, lmask
    b = load(mem, j, size)  # CMPS: [ESI] - [EDI];  SCAS: AL/EAX - [EDI]
    if kind == 0xA6:
        state[ESI] = (esi + step) & MASK32
    state[EDI] = (edi + step) & MASK32
    return True, LOP_SUB, a, b, a - b, size_mask(size)


@jit(b1(State, b1, i64, i64))
def divide(state, signed, size, divisor):
    """DIV/IDIV of AX or EDX:EAX by divisor; False on #DE (nothing changed then)."""
    if divisor == 0:
        return False
    if size == 1:
        ax = state[EAX] & 0xFFFF
        if signed:
            q, r = trunc_div(sign_extend(ax, 2), sign_extend(divisor, 1))
            if q > 127 or q < -128:
                return False
        else:
            q = ax // divisor
            r = ax % divisor
            if q > 0xFF:
                return False
        state[EAX] = (state[EAX] & 0xFFFF0000) | ((r & 0xFF) << 8) | (q & 0xFF)
        return True
    if signed:
        n = sign_extend(state[EDX], 4) * 4294967296 + state[EAX]
        if n == -9223372036854775807 - 1:
            return False
        q, r = trunc_div(n, sign_extend(divisor, 4))
        if q > 0x7FFFFFFF or q < -0x80000000:
            return False
    else:
        if state[EDX] >= divisor:
            return False
        q, r = udiv64(state[EDX], state[EAX], divisor)
    state[EAX] = q & MASK32
    state[EDX] = r & MASK32
    return True


@jit(pair(i64)(State, b1, i64, i64))
def multiply(state, signed, size, value):
    """MUL/IMUL of AL or EAX by value into AX or EDX:EAX -> (low half, overflow 0/1)."""
    if size == 1:
        if signed:
            product = sign_extend(state[EAX], 1) * sign_extend(value, 1)
            overflow = product != sign_extend(product, 1)
        else:
            product = (state[EAX] & 0xFF) * value
            overflow = product > 0xFF
        product &= 0xFFFF
        state[EAX] = (state[EAX] & 0xFFFF0000) | product
        return product & 0xFF, 1 if overflow else 0
    if signed:
        product = sign_extend(state[EAX], 4) * sign_extend(value, 4)
        low = product & MASK32
        high = (product >> 32) & MASK32
        overflow = product != sign_extend(low, 4)
    else:
        high, low = umul32(state[EAX], value)
        overflow = high != 0
    state[EAX] = low
    state[EDX] = high
    return low, 1 if overflow else 0


EVENT_DELIVERED = 0
EVENT_EXIT = 1  # an exception exits (EXC_EXIT_BITMAP): FAULT
EVENT_SHUTDOWN = 2
EVENT_SOFTWARE_EXIT = 3  # INT n / INT3 exits (EXIT_ON_SOFT_INT, SOFT_INT_EXITS): SOFTWARE_INTERRUPT
EVENT_NESTED = 4  # a nested page fault stopped it: NESTED_PAGE_FAULT (EXIT_VECTORING says what)


@jit(pair(i64)(Mem, State, i64, b1, i64))
def fetch(mem, state, eip, user, have):
    """The bytes of an instruction near a page end -> (index, bytes available), or -1.

    They are copied to the scratch bytes at the end of ``mem``: the rest of this page,
    or (``have`` > 0: the first ``have`` are there already) the start of the next. An
    instruction wholly inside a page is read in place by the run loop. Available -1: the
    fetch faulted (recorded in the state).
    """
    scratch_at = mem.size - SCRATCH_SIZE
    lin = (eip + have) & MASK32
    if state[CR0] & CR0_PG or state[EPT_POINTER] & EPT_ENABLE:
        page = translate(mem, state, lin, False, user)
        if page < 0:
            return 0, -1
        end = 4096
    else:
        if lin >= state[MEM_SIZE]:
            raise_fault(state, VECTOR_GP, 0)
            return 0, -1
        page = lin & PAGE_MASK
        end = min(4096, state[MEM_SIZE] - page)
    host = state[MEM_BASE] + page
    offset = lin & 0xFFF
    n = min(end - offset, MAX_INSTRUCTION - have)
    for k in range(MAX_INSTRUCTION - have):
        mem[scratch_at + have + k] = mem[host + offset + k] if k < n else 0
    return scratch_at, have + n


@jit(types.none(State, i64, i64))
def exception_exit(state, vector, error):
    """Record an exception that exits (the exception bitmap names it): its vector and
    error code, and for a #PF the address as the qualification (as VT-x gives it)."""
    state[EXIT_VECTOR] = vector
    state[EXIT_ERROR] = error
    if vector == VECTOR_PF:
        state[EXIT_QUALIFICATION] = state[CR2]


@jit(i64(i64, b1))
def vectoring_info(vector, software):
    """VT-x's IDT-vectoring information for an event being delivered (no error bit)."""
    if software:
        kind = EVENT_SOFTWARE_INTERRUPT
    elif vector < 32:
        kind = EVENT_HARDWARE_EXCEPTION
    else:
        kind = EVENT_EXTERNAL
    return EVENT_VALID | (kind << EVENT_TYPE_SHIFT) | (vector & 0xFF)


@jit(types.UniTuple(i64, 3)(Mem, State, i64, i64, i64, i64, b1, i64))
def deliver_event(mem, state, vector, error, return_eip, flags, software, instruction_eip):
    """Deliver an event through the guest's IDT -> (EVENT_*, EIP, EFLAGS), and what follows
    when the delivery itself faults: INT n's fault at the INT instruction; for any other
    event a double fault (#DF), and a fault while delivering that is a triple fault
    (SHUTDOWN), as on real x86. A nested page fault on the way stops it all: the exit
    NESTED_PAGE_FAULT at ``instruction_eip``, with the event in EXIT_VECTORING so the VMM
    can deliver it again."""
    ok, new_eip, new_flags = deliver(mem, state, vector, error, return_eip, flags, software)
    if ok:
        return EVENT_DELIVERED, new_eip, new_flags
    if state[FAULT_VECTOR] == VECTOR_NPF:
        state[EXIT_VECTORING] = vectoring_info(vector, software)
        if error >= 0 and not software:
            state[EXIT_VECTORING] |= EVENT_DELIVER_ERROR
        state[EXIT_VECTORING_ERROR] = error
        return EVENT_NESTED, instruction_eip, flags
    if software:  # the INT instruction faults instead
        vector = state[FAULT_VECTOR] & 0xFF
        error = state[FAULT_ERROR]
        state[VECTOR_COUNTS + vector] += 1
        if (state[EXC_EXIT_BITMAP] >> vector) & 1:
            exception_exit(state, vector, error)
            return EVENT_EXIT, instruction_eip, flags
        ok, new_eip, new_flags = deliver(mem, state, vector, error, instruction_eip, flags, False)
        if ok:
            return EVENT_DELIVERED, new_eip, new_flags
        if state[FAULT_VECTOR] == VECTOR_NPF:
            state[EXIT_VECTORING] = vectoring_info(vector, False) | EVENT_DELIVER_ERROR
            state[EXIT_VECTORING_ERROR] = error
            return EVENT_NESTED, instruction_eip, flags
    if vector == VECTOR_DF:
        return EVENT_SHUTDOWN, return_eip, flags
    state[VECTOR_COUNTS + VECTOR_DF] += 1
    if (state[EXC_EXIT_BITMAP] >> VECTOR_DF) & 1:
        exception_exit(state, VECTOR_DF, 0)
        return EVENT_EXIT, return_eip, flags
    ok, new_eip, new_flags = deliver(mem, state, VECTOR_DF, 0, return_eip, flags, False)
    if ok:
        return EVENT_DELIVERED, new_eip, new_flags
    if state[FAULT_VECTOR] == VECTOR_NPF:
        state[EXIT_VECTORING] = vectoring_info(VECTOR_DF, False) | EVENT_DELIVER_ERROR
        state[EXIT_VECTORING_ERROR] = 0
        return EVENT_NESTED, instruction_eip, flags
    return EVENT_SHUTDOWN, return_eip, flags


@jit(types.UniTuple(i64, 3)(Mem, State, i64, i64, i64, i64, b1, i64))
def raise_event(mem, state, vector, error, return_eip, flags, software, instruction_eip):
    """Take an exception or interrupt -> (EVENT_*, EIP, EFLAGS).

    It exits to Python when the exception-exit bitmap (or, for INT n and INT3,
    EXIT_ON_SOFT_INT with the vector's SOFT_INT_EXITS bit) says so, else it is delivered
    through the guest's IDT (deliver_event). A nested page fault (VECTOR_NPF, the access
    itself) is no exception: it exits as NESTED_PAGE_FAULT at ``instruction_eip``.
    """
    if vector == VECTOR_NPF:
        state[EXIT_VECTORING] = 0
        return EVENT_NESTED, instruction_eip, flags
    vector &= 0xFF  # (vectors are 8 bits, whatever FAULT_VECTOR or the PIC's base say)
    state[VECTOR_COUNTS + vector] += 1
    if software:
        if state[EXIT_CONTROLS] & EXIT_ON_SOFT_INT:
            word = state[SOFT_INT_EXITS + ((vector >> 5) & 7)]
            if (word >> (vector & 31)) & 1:
                state[EXIT_VECTOR] = vector
                state[EXIT_ERROR] = error
                return EVENT_SOFTWARE_EXIT, return_eip, flags
    elif vector < 32 and (state[EXC_EXIT_BITMAP] >> vector) & 1:
        exception_exit(state, vector, error)
        return EVENT_EXIT, return_eip, flags
    return deliver_event(mem, state, vector, error, return_eip, flags, software, instruction_eip)


@jit(types.UniTuple(i64, 3)(Mem, State, i64, i64))
def inject_event(mem, state, eip, flags):
    """VM entry's event injection: deliver the event ENTRY_INTERRUPTION describes (its
    error code from ENTRY_ERROR) through the guest's IDT, as if it had just happened,
    whatever the exception bitmap says -> (EVENT_*, EIP, EFLAGS). The field is cleared."""
    info = state[ENTRY_INTERRUPTION]
    state[ENTRY_INTERRUPTION] = 0
    vector = info & 0xFF
    software = ((info >> EVENT_TYPE_SHIFT) & 7) == EVENT_SOFTWARE_INTERRUPT
    error = state[ENTRY_ERROR] & MASK32 if info & EVENT_DELIVER_ERROR else NO_ERROR_CODE
    state[VECTOR_COUNTS + vector] += 1
    return deliver_event(mem, state, vector, error, eip, flags, software, eip)


@jit(i64(State, Mem, i64))
def run(state, mem, budget):
    """Run at most ``budget`` instructions; return the exit reason."""
    # The state is public: Python may have written any int64 into any slot. What the core
    # would use as an index or an address is made safe here, once per call (the run loop
    # keeps it so): the guest-physical window and the scratch bytes after it must lie
    # inside the host array and the state must be whole, or nothing runs; registers are
    # 32-bit; a TLB entry naming a page outside the window is dropped.
    if state.size < STATE_SIZE:
        return EXIT_SHUTDOWN
    membase = state[MEM_BASE]
    memsize = state[MEM_SIZE]
    scratch_at = mem.size - SCRATCH_SIZE
    if membase < 0 or memsize < 0 or memsize > scratch_at or membase > scratch_at - memsize:
        state[EXIT_REASON] = EXIT_SHUTDOWN
        return EXIT_SHUTDOWN
    for r in range(8):
        state[r] &= MASK32
    last_page = memsize - 4096  # the last page a TLB entry may name
    for slot in range(TLB_ENTRIES):
        if state[TLB_VALUES + slot] & PAGE_MASK > last_page:
            state[TLB_TAGS + slot] = -1
    nbreak = max(0, min(state[N_BREAKPOINTS], MAX_BREAKPOINTS))
    skip_break = state[SKIP_BREAKPOINT]
    state[SKIP_BREAKPOINT] = 0
    controls = state[EXIT_CONTROLS]
    # VMX non-root mode's events at instruction boundaries: an event to inject at this
    # entry, and interrupt-window exiting. (One test of a local per instruction.)
    nested = (state[EPT_POINTER] & EPT_ENABLE) != 0
    injecting = (state[ENTRY_INTERRUPTION] & EVENT_VALID) != 0
    window_exiting = (controls & EXIT_ON_INTERRUPT_WINDOW) != 0 and state[NON_ROOT] != 0
    special = injecting or window_exiting

    eip = state[EIP] & MASK32
    flags = state[EFLAGS] & MASK32
    lop = LOP_NONE  # lazy flags: see vm.cpu.flags
    la = 0
    lb = 0
    lres = 0
    lmask = MASK32
    count = 0
    events = 0  # exceptions and interrupts delivered: they count against the budget too
    cycles = 0
    reason = EXIT_NONE
    walks_seen = state[STAT_PAGE_WALKS]
    # The timer, in cycles counted from this run's start; an IRQ may be waiting.
    timer_period = state[TIMER_PERIOD]
    tick_at = state[TIMER_NEXT] - state[CYCLES]
    irq_pending = irq_waiting(state)
    # Intel's "blocking by STI" and "blocking by MOV SS": the instruction after an STI that
    # set IF, or after a MOV SS, runs before any interrupt is taken.
    blocked_by_sti_or_mov_ss = False

    while True:
        if count + events >= budget:
            reason = EXIT_BUDGET
            break
        # ---- 0. interrupts between instructions --------------------------------------------
        # (page walks cost cycles; charge them here, before the timer looks at the cycles,
        # so that where a run happens to stop never changes what the guest sees)
        walks = state[STAT_PAGE_WALKS]
        if walks != walks_seen:
            cycles += (walks - walks_seen) * state[COST_PAGE_WALK]
            walks_seen = walks
        if timer_period > 0 and cycles >= tick_at:
            state[PIC_IRR] |= 1  # IRQ 0
            # ticks missed while interrupts were off merge into one: the next is the first
            # tick_at + k * period after now
            tick_at += ((cycles - tick_at) // timer_period + 1) * timer_period
            irq_pending = irq_waiting(state)
        if special:  # VMX non-root mode: an event to inject, an interrupt window
            if injecting:  # VM entry: the event the VMM injects comes first
                injecting = False
                special = window_exiting
                flags = materialize(lop, la, lb, lres, lmask, flags)
                lop = LOP_NONE
                outcome, eip, flags = inject_event(mem, state, eip, flags)
                cycles += state[COST_EXCEPTION]
                events += 1
                if outcome == EVENT_NESTED:
                    reason = EXIT_NESTED_PAGE_FAULT
                    state[EXIT_INSTRUCTION_LENGTH] = 0
                    break
                if outcome == EVENT_EXIT:
                    reason = EXIT_FAULT
                    state[EXIT_INSTRUCTION_LENGTH] = 0
                    break
                if outcome == EVENT_SHUTDOWN:
                    reason = EXIT_SHUTDOWN
                    break
                continue  # (a single step shows the injection on its own)
            if flags & FLAG_IF and not blocked_by_sti_or_mov_ss:
                reason = EXIT_INTERRUPT_WINDOW  # (the guest can take an interrupt now)
                break
        if irq_pending and controls & EXIT_ON_INTERRUPT:  # the VMM takes every IRQ, IF or not
            irq = take_irq(state)
            state[EXIT_VECTOR] = (state[PIC_VECTOR_BASE] + irq) & 0xFF
            reason = EXIT_INTERRUPT
            break
        if irq_pending and flags & FLAG_IF and not blocked_by_sti_or_mov_ss:
            vector = acknowledge_irq(state)
            if vector >= 0:
                state[STAT_INTERRUPTS] += 1
                flags = materialize(lop, la, lb, lres, lmask, flags)
                lop = LOP_NONE
                outcome, eip, flags = raise_event(
                    mem, state, vector, NO_ERROR_CODE, eip, flags, False, eip
                )
                cycles += state[COST_EXCEPTION]
                events += 1
                irq_pending = irq_waiting(state)
                if outcome == EVENT_SHUTDOWN:
                    reason = EXIT_SHUTDOWN
                    break
                if outcome == EVENT_NESTED:
                    reason = EXIT_NESTED_PAGE_FAULT
                    state[EXIT_INSTRUCTION_LENGTH] = 0
                    break
                continue  # (a single step shows the delivery on its own)
            irq_pending = irq_waiting(state)
        blocked_by_sti_or_mov_ss = False
        if nbreak > 0:
            hit = False
            for i in range(nbreak):
                if state[BREAKPOINTS + i] == eip:
                    hit = True
            if hit and not skip_break:
                reason = EXIT_BREAKPOINT
                break
            skip_break = 0

        # ---- 1. fetch and decode ----------------------------------------------------------
        start = eip
        esp_before = state[ESP]
        user = (state[CS] & 3) == 3
        fault = False
        trap = False  # INT3 and INT n complete before their exception (EIP after them)
        # Fetch from where the bytes are when the instruction lies inside one page and the
        # TLB (or, paging off, the window) says so; else fetch() copies them to scratch.
        offset = eip & 0xFFF
        page = -1
        if offset <= 4096 - MAX_INSTRUCTION:
            if state[CR0] & CR0_PG:
                page = tlb_lookup(state, eip, False, user)
            elif eip + MAX_INSTRUCTION <= memsize and not nested:
                page = eip - offset
        if page >= 0:
            p = membase + page + offset
            avail = MAX_INSTRUCTION
        else:
            p, avail = fetch(mem, state, eip, user, 0)
        if avail < 0:
            fault = True
            length, op, rep, mod, reg, rm, ea, imm = 0, 0, 0, 0, 0, 0, 0, 0
        else:
            length, op, rep, mod, reg, rm, ea, imm = decode(mem, p, state, OPINFO)
            if avail < MAX_INSTRUCTION and (length == 0 or length > avail):
                # the instruction runs on into the next page (or past the end of memory)
                p, avail = fetch(mem, state, eip, user, avail)
                if avail < 0:
                    fault = True
                else:
                    length, op, rep, mod, reg, rm, ea, imm = decode_again(mem, p, state, OPINFO)
            if not fault and length == 0:  # #UD, unless its ModRM byte names it (VMCALL)
                length, op = decode_exact(mem, p, OPINFO)
                if length == 0:
                    fault = raise_fault(state, VECTOR_UD, NO_ERROR_CODE)
        eip = (eip + length) & MASK32
        form = op * 8 + reg  # index of this form in the ACCESS and cost tables
        access = ACCESS[form]
        handler = OP_HANDLER[op]
        if handler == H_SLOW:  # (a privileged form, or one of 0F 00, 0F 01: see OP_HANDLER)
            handler = HANDLER[form]
            if access & ACC_PRIVILEGED and not fault and not privilege_allows(state, access, flags):
                fault = raise_fault(state, VECTOR_GP, 0)  # (before anything else)

        # ---- 2. operands ------------------------------------------------------------------
        size = (access >> ACC_SIZE_SHIFT) & 7  # of the r/m operand
        src = 0  # the r/m operand's value, when read
        where = -1  # host index of a memory r/m operand
        slot = -1  # host index of the stack slot a push writes
        popped = 0
        if fault or access == 0:
            pass
        else:
            if access & (ACC_READ | ACC_WRITE):
                if mod == 3:
                    src = get_reg(state, rm, size)
                else:
                    where = host_index(mem, state, ea, size, (access & ACC_WRITE) != 0, user)
                    if where < 0:
                        fault = True
                    elif access & ACC_READ:
                        src = load(mem, where, size)
            if access & (ACC_PUSH | ACC_POP) and not fault:
                push = (access & ACC_PUSH) != 0
                top = (esp_before - 4) & MASK32 if push else esp_before
                i = host_index(mem, state, top, 4, push, user)
                if i < 0:
                    fault = True
                elif push:
                    slot = i
                else:
                    popped = load(mem, i, 4)
                    state[ESP] = (esp_before + 4) & MASK32
        result = 0  # written back to r/m when writeback is set
        writeback = False
        pushed = 0  # the dword a push writes

        # ---- 3. execute -------------------------------------------------------------------
        if fault:
            pass
        elif handler == H_MOV_STORE:  # 89 /r  MOV r/m32, r32;  88 /r  MOV r/m8, r8
            result = get_reg(state, reg, size)
            writeback = True
        elif handler == H_MOV_LOAD:  # 8B /r  MOV r32, r/m32;  8A /r  MOV r8, r/m8
            set_reg(state, reg, size, src)
        elif handler == H_ALU:
            # 00-3D  ADD OR ADC SBB AND SUB XOR CMP, six forms each:
            #   +0 r/m8, r8   +1 r/m32, r32   +2 r8, r/m8   +3 r32, r/m32
            #   +4 AL, imm8   +5 EAX, imm32
            aop = op >> 3
            kind = op & 7
            osize = 4 if kind & 1 else 1
            mask = 0xFF if osize == 1 else MASK32
            carry = 0
            if aop == 2 or aop == 3:
                carry = carry_flag(lop, la, lb, lres, lmask, flags)
            if kind < 2:
                a = src
                b = get_reg(state, reg, osize)
            elif kind < 4:
                a = get_reg(state, reg, osize)
                b = src
            else:
                a = get_reg(state, EAX, osize)
                b = imm
            res, lop, lres = alu(aop, a, b, carry, mask)
            la, lb, lmask = a, b, mask
            if aop != 7:
                if kind < 2:
                    result = res
                    writeback = True
                elif kind < 4:
                    set_reg(state, reg, osize, res)
                else:
                    set_reg(state, EAX, osize, res)
        elif handler == H_JCC:
            # 70+cc cb  Jcc rel8;  0F 80+cc cd  Jcc rel32
            if condition(op & 15, lop, la, lb, lres, lmask, flags):
                offset = (imm ^ 0x80) - 0x80 if op < 0x80 else imm  # rel8 is signed
                eip = (eip + offset) & MASK32
        elif handler == H_INC_DEC_REG:
            # 40+r  INC r32;  48+r  DEC r32  (CF unchanged)
            r = op & 7
            flags = (flags & ~FLAG_CF) | get_cf(lop, la, lb, lres, lmask, flags)
            a = state[r]
            if op < 0x48:
                lop, lres = LOP_INC, a + 1
            else:
                lop, lres = LOP_DEC, a - 1
            la, lb, lmask = a, 1, MASK32
            state[r] = lres & MASK32
        elif handler == H_PUSH_REG:  # 50+r  PUSH r32
            pushed = state[op & 7]
        elif handler == H_POP_REG:  # 58+r  POP r32
            state[op & 7] = popped
        elif handler == H_ALU_IMM:
            # 80 /n ib  ALU r/m8, imm8;  81 /n id  ALU r/m32, imm32;
            # 83 /n ib  ALU r/m32, imm8 (sign-extended);  n: ADD OR ADC SBB AND SUB XOR CMP
            mask = 0xFF if size == 1 else MASK32
            b = ((imm ^ 0x80) - 0x80) & MASK32 if op == 0x83 else imm  # 83: imm8 sign-extended
            carry = 0
            if reg == 2 or reg == 3:
                carry = carry_flag(lop, la, lb, lres, lmask, flags)
            result, lop, lres = alu(reg, src, b, carry, mask)
            la, lb, lmask = src, b, mask
            writeback = reg != 7
        elif handler == H_CALL_REL:  # E8 cd  CALL rel32
            pushed = eip
            eip = (eip + imm) & MASK32
        elif handler == H_RET:  # C3  RET
            eip = popped
        elif handler == H_RET_IMM:  # C2 iw  RET imm16
            state[ESP] = (state[ESP] + imm) & MASK32
            eip = popped
        elif handler == H_JMP_REL8:  # EB cb  JMP rel8
            eip = (eip + (imm ^ 0x80) - 0x80) & MASK32  # rel8 is signed
        elif handler == H_JMP_REL32:  # E9 cd  JMP rel32
            eip = (eip + imm) & MASK32
        elif handler == H_MOV_R8_IMM:  # B0+r ib  MOV r8, imm8
            set_reg(state, op & 7, 1, imm)
        elif handler == H_MOV_R32_IMM:  # B8+r id  MOV r32, imm32
            state[op & 7] = imm
        elif handler == H_TEST_RM:  # 84 /r  TEST r/m8, r8;  85 /r  TEST r/m32, r32
            b = get_reg(state, reg, size)
            lop, la, lb, lres, lmask = LOP_LOGIC, src, b, src & b, (0xFF if size == 1 else MASK32)
        elif handler == H_TEST_ACC:  # A8 ib  TEST AL, imm8;  A9 id  TEST EAX, imm32
            osize = 4 if op & 1 else 1
            a = get_reg(state, EAX, osize)
            lop, la, lb, lres, lmask = LOP_LOGIC, a, imm, a & imm, (0xFF if osize == 1 else MASK32)
        elif handler == H_LEA:  # 8D /r  LEA r32, m
            if mod == 3:
                fault = raise_fault(state, VECTOR_UD, NO_ERROR_CODE)
            else:
                state[reg] = ea
        elif handler == H_MOV_RM_IMM:  # C6 /0 ib  MOV r/m8, imm8;  C7 /0 id  MOV r/m32, imm32
            result = imm
            writeback = True
        elif handler == H_SHIFT:
            # C0 /n ib, C1 /n ib  shift r/m by imm8;  D0 /n, D1 /n  by 1;  D2 /n, D3 /n  by CL
            # n: 0 ROL  1 ROR  2 RCL  3 RCR  4 SHL  5 SHR  7 SAR
            if op <= 0xC1:
                n = imm & 31
            elif op <= 0xD1:
                n = 1
            else:
                n = state[ECX] & 31
            result = src
            writeback = True
            if n == 0:
                pass  # a count of 0 changes no flags
            elif reg >= 4:
                result, la, lb = shift(reg, src, n, size)
                lop, lres, lmask = LOP_CFOF, result, (0xFF if size == 1 else MASK32)
            else:
                result, flags = rotate(
                    reg, src, n, size, materialize(lop, la, lb, lres, lmask, flags)
                )
                lop = LOP_NONE
        elif handler == H_GROUP3:
            mask = 0xFF if size == 1 else MASK32
            if reg == 0:  # F6 /0 ib  TEST r/m8, imm8;  F7 /0 id  TEST r/m32, imm32
                lop, la, lb, lres, lmask = LOP_LOGIC, src, imm, src & imm, mask
            elif reg == 2:  # F6 /2  NOT r/m8;  F7 /2  NOT r/m32
                result = src ^ mask
                writeback = True
            elif reg == 3:  # F6 /3  NEG r/m8;  F7 /3  NEG r/m32
                result = (0 - src) & mask
                writeback = True
                lop, la, lb, lres, lmask = LOP_SUB, 0, src, 0 - src, mask
            elif reg <= 5:
                # F6 /4  MUL r/m8 (AX = AL * r/m8);  F7 /4  MUL r/m32 (EDX:EAX = EAX * r/m32)
                # F6 /5  IMUL r/m8;  F7 /5  IMUL r/m32  (signed)
                lres, la = multiply(state, reg == 5, size, src)
                lop, lb, lmask = LOP_CFOF, la, (0xFF if size == 1 else MASK32)
            elif not divide(state, reg == 7, size, src):
                # F6 /6  DIV r/m8 (AL = AX / r/m8, AH = remainder);  F6 /7  IDIV r/m8
                # F7 /6  DIV r/m32 (EAX = EDX:EAX / r/m32, EDX = remainder);  F7 /7  IDIV r/m32
                fault = raise_fault(state, VECTOR_DE, NO_ERROR_CODE)
        elif handler == H_GROUP5:
            if reg <= 1:
                # FE /0  INC r/m8;  FF /0  INC r/m32;  FE /1  DEC r/m8;  FF /1  DEC r/m32
                flags = (flags & ~FLAG_CF) | carry_flag(lop, la, lb, lres, lmask, flags)
                lres = src + 1 if reg == 0 else src - 1
                lop = LOP_INC if reg == 0 else LOP_DEC
                la, lb, lmask = src, 1, (0xFF if size == 1 else MASK32)
                result = lres & lmask
                writeback = True
            elif reg == 2:  # FF /2  CALL r/m32
                pushed = eip
                eip = src
            elif reg == 4:  # FF /4  JMP r/m32
                eip = src
            else:  # FF /6  PUSH r/m32
                pushed = src
        elif handler == H_PUSH_IMM32:  # 68 id  PUSH imm32
            pushed = imm
        elif handler == H_PUSH_IMM8:  # 6A ib  PUSH imm8 (sign-extended)
            pushed = ((imm ^ 0x80) - 0x80) & MASK32  # imm8, sign-extended
        elif handler == H_POP_RM:  # 8F /0  POP r/m32 (the address uses ESP after the pop)
            v = read32(mem, state, esp_before, user)
            if v < 0:
                fault = True
            else:
                state[ESP] = (esp_before + 4) & MASK32
                if mod == 3:
                    state[rm] = v
                elif write32(mem, state, effective_address(mem, p, state, OPINFO), v, user) < 0:
                    fault = True
        elif handler == H_NOP:  # 90  NOP (XCHG EAX, EAX)
            pass
        elif handler == H_XCHG_EAX:  # 90+r  XCHG EAX, r32
            r = op & 7
            state[EAX], state[r] = state[r], state[EAX]
        elif handler == H_XCHG_RM:  # 86 /r  XCHG r/m8, r8;  87 /r  XCHG r/m32, r32
            result = get_reg(state, reg, size)
            writeback = True
            set_reg(state, reg, size, src)
        elif handler == H_SETCC:  # 0F 90+cc  SETcc r/m8
            result = 1 if condition_holds(op & 15, lop, la, lb, lres, lmask, flags) else 0
            writeback = True
        elif handler == H_MOVZX:
            # 0F B6 /r  MOVZX r32, r/m8;  0F B7 /r  MOVZX r32, r/m16
            state[reg] = src
        elif handler == H_MOVSX:
            # 0F BE /r  MOVSX r32, r/m8;  0F BF /r  MOVSX r32, r/m16
            state[reg] = sign_extend(src, size) & MASK32
        elif handler == H_IMUL:
            # 0F AF /r  IMUL r32, r/m32;  69 /r id  IMUL r32, r/m32, imm32;
            # 6B /r ib  IMUL r32, r/m32, imm8
            if op == 0x1AF:
                b = sign_extend(state[reg], 4)
            elif op == 0x69:
                b = sign_extend(imm, 4)
            else:
                b = sign_extend(imm, 1)
            product = sign_extend(src, 4) * b
            low = product & MASK32
            overflow = 1 if product != sign_extend(low, 4) else 0
            lop, la, lb, lres, lmask = LOP_CFOF, overflow, overflow, low, MASK32
            state[reg] = low
        elif handler == H_BT:
            # 0F A3 /r  BT r/m32, r32;  0F BA /4 ib  BT r/m32, imm8  (CF = the bit)
            if op == 0x1BA:
                offset = imm & 31
                v = src
            elif mod == 3:
                offset = state[reg] & 31
                v = state[rm]
            else:  # a bit string in memory: the signed offset may reach other dwords
                offset = state[reg]
                v = read32(mem, state, (ea + ((sign_extend(offset, 4) >> 5) << 2)) & MASK32, user)
                offset &= 31
            if v < 0:
                fault = True
            else:
                flags = materialize(lop, la, lb, lres, lmask, flags)
                flags = (flags & ~FLAG_CF) | ((v >> offset) & 1)
                lop = LOP_NONE
        elif handler == H_LOOP:  # E2 cb  LOOP rel8
            c = (state[ECX] - 1) & MASK32
            state[ECX] = c
            if c != 0:
                eip = (eip + (imm ^ 0x80) - 0x80) & MASK32  # rel8 is signed
        elif handler == H_LEAVE:  # C9  LEAVE (ESP = EBP; POP EBP)
            v = read32(mem, state, state[EBP], user)
            if v < 0:
                fault = True
            else:
                state[ESP] = (state[EBP] + 4) & MASK32
                state[EBP] = v
        elif handler == H_PUSHAD:  # 60  PUSHAD
            i = host_index_slow(mem, state, (esp_before - 32) & MASK32, 32, True, user)
            if i < 0:
                fault = True
            else:
                for r in range(8):
                    store(mem, i + 28 - 4 * r, 4, state[r] if r != ESP else esp_before)
                state[ESP] = (esp_before - 32) & MASK32
        elif handler == H_POPAD:  # 61  POPAD (the saved ESP is skipped)
            i = host_index_slow(mem, state, esp_before, 32, False, user)
            if i < 0:
                fault = True
            else:
                for r in range(8):
                    if r != ESP:
                        state[r] = load(mem, i + 28 - 4 * r, 4)
                state[ESP] = (esp_before + 32) & MASK32
        elif handler == H_PUSHF:  # 9C  PUSHFD (VM and RF read as 0)
            pushed = materialize(lop, la, lb, lres, lmask, flags) & 0x00FCFFFF
        elif handler == H_POPF:  # 9D  POPFD
            writable = POPF_WRITABLE
            if state[CS] & 3 == 0:
                writable |= FLAG_IOPL
            if io_allowed(state, flags):
                writable |= FLAG_IF
            flags = (flags & ~writable) | (popped & writable) | EFLAGS_FIXED
            lop = LOP_NONE
        elif handler == H_CWDE:  # 98  CWDE
            state[EAX] = sign_extend(state[EAX], 2) & MASK32
        elif handler == H_CDQ:  # 99  CDQ
            state[EDX] = MASK32 if state[EAX] & 0x80000000 else 0
        elif handler == H_MOV_MOFFS:
            # A0  MOV AL, moffs8;  A1  MOV EAX, moffs32;  A2  MOV moffs8, AL;  A3  MOV moffs32, EAX
            osize = 4 if op & 1 else 1
            i = host_index_slow(mem, state, imm, osize, op >= 0xA2, user)
            if i < 0:
                fault = True
            elif op <= 0xA1:
                set_reg(state, EAX, osize, load(mem, i, osize))
            else:
                store(mem, i, osize, get_reg(state, EAX, osize))
        elif handler == H_STRING:
            # A4 MOVSB  A5 MOVSD  A6 CMPSB  A7 CMPSD  AA STOSB  AB STOSD  AC LODSB  AD LODSD
            # AE SCASB  AF SCASD; with F3 (REP/REPE) or F2 (REPNE). One iteration per step:
            # EIP stays on the instruction until the count runs out, as on real x86.
            if rep == 0 or state[ECX] != 0:
                osize = 4 if op & 1 else 1
                kind = op & 0xFE
                step = -osize if flags & FLAG_DF else osize
                ok, lop, la, lb, lres, lmask = string_step(
                    mem, state, kind, osize, step, lop, la, lb, lres, lmask, user
                )
                if not ok:
                    fault = True
                elif rep != 0:
                    c = (state[ECX] - 1) & MASK32
                    state[ECX] = c
                    again = c != 0
                    if again and (kind == 0xA6 or kind == 0xAE):  # REPE / REPNE
                        zf = get_zf(lop, la, lb, lres, lmask, flags)
                        again = zf == 1 if rep == 0xF3 else zf == 0
                    if again:
                        eip = start
        elif handler == H_CLC:  # F8  CLC
            flags = materialize(lop, la, lb, lres, lmask, flags) & ~FLAG_CF
            lop = LOP_NONE
        elif handler == H_STC:  # F9  STC
            flags = materialize(lop, la, lb, lres, lmask, flags) | FLAG_CF
            lop = LOP_NONE
        elif handler == H_CMC:  # F5  CMC
            flags = materialize(lop, la, lb, lres, lmask, flags) ^ FLAG_CF
            lop = LOP_NONE
        elif handler == H_CLD:  # FC  CLD
            flags &= ~FLAG_DF
        elif handler == H_STD:  # FD  STD
            flags |= FLAG_DF
        elif handler == H_INT3:  # CC  INT3: a trap, EIP after the instruction
            fault = trap = raise_fault(state, VECTOR_BP, NO_ERROR_CODE)
        elif handler == H_INT:  # CD ib  INT imm8: a software interrupt, EIP after the instruction
            fault = trap = raise_fault(state, imm, NO_ERROR_CODE)
        elif handler == H_HLT:  # F4  HLT (CPL 0): wait for an interrupt
            if controls & EXIT_ON_HLT or not flags & FLAG_IF:
                reason = EXIT_HALT  # (with IF clear, nothing could wake it)
            elif irq_pending:
                pass  # an interrupt is waiting: it is taken before the next instruction
            elif timer_period > 0:
                if tick_at > cycles:  # idle until the next timer tick
                    state[STAT_IDLE_CYCLES] += tick_at - cycles
                    cycles = tick_at
            else:
                reason = EXIT_HALT
        elif handler == H_CLI_STI:  # FA  CLI;  FB  STI  (CPL <= IOPL)
            if op == 0xFA:
                flags &= ~FLAG_IF
            else:
                blocked_by_sti_or_mov_ss = not flags & FLAG_IF  # (for one instruction)
                flags |= FLAG_IF
        elif handler == H_IO:
            # E4 ib  IN AL, imm8;  E5 ib  IN EAX, imm8;  E6 ib  OUT imm8, AL;  E7 ib  OUT imm8, EAX
            # EC  IN AL, DX;  ED  IN EAX, DX;  EE  OUT DX, AL;  EF  OUT DX, EAX  (CPL <= IOPL)
            osize = 4 if op & 1 else 1
            is_in = (op & 2) == 0
            port = imm if op < 0xEC else state[EDX] & 0xFFFF
            value = 0 if is_in else get_reg(state, EAX, osize)
            if not controls & EXIT_ON_IO and is_core_port(port):  # PIC and PIT
                state[TIMER_NEXT] = state[CYCLES] + tick_at  # (the device may change it)
                value = device_io(state, port, is_in, value, state[CYCLES] + cycles)
                if is_in:
                    set_reg(state, EAX, osize, value)
                cycles += state[COST_IO]
                timer_period = state[TIMER_PERIOD]
                tick_at = state[TIMER_NEXT] - state[CYCLES]
                irq_pending = irq_waiting(state)
            else:  # every other port is emulated in Python
                state[EXIT_PORT] = port
                state[EXIT_SIZE] = osize
                state[EXIT_IS_IN] = 1 if is_in else 0
                state[EXIT_VALUE] = value
                # VT-x's I/O qualification: size - 1, IN, immediate port, the port
                state[EXIT_QUALIFICATION] = (
                    (osize - 1) | (8 if is_in else 0) | (0x40 if op < 0xEC else 0) | (port << 16)
                )
                reason = EXIT_IO
        elif handler == H_IRET:  # CF  IRET (to any ring; pops ESP and SS when going out)
            ok, new_eip, new_flags = iret(mem, state, materialize(lop, la, lb, lres, lmask, flags))
            if not ok:
                fault = True
            else:
                eip, flags, lop = new_eip, new_flags, LOP_NONE
                irq_pending = irq_waiting(state)
        # ---- system forms (vm.cpu.system) ----------------------------------------------
        elif handler == H_SGDT_SIDT:  # 0F 01 /0  SGDT m;  0F 01 /1  SIDT m  (reveal the bases)
            fault = store_table_register(mem, state, reg == 1, ea, user)
        elif handler == H_LGDT_LIDT:  # 0F 01 /2  LGDT m;  0F 01 /3  LIDT m  (CPL 0)
            fault = load_table_register(mem, state, reg == 3, ea, user)
        elif handler == H_SMSW:  # 0F 01 /4  SMSW r/m32 (reveals CR0; non-root: its read shadow)
            fault = store_word_or_dword(mem, state, mod, rm, ea, cr0_as_read(state), user)
        elif handler == H_LMSW:  # 0F 01 /6  LMSW r/m16 (CPL 0): CR0's PE MP EM TS
            status = load_machine_status_word(state, src)
            if status == SYSTEM_EXIT_CR_ACCESS:
                reason = EXIT_CR_ACCESS
        elif handler == H_INVLPG:  # 0F 01 /7  INVLPG m (CPL 0)
            if controls & EXIT_ON_INVLPG and state[NON_ROOT]:  # INVLPG exiting
                state[EXIT_QUALIFICATION] = ea  # (the linear address)
                reason = EXIT_INVLPG
            else:
                invalidate_page(state, ea)
        elif handler == H_SLDT_STR:
            # 0F 00 /0  SLDT r/m32 (there is never an LDT);  0F 00 /1  STR r/m32
            value = 0 if reg == 0 else state[TR]
            fault = store_word_or_dword(mem, state, mod, rm, ea, value, user)
        elif handler == H_LTR:  # 0F 00 /3  LTR r/m16 (CPL 0)
            fault = not load_task_register(mem, state, src)
        elif handler == H_MOV_FROM_CR:  # 0F 20 /r  MOV r32, CRn (CPL 0)
            status = mov_from_cr(state, reg, rm)
            if status == SYSTEM_FAULT:
                fault = True
            elif status == SYSTEM_EXIT_CR_ACCESS:
                reason = EXIT_CR_ACCESS
        elif handler == H_MOV_TO_CR:  # 0F 22 /r  MOV CRn, r32 (CPL 0)
            status = mov_to_cr(state, reg, rm)
            if status == SYSTEM_FAULT:
                fault = True
            elif status == SYSTEM_EXIT_CR_ACCESS:
                reason = EXIT_CR_ACCESS
        elif handler == H_MOV_FROM_SREG:  # 8C /r  MOV r/m32, Sreg (MOV r/m, CS reveals the CPL)
            fault = mov_from_sreg(mem, state, reg, mod, rm, ea, user)
        elif handler == H_MOV_TO_SREG:  # 8E /r  MOV Sreg, r/m16 (not CS)
            status = mov_to_sreg(mem, state, reg, src)
            if status == SYSTEM_FAULT:
                fault = True
            elif status == SYSTEM_BLOCK_INTERRUPTS:
                blocked_by_sti_or_mov_ss = True  # after MOV SS, interrupts wait one instruction
        elif handler == H_CPUID:  # 0F A2  CPUID
            if controls & EXIT_ON_CPUID:
                reason = EXIT_CPUID
            else:
                cpuid(state)
        elif handler == H_VMCALL:  # 0F 01 C1  VMCALL
            if controls & EXIT_ON_VMCALL:  # as VT-x: an exit at the VMCALL, not retired
                eip = start
                reason = EXIT_HYPERCALL
                count -= 1  # (what retiring adds below, taken back)
                cycles -= state[COST_TABLE + form]
            else:
                fault = raise_fault(state, VECTOR_UD, NO_ERROR_CODE)  # (outside a VM)
        elif handler == H_UD2:  # 0F 0B  UD2: the instruction that is #UD on purpose
            fault = raise_fault(state, VECTOR_UD, NO_ERROR_CODE)
        else:  # H_UD: no form of the table (the decoder let it through; it does not)
            fault = raise_fault(state, VECTOR_UD, NO_ERROR_CODE)

        # ---- 4. write back and retire ----------------------------------------------------
        if fault:
            if trap:  # INT3 and INT n completed: EIP stays after them
                count += 1
                cycles += state[COST_TABLE + form]
            else:  # a fault: put back what the operand stage changed, restart later
                eip = start
                state[ESP] = esp_before
            flags = materialize(lop, la, lb, lres, lmask, flags)
            lop = LOP_NONE
            outcome, eip, flags = raise_event(
                mem, state, state[FAULT_VECTOR], state[FAULT_ERROR], eip, flags, trap, start
            )
            if outcome == EVENT_NESTED:  # the instruction (or INT n) runs again after it
                if trap:
                    count -= 1
                    cycles -= state[COST_TABLE + form]
                state[ESP] = esp_before
                reason = EXIT_NESTED_PAGE_FAULT
                state[EXIT_INSTRUCTION_LENGTH] = length
                break
            if outcome == EVENT_EXIT and trap and eip == start:
                count -= 1  # INT n faulted instead (its fault exits): it did not retire
                cycles -= state[COST_TABLE + form]
            if outcome == EVENT_EXIT or outcome == EVENT_SOFTWARE_EXIT:
                reason = EXIT_FAULT if outcome == EVENT_EXIT else EXIT_SOFTWARE_INTERRUPT
                state[EXIT_INSTRUCTION_LENGTH] = length
                break
            if outcome == EVENT_SHUTDOWN:
                reason = EXIT_SHUTDOWN
                break
            cycles += state[COST_EXCEPTION]
            if not trap:
                events += 1  # (a trap's instruction was counted already)
            continue
        if writeback:
            if mod == 3:
                set_reg(state, rm, size, result)
            else:
                store(mem, where, size, result)
        if slot >= 0:
            store(mem, slot, 4, pushed)
            state[ESP] = (esp_before - 4) & MASK32
        count += 1
        cycles += state[COST_TABLE + form]
        if reason != EXIT_NONE:
            state[EXIT_INSTRUCTION_LENGTH] = length  # (IO, HALT, CPUID, CR_ACCESS)
            break

    cycles += (state[STAT_PAGE_WALKS] - walks_seen) * state[COST_PAGE_WALK]
    state[EIP] = eip
    state[EFLAGS] = materialize(lop, la, lb, lres, lmask, flags) | EFLAGS_FIXED
    state[TIMER_NEXT] = state[CYCLES] + tick_at
    state[INSTRUCTIONS] += count
    state[CYCLES] += cycles
    state[EXIT_REASON] = reason
    return reason
