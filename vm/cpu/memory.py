"""Guest memory access for the core: linear address -> host index, reads and writes.

Every access goes through ``host_index``, which checks the whole access against the
guest-physical window (``MEM_BASE``, ``MEM_SIZE`` in the state): a guest can never reach a
byte outside it, whatever address it computes. An access outside the window records #GP(0)
in the state's FAULT slots and returns -1; the caller abandons the instruction.

Values are returned as int64 in 0..2**32-1, so -1 can mean "faulted".
"""

from __future__ import annotations

import numpy as np

from vm.cpu.jit import jit_inline
from vm.cpu.state import FAULT_ERROR, FAULT_VECTOR, MEM_BASE, MEM_SIZE

VECTOR_GP = 13


@jit_inline
def host_index(state, lin, size):
    """Index into the host memory array of a size-byte access at linear address lin, or -1."""
    phys = lin  # paging off: physical = linear
    if phys + size > state[MEM_SIZE]:
        state[FAULT_VECTOR] = VECTOR_GP
        state[FAULT_ERROR] = 0
        return -1
    return state[MEM_BASE] + phys


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
    """Store a byte or dword at host index i (already checked by host_index)."""
    mem[i] = value & 0xFF
    if size == 4:
        mem[i + 1] = (value >> 8) & 0xFF
        mem[i + 2] = (value >> 16) & 0xFF
        mem[i + 3] = (value >> 24) & 0xFF


@jit_inline
def read32(mem, state, lin):
    """The dword at linear address lin, or -1."""
    i = host_index(state, lin, 4)
    if i < 0:
        return -1
    return load(mem, i, 4)


@jit_inline
def write32(mem, state, lin, value):
    """Store a dword at linear address lin; 0, or -1 on a fault."""
    i = host_index(state, lin, 4)
    if i < 0:
        return -1
    store(mem, i, 4, value)
    return 0
