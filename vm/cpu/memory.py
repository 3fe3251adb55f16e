"""Guest memory access for the core: linear address -> host index, reads and writes.

Every access goes through ``host_index``. With paging on (CR0.PG) the linear address is
translated through the software TLB, or on a miss by walking the guest's two-level page
table (``walk``), with the U/S and R/W checks of the i386 (and CR0.WP for the
supervisor). Every physical address, page-table entries included, is then checked
against the guest-physical window (``MEM_BASE``, ``MEM_SIZE`` in the state): a guest can
never reach a byte outside it, whatever it writes in its page tables.

With nested paging (``EPT_POINTER``, VMX non-root mode) the walk is two-dimensional
(``walk_nested``): the guest's tables hold guest-physical addresses, and every one of them
(each table entry the walk reads, and the page at the end) goes through the VMM's nested
tables, guest-physical -> host-physical, before it is touched. The TLB caches the whole
linear -> host-physical translation. An address the nested tables refuse is a nested page
fault: the exit NESTED_PAGE_FAULT with the guest-physical and linear addresses and a
qualification (``nested_fault``), never an exception the guest sees.

What a walk costs is counted in walks (STAT_PAGE_WALKS, each charged COST_PAGE_WALK):
a two-level walk of the guest's tables is one, and so is each walk of the nested tables
that the nested paging-structure cache does not spare. With 4 KiB nested pages a 2D
walk is four (the (n+1)(m+1)-1 = 8 memory references of Bhargava et al., ASPLOS 2008,
against a native walk's 2); with 4 MiB nested pages, as KVM backs a guest with huge
pages where it can, the cache holds them and a 2D walk costs what a native one does.

A failed access records its exception in the state's FAULT slots (#PF with CR2 and the
error code, #GP(0) outside the window, or VECTOR_NPF) and returns -1; the caller
abandons the instruction. Values are int64 in 0..2**32-1, so -1 can mean "faulted".
"""

from __future__ import annotations

import numpy as np
from numba import types

from vm.cpu.jit import Mem, State, b1, i64, jit, jit_inline
from vm.cpu.state import (
    CR0,
    CR0_PG,
    CR0_WP,
    CR2,
    CR3,
    EPT_ENABLE,
    EPT_POINTER,
    EXIT_GUEST_LINEAR,
    EXIT_GUEST_PHYSICAL,
    EXIT_QUALIFICATION,
    FAULT_ERROR,
    FAULT_VECTOR,
    MEM_BASE,
    MEM_SIZE,
    NESTED_CACHE_ENTRY,
    NESTED_CACHE_TAG,
    NPF_ENTRY_PRESENT,
    NPF_ENTRY_WRITABLE,
    NPF_FINAL,
    NPF_LINEAR_VALID,
    NPF_MISCONFIGURED,
    NPF_READ,
    NPF_WRITE,
    STAT_PAGE_WALKS,
    STAT_TLB_FLUSHES,
    TLB_ENTRIES,
    TLB_TAGS,
    TLB_USER,
    TLB_VALUES,
    TLB_WRITE_SUPERVISOR,
    TLB_WRITE_USER,
)

VECTOR_GP = 13
VECTOR_PF = 14
VECTOR_NPF = 256  # not a vector: FAULT_VECTOR's mark of a nested page fault (an exit)
PAGE_MASK = 0xFFFFF000

# Page-table entry bits.
PTE_PRESENT = 0x01
PTE_WRITE = 0x02
PTE_USER = 0x04
PTE_ACCESSED = 0x20
PTE_DIRTY = 0x40
PDE_LARGE = 0x80  # (nested tables) PS: the directory entry maps a 4 MiB page
LARGE_MASK = 0xFFC00000

# #PF error-code bits.
PF_PRESENT = 1  # the page was present: a protection violation
PF_WRITE = 2
PF_USER = 4


@jit_inline
def load(mem, i, size):
    """The byte, word or dword at host index i (already checked by host_index)."""
    if size == 4:
        return (
            np.int64(mem[i])
            | (np.int64(mem[i + 1]) << 8)
            | (np.int64(mem[i + 2]) << 16)
            | (np.int64(mem[i + 3]) << 24)
        )
    if size == 1:
        return np.int64(mem[i])
    return np.int64(mem[i]) | (np.int64(mem[i + 1]) << 8)


@jit_inline
def store(mem, i, size, value):
    """Store a byte, word or dword at host index i (already checked by host_index)."""
    mem[i] = value & 0xFF
    if size >= 2:
        mem[i + 1] = (value >> 8) & 0xFF
    if size == 4:
        mem[i + 2] = (value >> 16) & 0xFF
        mem[i + 3] = (value >> 24) & 0xFF


