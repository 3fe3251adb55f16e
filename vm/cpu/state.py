"""The CPU's state: one flat int64 array, indexed by the named slots below.

Python reads and writes it without copying; the jitted core takes it as an argument.
General registers come first, in x86 encoding order, so ModRM.reg indexes them directly.
Every value is kept in 0..2**32-1.
"""

from __future__ import annotations

import ctypes

import numpy as np

from vm.isa import FORM_SLOTS, REG8_NAMES, REG32_NAMES

# General registers, x86 encoding order (ModRM.reg / .rm, the +r of opcodes).
EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI = range(8)
REG_NAMES = REG32_NAMES
REG8_NAMES = REG8_NAMES

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
EXIT_VALUE = 22  # IO: value written by OUT; CR_ACCESS: value a MOV to CRn writes
EXIT_CR = EXIT_PORT  # CR_ACCESS: which control register
EXIT_CR_WRITE = EXIT_IS_IN  # CR_ACCESS: 1 for MOV CRn, r32; 0 for MOV r32, CRn
EXIT_CR_REGISTER = EXIT_SIZE  # CR_ACCESS: the general register (the VMM reads or fills it)

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

TSS_BASE = 38  # linear base of the TSS, cached by LTR from its GDT descriptor

# Devices inside the core (so bare metal needs no exit per tick), visible from Python.
PIC_IRR = 39  # interrupt requests waiting (bit n = IRQ n)
PIC_IMR = 40  # masked IRQs
PIC_ISR = 41  # IRQs being served (cleared by an end-of-interrupt)
PIC_VECTOR_BASE = 42  # IRQ n arrives as vector PIC_VECTOR_BASE + n
TIMER_PERIOD = 43  # cycles between timer ticks (IRQ 0); 0 = timer off
TIMER_NEXT = 44  # CYCLES value of the next tick
PIT_LATCH = 45  # PIT divisor being written: low byte, then high byte (bit 16: low seen)
TIMER_SCALE = 46  # simulated CPU cycles per PIT count (the PIT's clock is slower than the CPU's)

# Event costs in simulated cycles (set from a CostModel, vm.cpu.cost).
COST_EXCEPTION = 47  # delivering an exception or interrupt through the IDT
COST_PAGE_WALK = 48  # a TLB miss: walking the two-level page table
COST_IO = 49  # an IN or OUT handled by a device in the core

# Statistics over the whole life of the machine.
STAT_PAGE_WALKS = 50
STAT_TLB_FLUSHES = 51
STAT_INTERRUPTS = 52  # external interrupts delivered

# Data segment selectors (kept for MOV to and from segment registers; segments are flat).
DS = 53
ES = 54
FS = 55
GS = 56
FRAME = 57  # 6 scratch slots: the frame an interrupt delivery pushes
FRAME_SIZE = 6
EXIT_INSTRUCTION_LENGTH = 63  # FAULT, SOFTWARE_INTERRUPT, IO, ...: bytes of the instruction
# Software-interrupt exits, per vector (with EXIT_ON_SOFT_INT): bit v % 32 of slot v // 32
# set makes INT v (INT3: v = 3) exit as SOFTWARE_INTERRUPT instead of going through the IDT,
# so one gate can exit to the VMM while another goes straight to the guest kernel.
SOFT_INT_EXITS = 64
SOFT_INT_EXITS_SIZE = 8
STAT_IDLE_CYCLES = 72  # cycles a HLT waited for the next timer tick (the CPU was idle)

# VMX non-root operation (hardware-assisted virtualization, VT-x style): the guest kernel
# runs at its own ring 0 and the control structure (these slots, the exception bitmap and
# EXIT_CONTROLS; vm.cpu.vmcs shows them as a VMCS) chooses what exits.
NON_ROOT = 73  # 1: the CPU is in VMX non-root mode (CR0 read shadow, CR3 and INVLPG exits)
EPT_POINTER = 74  # nested paging: host-physical page directory | EPT_ENABLE (0: off)
CR0_GUEST_HOST_MASK = 75  # CR0 bits the VMM owns: a write changing one exits
CR0_READ_SHADOW = 76  # what the guest reads in the bits the VMM owns (MOV from CR0, SMSW)
ENTRY_INTERRUPTION = 77  # VM-entry interruption information: an event to inject on entry
ENTRY_ERROR = 78  # ... its error code (with ENTRY_DELIVER_ERROR)
EXIT_QUALIFICATION = 79  # what the exit was about (VT-x's layout per exit reason, below)
EXIT_GUEST_LINEAR = 80  # NESTED_PAGE_FAULT: the guest linear address (when the access had one)
EXIT_GUEST_PHYSICAL = 81  # NESTED_PAGE_FAULT: the guest-physical address
EXIT_VECTORING = 82  # IDT-vectoring information: the event being delivered when it exited
EXIT_VECTORING_ERROR = 83  # ... its error code
# The nested paging-structure cache: one 4 MiB nested page (a nested directory entry with
# PS set) that a nested walk need not read again (tag: guest-physical >> 22, or -1).
NESTED_CACHE_TAG = 84
NESTED_CACHE_ENTRY = 85

