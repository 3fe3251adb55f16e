"""The jitted core: run the CPU until something needs the outside world, return an exit.

``run(state, mem, budget)`` is the only entry point,
like KVM's KVM_RUN: it executes at most ``budget`` instructions and returns an exit
reason (vm.cpu.exits) with that exit's arguments in the state's EXIT_* slots. It never
calls back into Python, never raises, never allocates, and checks every memory index.

Each instruction is decoded by vm.cpu.decode, then executed by an if/elif on its opcode.
Each branch is commented with its Intel form. A fault leaves the machine as it was before
the instruction (EIP on the faulting instruction), so every fault is restartable.

Hot state lives in locals while the loop runs: EIP, the lazy flags (vm.cpu.flags) and
the counters; everything is written back to ``state`` before returning.
"""

from __future__ import annotations

from numba import njit

from vm.cpu.alu import (
    MASK32,
    alu,
    get_reg,
    get_rm,
    mul_flags,
    set_reg,
    set_rm,
    shift,
    sign_extend,
    size_mask,
    trunc_div,
    udiv64,
    umul32,
)
from vm.cpu.decode import HAS_MODRM, MAX_INSTRUCTION, OPINFO, decode
from vm.cpu.exits import (
    EXIT_BREAKPOINT,
    EXIT_BUDGET,
    EXIT_CPUID,
    EXIT_FAULT,
    EXIT_HALT,
    EXIT_IO,
    EXIT_NONE,
    EXIT_SHUTDOWN,
)
from vm.cpu.flags import (
    LOP_DEC,
    LOP_INC,
    LOP_LOGIC,
    LOP_NONE,
    LOP_SUB,
    condition,
    get_cf,
    get_zf,
    materialize,
)
from vm.cpu.memory import host_index, read8, read16, read32, write, write32
from vm.cpu.state import (
    BREAKPOINTS,
    COST_TABLE,
    CS,
    CYCLES,
    EAX,
    EBP,
    EBX,
    ECX,
    EDI,
    EDX,
    EFLAGS,
    EFLAGS_FIXED,
    EIP,
    ESI,
    ESP,
    EXIT_CONTROLS,
    EXIT_ERROR,
    EXIT_IS_IN,
    EXIT_ON_CPUID,
    EXIT_PORT,
    EXIT_REASON,
    EXIT_SIZE,
    EXIT_VALUE,
    EXIT_VECTOR,
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
    SCRATCH_SIZE,
    SKIP_BREAKPOINT,
    STATE_SIZE,
)

VECTOR_DE = 0  # divide error
VECTOR_BP = 3  # breakpoint (INT3)
VECTOR_UD = 6  # invalid opcode
VECTOR_GP = 13  # general protection
NO_ERROR_CODE = -1

# POPF: the flags it may change at any CPL (CF PF AF ZF SF DF OF NT AC ID). IF needs
# CPL <= IOPL and IOPL needs CPL 0; other CPLs keep them silently, as on real x86.
POPF_WRITABLE = 0x001 | 0x004 | 0x010 | 0x040 | 0x080 | 0x400 | 0x800 | 0x4000 | 0x40000 | 0x200000
# CPUID leaf 0 vendor string "vmlabvmlab86" in EBX, EDX, ECX order.
CPUID_VENDOR = (0x616C6D76, 0x6C6D7662, 0x36386261)


@njit(cache=True)
def raise_fault(state, vector, error):
    """Record an exception for the instruction being executed; returns True."""
    state[FAULT_VECTOR] = vector
    state[FAULT_ERROR] = error
    return True


@njit(cache=True)
def push32(mem, state, value):
    """PUSH a dword: 0, or -1 on a fault (ESP unchanged then)."""
    esp = (state[ESP] - 4) & MASK32
    if write32(mem, state, esp, value) < 0:
        return -1
    state[ESP] = esp
    return 0


@njit(cache=True)
def pop32(mem, state):
    """POP a dword: the value, or -1 on a fault (ESP unchanged then)."""
    esp = state[ESP]
    value = read32(mem, state, esp)
    if value >= 0:
        state[ESP] = (esp + 4) & MASK32
    return value


