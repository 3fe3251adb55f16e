"""A hostile state array: the state is public (Python writes any int64 into any slot), so
whatever it holds, the core must neither crash the process nor touch host memory outside
the machine's window. Reproducers: /work/shared/repro/hostile (f_tlb_state.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from vm.asm import assemble
from vm.cpu import state as S
from vm.cpu.core import run as core_run
from vm.cpu.exits import ExitReason
from vm.machine import Machine

WINDOW = 64 * 1024
BASE = 2 * WINDOW  # the machine's window sits between two neighbours' memory
HOST = 5 * WINDOW + S.SCRATCH_SIZE
FILL = 0x5A


def neighbourhood() -> tuple[np.ndarray, Machine]:
    """A host array filled with FILL and a machine whose window is in its middle."""
    host = np.full(HOST, FILL, dtype=np.uint8)
    host[BASE : BASE + WINDOW] = 0
    return host, Machine(memory_size=WINDOW, host_memory=host, base=BASE)


def outside(host: np.ndarray) -> np.ndarray:
    """Host bytes outside the window (and outside the core's scratch bytes at the end)."""
    return np.concatenate([host[:BASE], host[BASE + WINDOW : HOST - S.SCRATCH_SIZE]])


def paging_on(m: Machine) -> None:
    """Identity-map the window's 16 pages (directory 0x1000, table 0x2000), paging on."""
    m.write32(0x1000, 0x2000 | 7)
    for page in range(WINDOW >> 12):
        m.write32(0x2000 + 4 * page, page << 12 | 7)
    m.state[S.CR3] = 0x1000
    m.state[S.CR0] |= S.CR0_PG


@pytest.mark.parametrize("page", [WINDOW, 2 * WINDOW, 3 * WINDOW, 0x7FFFF000, 0xFFFFF000])
def test_a_tlb_entry_outside_the_window_is_not_trusted(page):
    """f_tlb_state.py: a TLB entry the user wrote names a page outside the window."""
    host, m = neighbourhood()
    source = "bits 32\norg 0x8000\nmov eax, [0x7000]\nmov dword [0x7004], 0x6e776f70\nhlt"
    program = assemble(source)
    m.load(0x8000, program.code)
    m.eip = 0x8000
    paging_on(m)
    slot = 7  # the TLB slot of linear page 7
    m.state[S.TLB_TAGS + slot] = 7
    m.state[S.TLB_VALUES + slot] = page | S.TLB_USER | S.TLB_WRITE_USER | S.TLB_WRITE_SUPERVISOR
    before = outside(host).copy()
    ex = m.run(10)
    assert ex.reason == ExitReason.HALT  # the walk maps page 7 where the page table says
    assert m.regs.eax == 0 and m.read32(0x7004) == 0x6E776F70
    assert np.array_equal(outside(host), before)


EXTREMES = [0, 1, -1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, (1 << 63) - 1, -(1 << 63)]


def hostile_value(rng: random.Random) -> int:
    pick = rng.random()
    if pick < 0.4:
        return rng.choice(EXTREMES)
    if pick < 0.6:
        return rng.randrange(1 << 32)
    if pick < 0.8:
        return rng.randrange(-(1 << 63), 1 << 63)
    return rng.randrange(-300, 300)


# Code that touches memory every way the core can: through registers the state supplies
# (ESP, ESI, EDI, EBP, EAX...), strings, the stack, IRET, descriptor tables, INT n.
PROBES = bytes.fromhex(
    "89 18"  # mov [eax], ebx
    " 8b 0e"  # mov ecx, [esi]
    " 50 58"  # push eax ; pop eax
    " a5"  # movsd
    " f3 ab"  # rep stosd
    " c9"  # leave
    " 61"  # popad
    " 8f 00"  # pop dword [eax]
    " 0f a3 08"  # bt [eax], ecx
    " ff 30"  # push dword [eax]
    " cf"  # iret
    " cd 80"  # int 0x80
    " 0f 00 d8"  # ltr ax
    " 8e d0"  # mov ss, eax
    " c3"  # ret
)


@pytest.mark.parametrize("seed", range(40))
def test_random_and_extreme_state_never_reaches_outside_the_window(seed):
    rng = random.Random(seed)
    host, m = neighbourhood()
    m.load(0, rng.randbytes(WINDOW))
    if seed % 2:
        paging_on(m)
    for at in range(0x3000, WINDOW, 0x1000):
        m.load(at, PROBES)
    state = m.state
    keep = {S.MEM_BASE, S.MEM_SIZE} if seed % 4 else set()
    for slot in range(S.STATE_SIZE):
        if slot not in keep and rng.random() < 0.8:
            state[slot] = hostile_value(rng)
    if seed % 3 == 0:  # TLB entries that name pages just past the window, or far away
        tags = np.arange(S.TLB_ENTRIES)
        state[S.TLB_TAGS : S.TLB_TAGS + S.TLB_ENTRIES] = tags
        state[S.TLB_VALUES : S.TLB_VALUES + S.TLB_ENTRIES] = (tags << 12) + WINDOW + 7
    before = outside(host).copy()
    for _ in range(5):
        reason = core_run(state, host, 2000)
        assert 0 <= reason <= max(ExitReason)
        if reason == ExitReason.SHUTDOWN:
            break
        state[S.EIP] = rng.choice([0x3000, hostile_value(rng)])
    assert np.array_equal(outside(host), before), "the core wrote outside the window"
    assert state.size == S.STATE_SIZE


def test_a_window_past_the_host_array_is_refused_whatever_its_sum():
    """MEM_BASE + MEM_SIZE must not wrap around int64 and pass the check."""
    host, m = neighbourhood()
    m.state[S.MEM_BASE] = 1 << 62
    m.state[S.MEM_SIZE] = 1 << 62  # the sum is -2**63 in int64
    assert core_run(m.state, host, 10) == ExitReason.SHUTDOWN


def test_a_slow_timer_overdue_by_a_huge_count_does_not_hang():
    """TIMER_NEXT far in the past with a period of 1 cycle: the missed ticks merge at once."""
    m = Machine(memory_size=WINDOW)
    m.load(0x1000, b"\xeb\xfe")  # jmp $
    m.eip = 0x1000
    m.state[S.TIMER_PERIOD] = 1
    m.state[S.TIMER_NEXT] = -(1 << 62)
    m.state[S.PIC_IMR] = 0xFF
    assert m.run(100).reason == ExitReason.BUDGET


def test_pic_vector_base_out_of_range_gives_a_vector_of_8_bits():
    m = Machine(memory_size=WINDOW)
    m.load(0x1000, b"\xeb\xfe")  # jmp $
    m.eip = 0x1000
    m.state[S.EXIT_CONTROLS] |= S.EXIT_ON_INTERRUPT
    m.state[S.PIC_IMR] = 0
    m.state[S.PIC_IRR] = 1
    m.state[S.PIC_VECTOR_BASE] = (1 << 40) + 0x20
    ex = m.run(10)
    assert (ex.reason, ex.vector) == (ExitReason.INTERRUPT, 0x20)