# Slot ranges after the registers: breakpoint addresses, then the cost table
# (simulated cycles per form slot, see vm.isa.opcode_cost_table).
MAX_BREAKPOINTS = 64
BREAKPOINTS = 96
COST_TABLE = BREAKPOINTS + MAX_BREAKPOINTS
COST_TABLE_SIZE = FORM_SLOTS
# How many times each vector was delivered or exited (exceptions, IRQs, INT n).
VECTOR_COUNTS = COST_TABLE + COST_TABLE_SIZE
# The software TLB: TLB_ENTRIES direct-mapped entries, a tag (virtual page number, or -1)
# and a value (physical page | TLB_* permission bits) each.
TLB_ENTRIES = 256
TLB_TAGS = VECTOR_COUNTS + 256
TLB_VALUES = TLB_TAGS + TLB_ENTRIES
STATE_SIZE = TLB_VALUES + TLB_ENTRIES

# TLB value bits (the page is 4 KiB aligned, so the low 12 bits are free).
TLB_USER = 1  # user (CPL 3) accesses allowed
TLB_WRITE_USER = 2  # user writes allowed (and the page is already dirty)
TLB_WRITE_SUPERVISOR = 4  # supervisor writes allowed (and the page is already dirty)

# CR0 bits.
CR0_PE = 0x1
CR0_WP = 0x10000
CR0_PG = 0x80000000

# The core keeps a few bytes of scratch at the very end of the memory array, outside
# every guest window (instruction bytes fetched near the end of a window).
SCRATCH_SIZE = 32

# Exit-control bits (EXIT_CONTROLS).
EXIT_ON_IO = 1
EXIT_ON_HLT = 2
EXIT_ON_CPUID = 4
EXIT_ON_CR_ACCESS = 8
EXIT_ON_SOFT_INT = 16  # INT n and INT3 whose SOFT_INT_EXITS bit is set exit (as
# SOFTWARE_INTERRUPT) instead of going through the IDT
EXIT_ON_INTERRUPT = 32  # an unmasked IRQ exits (INTERRUPT, whatever IF says) instead of being
# delivered: the VMM owns the hardware's interrupts (VT-x's external-interrupt exiting)
EXIT_ON_VMCALL = 64  # VMCALL exits (HYPERCALL, EIP at the VMCALL, as VT-x does) instead of
# raising #UD: the VMM carries the call out and moves EIP past it
# In VMX non-root mode (NON_ROOT) only:
EXIT_ON_CR3_LOAD = 128  # MOV CR3, r32 exits (CR_ACCESS): shadow paging needs it, nested not
EXIT_ON_CR3_STORE = 256  # MOV r32, CR3 exits (CR_ACCESS): the guest reads its own CR3 back
EXIT_ON_INVLPG = 512  # INVLPG exits (INVLPG, the linear address as qualification)
EXIT_ON_INTERRUPT_WINDOW = 1024  # exit (INTERRUPT_WINDOW) before the first instruction at
# which the guest can take an interrupt (IF = 1, no STI or MOV SS blocking)

# EPT_POINTER's valid bit (the directory is 4 KiB aligned, so the low bits are free).
EPT_ENABLE = 1
# ENTRY_INTERRUPTION and EXIT_VECTORING, as VT-x lays them out.
EVENT_VALID = 0x80000000
EVENT_DELIVER_ERROR = 0x800  # push ENTRY_ERROR (EXIT_VECTORING_ERROR) as the error code
EVENT_TYPE_SHIFT = 8  # bits 10:8: the type of event
EVENT_EXTERNAL = 0  # an external interrupt (from the VMM's virtual PIC)
EVENT_HARDWARE_EXCEPTION = 3  # an exception (#GP, #PF, ...)
EVENT_SOFTWARE_INTERRUPT = 4  # INT n (the gate's DPL is checked)
# EXIT_QUALIFICATION of a NESTED_PAGE_FAULT (VT-x's EPT violation): the access, what the
# nested entry allowed, and whether it was the final page or a guest page-table entry.
NPF_READ = 0x1
NPF_WRITE = 0x2
NPF_FETCH = 0x4
NPF_ENTRY_PRESENT = 0x8  # the nested entry was present (a write to a read-only page)
NPF_ENTRY_WRITABLE = 0x10
NPF_LINEAR_VALID = 0x80  # EXIT_GUEST_LINEAR holds the guest linear address
NPF_FINAL = 0x100  # the access was to the page itself (0: to a guest page-table entry)
NPF_MISCONFIGURED = 0x10000  # vmlab's: a nested entry points outside the VM's memory

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
    state[EXIT_CONTROLS] = EXIT_ON_IO | EXIT_ON_HLT | EXIT_ON_SOFT_INT
    state[SOFT_INT_EXITS : SOFT_INT_EXITS + SOFT_INT_EXITS_SIZE] = 0xFFFFFFFF  # every vector
    state[PIC_IMR] = 0xFF
    state[PIC_VECTOR_BASE] = 32
    state[TIMER_SCALE] = 1
    state[TLB_TAGS : TLB_TAGS + TLB_ENTRIES] = -1
    state[NESTED_CACHE_TAG] = -1
    return state


