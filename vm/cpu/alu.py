"""Registers and arithmetic: register access, the eight ALU operations, shifts, MUL/DIV.

Sizes are in bytes (1 or 4). Values are int64 in 0..mask. Functions that can fault
return -1 (see vm.cpu.memory).
"""

from __future__ import annotations

from vm.cpu.flags import LOP_ADD, LOP_LOGIC, LOP_SUB
from vm.cpu.jit import i64, jit, jit_inline, pair
from vm.cpu.state import FLAG_CF, FLAG_OF

MASK32 = 0xFFFFFFFF


@jit(i64(i64))
def size_mask(size):
    """0xFF for a byte operand, 0xFFFFFFFF for a dword."""
    return 0xFF if size == 1 else MASK32


@jit(i64(i64, i64))
def sign_extend(value, size):
    """A byte, word (size 2) or dword as a signed int64."""
    bits = size * 8
    sign = 1 << (bits - 1)
    return (value & ((sign << 1) - 1)) - ((value & sign) << 1)


@jit_inline
def get_reg(state, r, size):
    """Register r: EAX..EDI for dwords, AX..DI for words; AL,CL,DL,BL,AH,CH,DH,BH for bytes."""
    if size == 4:
        return state[r]
    if size == 2:
        return state[r] & 0xFFFF
    if r < 4:
        return state[r] & 0xFF
    return (state[r - 4] >> 8) & 0xFF


@jit_inline
def set_reg(state, r, size, value):
    """Write register r (see get_reg); a byte write keeps the other 24 bits."""
    if size == 4:
        state[r] = value & MASK32
    elif r < 4:
        state[r] = (state[r] & 0xFFFFFF00) | (value & 0xFF)
    else:
        state[r - 4] = (state[r - 4] & 0xFFFF00FF) | ((value & 0xFF) << 8)


@jit_inline
def alu(op, a, b, carry, mask):
    """ADD OR ADC SBB AND SUB XOR CMP (op 0..7) on a, b.

    Returns (masked result, lazy-flags kind, unmasked result) for vm.cpu.flags.
    """
    if op == 0:  # ADD
        r = a + b
        return r & mask, LOP_ADD, r
    if op == 1:  # OR
        r = a | b
        return r, LOP_LOGIC, r
    if op == 2:  # ADC
        r = a + b + carry
        return r & mask, LOP_ADD, r
    if op == 3:  # SBB
        r = a - b - carry
        return r & mask, LOP_SUB, r
    if op == 4:  # AND
        r = a & b
        return r, LOP_LOGIC, r
    if op == 6:  # XOR
        r = a ^ b
        return r, LOP_LOGIC, r
    r = a - b  # SUB (5) and CMP (7)
    return r & mask, LOP_SUB, r


@jit(pair(i64)(i64, i64, i64, i64, i64))
def rotate(kind, value, count, size, flags):
    """ROL ROR RCL RCR (kind 0..3) by count (already masked to 5 bits).

    ``flags`` is the materialized EFLAGS; returns (result, new EFLAGS). Rotates change
    only CF and OF; a count of 0 changes nothing.
    """
    if count == 0:
        return value, flags
    bits = size * 8
    mask = size_mask(size)
    msb = bits - 1
    cf = flags & FLAG_CF
    if kind == 0:  # ROL
        c = count % bits
        res = ((value << c) | (value >> (bits - c))) & mask if c else value
        cf = res & 1
        of = ((res >> msb) & 1) ^ cf
    elif kind == 1:  # ROR
        c = count % bits
        res = ((value >> c) | (value << (bits - c))) & mask if c else value
        cf = (res >> msb) & 1
        of = cf ^ ((res >> (msb - 1)) & 1)
    else:  # RCL, RCR: rotate the (bits+1)-bit value CF:value
        c = count % (bits + 1)
        if c == 0:
            return value, flags
        wide = (cf << bits) | value
        wmask = (mask << 1) | 1
        if kind == 2:
            wide = ((wide << c) | (wide >> (bits + 1 - c))) & wmask
        else:
            wide = ((wide >> c) | (wide << (bits + 1 - c))) & wmask
        res = wide & mask
        cf = (wide >> bits) & 1
        if kind == 2:
            of = ((res >> msb) & 1) ^ cf
        else:
            of = ((res >> msb) & 1) ^ ((res >> (msb - 1)) & 1)
    return res, (flags & ~(FLAG_CF | FLAG_OF)) | cf | (of << 11)


@jit_inline
def shift(kind, value, count, size):
    """SHL SHR SAR (kind 4, 5, 7) by count (masked to 5 bits, not 0) -> (result, CF, OF).

    OF is the manual's for a count of 1 (undefined for others; this is QEMU's choice).
    """
    bits = size * 8
    mask = 0xFF if size == 1 else MASK32
    msb = bits - 1
    if kind == 5:  # SHR
        src = value >> (count - 1)
        res = src >> 1
        return res, src & 1, ((src ^ res) >> msb) & 1
    if kind == 7:  # SAR
        src = sign_extend(value, size) >> (count - 1)
        return (src >> 1) & mask, src & 1, 0
    src = (value << (count - 1)) & MASK32  # SHL
    res = (src << 1) & mask
    cf = (src >> msb) & 1
    return res, cf, ((res >> msb) & 1) ^ cf


@jit(pair(i64)(i64, i64))
def umul32(a, b):
    """Unsigned 32x32 -> (high dword, low dword), without overflowing int64."""
    a_lo = a & 0xFFFF
    a_hi = a >> 16
    b_lo = b & 0xFFFF
    b_hi = b >> 16
    lo_lo = a_lo * b_lo
    mid = a_lo * b_hi + a_hi * b_lo + (lo_lo >> 16)  # < 2**34
    low = ((mid & 0xFFFF) << 16) | (lo_lo & 0xFFFF)
    high = a_hi * b_hi + (mid >> 16)
    return high & MASK32, low & MASK32


@jit(pair(i64)(i64, i64, i64))
def udiv64(high, low, divisor):
    """Unsigned (high:low) / divisor for high < divisor -> (quotient, remainder).

    Long division in 16-bit digits so every intermediate fits in int64.
    """
    t = (high << 16) | (low >> 16)
    q1 = t // divisor
    r = t % divisor
    t = (r << 16) | (low & 0xFFFF)
    q0 = t // divisor
    return ((q1 << 16) | q0) & MASK32, t % divisor


@jit(pair(i64)(i64, i64))
def trunc_div(n, d):
    """Signed division rounding toward zero, as IDIV does -> (quotient, remainder)."""
    q = abs(n) // abs(d)
    if (n < 0) != (d < 0):
        q = -q
    return q, n - q * d
