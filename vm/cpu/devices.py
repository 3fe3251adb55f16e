"""Devices that live inside the core: an interrupt controller and an interval timer.

They run without an exit per tick, so a bare-metal guest's timer costs nothing in
Python; their registers are state slots that Python can read and set.

PIC (like the 8259A's master, simplified): IRQ n arrives as vector PIC_VECTOR_BASE + n.
  port 0x20  write 0x20: end of interrupt (clears the highest-priority in-service IRQ)
  port 0x21  read/write: the interrupt mask (bit n set = IRQ n masked)
PIT (like the 8253's channel 0, rate generator only): counts simulated cycles.
  port 0x43  write: start a new divisor (the mode byte itself is ignored)
  port 0x40  write: the divisor, low byte then high byte; IRQ 0 every divisor PIT counts
             (0 means 65536), one count every TIMER_SCALE cycles (1 at reset)
"""

from __future__ import annotations

from vm.cpu.jit import State, b1, i64, jit
from vm.cpu.state import (
    PIC_IMR,
    PIC_IRR,
    PIC_ISR,
    PIC_VECTOR_BASE,
    PIT_LATCH,
    TIMER_NEXT,
    TIMER_PERIOD,
    TIMER_SCALE,
)

PIC_COMMAND = 0x20
PIC_DATA = 0x21
PIT_CHANNEL0 = 0x40
PIT_COMMAND = 0x43
PIC_EOI = 0x20
LOW_BYTE_SEEN = 1 << 16


@jit(b1(i64))
def is_core_port(port):
    """True for the ports the in-core devices answer."""
    return port == PIC_COMMAND or port == PIC_DATA or port == PIT_CHANNEL0 or port == PIT_COMMAND


@jit(i64(State, i64, b1, i64, i64))
def device_io(state, port, is_in, value, now):
    """An IN (returns the value read) or OUT to an in-core device; ``now`` = CYCLES."""
    if port == PIC_DATA:
        if is_in:
            return state[PIC_IMR]
        state[PIC_IMR] = value & 0xFF
    elif port == PIC_COMMAND:
        if not is_in and value & 0xFF == PIC_EOI:
            isr = state[PIC_ISR]
            state[PIC_ISR] = isr & (isr - 1)  # clear the lowest set bit: the highest priority
    elif port == PIT_COMMAND:
        if not is_in:
            state[PIT_LATCH] = 0
    elif not is_in:  # PIT_CHANNEL0
        latch = state[PIT_LATCH]
        if latch & LOW_BYTE_SEEN:
            divisor = (latch & 0xFF) | ((value & 0xFF) << 8)
            if divisor == 0:
                divisor = 65536
            period = divisor * max(1, state[TIMER_SCALE])
            state[TIMER_PERIOD] = period
            state[TIMER_NEXT] = now + period
            state[PIT_LATCH] = 0
        else:
            state[PIT_LATCH] = LOW_BYTE_SEEN | (value & 0xFF)
    return 0


@jit(b1(State))
def irq_waiting(state):
    """True when an unmasked IRQ is requested (it may still wait behind one in service)."""
    return (state[PIC_IRR] & ~state[PIC_IMR] & 0xFF) != 0


@jit(i64(State))
def deliverable_irq(state):
    """The IRQ the controller would deliver now, or -1 (none requested and unmasked, or
    one of equal or higher priority is in service). Changes nothing."""
    ready = state[PIC_IRR] & ~state[PIC_IMR] & 0xFF
    if ready == 0:
        return -1
    irq = 0
    while not (ready >> irq) & 1:
        irq += 1
    if state[PIC_ISR] & ((1 << (irq + 1)) - 1):  # one of equal or higher priority is in service
        return -1
    return irq


@jit(i64(State))
def acknowledge_irq(state):
    """The vector of the IRQ to deliver now (marked in service), or -1."""
    irq = deliverable_irq(state)
    if irq < 0:
        return -1
    state[PIC_IRR] &= ~(1 << irq)
    state[PIC_ISR] |= 1 << irq
    return (state[PIC_VECTOR_BASE] + irq) & 0xFF


@jit(i64(State))
def take_irq(state):
    """The lowest unmasked requested IRQ, taken off IRR without going in service (for a VMM)."""
    ready = state[PIC_IRR] & ~state[PIC_IMR] & 0xFF
    irq = 0
    while irq < 7 and not (ready >> irq) & 1:
        irq += 1
    state[PIC_IRR] &= ~(1 << irq)
    return irq