# ---- the named view ----------------------------------------------------------------------------
# Every slot above by name, with how many slots it spans. StateView (below) is built from
# this list, so a slot added above and here is readable by name with no other change.
SLOT_LAYOUT = (
    *((name.upper(), 1) for name in REG32_NAMES),
    ("EIP", 1), ("EFLAGS", 1), ("CR0", 1), ("CR2", 1), ("CR3", 1), ("CR4", 1),
    ("CS", 1), ("SS", 1),
    ("EXIT_REASON", 1), ("EXIT_VECTOR", 1), ("EXIT_ERROR", 1), ("EXIT_PORT", 1),
    ("EXIT_SIZE", 1), ("EXIT_IS_IN", 1), ("EXIT_VALUE", 1),
    ("INSTRUCTIONS", 1), ("CYCLES", 1),
    ("EXC_EXIT_BITMAP", 1), ("EXIT_CONTROLS", 1), ("MEM_BASE", 1), ("MEM_SIZE", 1),
    ("N_BREAKPOINTS", 1), ("SKIP_BREAKPOINT", 1),
    ("GDTR_BASE", 1), ("GDTR_LIMIT", 1), ("IDTR_BASE", 1), ("IDTR_LIMIT", 1), ("TR", 1),
    ("FAULT_VECTOR", 1), ("FAULT_ERROR", 1), ("TSS_BASE", 1),
    ("PIC_IRR", 1), ("PIC_IMR", 1), ("PIC_ISR", 1), ("PIC_VECTOR_BASE", 1),
    ("TIMER_PERIOD", 1), ("TIMER_NEXT", 1), ("PIT_LATCH", 1), ("TIMER_SCALE", 1),
    ("COST_EXCEPTION", 1), ("COST_PAGE_WALK", 1), ("COST_IO", 1),
    ("STAT_PAGE_WALKS", 1), ("STAT_TLB_FLUSHES", 1), ("STAT_INTERRUPTS", 1),
    ("DS", 1), ("ES", 1), ("FS", 1), ("GS", 1),
    ("FRAME", FRAME_SIZE), ("EXIT_INSTRUCTION_LENGTH", 1),
    ("SOFT_INT_EXITS", SOFT_INT_EXITS_SIZE), ("STAT_IDLE_CYCLES", 1),
    ("NON_ROOT", 1), ("EPT_POINTER", 1), ("CR0_GUEST_HOST_MASK", 1), ("CR0_READ_SHADOW", 1),
    ("ENTRY_INTERRUPTION", 1), ("ENTRY_ERROR", 1), ("EXIT_QUALIFICATION", 1),
    ("EXIT_GUEST_LINEAR", 1), ("EXIT_GUEST_PHYSICAL", 1), ("EXIT_VECTORING", 1),
    ("EXIT_VECTORING_ERROR", 1), ("NESTED_CACHE_TAG", 1), ("NESTED_CACHE_ENTRY", 1),
    ("BREAKPOINTS", MAX_BREAKPOINTS), ("COST_TABLE", COST_TABLE_SIZE),
    ("VECTOR_COUNTS", 256), ("TLB_TAGS", TLB_ENTRIES), ("TLB_VALUES", TLB_ENTRIES),
)  # fmt: skip
# Slots that share another's place, by what the exit is (CR_ACCESS reuses the IO slots).
SLOT_ALIASES = {
    "EXIT_CR": "EXIT_PORT",
    "EXIT_CR_WRITE": "EXIT_IS_IN",
    "EXIT_CR_REGISTER": "EXIT_SIZE",
}


def _state_view_class() -> type[ctypes.Structure]:
    fields: list[tuple[str, type]] = []
    at = 0
    for name, count in SLOT_LAYOUT:
        index = globals()[name]
        if index > at:  # slots no one uses yet
            fields.append((f"_unused_{at}", ctypes.c_int64 * (index - at)))
        fields.append((name.lower(), ctypes.c_int64 * count if count > 1 else ctypes.c_int64))
        at = index + count
    if at != STATE_SIZE:
        raise AssertionError(f"SLOT_LAYOUT ends at {at}, the state has {STATE_SIZE} slots")
    view = type("StateView", (ctypes.Structure,), {"_fields_": fields, "__slots__": ()})
    for alias, name in SLOT_ALIASES.items():
        setattr(view, alias.lower(), getattr(view, name.lower()))
    return view


StateView = _state_view_class()
StateView.__doc__ = """The state array's slots by name (``view.eip``, ``view.cr3 = x``).

A ctypes structure over the same memory as the array (``StateView.from_buffer(state)``):
reading or writing a field is as fast as indexing a memoryview, and Python code that
names what it touches needs no slot numbers. Ranges are ctypes arrays
(``view.vector_counts[0x80]``)."""
