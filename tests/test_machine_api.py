"""The Machine's Python API refuses bad arguments with a clear ValueError or TypeError, and
never answers wrong or crashes (probes: /work/shared/repro/hostile/api_probe.py)."""

from __future__ import annotations

import numpy as np
import pytest

from vm.asm import assemble
from vm.cpu import state as S
from vm.cpu.exits import ExitReason
from vm.machine import MAX_BUDGET, Machine, check_budget

SIZE = 64 * 1024


@pytest.mark.parametrize("budget", [1, 10, MAX_BUDGET, np.int64(5), np.uint64(7), np.int8(3)])
def test_check_budget_takes_integers_from_1_to_2_63_minus_1(budget):
    assert check_budget(budget) == int(budget) and type(check_budget(budget)) is int


@pytest.mark.parametrize(
    "budget",
    [0, -5, 2**63, 2**64, np.uint64(2**64 - 1), True, False, 1.0, "10", None, np.float64(3)],
    ids=repr,
)
def test_check_budget_refuses_the_rest_with_a_value_error(budget):
    with pytest.raises(ValueError, match="budget"):
        check_budget(budget)


def test_run_with_a_budget_of_2_63_is_a_value_error_not_an_overflow():
    m = Machine(memory_size=SIZE)
    with pytest.raises(ValueError, match="2\\*\\*63 - 1"):
        m.run(2**63)
    assert m.run(np.int64(3)).reason == ExitReason.BUDGET


@pytest.mark.parametrize(
    ("address", "length", "error"),
    [
        (10, -20, ValueError),
        (0, -1, ValueError),
        (-1, 4, ValueError),
        (SIZE - 6, 10, ValueError),
        (1.5, 4, ValueError),
        (0, 2.5, ValueError),
        (np.uint64(2**64 - 1), 1, ValueError),
        (np.int64(2**62), 1, ValueError),
        (True, 1, ValueError),
        (0, True, ValueError),
    ],
)
def test_read_refuses_bad_addresses_and_lengths(address, length, error):
    m = Machine(memory_size=SIZE)
    with pytest.raises(error):
        m.read(address, length)


def test_read_and_load_take_numpy_integers():
    m = Machine(memory_size=SIZE)
    m.load(np.int64(0x100), b"abc")
    assert m.read(np.uint16(0x100), np.int32(3)) == b"abc"
    assert m.read(SIZE, 0) == b""


@pytest.mark.parametrize(
    ("host_memory", "base", "error"),
    [
        (np.zeros(SIZE + 64, dtype=np.int32), 0, ValueError),
        (np.zeros(2 * (SIZE + 64), dtype=np.uint8)[::2], 0, ValueError),
        (np.zeros((2, SIZE + 64), dtype=np.uint8), 0, ValueError),
        (bytearray(SIZE + 64), 0, TypeError),
        (np.zeros(SIZE + 64, dtype=np.uint8), 1.5, TypeError),
        (np.zeros(SIZE + 64, dtype=np.uint8), None, TypeError),
        (np.zeros(SIZE + 64, dtype=np.uint8), -1, ValueError),
        (np.zeros(SIZE + 64, dtype=np.uint8), 64, ValueError),
    ],
)
def test_constructor_refuses_host_memory_the_core_cannot_run_on(host_memory, base, error):
    with pytest.raises(error):
        Machine(memory_size=SIZE, host_memory=host_memory, base=base)


def test_constructor_refuses_a_read_only_host_memory():
    memory = np.zeros(SIZE + 64, dtype=np.uint8)
    memory.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        Machine(memory_size=SIZE, host_memory=memory)


@pytest.mark.parametrize("size", [True, 4096.0, "1M", 100, 2**31])
def test_constructor_refuses_bad_memory_sizes(size):
    with pytest.raises(ValueError):
        Machine(memory_size=size)


def test_restore_of_another_machines_snapshot_keeps_this_machines_window():
    """f_restore_cross.py: the snapshot carries the other machine's MEM_BASE."""
    host = np.zeros(2 * SIZE + S.SCRATCH_SIZE, dtype=np.uint8)
    a = Machine(memory_size=SIZE, host_memory=host, base=0)
    b = Machine(memory_size=SIZE, host_memory=host, base=SIZE)
    b.load(0x2000, b"B's secret")
    program = "bits 32\norg 0x1000\nmov eax, [0x2000]\nmov dword [0x3000], 0x6e776f70\nhlt"
    b.load(0x1000, assemble(program).code)
    a.restore(b.snapshot())
    assert a.state[S.MEM_BASE] == 0 and a.state[S.MEM_SIZE] == SIZE
    b.load(0x2000, b"changed!!!")
    a.eip = 0x1000
    assert a.run(100).reason == ExitReason.HALT
    assert a.regs.eax.to_bytes(4, "little") == b"B's "  # from a's copy of the snapshot
    assert a.read(0x3000, 4) == b"pown" and b.read(0x3000, 4) == bytes(4)


@pytest.mark.parametrize("snapshot", [None, "snapshot", (np.zeros(3), np.zeros(3))], ids=repr)
def test_restore_refuses_what_is_not_a_snapshot(snapshot):
    with pytest.raises(TypeError):
        Machine(memory_size=SIZE).restore(snapshot)


def test_restore_refuses_a_snapshot_of_another_size_or_a_bad_state():
    m = Machine(memory_size=SIZE)
    with pytest.raises(ValueError, match="memory size"):
        m.restore(Machine(memory_size=2 * SIZE).snapshot())
    snap = m.snapshot()
    bad = type(snap)(snap.state[:-1], snap.memory)
    with pytest.raises(ValueError, match="state"):
        m.restore(bad)
    bad = type(snap)(snap.state.astype(np.float64), snap.memory)
    with pytest.raises(ValueError, match="state"):
        m.restore(bad)


def test_remove_breakpoint_refuses_what_is_not_an_address():
    m = Machine(memory_size=SIZE)
    with pytest.raises(TypeError):
        m.remove_breakpoint("x")
    m.add_breakpoint(0x1000)
    m.remove_breakpoint(np.int64(0x1000))
    assert m.breakpoints == []
