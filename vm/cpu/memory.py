"""Guest memory access for the core: linear address -> host index, reads and writes.

Every access goes through ``host_index``, which checks the whole access against the
guest-physical window (``MEM_BASE``, ``MEM_SIZE`` in the state): a guest can never reach a
byte outside it, whatever address it computes. An access outside the window records #GP(0)
in the state's FAULT slots and returns -1; the caller abandons the instruction.

Values are returned as int64 in 0..2**32-1, so -1 can mean "faulted".
"""

from __future__ import annotations

import numpy as np
from numba import njit

from vm.cpu.state import FAULT_ERROR, FAULT_VECTOR, MEM_BASE, MEM_SIZE

VECTOR_GP = 13


@njit(cache=True)
def host_index(state, lin, size):
    """Index into the host memory array of a size-byte access at linear address lin, or -1."""
    phys = lin  # paging off: physical = linear
    if phys + size > state[MEM_SIZE]:
        state[FAULT_VECTOR] = VECTOR_GP
        state[FAULT_ERROR] = 0
        return -1
    return state[MEM_BASE] + phys


@njit(cache=True)
def read8(mem, state, lin):
    """The byte at lin, or -1."""
    i = host_index(state, lin, 1)
    if i < 0:
        return -1
    return np.int64(mem[i])


@njit(cache=True)
def read16(mem, state, lin):
    """The word at lin, or -1."""
    i = host_index(state, lin, 2)
    if i < 0:
        return -1
    return np.int64(mem[i]) | (np.int64(mem[i + 1]) << 8)


@njit(cache=True)
def read32(mem, state, lin):
    """The dword at lin, or -1."""
    i = host_index(state, lin, 4)
    if i < 0:
        return -1
    return (
        np.int64(mem[i])
        | (np.int64(mem[i + 1]) << 8)
        | (np.int64(mem[i + 2]) << 16)
        | (np.int64(mem[i + 3]) << 24)
    )


@njit(cache=True)
def read(mem, state, lin, size):
    """A byte (size 1) or dword (size 4) at lin, or -1."""
    if size == 1:
        return read8(mem, state, lin)
    return read32(mem, state, lin)


@njit(cache=True)
def write8(mem, state, lin, value):
    """Store a byte; 0, or -1 on a fault."""
    i = host_index(state, lin, 1)
    if i < 0:
        return -1
    mem[i] = value & 0xFF
    return 0


@njit(cache=True)
def write32(mem, state, lin, value):
    """Store a dword; 0, or -1 on a fault."""
    i = host_index(state, lin, 4)
    if i < 0:
        return -1
    mem[i] = value & 0xFF
    mem[i + 1] = (value >> 8) & 0xFF
    mem[i + 2] = (value >> 16) & 0xFF
    mem[i + 3] = (value >> 24) & 0xFF
    return 0


@njit(cache=True)
def write(mem, state, lin, size, value):
    """Store a byte (size 1) or dword (size 4); 0, or -1 on a fault."""
    if size == 1:
        return write8(mem, state, lin, value)
    return write32(mem, state, lin, value)


@njit(cache=True)
def writable(state, lin, size):
    """True when a size-byte write at lin would succeed (records the fault if not)."""
    return host_index(state, lin, size) >= 0