@jit_inline
def outside_window(state, phys, size):
    """Record #GP(0) and return True when [phys, phys+size) is not guest memory."""
    if phys < 0 or phys + size > state[MEM_SIZE]:
        state[FAULT_VECTOR] = VECTOR_GP
        state[FAULT_ERROR] = 0
        return True
    return False


@jit_inline
def page_fault(state, lin, error):
    """Record #PF: CR2 = the linear address, and the error code."""
    state[CR2] = lin
    state[FAULT_VECTOR] = VECTOR_PF
    state[FAULT_ERROR] = error
    return -1


@jit(i64(State, i64, i64, i64))
def nested_fault(state, gpa, lin, qualification):
    """Record a nested page fault (VT-x's EPT violation) at guest-physical gpa; -1."""
    state[FAULT_VECTOR] = VECTOR_NPF
    state[FAULT_ERROR] = 0
    state[EXIT_GUEST_PHYSICAL] = gpa
    state[EXIT_GUEST_LINEAR] = lin
    state[EXIT_QUALIFICATION] = qualification | NPF_LINEAR_VALID
    return -1


@jit(i64(Mem, State, i64, i64, b1, b1))
def nested_translate(mem, state, gpa, lin, write, final):
    """Guest-physical gpa through the nested tables -> the host-physical page (an offset in
    the VM's window) | 1 when it may be written without another walk, or -1 (a nested
    page fault, recorded). ``final``: the page itself, not a guest page-table entry.

    The nested tables have the two-level format of the guest's (P, R/W; A and D set as
    EPT's accessed and dirty flags are), and a directory entry with PS maps 4 MiB (kept
    in the nested paging-structure cache); every address in them is checked against
    the window, and one outside it is a fault too (EPT's misconfiguration)."""
    access = NPF_READ | (NPF_WRITE if write else 0) | (NPF_FINAL if final else 0)
    base = state[MEM_BASE]
    memsize = state[MEM_SIZE]
    tag = (gpa >> 22) & 0x3FF
    pde_at = (state[EPT_POINTER] & PAGE_MASK) + (tag << 2)
    if state[NESTED_CACHE_TAG] == tag:  # the cache holds this 4 MiB: no walk
        pde = state[NESTED_CACHE_ENTRY]
    else:
        state[STAT_PAGE_WALKS] += 1  # a walk of the nested tables
        if pde_at + 4 > memsize:
            return nested_fault(state, gpa, lin, access | NPF_MISCONFIGURED)
        pde = load(mem, base + pde_at, 4)
        if not pde & PTE_PRESENT:
            return nested_fault(state, gpa, lin, access)
    if pde & PDE_LARGE:  # a 4 MiB nested page
        writable = (pde & PTE_WRITE) != 0
        if write and not writable:
            return nested_fault(state, gpa, lin, access | NPF_ENTRY_PRESENT)
        page = (pde & LARGE_MASK) + (gpa & 0x3FF000)
        if page + 4096 > memsize or pde_at + 4 > memsize:
            return nested_fault(state, gpa, lin, access | NPF_ENTRY_PRESENT | NPF_MISCONFIGURED)
        new = pde | PTE_ACCESSED | (PTE_DIRTY if write else 0)
        if new != pde:
            store(mem, base + pde_at, 4, new)
        state[NESTED_CACHE_TAG] = tag
        state[NESTED_CACHE_ENTRY] = new
        return page | (1 if writable and new & PTE_DIRTY else 0)
    pte_at = (pde & PAGE_MASK) + (((gpa >> 12) & 0x3FF) << 2)
    if pte_at + 4 > memsize:
        return nested_fault(state, gpa, lin, access | NPF_MISCONFIGURED)
    pte = load(mem, base + pte_at, 4)
    if not pte & PTE_PRESENT:
        return nested_fault(state, gpa, lin, access)
    writable = (pde & pte & PTE_WRITE) != 0
    if write and not writable:
        return nested_fault(state, gpa, lin, access | NPF_ENTRY_PRESENT)
    page = pte & PAGE_MASK
    if page + 4096 > memsize:
        return nested_fault(
            state, gpa, lin, access | NPF_ENTRY_PRESENT | NPF_ENTRY_WRITABLE | NPF_MISCONFIGURED
        )
    store(mem, base + pde_at, 4, pde | PTE_ACCESSED)
    pte |= PTE_ACCESSED
    if write:
        pte |= PTE_DIRTY
    store(mem, base + pte_at, 4, pte)
    return page | (1 if writable and pte & PTE_DIRTY else 0)


