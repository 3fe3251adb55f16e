"""The CPU's state: one flat int64 array, indexed by the named slots below.

Python reads and writes it without copying; the jitted core takes it as an argument.
General registers come first, in x86 encoding order, so ModRM.reg indexes them directly.
Every value is kept in 0..2**32-1.
"""

from __future__ import annotations

import numpy as np

# General registers, x86 encoding order (ModRM.reg / .rm, the +r of opcodes).
EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI = range(8)
REG_NAMES = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
REG8_NAMES = ("al", "cl", "dl", "bl", "ah", "ch", "dh", "bh")

EIP = 8
EFLAGS = 9
CR0 = 10
CR2 = 11
CR3 = 12
CR4 = 13
CS = 14  # selector; CPL = CS & 3
SS = 15

# Exit slots: why run() returned, and the arguments of that exit.
EXIT_REASON = 16
EXIT_VECTOR = 17  # FAULT: exception vector
EXIT_ERROR = 18  # FAULT: error code (or -1 when the vector pushes none)
EXIT_PORT = 19  # IO: port
EXIT_SIZE = 20  # IO: 1 or 4 bytes
EXIT_IS_IN = 21  # IO: 1 for IN (Python writes AL/EAX then runs on), 0 for OUT
EXIT_VALUE = 22  # IO: value written by OUT

# Counters over the whole life of the machine.
INSTRUCTIONS = 23
CYCLES = 24

# Controls the VMM (and the Machine) set.
EXC_EXIT_BITMAP = 25  # bit v set: exception v exits instead of being delivered
EXIT_CONTROLS = 26  # bits below: which events exit
MEM_BASE = 27  # guest-physical window: host index = MEM_BASE + physical address
MEM_SIZE = 28  # ... for physical addresses below MEM_SIZE only
N_BREAKPOINTS = 29  # how many BREAKPOINTS slots are live
SKIP_BREAKPOINT = 30  # 1: do not stop at a breakpoint on the first instruction of a run

# System registers (descriptor-table registers) for the system model.
GDTR_BASE = 31
GDTR_LIMIT = 32
IDTR_BASE = 33
IDTR_LIMIT = 34
TR = 35

# Scratch slots the memory helpers fill when an access faults (vector, error code).
FAULT_VECTOR = 36
FAULT_ERROR = 37

# Slot ranges after the registers: breakpoint addresses, then the cost table
# (simulated cycles per instruction form, see vm.isa.opcode_cost_table).
MAX_BREAKPOINTS = 64
BREAKPOINTS = 64
COST_TABLE = BREAKPOINTS + MAX_BREAKPOINTS
COST_TABLE_SIZE = 512 * 8
STATE_SIZE = COST_TABLE + COST_TABLE_SIZE

# The core keeps a few bytes of scratch at the very end of the memory array, outside
# every guest window (instruction bytes fetched near the end of a window).
SCRATCH_SIZE = 32

# Exit-control bits (EXIT_CONTROLS).
EXIT_ON_IO = 1
EXIT_ON_HLT = 2
EXIT_ON_CPUID = 4
EXIT_ON_CR_ACCESS = 8

# EFLAGS bits.
FLAG_CF = 0x001
FLAG_PF = 0x004
FLAG_AF = 0x010
FLAG_ZF = 0x040
FLAG_SF = 0x080
FLAG_TF = 0x100
FLAG_IF = 0x200
FLAG_DF = 0x400
FLAG_OF = 0x800
FLAG_IOPL = 0x3000
ARITH_FLAGS = FLAG_CF | FLAG_PF | FLAG_AF | FLAG_ZF | FLAG_SF | FLAG_OF
EFLAGS_FIXED = 0x002  # bit 1 always reads as 1


def new_state() -> np.ndarray:
    """A state array as the CPU is at reset: flat protected mode, ring 0."""
    from vm.isa import DEFAULT_COST_TABLE

    state = np.zeros(STATE_SIZE, dtype=np.int64)
    state[COST_TABLE : COST_TABLE + COST_TABLE_SIZE] = DEFAULT_COST_TABLE
    state[EFLAGS] = EFLAGS_FIXED
    state[CS] = 0x08
    state[SS] = 0x10
    state[CR0] = 0x1  # PE: protected mode from reset (see README, Differences)
    state[EXC_EXIT_BITMAP] = 0xFFFFFFFF
    state[EXIT_CONTROLS] = EXIT_ON_IO | EXIT_ON_HLT
    return state