@njit(cache=True)
def io_allowed(state, flags):
    """IN, OUT, CLI and STI need CPL <= IOPL."""
    return (state[CS] & 3) <= ((flags & FLAG_IOPL) >> 12)


@njit(cache=True)
def run(state, mem, budget):
    """Run at most ``budget`` instructions; return the exit reason."""
    # The guest-physical window and the scratch bytes after it must lie inside the host
    # array, and the state must be whole, or nothing runs.
    membase = state[MEM_BASE]
    memsize = state[MEM_SIZE]
    if state.size < STATE_SIZE or membase < 0 or memsize < 0:
        state[EXIT_REASON] = EXIT_SHUTDOWN
        return EXIT_SHUTDOWN
    scratch_at = mem.size - SCRATCH_SIZE
    if membase + memsize > scratch_at:
        state[EXIT_REASON] = EXIT_SHUTDOWN
        return EXIT_SHUTDOWN
    opinfo = OPINFO
    nbreak = max(0, min(state[N_BREAKPOINTS], MAX_BREAKPOINTS))
    skip_break = state[SKIP_BREAKPOINT]
    state[SKIP_BREAKPOINT] = 0
    controls = state[EXIT_CONTROLS]

    eip = state[EIP]
    flags = state[EFLAGS]
    lop = LOP_NONE
    la = 0
    lb = 0
    lres = 0
    lmask = MASK32
    count = 0
    cycles = 0
    reason = EXIT_NONE

    while True:
        if count >= budget:
            reason = EXIT_BUDGET
            break
        if nbreak > 0:
            hit = False
            for i in range(nbreak):
                if state[BREAKPOINTS + i] == eip:
                    hit = True
            if hit and not skip_break:
                reason = EXIT_BREAKPOINT
                break
            skip_break = 0

        # ---- fetch and decode -----------------------------------------------------------
        start = eip
        fault = False
        trap = False  # INT3 and INT n complete before their exception (EIP after them)
        if eip + MAX_INSTRUCTION <= memsize:
            code = mem
            p = membase + eip
            avail = MAX_INSTRUCTION
        else:  # near the end of memory: copy what exists, pad with zeros
            avail = memsize - eip
            for k in range(SCRATCH_SIZE):
                mem[scratch_at + k] = mem[membase + eip + k] if k < avail else 0
            code = mem
            p = scratch_at
        length, op, rep, mod, reg, rm, ea, imm = decode(code, p, state, opinfo)
        if avail <= 0 or length > avail:
            fault = raise_fault(state, VECTOR_GP, 0)  # fetch outside memory
        elif length == 0:
            fault = raise_fault(state, VECTOR_UD, NO_ERROR_CODE)
        eip = (eip + length) & MASK32
        cost_index = op * 8
        if opinfo[op] & HAS_MODRM:
            cost_index += reg

        # ---- execute ----------------------------------------------------------------------
        if fault:
            pass
        elif op == 0x89 or op == 0x8B or op == 0x88 or op == 0x8A:
            size = 4 if op & 1 else 1
            if op & 2:  # 8B /r  MOV r32, r/m32   and   8A /r  MOV r8, r/m8
                v = get_rm(mem, state, mod, rm, ea, size)
                if v < 0:
                    fault = True
                else:
                    set_reg(state, reg, size, v)
            elif set_rm(mem, state, mod, rm, ea, size, get_reg(state, reg, size)) < 0:
                fault = True  # 89 /r  MOV r/m32, r32   and   88 /r  MOV r/m8, r8
        elif op < 0x40:
            form = op & 7
            if form > 5:  # 0F is an escape; 06/07/0E/16/17/1E/1F/27/2F/37/3F unsupported
                fault = raise_fault(state, VECTOR_UD, NO_ERROR_CODE)
            else:
                # 00-3D  ADD OR ADC SBB AND SUB XOR CMP in six forms each:
                #   +0 r/m8, r8   +1 r/m32, r32   +2 r8, r/m8   +3 r32, r/m32
                #   +4 AL, imm8   +5 EAX, imm32
                aop = op >> 3
                size = 4 if form & 1 else 1
                mask = size_mask(size)
                carry = 0
                if aop == 2 or aop == 3:
                    carry = get_cf(lop, la, lb, lres, lmask, flags)
                if form < 2:
                    a = get_rm(mem, state, mod, rm, ea, size)
                    b = get_reg(state, reg, size)
                elif form < 4:
                    a = get_reg(state, reg, size)
                    b = get_rm(mem, state, mod, rm, ea, size)
                else:
                    a = get_reg(state, EAX, size)
                    b = imm
                if a < 0 or b < 0:
                    fault = True
                else:
                    res, kind, full = alu(aop, a, b, carry, mask)
                    if aop != 7:
                        if form < 2:
                            if set_rm(mem, state, mod, rm, ea, size, res) < 0:
                                fault = True
                        elif form < 4:
                            set_reg(state, reg, size, res)
                        else:
                            set_reg(state, EAX, size, res)
                    if not fault:
                        lop, la, lb, lres, lmask = kind, a, b, full, mask
        elif op >= 0x70 and op <= 0x7F:  # 70+cc rel8  Jcc rel8
            if condition(op & 15, lop, la, lb, lres, lmask, flags):
                eip = (eip + sign_extend(imm, 1)) & MASK32
        elif op >= 0x40 and op <= 0x4F:
            # 40+r  INC r32   and   48+r  DEC r32  (CF unchanged)
            r = op & 7
            flags = (flags & ~FLAG_CF) | get_cf(lop, la, lb, lres, lmask, flags)
            a = state[r]
            if op < 0x48:
                lop, lres = LOP_INC, a + 1
            else:
                lop, lres = LOP_DEC, a - 1
            la, lb, lmask = a, 1, MASK32
            state[r] = lres & MASK32
        elif op >= 0x50 and op <= 0x57:  # 50+r  PUSH r32
            if push32(mem, state, state[op & 7]) < 0:
                fault = True
        elif op >= 0x58 and op <= 0x5F:  # 58+r  POP r32
            v = pop32(mem, state)
            if v < 0:
                fault = True
            else:
                state[op & 7] = v
        elif op >= 0x80 and op <= 0x83:
            # 80 /n ib  ALU r/m8, imm8;  81 /n id  ALU r/m32, imm32;
            # 83 /n ib  ALU r/m32, imm8 (sign-extended)
            if op == 0x82:
                fault = raise_fault(state, VECTOR_UD, NO_ERROR_CODE)
            else:
                size = 1 if op == 0x80 else 4
                mask = size_mask(size)
                b = imm
                if op == 0x83:
                    b = sign_extend(imm, 1) & MASK32
                carry = 0
                if reg == 2 or reg == 3:
                    carry = get_cf(lop, la, lb, lres, lmask, flags)
                a = get_rm(mem, state, mod, rm, ea, size)
                if a < 0:
                    fault = True
                else:
                    res, kind, full = alu(reg, a, b, carry, mask)
                    if reg != 7 and set_rm(mem, state, mod, rm, ea, size, res) < 0:
                        fault = True
                    else:
                        lop, la, lb, lres, lmask = kind, a, b, full, mask
        elif op == 0xE8:  # E8 cd  CALL rel32
            if push32(mem, state, eip) < 0:
                fault = True
            else:
                eip = (eip + imm) & MASK32
        elif op == 0xC3:  # C3  RET
            v = pop32(mem, state)
            if v < 0:
                fault = True
            else:
                eip = v
        elif op == 0xEB:  # EB cb  JMP rel8
            eip = (eip + sign_extend(imm, 1)) & MASK32
        elif op == 0xE9:  # E9 cd  JMP rel32
            eip = (eip + imm) & MASK32
        elif op >= 0x180 and op <= 0x18F:  # 0F 80+cc cd  Jcc rel32
            if condition(op & 15, lop, la, lb, lres, lmask, flags):
                eip = (eip + imm) & MASK32
        elif op >= 0xB0 and op <= 0xB7:  # B0+r ib  MOV r8, imm8
            set_reg(state, op & 7, 1, imm)
        elif op >= 0xB8 and op <= 0xBF:  # B8+r id  MOV r32, imm32
            state[op & 7] = imm
        elif op == 0x84 or op == 0x85 or op == 0xA8 or op == 0xA9:
            # 84 /r  TEST r/m8, r8;  85 /r  TEST r/m32, r32;  A8 ib  TEST AL, imm8;
            # A9 id  TEST EAX, imm32
            size = 4 if op & 1 else 1
            if op < 0xA8:
                a = get_rm(mem, state, mod, rm, ea, size)
                b = get_reg(state, reg, size)
            else:
                a = get_reg(state, EAX, size)
                b = imm
            if a < 0:
                fault = True
            else:
                lop, la, lb, lres, lmask = LOP_LOGIC, a, b, a & b, size_mask(size)
        elif op == 0x8D:  # 8D /r  LEA r32, m
            if mod == 3:
                fault = raise_fault(state, VECTOR_UD, NO_ERROR_CODE)
            else:
                state[reg] = ea
        elif op == 0xC6 or op == 0xC7:  # C6 /0 ib  MOV r/m8, imm8;  C7 /0 id  MOV r/m32, imm32
            if set_rm(mem, state, mod, rm, ea, 4 if op & 1 else 1, imm) < 0:
                fault = True
        elif op == 0xC0 or op == 0xC1 or (op >= 0xD0 and op <= 0xD3):
            # C0 /n ib, C1 /n ib  shift r/m by imm8;  D0 /n, D1 /n  by 1;  D2 /n, D3 /n  by CL
            # /n: 0 ROL  1 ROR  2 RCL  3 RCR  4 SHL  5 SHR  7 SAR
            size = 4 if op & 1 else 1
            if op <= 0xC1:
                n = imm & 31
            elif op <= 0xD1:
                n = 1
            else:
                n = state[ECX] & 31
            a = get_rm(mem, state, mod, rm, ea, size)
            if a < 0:
                fault = True
            else:
                full_flags = materialize(lop, la, lb, lres, lmask, flags)
                res, new_flags = shift(reg, a, n, size, full_flags)
                if set_rm(mem, state, mod, rm, ea, size, res) < 0:
                    fault = True
                else:
                    flags = new_flags
                    lop = LOP_NONE
        elif op == 0xF6 or op == 0xF7:
            size = 4 if op & 1 else 1
            mask = size_mask(size)
            a = get_rm(mem, state, mod, rm, ea, size)
            if a < 0:
                fault = True
            elif reg == 0:  # F6 /0 ib  TEST r/m8, imm8;  F7 /0 id  TEST r/m32, imm32
                lop, la, lb, lres, lmask = LOP_LOGIC, a, imm, a & imm, mask
            elif reg == 2:  # F6 /2  NOT r/m8;  F7 /2  NOT r/m32
                if set_rm(mem, state, mod, rm, ea, size, a ^ mask) < 0:
                    fault = True
            elif reg == 3:  # F6 /3  NEG r/m8;  F7 /3  NEG r/m32
                if set_rm(mem, state, mod, rm, ea, size, (0 - a) & mask) < 0:
                    fault = True
                else:
                    lop, la, lb, lres, lmask = LOP_SUB, 0, a, 0 - a, mask
            elif reg == 4 or reg == 5:
                # F6 /4  MUL r/m8 (AX = AL * r/m8);  F7 /4  MUL r/m32 (EDX:EAX = EAX * r/m32)
                # F6 /5  IMUL r/m8;  F7 /5  IMUL r/m32  (signed)
                full_flags = materialize(lop, la, lb, lres, lmask, flags)
                if size == 1:
                    if reg == 4:
                        product = (state[EAX] & 0xFF) * a
                        overflow = product > 0xFF
                    else:
                        product = sign_extend(state[EAX], 1) * sign_extend(a, 1)
                        overflow = product != sign_extend(product, 1)
                    product &= 0xFFFF
                    state[EAX] = (state[EAX] & 0xFFFF0000) | product
                    flags = mul_flags(full_flags, product, 0xFF, overflow)
                else:
                    if reg == 4:
                        high, low = umul32(state[EAX], a)
                        overflow = high != 0
                    else:
                        product = sign_extend(state[EAX], 4) * sign_extend(a, 4)
                        low = product & MASK32
                        high = (product >> 32) & MASK32
                        overflow = product != sign_extend(low, 4)
                    state[EAX] = low
                    state[EDX] = high
                    flags = mul_flags(full_flags, low, MASK32, overflow)
                lop = LOP_NONE
            elif a == 0:  # DIV or IDIV by zero
                fault = raise_fault(state, VECTOR_DE, NO_ERROR_CODE)
            elif size == 1:
                # F6 /6  DIV r/m8 (AL = AX / r/m8, AH = remainder);  F6 /7  IDIV r/m8
                ax = state[EAX] & 0xFFFF
                if reg == 6:
                    q = ax // a
                    r = ax % a
                    bad = q > 0xFF
                else:
                    q, r = trunc_div(sign_extend(ax, 2), sign_extend(a, 1))
                    bad = q > 127 or q < -128
                if bad:
                    fault = raise_fault(state, VECTOR_DE, NO_ERROR_CODE)
                else:
                    state[EAX] = (state[EAX] & 0xFFFF0000) | ((r & 0xFF) << 8) | (q & 0xFF)
            else:
                # F7 /6  DIV r/m32 (EAX = EDX:EAX / r/m32, EDX = remainder);  F7 /7  IDIV r/m32
                if reg == 6:
                    bad = state[EDX] >= a
                    if not bad:
                        q, r = udiv64(state[EDX], state[EAX], a)
                else:
                    n = sign_extend(state[EDX], 4) * 4294967296 + state[EAX]
                    bad = n == -9223372036854775807 - 1
                    if not bad:
                        q, r = trunc_div(n, sign_extend(a, 4))
                        bad = q > 0x7FFFFFFF or q < -0x80000000
                if bad:
                    fault = raise_fault(state, VECTOR_DE, NO_ERROR_CODE)
                else:
                    state[EAX] = q & MASK32
                    state[EDX] = r & MASK32
        elif op == 0xFE or op == 0xFF:
            size = 4 if op & 1 else 1
            if reg <= 1:
                # FE /0  INC r/m8;  FF /0  INC r/m32;  FE /1  DEC r/m8;  FF /1  DEC r/m32
                a = get_rm(mem, state, mod, rm, ea, size)
                if a < 0:
                    fault = True
                else:
                    mask = size_mask(size)
                    full = a + 1 if reg == 0 else a - 1
                    if set_rm(mem, state, mod, rm, ea, size, full & mask) < 0:
                        fault = True
                    else:
                        flags = (flags & ~FLAG_CF) | get_cf(lop, la, lb, lres, lmask, flags)
                        lop = LOP_INC if reg == 0 else LOP_DEC
                        la, lb, lres, lmask = a, 1, full, mask
            else:
                target = get_rm(mem, state, mod, rm, ea, 4)
                if target < 0:
                    fault = True
                elif reg == 2:  # FF /2  CALL r/m32
                    if push32(mem, state, eip) < 0:
                        fault = True
                    else:
                        eip = target
                elif reg == 4:  # FF /4  JMP r/m32
                    eip = target
                elif push32(mem, state, target) < 0:  # FF /6  PUSH r/m32
                    fault = True
        elif op == 0x68:  # 68 id  PUSH imm32
            if push32(mem, state, imm) < 0:
                fault = True
        elif op == 0x6A:  # 6A ib  PUSH imm8 (sign-extended)
            if push32(mem, state, sign_extend(imm, 1) & MASK32) < 0:
                fault = True
        elif op == 0x8F:  # 8F /0  POP r/m32 (the address uses ESP after the pop)
            v = read32(mem, state, state[ESP])
            if v < 0:
                fault = True
            else:
                state[ESP] = (state[ESP] + 4) & MASK32
                if mod != 3:  # recompute the address with the incremented ESP
                    ea = decode(code, p, state, opinfo)[6]
                if set_rm(mem, state, mod, rm, ea, 4, v) < 0:
                    state[ESP] = (state[ESP] - 4) & MASK32
                    fault = True
        elif op == 0x90:  # 90  NOP (XCHG EAX, EAX)
            pass
        elif op >= 0x91 and op <= 0x97:  # 90+r  XCHG EAX, r32
            r = op & 7
            state[EAX], state[r] = state[r], state[EAX]
        elif op == 0x86 or op == 0x87:  # 86 /r  XCHG r/m8, r8;  87 /r  XCHG r/m32, r32
            size = 4 if op & 1 else 1
            a = get_rm(mem, state, mod, rm, ea, size)
            if a < 0:
                fault = True
            else:
                b = get_reg(state, reg, size)
                if set_rm(mem, state, mod, rm, ea, size, b) < 0:
                    fault = True
                else:
                    set_reg(state, reg, size, a)
        elif op >= 0x190 and op <= 0x19F:  # 0F 90+cc  SETcc r/m8
            v = 1 if condition(op & 15, lop, la, lb, lres, lmask, flags) else 0
            if set_rm(mem, state, mod, rm, ea, 1, v) < 0:
                fault = True
        elif op == 0x1B6 or op == 0x1B7 or op == 0x1BE or op == 0x1BF:
            # 0F B6 /r  MOVZX r32, r/m8;  0F B7 /r  MOVZX r32, r/m16
            # 0F BE /r  MOVSX r32, r/m8;  0F BF /r  MOVSX r32, r/m16
            if op & 1:
                if mod == 3:
                    v = state[rm] & 0xFFFF
                else:
                    v = read16(mem, state, ea)
                size = 2
            else:
                v = get_rm(mem, state, mod, rm, ea, 1)
                size = 1
            if v < 0:
                fault = True
            elif op >= 0x1BE:
                state[reg] = sign_extend(v, size) & MASK32
            else:
                state[reg] = v
        elif op == 0x1AF or op == 0x69 or op == 0x6B:
            # 0F AF /r  IMUL r32, r/m32;  69 /r id  IMUL r32, r/m32, imm32;
            # 6B /r ib  IMUL r32, r/m32, imm8
            a = get_rm(mem, state, mod, rm, ea, 4)
            if a < 0:
                fault = True
            else:
                if op == 0x1AF:
                    b = sign_extend(state[reg], 4)
                elif op == 0x69:
                    b = sign_extend(imm, 4)
                else:
                    b = sign_extend(imm, 1)
                product = sign_extend(a, 4) * b
                low = product & MASK32
                full_flags = materialize(lop, la, lb, lres, lmask, flags)
                flags = mul_flags(full_flags, low, MASK32, product != sign_extend(low, 4))
                lop = LOP_NONE
                state[reg] = low
        elif op == 0x1A3 or op == 0x1BA:
            # 0F A3 /r  BT r/m32, r32;  0F BA /4 ib  BT r/m32, imm8
            if op == 0x1BA:
                offset = imm & 31
                addr = ea
            else:
                offset = state[reg]
                # a memory bit string: the offset is signed and may reach other dwords
                addr = (ea + ((sign_extend(offset, 4) >> 5) << 2)) & MASK32
                offset &= 31
            if mod == 3:
                v = state[rm]
                offset &= 31
            else:
                v = read32(mem, state, addr)
            if v < 0:
                fault = True
            else:
                flags = materialize(lop, la, lb, lres, lmask, flags)
                flags = (flags & ~FLAG_CF) | ((v >> offset) & 1)
                lop = LOP_NONE
        elif op == 0xE2:  # E2 cb  LOOP rel8
            c = (state[ECX] - 1) & MASK32
            state[ECX] = c
            if c != 0:
                eip = (eip + sign_extend(imm, 1)) & MASK32
        elif op == 0xC2:  # C2 iw  RET imm16
            v = pop32(mem, state)
            if v < 0:
                fault = True
            else:
                state[ESP] = (state[ESP] + imm) & MASK32
                eip = v
        elif op == 0xC9:  # C9  LEAVE (ESP = EBP; POP EBP)
            v = read32(mem, state, state[EBP])
            if v < 0:
                fault = True
            else:
                state[ESP] = (state[EBP] + 4) & MASK32
                state[EBP] = v
        elif op == 0x60:  # 60  PUSHAD
            esp = state[ESP]
            if host_index(state, (esp - 32) & MASK32, 32) < 0:
                fault = True
            else:
                for i in range(8):
                    v = esp if i == ESP else state[i]
                    write32(mem, state, (esp - 4 * (i + 1)) & MASK32, v)
                state[ESP] = (esp - 32) & MASK32
        elif op == 0x61:  # 61  POPAD (the saved ESP is skipped)
            esp = state[ESP]
            if host_index(state, esp, 32) < 0:
                fault = True
            else:
                for i in range(8):
                    if i != ESP:
                        state[i] = read32(mem, state, (esp + 28 - 4 * i) & MASK32)
                state[ESP] = (esp + 32) & MASK32
        elif op == 0x9C:  # 9C  PUSHFD
            v = materialize(lop, la, lb, lres, lmask, flags) & 0x00FCFFFF
            if push32(mem, state, v) < 0:
                fault = True
        elif op == 0x9D:  # 9D  POPFD
            v = pop32(mem, state)
            if v < 0:
                fault = True
            else:
                writable = POPF_WRITABLE
                cpl = state[CS] & 3
                if cpl == 0:
                    writable |= FLAG_IOPL
                if io_allowed(state, flags):
                    writable |= FLAG_IF
                flags = (flags & ~writable) | (v & writable) | EFLAGS_FIXED
                lop = LOP_NONE
        elif op == 0x98:  # 98  CWDE
            state[EAX] = sign_extend(state[EAX], 2) & MASK32
        elif op == 0x99:  # 99  CDQ
            state[EDX] = MASK32 if state[EAX] & 0x80000000 else 0
        elif op >= 0xA0 and op <= 0xA3:
            # A0  MOV AL, moffs8;  A1  MOV EAX, moffs32;  A2  MOV moffs8, AL;  A3  MOV moffs32, EAX
            size = 4 if op & 1 else 1
            if op <= 0xA1:
                v = read32(mem, state, imm) if size == 4 else read8(mem, state, imm)
                if v < 0:
                    fault = True
                else:
                    set_reg(state, EAX, size, v)
            elif write(mem, state, imm, size, get_reg(state, EAX, size)) < 0:
                fault = True
        elif op >= 0xA4 and op <= 0xAF and op != 0xA8 and op != 0xA9:
            # A4 MOVSB  A5 MOVSD  A6 CMPSB  A7 CMPSD  AA STOSB  AB STOSD  AC LODSB  AD LODSD
            # AE SCASB  AF SCASD; with F3 (REP/REPE) or F2 (REPNE). One iteration per step:
            # EIP stays on the instruction until the count runs out, as on real x86.
            size = 4 if op & 1 else 1
            mask = size_mask(size)
            if rep != 0 and state[ECX] == 0:
                pass
            else:
                step = -size if flags & FLAG_DF else size
                kind = op & 0xFE
                esi = state[ESI]
                edi = state[EDI]
                if kind == 0xA4:  # MOVS
                    v = read32(mem, state, esi) if size == 4 else read8(mem, state, esi)
                    if v < 0 or write(mem, state, edi, size, v) < 0:
                        fault = True
                    else:
                        state[ESI] = (esi + step) & MASK32
                        state[EDI] = (edi + step) & MASK32
                elif kind == 0xAA:  # STOS
                    if write(mem, state, edi, size, get_reg(state, EAX, size)) < 0:
                        fault = True
                    else:
                        state[EDI] = (edi + step) & MASK32
                elif kind == 0xAC:  # LODS
                    v = read32(mem, state, esi) if size == 4 else read8(mem, state, esi)
                    if v < 0:
                        fault = True
                    else:
                        set_reg(state, EAX, size, v)
                        state[ESI] = (esi + step) & MASK32
                else:  # CMPS compares [ESI] with [EDI]; SCAS compares AL/EAX with [EDI]
                    if kind == 0xA6:
                        a = read32(mem, state, esi) if size == 4 else read8(mem, state, esi)
                    else:
                        a = get_reg(state, EAX, size)
                    b = read32(mem, state, edi) if size == 4 else read8(mem, state, edi)
                    if a < 0 or b < 0:
                        fault = True
                    else:
                        lop, la, lb, lres, lmask = LOP_SUB, a, b, a - b, mask
                        if kind == 0xA6:
                            state[ESI] = (esi + step) & MASK32
                        state[EDI] = (edi + step) & MASK32
                if rep != 0 and not fault:
                    c = (state[ECX] - 1) & MASK32
                    state[ECX] = c
                    again = c != 0
                    if again and (kind == 0xA6 or kind == 0xAE):
                        zf = get_zf(lop, la, lb, lres, lmask, flags)
                        again = zf == 1 if rep == 0xF3 else zf == 0
                    if again:
                        eip = start
        elif op == 0xF8:  # F8  CLC
            flags = materialize(lop, la, lb, lres, lmask, flags) & ~FLAG_CF
            lop = LOP_NONE
        elif op == 0xF9:  # F9  STC
            flags = materialize(lop, la, lb, lres, lmask, flags) | FLAG_CF
            lop = LOP_NONE
        elif op == 0xF5:  # F5  CMC
            flags = materialize(lop, la, lb, lres, lmask, flags) ^ FLAG_CF
            lop = LOP_NONE
        elif op == 0xFC:  # FC  CLD
            flags &= ~FLAG_DF
        elif op == 0xFD:  # FD  STD
            flags |= FLAG_DF
        elif op == 0xCC:  # CC  INT3: a trap, EIP after the instruction
            fault = trap = raise_fault(state, VECTOR_BP, NO_ERROR_CODE)
        elif op == 0xCD:  # CD ib  INT imm8: a software interrupt, EIP after the instruction
            fault = trap = raise_fault(state, imm, NO_ERROR_CODE)
        elif op == 0xF4:  # F4  HLT (privileged)
            if state[CS] & 3:
                fault = raise_fault(state, VECTOR_GP, 0)
            else:
                reason = EXIT_HALT
        elif op == 0xFA or op == 0xFB:  # FA  CLI;  FB  STI  (CPL <= IOPL)
            if not io_allowed(state, flags):
                fault = raise_fault(state, VECTOR_GP, 0)
            elif op == 0xFA:
                flags &= ~FLAG_IF
            else:
                flags |= FLAG_IF
        elif (op >= 0xE4 and op <= 0xE7) or (op >= 0xEC and op <= 0xEF):
            # E4 ib  IN AL, imm8;  E5 ib  IN EAX, imm8;  E6 ib  OUT imm8, AL;  E7 ib  OUT imm8, EAX
            # EC  IN AL, DX;  ED  IN EAX, DX;  EE  OUT DX, AL;  EF  OUT DX, EAX  (CPL <= IOPL)
            if not io_allowed(state, flags):
                fault = raise_fault(state, VECTOR_GP, 0)
            else:
                size = 4 if op & 1 else 1
                port = imm if op < 0xEC else state[EDX] & 0xFFFF
                is_in = (op & 2) == 0
                state[EXIT_PORT] = port
                state[EXIT_SIZE] = size
                state[EXIT_IS_IN] = 1 if is_in else 0
                state[EXIT_VALUE] = 0 if is_in else get_reg(state, EAX, size)
                reason = EXIT_IO
        elif op == 0x1A2:  # 0F A2  CPUID
            if controls & EXIT_ON_CPUID:
                reason = EXIT_CPUID
            elif state[EAX] == 0:
                state[EAX] = 1
                state[EBX] = CPUID_VENDOR[0]
                state[EDX] = CPUID_VENDOR[1]
                state[ECX] = CPUID_VENDOR[2]
            else:  # leaf 1: family 3 (i386), no feature bits
                state[EAX] = 0x300
                state[EBX] = 0
                state[ECX] = 0
                state[EDX] = 0
        else:
            # 0F 0B  UD2;  0F 01 C1  VMCALL (#UD outside a VM);  anything else unsupported
            fault = raise_fault(state, VECTOR_UD, NO_ERROR_CODE)

        # ---- retire ----------------------------------------------------------------------
        if fault:
            vector = state[FAULT_VECTOR]
            state[EXIT_VECTOR] = vector
            state[EXIT_ERROR] = state[FAULT_ERROR]
            if trap:
                count += 1  # INT3 and INT n are traps: the instruction completed
                cycles += state[COST_TABLE + cost_index]
            else:
                eip = start  # a fault: restart the instruction after handling
            reason = EXIT_FAULT
            break
        count += 1
        cycles += state[COST_TABLE + cost_index]
        if reason != EXIT_NONE:
            break

    state[EIP] = eip
    state[EFLAGS] = materialize(lop, la, lb, lres, lmask, flags) | EFLAGS_FIXED
    state[INSTRUCTIONS] += count
    state[CYCLES] += cycles
    state[EXIT_REASON] = reason
    return reason
