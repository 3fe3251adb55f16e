"""Arithmetic flags, computed lazily.

After an ADD the core does not compute six flags it will probably never read. It keeps
the last operation's kind, operands and result (``lop, la, lb, lres``) and its operand size
(``lmask``: 0xFF or 0xFFFFFFFF), and computes a flag only when an instruction reads it
(Jcc, SETcc, ADC, PUSHF, an exit). ``flags`` holds the rest of EFLAGS, and every
arithmetic flag too when ``lop`` is ``LOP_NONE``. This is how Bochs and QEMU do it.

``lres`` is the unmasked result for ADD (carry = a bit above the mask) and SUB (borrow =
negative), so CF needs no extra state; INC and DEC keep CF in ``flags``.
"""

from __future__ import annotations

import numpy as np

from vm.cpu.jit import b1, i64, jit, jit_inline
from vm.cpu.state import FLAG_AF, FLAG_CF, FLAG_OF, FLAG_PF, FLAG_SF, FLAG_ZF

LOP_NONE = 0  # every arithmetic flag is in the flags word
LOP_ADD = 1  # ADD, ADC: lres = a + b (+ carry), unmasked
LOP_SUB = 2  # SUB, SBB, CMP, NEG, CMPS, SCAS: lres = a - b (- borrow), unmasked
LOP_LOGIC = 3  # AND, OR, XOR, TEST: CF = OF = AF = 0
LOP_INC = 4  # INC: like ADD of 1, CF kept in the flags word
LOP_DEC = 5  # DEC: like SUB of 1, CF kept in the flags word
LOP_CFOF = 6  # SHL SHR SAR MUL IMUL: CF = la, OF = lb, AF = 0, SF ZF PF from lres

ARITH_MASK = FLAG_CF | FLAG_PF | FLAG_AF | FLAG_ZF | FLAG_SF | FLAG_OF

# PARITY[b] is 1 when byte b has an even number of set bits (x86's PF).
PARITY = np.array([1 - bin(b).count("1") % 2 for b in range(256)], dtype=np.int64)


@jit_inline
def get_cf(lop, la, lb, lres, lmask, flags):
    """CF of the last operation."""
    if lop == LOP_ADD:
        return 1 if lres > lmask else 0
    if lop == LOP_SUB:
        return 1 if lres < 0 else 0
    if lop == LOP_LOGIC:
        return 0
    if lop == LOP_CFOF:
        return la
    return flags & FLAG_CF


@jit_inline
def get_zf(lop, la, lb, lres, lmask, flags):
    """ZF of the last operation."""
    if lop == LOP_NONE:
        return (flags >> 6) & 1
    return 1 if (lres & lmask) == 0 else 0


@jit_inline
def get_sf(lop, la, lb, lres, lmask, flags):
    """SF of the last operation."""
    if lop == LOP_NONE:
        return (flags >> 7) & 1
    return 1 if (lres & ((lmask >> 1) + 1)) != 0 else 0


@jit_inline
def get_of(lop, la, lb, lres, lmask, flags):
    """OF of the last operation."""
    if lop == LOP_NONE:
        return (flags >> 11) & 1
    sign = (lmask >> 1) + 1
    res = lres & lmask
    if lop in (LOP_ADD, LOP_INC):
        return 1 if ((la ^ res) & (lb ^ res) & sign) != 0 else 0
    if lop in (LOP_SUB, LOP_DEC):
        return 1 if ((la ^ lb) & (la ^ res) & sign) != 0 else 0
    if lop == LOP_CFOF:
        return lb
    return 0


@jit_inline
def get_pf(lop, la, lb, lres, lmask, flags):
    """PF of the last operation (parity of the low byte of the result)."""
    if lop == LOP_NONE:
        return (flags >> 2) & 1
    return PARITY[lres & 0xFF]


@jit_inline
def get_af(lop, la, lb, lres, lmask, flags):
    """AF of the last operation (carry out of bit 3)."""
    if lop == LOP_NONE:
        return (flags >> 4) & 1
    if lop == LOP_LOGIC or lop == LOP_CFOF:
        return 0
    return ((la ^ lb ^ lres) >> 4) & 1


@jit(i64(i64, i64, i64, i64, i64, i64))
def materialize(lop, la, lb, lres, lmask, flags):
    """The whole EFLAGS word, every arithmetic flag computed."""
    if lop == LOP_NONE:
        return flags
    out = flags & ~ARITH_MASK
    out |= get_cf(lop, la, lb, lres, lmask, flags)
    out |= get_pf(lop, la, lb, lres, lmask, flags) << 2
    out |= get_af(lop, la, lb, lres, lmask, flags) << 4
    out |= get_zf(lop, la, lb, lres, lmask, flags) << 6
    out |= get_sf(lop, la, lb, lres, lmask, flags) << 7
    out |= get_of(lop, la, lb, lres, lmask, flags) << 11
    return out


@jit_inline
def condition(cc, lop, la, lb, lres, lmask, flags):
    """True when condition code cc (the low nibble of Jcc/SETcc) holds."""
    test = cc >> 1
    if test == 2:  # E / NE: ZF
        result = get_zf(lop, la, lb, lres, lmask, flags)
    elif test == 1:  # B / AE: CF
        result = get_cf(lop, la, lb, lres, lmask, flags)
    elif test == 6:  # L / GE: SF != OF
        result = get_sf(lop, la, lb, lres, lmask, flags) ^ get_of(lop, la, lb, lres, lmask, flags)
    elif test == 7:  # LE / G: ZF or SF != OF
        result = get_zf(lop, la, lb, lres, lmask, flags) | (
            get_sf(lop, la, lb, lres, lmask, flags) ^ get_of(lop, la, lb, lres, lmask, flags)
        )
    elif test == 3:  # BE / A: CF or ZF
        result = get_cf(lop, la, lb, lres, lmask, flags) | get_zf(lop, la, lb, lres, lmask, flags)
    elif test == 0:  # O / NO
        result = get_of(lop, la, lb, lres, lmask, flags)
    elif test == 4:  # S / NS
        result = get_sf(lop, la, lb, lres, lmask, flags)
    else:  # P / NP
        result = get_pf(lop, la, lb, lres, lmask, flags)
    return result != (cc & 1)


@jit(i64(i64, i64, i64, i64, i64, i64))
def carry_flag(lop, la, lb, lres, lmask, flags):
    """get_cf, as a call (for the colder places that read CF: ADC, SBB, FE/FF INC/DEC)."""
    return get_cf(lop, la, lb, lres, lmask, flags)


@jit(b1(i64, i64, i64, i64, i64, i64, i64))
def condition_holds(cc, lop, la, lb, lres, lmask, flags):
    """condition, as a call (for SETcc; Jcc inlines it)."""
    return condition(cc, lop, la, lb, lres, lmask, flags)
