"""The i386 system model: delivery, privilege, paging, IRET, the in-core PIC and PIT.

Byte literals carry their assembly in a comment. Tables come from tests/systables.py.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from systables import (
    IDT,
    KERNEL_CODE,
    KERNEL_STACK,
    RING1_CODE,
    RING1_STACK,
    USER_CODE,
    USER_DATA,
    enter_ring,
    gate,
    identity_paging,
    protected_machine,
    set_gate,
    set_pte,
)

from vm.cpu import state as S
from vm.cpu.exits import ExitReason
from vm.machine import Machine

CODE = 0x3000
HANDLER = 0x4000
USER_STACK = 0x7000
HLT = b"\xf4"


def test_int_from_ring3_switches_to_the_tss_stack_and_iret_returns():
    m = protected_machine()
    set_gate(m, 0x80, HANDLER, dpl=3)
    m.load(CODE, bytes.fromhex("cd 80 b8 07 00 00 00 eb fe"))  # int 0x80 ; mov eax, 7 ; jmp $
    m.load(HANDLER, bytes.fromhex("bb 2a 00 00 00 cf"))  # mov ebx, 42 ; iret
    enter_ring(m, 3, CODE, USER_STACK)
    m.eflags = 0x202
    assert m.run(budget=2).reason == ExitReason.BUDGET  # int 0x80 ; mov ebx, 42
    assert m.cpl == 0 and m.eip == HANDLER + 5
    frame = struct.unpack("<5I", m.read(KERNEL_STACK - 20, 20))
    assert frame == (CODE + 2, USER_CODE, 0x202, USER_STACK, USER_DATA)
    assert m.regs.esp == KERNEL_STACK - 20
    assert not m.eflags & S.FLAG_IF  # an interrupt gate clears IF
    m.run(budget=2)  # iret ; mov eax, 7
    assert (m.cpl, m.regs.esp, m.regs.ebx, m.regs.eax) == (3, USER_STACK, 42, 7)
    assert m.eflags & S.FLAG_IF


def test_int_through_a_dpl0_gate_from_ring3_is_gp_with_the_gate_in_the_error_code():
    m = protected_machine()
    set_gate(m, 0x80, HANDLER, dpl=0)
    set_gate(m, 13, HANDLER + 0x100)
    m.load(CODE, b"\xcd\x80")  # int 0x80
    m.load(HANDLER + 0x100, HLT)
    enter_ring(m, 3, CODE, USER_STACK)
    m.state[S.EXIT_CONTROLS] = 0
    m.run(budget=1)
    assert m.eip == HANDLER + 0x100
    error, eip = struct.unpack("<II", m.read(m.regs.esp, 8))
    assert (error, eip) == (0x80 * 8 + 2, CODE)  # IDT entry 0x80; EIP on the INT


def test_same_ring_exception_pushes_no_stack_switch_and_an_error_code():
    m = protected_machine()
    set_gate(m, 13, HANDLER)
    m.load(CODE, bytes.fromhex("a1 00 00 f0 ff"))  # mov eax, [0xfff00000]  (outside memory)
    m.load(HANDLER, HLT)
    enter_ring(m, 0, CODE, 0x8000)
    m.run(budget=1)
    assert m.eip == HANDLER and m.regs.esp == 0x8000 - 16
    assert struct.unpack("<4I", m.read(0x8000 - 16, 16)) == (
        0,
        CODE,
        KERNEL_CODE,
        0x202 & ~0x200 | 2,
    )


def test_missing_idt_entry_double_faults_then_triple_fault_shuts_down():
    m = protected_machine()
    m.state[S.IDTR_LIMIT] = 8 * 8 - 1  # only vectors 0..7: #GP's own entry is missing
    m.load(CODE, b"\x0f\x0b")  # ud2
    enter_ring(m, 0, CODE, 0x8000)
    set_gate(m, 6, 0x123456)  # #UD's handler is outside memory: fetching it faults
    assert m.run(budget=100).reason == ExitReason.SHUTDOWN


def test_page_fault_sets_cr2_and_the_error_code():
    m = protected_machine()
    identity_paging(m)
    set_gate(m, 14, HANDLER)
    m.load(HANDLER, HLT)
    set_pte(m, 0x5000, 0x5000 | 0x5)  # present, user, read-only
    m.load(CODE, bytes.fromhex("c7 05 00 50 00 00 01 00 00 00"))  # mov dword [0x5000], 1
    enter_ring(m, 3, CODE, USER_STACK)
    m.run(budget=1)
    assert m.eip == HANDLER and m.state[S.CR2] == 0x5000
    error = m.read32(KERNEL_STACK - 24)
    assert error == 0b111  # protection violation, write, user
    set_pte(m, 0x5000, 0)  # not present
    m.state[S.TLB_TAGS : S.TLB_TAGS + S.TLB_ENTRIES] = -1
    enter_ring(m, 3, CODE, USER_STACK)
    m.run(budget=1)
    assert m.read32(KERNEL_STACK - 24) == 0b110  # not present, write, user


def test_supervisor_write_to_a_read_only_page_faults_only_with_cr0_wp():
    m = protected_machine()
    identity_paging(m)
    set_gate(m, 14, HANDLER)
    set_pte(m, 0x5000, 0x5000 | 0x5)  # read-only
    m.load(CODE, bytes.fromhex("c7 05 00 50 00 00 01 00 00 00 f4"))  # mov dword [0x5000], 1
    enter_ring(m, 0, CODE, 0x8000)
    assert m.run().reason == ExitReason.HALT and m.read32(0x5000) == 1
    m.state[S.CR0] |= S.CR0_WP
    m.state[S.TLB_TAGS : S.TLB_TAGS + S.TLB_ENTRIES] = -1
    enter_ring(m, 0, CODE, 0x8000)
    m.run(budget=1)
    assert m.eip == HANDLER


def test_tlb_keeps_a_stale_translation_until_invlpg():
    m = protected_machine()
    identity_paging(m)
    m.load(0x5000, struct.pack("<I", 111))
    m.load(0x6000, struct.pack("<I", 222))
    code = bytes.fromhex(
        "a1 00 50 00 00"  # mov eax, [0x5000]      (fills the TLB)
        "c7 05 14 10 02 00 07 60 00 00"  # mov dword [0x21014], 0x6007 (the PTE of 0x5000)
        "8b 1d 00 50 00 00"  # mov ebx, [0x5000]   (stale: still 111)
        "b9 00 50 00 00"  # mov ecx, 0x5000
        "0f 01 39"  # invlpg [ecx]
        "8b 15 00 50 00 00"  # mov edx, [0x5000]   (fresh: 222)
        "f4"  # hlt
    )
    m.load(CODE, code)
    enter_ring(m, 0, CODE, 0x8000)
    assert m.run().reason == ExitReason.HALT
    assert (m.regs.eax, m.regs.ebx, m.regs.edx) == (111, 111, 222)


def test_cr3_write_flushes_the_tlb():
    m = protected_machine()
    identity_paging(m)
    m.load(0x5000, struct.pack("<I", 111))
    m.load(0x6000, struct.pack("<I", 222))
    code = bytes.fromhex(
        "a1 00 50 00 00"  # mov eax, [0x5000]
        "c7 05 14 10 02 00 07 60 00 00"  # mov dword [0x21014], 0x6007 (the PTE of 0x5000)
        "0f 20 d9"  # mov ecx, cr3
        "0f 22 d9"  # mov cr3, ecx
        "8b 15 00 50 00 00"  # mov edx, [0x5000]
        "f4"  # hlt
    )
    m.load(CODE, code)
    enter_ring(m, 0, CODE, 0x8000)
    m.run()
    assert (m.regs.eax, m.regs.edx) == (111, 222)
    assert m.state[S.STAT_TLB_FLUSHES] == 1


def test_accessed_and_dirty_bits_are_set():
    m = protected_machine()
    identity_paging(m)
    set_pte(m, 0x5000, 0x5007)
    m.load(CODE, bytes.fromhex("c7 05 00 50 00 00 01 00 00 00 f4"))  # mov dword [0x5000], 1
    enter_ring(m, 0, CODE, 0x8000)
    m.run()
    assert m.read32(0x21000 + 4 * 5) & 0x60 == 0x60


@pytest.mark.parametrize(
    "code",
    [
        b"\xf4",  # hlt
        b"\xfa",  # cli
        b"\xfb",  # sti
        b"\x0f\x01\x10",  # lgdt [eax]
        b"\x0f\x01\x18",  # lidt [eax]
        b"\x0f\x00\xd8",  # ltr ax
        b"\x0f\x20\xc0",  # mov eax, cr0
        b"\x0f\x22\xd8",  # mov cr3, eax
        b"\x0f\x01\x38",  # invlpg [eax]
        b"\xe6\x80",  # out 0x80, al
        b"\xe4\x60",  # in al, 0x60
    ],
)
@pytest.mark.parametrize("cpl", [1, 3])
def test_privileged_instructions_fault_outside_ring0(code, cpl):
    m = protected_machine()
    set_gate(m, 13, HANDLER)
    m.load(HANDLER, HLT)
    m.load(CODE, code)
    enter_ring(m, cpl, CODE, USER_STACK)
    m.regs.eax = 0x6000
    m.eflags = 0x202  # IOPL 0
    m.run(budget=1)
    assert m.eip == HANDLER and m.cpl == 0
    assert m.read32(KERNEL_STACK - (24 if cpl else 16)) == 0  # #GP(0)


@pytest.mark.parametrize(
    ("code", "check"),
    [
        (b"\x0f\x01\x00", lambda m: m.read(0x6000, 6) == struct.pack("<HI", 0x3F, 0x500)),  # sgdt
        (b"\x0f\x01\x08", lambda m: m.read(0x6000, 6) == struct.pack("<HI", 0x7FF, 0x800)),  # sidt
        (b"\x0f\x00\xc8", lambda m: m.regs.eax == 0x38),  # str eax
        (b"\x0f\x01\xe0", lambda m: m.regs.eax == m.state[S.CR0]),  # smsw eax
        (b"\x8c\xc8", lambda m: m.regs.eax == RING1_CODE),  # mov eax, cs
        (b"\x9c", lambda m: m.read32(m.regs.esp) & 0x3000 == 0),  # pushfd shows IOPL 0
    ],
)
def test_sensitive_unprivileged_instructions_reveal_real_state_at_ring1(code, check):
    m = protected_machine()
    m.load(CODE, code + b"\xeb\xfe")  # ... ; jmp $
    enter_ring(m, 1, CODE, RING1_STACK)
    m.regs.eax = 0x6000
    m.run(budget=1)
    assert m.eip == CODE + len(code)  # no trap: that is the x86 virtualization hole
    assert check(m)


def test_popf_at_cpl1_keeps_if():
    m = protected_machine()
    m.load(CODE, bytes.fromhex("6a 00 9d eb fe"))  # push 0 ; popfd ; jmp $
    enter_ring(m, 1, CODE, RING1_STACK)
    m.eflags = 0x202  # IF set, IOPL 0
    m.run(budget=2)
    assert m.eflags & S.FLAG_IF  # silently kept: no fault, no change


def test_iopl3_lets_ring3_do_io_and_cli():
    m = protected_machine()
    m.load(CODE, bytes.fromhex("fa e6 e9"))  # cli ; out 0xe9, al
    enter_ring(m, 3, CODE, USER_STACK)
    m.eflags = 0x3202
    ex = m.run(budget=5)
    assert ex.reason == ExitReason.IO and ex.port == 0xE9
    assert not m.eflags & S.FLAG_IF


def test_iret_to_ring3_with_a_kernel_selector_is_gp():
    m = protected_machine()
    set_gate(m, 13, HANDLER)
    m.load(HANDLER, HLT)
    # push USER_DATA ; push esp ; pushfd ; push KERNEL_CODE | 3 ; push 0 ; iret
    m.load(CODE, bytes.fromhex("6a 33 54 9c 6a 0b 6a 00 cf"))
    enter_ring(m, 0, CODE, 0x8000)
    m.run(budget=6)
    assert m.eip == HANDLER
    assert m.read32(m.regs.esp) == KERNEL_CODE  # #GP(selector)


def test_timer_interrupts_wake_hlt_and_count():
    m = protected_machine()
    set_gate(m, 32, HANDLER)
    m.state[S.EXIT_CONTROLS] = 0
    code = bytes.fromhex(
        "b0 fe e6 21"  # mov al, 0xfe ; out 0x21, al    (unmask IRQ 0)
        "b0 34 e6 43"  # mov al, 0x34 ; out 0x43, al
        "b0 e8 e6 40"  # mov al, 0xe8 ; out 0x40, al    (divisor 1000: low byte)
        "b0 03 e6 40"  # mov al, 0x03 ; out 0x40, al    (high byte)
        "fb"  # sti
        "f4"  # l: hlt
        "eb fd"  # jmp l
    )
    m.load(CODE, code)
    m.load(
        HANDLER, bytes.fromhex("43 b0 20 e6 20 cf")
    )  # inc ebx ; mov al, 0x20 ; out 0x20, al ; iret
    enter_ring(m, 0, CODE, 0x8000)
    ex = m.run(budget=200)
    assert ex.reason == ExitReason.BUDGET
    assert m.regs.ebx >= 20
    assert m.state[S.STAT_INTERRUPTS] - m.regs.ebx in (0, 1)  # one may be in flight
    assert m.cycles >= 1000 * m.regs.ebx  # HLT idles until each tick


def test_masked_timer_with_interrupts_off_halts():
    m = protected_machine()
    m.state[S.EXIT_CONTROLS] = 0
    m.load(CODE, bytes.fromhex("fa f4"))  # cli ; hlt
    enter_ring(m, 0, CODE, 0x8000)
    assert m.run(budget=100).reason == ExitReason.HALT


def test_mov_ss_with_a_ring3_selector_at_ring0_is_gp():
    m = protected_machine()
    set_gate(m, 13, HANDLER)
    m.load(HANDLER, HLT)
    m.load(CODE, bytes.fromhex("b8 33 00 00 00 8e d0"))  # mov eax, 0x33 ; mov ss, ax
    enter_ring(m, 0, CODE, 0x8000)
    m.run(budget=2)
    assert m.eip == HANDLER and m.read32(m.regs.esp) == USER_DATA & ~3


def test_exception_bitmap_chooses_exit_or_delivery():
    m = protected_machine()
    set_gate(m, 6, HANDLER)
    m.load(CODE, b"\x0f\x0b")  # ud2
    enter_ring(m, 0, CODE, 0x8000)
    m.state[S.EXC_EXIT_BITMAP] = 1 << 6
    ex = m.run(budget=1)
    assert (ex.reason, ex.vector, ex.eip) == (ExitReason.FAULT, 6, CODE)
    m.state[S.EXC_EXIT_BITMAP] = 0
    m.run(budget=1)
    assert m.eip == HANDLER
    assert m.state[S.VECTOR_COUNTS + 6] == 2


def test_ring1_kernel_interrupted_from_ring3_lands_on_the_ring1_stack():
    m = protected_machine()
    m.load(IDT + 8 * 0x80, gate(HANDLER, selector=RING1_CODE, dpl=3))
    m.load(CODE, b"\xcd\x80")  # int 0x80
    m.load(HANDLER, b"\xeb\xfe")  # jmp $
    enter_ring(m, 3, CODE, USER_STACK)
    m.run(budget=1)
    assert m.cpl == 1 and m.regs.esp == RING1_STACK - 20
    assert m.state[S.CS] == RING1_CODE


def test_exit_controls_for_cr_access_cpuid_and_hlt():
    m = protected_machine()
    m.state[S.EXIT_CONTROLS] = S.EXIT_ON_CR_ACCESS | S.EXIT_ON_CPUID | S.EXIT_ON_HLT
    # mov eax, 0x1234 ; mov cr3, eax ; mov ebx, cr0 ; cpuid ; hlt
    m.load(CODE, bytes.fromhex("b8 34 12 00 00 0f 22 d8 0f 20 c3 0f a2 f4"))
    enter_ring(m, 0, CODE, 0x8000)
    ex = m.run()
    assert ex.reason == ExitReason.CR_ACCESS and not ex.is_in
    assert (ex.control_register, ex.register, ex.value) == (3, 0, 0x1234)
    assert m.state[S.CR3] == 0 and ex.eip == CODE + 8  # not done: the VMM emulates it
    ex = m.run()
    assert (ex.reason, ex.is_in, ex.control_register, ex.register) == (
        ExitReason.CR_ACCESS,
        True,
        0,
        3,
    )
    assert "mov ebx, cr0" in str(ex)
    assert m.run().reason == ExitReason.CPUID
    assert m.run().reason == ExitReason.HALT


def test_cost_model_prices_events():
    from vm.cpu.cost import preset

    m = protected_machine()
    model = preset("haswell")
    model.apply(m.state)
    set_gate(m, 6, HANDLER)
    m.load(CODE, b"\x0f\x0b")  # ud2
    m.load(HANDLER, HLT)
    enter_ring(m, 0, CODE, 0x8000)
    m.state[S.EXIT_CONTROLS] = S.EXIT_ON_HLT
    m.run()
    assert m.cycles == model.exception + 1  # the delivery, then the HLT
    with pytest.raises(ValueError, match="presets"):
        preset("pentium5")


def test_random_system_state_never_crashes_or_hangs_the_host():
    import random

    rng = random.Random(99)
    for trial in range(150):
        m = protected_machine(memory_size=64 * 1024)
        m.load(0, rng.randbytes(64 * 1024))  # garbage everywhere, tables included
        m.state[S.GDTR_BASE] = rng.choice([0x500, rng.randrange(1 << 32)])
        m.state[S.GDTR_LIMIT] = rng.randrange(0x10000)
        m.state[S.IDTR_BASE] = rng.choice([0x800, rng.randrange(1 << 32)])
        m.state[S.IDTR_LIMIT] = rng.randrange(0x10000)
        m.state[S.TSS_BASE] = rng.randrange(1 << 32)
        if trial % 2:
            m.state[S.CR3] = rng.randrange(1 << 32) & ~0xFFF
            m.state[S.CR0] |= S.CR0_PG
        m.state[S.CS] = rng.choice([0x08, 0x19, 0x2B])
        m.state[S.PIC_IMR] = 0
        m.state[S.TIMER_PERIOD] = rng.choice([0, 50, 1000])
        m.eflags = rng.choice([0x2, 0x202, 0x3202])
        m.eip = rng.randrange(64 * 1024)
        m.regs.esp = rng.randrange(1 << 32)
        for _ in range(4):
            ex = m.run(budget=3000)
            assert ex.reason in set(ExitReason)
            if ex.reason in (ExitReason.HALT, ExitReason.SHUTDOWN):
                break
            if ex.reason == ExitReason.IO and ex.is_in:
                m.complete_in(0)
        assert m.instructions <= 4 * 3000


def test_exit_on_interrupt_hands_every_tick_to_the_vmm_even_with_if_clear():
    m = Machine()
    m.load_asm(
        """
        mov al, 0x34
        out 0x43, al
        mov al, 100     ; divisor 100 PIT counts
        out 0x40, al
        mov al, 0
        out 0x40, al
        mov al, 0xfe    ; IRQ 0 only
        out 0x21, al
        cli
    spin:
        jmp spin
        """
    )
    m.state[S.EXIT_CONTROLS] = S.EXIT_ON_INTERRUPT
    m.state[S.TIMER_SCALE] = 10  # 10 cycles per PIT count: a tick every 1000 cycles
    first = m.run(10_000)
    assert first.reason == ExitReason.INTERRUPT and first.vector == 0x20
    assert m.eflags & S.FLAG_IF == 0 and m.state[S.PIC_ISR] == 0  # not delivered, not in service
    at = m.cycles
    second = m.run(10_000)
    assert second.reason == ExitReason.INTERRUPT and m.cycles - at == 1000
    assert str(second).startswith("INTERRUPT vector 0x20")


# ---- the 0F 01 group: VMCALL, LMSW, and the encodings that are no instruction -----------------
def test_vmcall_is_ud_without_the_exit_control():
    m = protected_machine()
    m.state[S.EXC_EXIT_BITMAP] = 1 << 6
    m.load(CODE, b"\x0f\x01\xc1")  # vmcall
    enter_ring(m, 0, CODE, 0x8000)
    ex = m.run()
    assert (ex.reason, ex.vector, ex.eip, ex.length) == (ExitReason.FAULT, 6, CODE, 3)


@pytest.mark.parametrize("cpl", [0, 3])
def test_vmcall_exits_as_hypercall_at_the_vmcall_with_the_control(cpl):
    m = protected_machine()
    m.state[S.EXIT_CONTROLS] |= S.EXIT_ON_VMCALL
    m.load(CODE, bytes.fromhex("b8 05 00 00 00 0f 01 c1 f4"))  # mov eax, 5 ; vmcall ; hlt
    enter_ring(m, cpl, CODE, USER_STACK)
    ex = m.run()
    assert (ex.reason, ex.eip, ex.length) == (ExitReason.HYPERCALL, CODE + 5, 3)
    assert m.instructions == 1 and m.cycles == 1  # the VMCALL is not retired: the VMM is
    assert str(ex) == f"HYPERCALL vmcall at {CODE + 5:#010x}"
    assert m.state[S.EXIT_INSTRUCTION_LENGTH] == 3


def test_lmsw_loads_mp_em_ts_and_cannot_clear_pe():
    m = protected_machine()
    m.state[S.CR0] = 0x80000011  # PG, ET, PE (paging is off below: no tables are needed)
    m.state[S.CR0] &= ~S.CR0_PG
    # mov eax, 0xfffe ; lmsw ax ; mov ebx, cr0 ; lmsw [0x6000] ; hlt
    m.load(CODE, bytes.fromhex("b8 fe ff 00 00 0f 01 f0 0f 20 c3 0f 01 35 00 60 00 00 f4"))
    m.write32(0x6000, 0x2)
    enter_ring(m, 0, CODE, 0x8000)
    m.step()
    m.step()
    assert m.state[S.CR0] == 0x1F  # MP EM TS set from the source, PE kept
    m.step()
    assert m.regs.ebx == 0x1F
    ex = m.run()
    assert ex.reason == ExitReason.HALT
    assert m.state[S.CR0] == 0x13  # EM TS cleared, MP set, PE still set


def test_lmsw_is_privileged_and_exits_as_a_cr0_write_with_the_cr_control():
    m = protected_machine()
    set_gate(m, 13, HANDLER)
    m.load(HANDLER, HLT)
    m.load(CODE, bytes.fromhex("0f 01 f0"))  # lmsw ax
    enter_ring(m, 3, CODE, USER_STACK)
    m.run()
    assert m.eip == HANDLER + 1 and m.state[S.VECTOR_COUNTS + 13] == 1 and m.state[S.CR0] == 1
    m = protected_machine()
    m.state[S.EXIT_CONTROLS] |= S.EXIT_ON_CR_ACCESS
    m.load(CODE, bytes.fromhex("b8 0e 00 00 00 0f 01 f0"))  # mov eax, 14 ; lmsw ax
    enter_ring(m, 0, CODE, 0x8000)
    m.step()
    ex = m.step()
    assert (ex.reason, ex.control_register, ex.is_in, ex.register) == (
        ExitReason.CR_ACCESS,
        0,
        False,
        -1,
    )
    assert ex.value == 0xF and m.state[S.CR0] == 1 and ex.eip == CODE + 8
    assert str(ex).startswith("CR_ACCESS lmsw: cr0 <- 0xf")


@pytest.mark.parametrize(
    "code",
    [
        "0f 01 28",  # 0F 01 /5 with a memory operand: no instruction
        "0f 01 c8",  # 0F 01 /1, mod 3 (MONITOR on newer CPUs)
        "0f 01 c0",  # 0F 01 /0, mod 3
        "0f 01 f8",  # 0F 01 /7, mod 3 (SWAPGS in 64-bit mode)
        "0f 01 d0",  # 0F 01 /2, mod 3 (XGETBV on newer CPUs: not in vmlab's subset)
        "0f 00 d0",  # 0F 00 /2 LLDT: not in vmlab's subset
        "0f 20 c8",  # mov eax, cr1
        "0f 22 e8",  # mov cr5, eax
        "8e c8",  # mov cs, eax
        "8c f0",  # mov eax, <segment register 6>
        "8d c0",  # lea eax, eax
    ],
)
def test_undefined_system_encodings_raise_ud(code):
    m = protected_machine()
    m.state[S.EXC_EXIT_BITMAP] = 0xFFFFFFFF
    m.load(CODE, bytes.fromhex(code) + bytes(8))
    enter_ring(m, 0, CODE, 0x8000)
    before = m.state.copy()
    ex = m.run()
    assert (ex.reason, ex.vector, ex.eip) == (ExitReason.FAULT, 6, CODE)
    changed = np.flatnonzero(before != m.state)
    assert {int(i) for i in changed} <= {
        S.EXIT_REASON, S.EXIT_VECTOR, S.EXIT_ERROR, S.EXIT_INSTRUCTION_LENGTH,
        S.FAULT_VECTOR, S.FAULT_ERROR, S.VECTOR_COUNTS + 6,
    }  # fmt: skip


def test_lmsw_no_longer_runs_as_invlpg():
    m = protected_machine()
    identity_paging(m)
    m.state[S.EXC_EXIT_BITMAP] = 0xFFFFFFFF
    m.load(CODE, bytes.fromhex("0f 01 30 f4"))  # lmsw [eax] ; hlt
    enter_ring(m, 0, CODE, 0x8000)
    m.regs.eax = 0x6000
    m.write32(0x6000, 0x8)
    m.run()
    assert m.state[S.CR0] & 0xF == 0x9  # TS set


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("0f 01 15 00 00 40 00", "lgdt [0x400000]"),
        ("0f 00 1d 00 00 40 00", "ltr [0x400000]"),
        ("0f 01 35 00 00 40 00", "lmsw [0x400000]"),
    ],
)
def test_privilege_is_checked_before_the_memory_operand(code, name):
    """At CPL 3 a privileged form raises #GP(0), not the #GP or #PF its operand would."""
    m = protected_machine()
    m.state[S.EXC_EXIT_BITMAP] = 0xFFFFFFFF
    m.load(CODE, bytes.fromhex(code))
    enter_ring(m, 3, CODE, USER_STACK)
    identity_paging(m, user=True)
    ex = m.run()
    assert (ex.reason, ex.vector, ex.error_code) == (ExitReason.FAULT, 13, 0), name
    assert m.state[S.CR2] == 0  # (not the #PF its operand, unmapped, would raise)