@jit(i64(Mem, State, i64, b1, b1))
def walk_nested(mem, state, lin, write, user):
    """The two-dimensional walk: lin through the guest's tables (guest-physical), each
    step through the nested tables; fill the TLB with linear -> host-physical. The host
    page, or -1 (a guest #PF, or a nested page fault).

    Guest page-table entries are read and their A/D bits set through the nested tables
    (accesses to them count as writes there, as with EPT's A/D flags on)."""
    base = state[MEM_BASE]
    slot = (lin >> 12) & (TLB_ENTRIES - 1)
    if not state[CR0] & CR0_PG:  # the guest's paging is off: guest-physical = linear
        host = nested_translate(mem, state, lin & PAGE_MASK, lin, write, True)
        if host < 0:
            return -1
        value = (host & PAGE_MASK) | TLB_USER
        if host & 1:
            value |= TLB_WRITE_USER | TLB_WRITE_SUPERVISOR
        state[TLB_TAGS + slot] = lin >> 12
        state[TLB_VALUES + slot] = value
        return host & PAGE_MASK
    state[STAT_PAGE_WALKS] += 1  # the guest's walk (the nested ones count themselves)
    error = (PF_WRITE if write else 0) | (PF_USER if user else 0)
    pde_gpa = (state[CR3] & PAGE_MASK) + ((lin >> 22) << 2)
    host = nested_translate(mem, state, pde_gpa & PAGE_MASK, lin, True, False)
    if host < 0:
        return -1
    pde_at = base + (host & PAGE_MASK) + (pde_gpa & 0xFFF)
    pde = load(mem, pde_at, 4)
    if not pde & PTE_PRESENT:
        return page_fault(state, lin, error)
    pte_gpa = (pde & PAGE_MASK) + (((lin >> 12) & 0x3FF) << 2)
    host = nested_translate(mem, state, pte_gpa & PAGE_MASK, lin, True, False)
    if host < 0:
        return -1
    pte_at = base + (host & PAGE_MASK) + (pte_gpa & 0xFFF)
    pte = load(mem, pte_at, 4)
    if not pte & PTE_PRESENT:
        return page_fault(state, lin, error)
    user_ok = (pde & pte & PTE_USER) != 0
    writable = (pde & pte & PTE_WRITE) != 0
    if user and not user_ok:
        return page_fault(state, lin, error | PF_PRESENT)
    if write and not writable and (user or state[CR0] & CR0_WP):
        return page_fault(state, lin, error | PF_PRESENT)
    host = nested_translate(mem, state, pte & PAGE_MASK, lin, write, True)
    if host < 0:
        return -1
    store(mem, pde_at, 4, pde | PTE_ACCESSED)
    pte |= PTE_ACCESSED
    if write:
        pte |= PTE_DIRTY
    store(mem, pte_at, 4, pte)
    page = host & PAGE_MASK
    value = page
    if user_ok:
        value |= TLB_USER
    if pte & PTE_DIRTY and host & 1:  # dirty in both dimensions: writes need no walk
        if writable:
            value |= TLB_WRITE_USER
        if writable or not state[CR0] & CR0_WP:
            value |= TLB_WRITE_SUPERVISOR
    state[TLB_TAGS + slot] = lin >> 12
    state[TLB_VALUES + slot] = value
    return page


@jit(i64(Mem, State, i64, b1, b1))
def walk(mem, state, lin, write, user):
    """Translate lin by walking the page tables; fill the TLB. The physical page, or -1."""
    if state[EPT_POINTER] & EPT_ENABLE:
        return walk_nested(mem, state, lin, write, user)
    state[STAT_PAGE_WALKS] += 1
    base = state[MEM_BASE]
    error = (PF_WRITE if write else 0) | (PF_USER if user else 0)
    pde_at = (state[CR3] & PAGE_MASK) + ((lin >> 22) << 2)
    if outside_window(state, pde_at, 4):
        return -1
    pde = load(mem, base + pde_at, 4)
    if not pde & PTE_PRESENT:
        return page_fault(state, lin, error)
    pte_at = (pde & PAGE_MASK) + (((lin >> 12) & 0x3FF) << 2)
    if outside_window(state, pte_at, 4):
        return -1
    pte = load(mem, base + pte_at, 4)
    if not pte & PTE_PRESENT:
        return page_fault(state, lin, error)
    user_ok = (pde & pte & PTE_USER) != 0
    writable = (pde & pte & PTE_WRITE) != 0
    if user and not user_ok:
        return page_fault(state, lin, error | PF_PRESENT)
    if write and not writable and (user or state[CR0] & CR0_WP):
        return page_fault(state, lin, error | PF_PRESENT)
    page = pte & PAGE_MASK
    if outside_window(state, page, 4096):
        return -1
    store(mem, base + pde_at, 4, pde | PTE_ACCESSED)
    pte |= PTE_ACCESSED
    if write:
        pte |= PTE_DIRTY
    store(mem, base + pte_at, 4, pte)
    value = page
    if user_ok:
        value |= TLB_USER
    if pte & PTE_DIRTY:  # only a dirty page may be written without a walk (to set D)
        if writable:
            value |= TLB_WRITE_USER
        if writable or not state[CR0] & CR0_WP:
            value |= TLB_WRITE_SUPERVISOR
    slot = (lin >> 12) & (TLB_ENTRIES - 1)
    state[TLB_TAGS + slot] = lin >> 12
    state[TLB_VALUES + slot] = value
    return page


@jit_inline
def tlb_lookup(state, lin, write, user):
    """The physical page of lin from the TLB if it holds it with these rights, else -1."""
    slot = (lin >> 12) & (TLB_ENTRIES - 1)
    if state[TLB_TAGS + slot] == lin >> 12:
        value = state[TLB_VALUES + slot]
        if write:
            allowed = value & (TLB_WRITE_USER if user else TLB_WRITE_SUPERVISOR)
        else:
            allowed = value & TLB_USER if user else 1
        if allowed:
            return value & PAGE_MASK
    return -1


@jit_inline
def translate(mem, state, lin, write, user):
    """The physical page of lin (TLB first, then a walk), or -1."""
    page = tlb_lookup(state, lin, write, user)
    if page >= 0:
        return page
    return walk(mem, state, lin, write, user)


@jit(i64(Mem, State, i64, i64, b1, b1))
def host_index_slow(mem, state, lin, size, write, user):
    """host_index for every case: paging off or on, TLB miss, an access across pages."""
    if not state[CR0] & CR0_PG and not state[EPT_POINTER] & EPT_ENABLE:
        if outside_window(state, lin, size):
            return -1
        return state[MEM_BASE] + lin
    page = translate(mem, state, lin, write, user)
    if page < 0:
        return -1
    offset = lin & 0xFFF
    if offset + size > 4096:  # the access straddles two pages
        second = translate(mem, state, (lin + size - 1) & 0xFFFFFFFF, write, user)
        if second < 0:
            return -1
        if second != page + 4096:  # not physically adjacent: see README, Differences
            state[FAULT_VECTOR] = VECTOR_GP
            state[FAULT_ERROR] = 0
            return -1
    return state[MEM_BASE] + page + offset


@jit_inline
def host_index(mem, state, lin, size, write, user):
    """Index into the host memory array of a size-byte access at linear address lin, or -1.

    ``write``: the access writes; ``user``: it is made at CPL 3. The common cases (paging
    off; a TLB hit inside one page) are inline; the rest is host_index_slow.
    """
    if not state[CR0] & CR0_PG:
        if lin + size > state[MEM_SIZE] or state[EPT_POINTER] & EPT_ENABLE:
            return host_index_slow(mem, state, lin, size, write, user)  # (#GP, or nested)
        return state[MEM_BASE] + lin
    offset = lin & 0xFFF
    if offset + size <= 4096:
        page = tlb_lookup(state, lin, write, user)
        if page >= 0:
            return state[MEM_BASE] + page + offset
    return host_index_slow(mem, state, lin, size, write, user)


@jit(i64(Mem, State, i64, b1))
def read32(mem, state, lin, user):
    """The dword at linear address lin, or -1."""
    i = host_index_slow(mem, state, lin, 4, False, user)
    if i < 0:
        return -1
    return load(mem, i, 4)


@jit(i64(Mem, State, i64, i64, b1))
def write32(mem, state, lin, value, user):
    """Store a dword at linear address lin; 0, or -1 on a fault."""
    i = host_index_slow(mem, state, lin, 4, True, user)
    if i < 0:
        return -1
    store(mem, i, 4, value)
    return 0


@jit(types.none(State))
def flush_tlb(state):
    """Forget every translation (a CR3 write), the nested paging-structure cache's too."""
    state[STAT_TLB_FLUSHES] += 1
    state[NESTED_CACHE_TAG] = -1
    for slot in range(TLB_ENTRIES):
        state[TLB_TAGS + slot] = -1


@jit(types.none(State, i64))
def invalidate_page(state, lin):
    """Forget the translation of one page (INVLPG)."""
    slot = (lin >> 12) & (TLB_ENTRIES - 1)
    if state[TLB_TAGS + slot] == lin >> 12:
        state[TLB_TAGS + slot] = -1
