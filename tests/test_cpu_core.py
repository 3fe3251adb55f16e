"""The core's run/exit loop, faults, privilege checks and the Machine API.

Byte literals carry their assembly in a comment. These tests also run with
NUMBA_DISABLE_JIT=1 (tests/test_nojit.py), so keep them quick.
"""

from __future__ import annotations

import random

import pytest

from vm.cpu import state as S
from vm.cpu.exits import ExitReason
from vm.machine import Exit, Machine

BASE = 0x1000


def machine_with(code: bytes, **regs: int) -> Machine:
    m = Machine(memory_size=1 << 16)
    m.load(BASE, code)
    m.eip = BASE
    for name, value in regs.items():
        m.regs[name] = value
    return m


HLT = b"\xf4"


def test_loop_adds_and_halts():
    code = bytes.fromhex(
        "b8 06 00 00 00"  # mov eax, 6
        "6b c0 07"  # imul eax, eax, 7
        "b9 0a 00 00 00"  # mov ecx, 10
        "01 c8"  # l: add eax, ecx
        "49"  # dec ecx
        "75 fb"  # jnz l
        "f4"  # hlt
    )
    m = machine_with(code)
    ex = m.run()
    assert ex.reason == ExitReason.HALT
    assert ex.eip == BASE + len(code)
    assert m.regs.eax == 42 + 55
    assert m.instructions == 3 + 3 * 10 + 1


def test_add_sets_overflow_and_carry():
    # mov eax, 0x7fffffff ; add eax, 1 ; hlt
    m = machine_with(bytes.fromhex("b8 ff ff ff 7f 83 c0 01 f4"))
    m.run()
    assert m.regs.eax == 0x80000000
    f = m.eflags
    assert f & S.FLAG_OF and f & S.FLAG_SF and not f & S.FLAG_CF and not f & S.FLAG_ZF


def test_inc_keeps_carry():
    # stc ; mov eax, -1 ; inc eax ; hlt
    m = machine_with(bytes.fromhex("f9 b8 ff ff ff ff 40 f4"))
    m.run()
    assert m.regs.eax == 0
    assert m.eflags & S.FLAG_CF and m.eflags & S.FLAG_ZF


def test_divide_by_zero_faults_on_the_div_and_changes_nothing():
    # mov eax, 7 ; xor ecx, ecx ; div ecx ; hlt
    code = bytes.fromhex("b8 07 00 00 00 31 c9 f7 f1 f4")
    m = machine_with(code, edx=3)
    ex = m.run()
    assert ex.reason == ExitReason.FAULT and ex.vector == 0
    assert ex.eip == BASE + 7  # restartable: EIP on the DIV
    assert (m.regs.eax, m.regs.edx) == (7, 3)
    assert str(ex).startswith("FAULT #DE")


def test_divide_overflow_faults():
    # mov edx, 5 ; mov eax, 0 ; mov ecx, 5 ; div ecx  (quotient 2**32 does not fit)
    m = machine_with(bytes.fromhex("ba 05 00 00 00 b8 00 00 00 00 b9 05 00 00 00 f7 f1 f4"))
    assert m.run().vector == 0


def test_unsigned_divide_of_a_large_dividend():
    # mov edx, 0xfffffffe ; mov eax, 0xffffffff ; mov ecx, 0xffffffff ; div ecx ; hlt
    code = bytes.fromhex("ba fe ff ff ff b8 ff ff ff ff b9 ff ff ff ff f7 f1 f4")
    m = machine_with(code)
    assert m.run().reason == ExitReason.HALT
    n = (0xFFFFFFFE << 32) | 0xFFFFFFFF
    assert (m.regs.eax, m.regs.edx) == (n // 0xFFFFFFFF, n % 0xFFFFFFFF)


@pytest.mark.parametrize(
    "code",
    [
        b"\x27",  # daa (not supported)
        b"\x66\x90",  # operand-size prefix (not supported)
        b"\x0f\x0b",  # ud2
        b"\x0f\x01\xc1",  # vmcall: #UD on bare metal
        b"\x8d\xc0",  # lea eax, eax (register operand)
        b"\xff\xff",  # ff /7 (no such instruction)
    ],
)
def test_unsupported_encodings_raise_ud_in_the_guest(code):
    m = machine_with(code + HLT)
    ex = m.run()
    assert (ex.reason, ex.vector, ex.eip) == (ExitReason.FAULT, 6, BASE)


def test_memory_outside_the_window_is_gp():
    # mov eax, [0xfffffff0]
    m = machine_with(bytes.fromhex("a1 f0 ff ff ff f4"))
    ex = m.run()
    assert (ex.reason, ex.vector, ex.error_code, ex.eip) == (ExitReason.FAULT, 13, 0, BASE)


def test_fetch_past_the_end_of_memory_is_gp():
    m = Machine(memory_size=4096)
    m.load(4096 - 1, b"\xb8")  # the first byte of mov eax, imm32 at the very end
    m.eip = 4096 - 1
    ex = m.run()
    assert (ex.reason, ex.vector, ex.eip) == (ExitReason.FAULT, 13, 4095)
    m.eip = 0xFFFFFFF0
    assert m.run().vector == 13


def test_budget_and_single_step():
    # l: jmp l
    m = machine_with(b"\xeb\xfe")
    ex = m.run(budget=1000)
    assert ex.reason == ExitReason.BUDGET and m.instructions == 1000
    assert m.step().reason == ExitReason.BUDGET and m.instructions == 1001


def test_breakpoint_stops_before_and_resumes():
    # nop ; nop ; mov eax, 1 ; hlt
    m = machine_with(bytes.fromhex("90 90 b8 01 00 00 00 f4"))
    m.add_breakpoint(BASE + 2)
    ex = m.run()
    assert ex == Exit(ExitReason.BREAKPOINT, BASE + 2)
    assert m.regs.eax == 0
    assert m.run().reason == ExitReason.HALT
    assert m.regs.eax == 1


def test_out_exits_with_port_and_value_and_in_takes_an_answer():
    code = bytes.fromhex(
        "b0 41"  # mov al, 'A'
        "e6 e9"  # out 0xe9, al
        "ba 60 00 00 00"  # mov edx, 0x60
        "ec"  # in al, dx
        "f4"  # hlt
    )
    m = machine_with(code)
    ex = m.run()
    got = (ex.reason, ex.port, ex.value, ex.size, ex.is_in)
    assert got == (ExitReason.IO, 0xE9, 0x41, 1, False)
    assert ex.eip == BASE + 4
    ex = m.run()
    assert (ex.reason, ex.port, ex.is_in) == (ExitReason.IO, 0x60, True)
    m.complete_in(0x5A)
    assert m.run().reason == ExitReason.HALT
    assert m.regs.al == 0x5A


def test_int3_and_int_n_are_traps_with_eip_after():
    m = machine_with(bytes.fromhex("cc cd 80 f4"))  # int3 ; int 0x80 ; hlt
    ex = m.run()
    assert (ex.reason, ex.vector, ex.eip) == (ExitReason.SOFTWARE_INTERRUPT, 3, BASE + 1)
    assert ex.length == 1
    assert str(ex).startswith("SOFTWARE_INTERRUPT INT3")
    ex = m.run()
    assert (ex.vector, ex.eip, ex.length) == (0x80, BASE + 3, 2)
    assert str(ex).startswith("SOFTWARE_INTERRUPT INT 0x80")


def test_software_interrupt_exits_are_chosen_per_vector():
    # cd 21  int 0x21 (exits);  cd 80  int 0x80 (through the IDT: no gate, so #GP(0x80*8+2))
    m = machine_with(bytes.fromhex("cd 21 cd 80 f4"))
    m.set_soft_int_exits([0x21])
    ex = m.run()
    assert (ex.reason, ex.vector, ex.eip) == (ExitReason.SOFTWARE_INTERRUPT, 0x21, BASE + 2)
    ex = m.run()
    assert (ex.reason, ex.vector, ex.error_code, ex.eip) == (ExitReason.FAULT, 13, 0x402, BASE + 2)
    m.set_soft_int_exits(())
    assert not m.state[S.EXIT_CONTROLS] & S.EXIT_ON_SOFT_INT
    with pytest.raises(ValueError, match="from 0 to 255"):
        m.set_soft_int_exits([256])


def run_at_cpl3(code: bytes, eflags: int = 0x202) -> tuple[Machine, Exit]:
    m = machine_with(code + HLT)
    m.state[S.CS] = 0x1B  # ring 3
    m.eflags = eflags
    return m, m.run()


@pytest.mark.parametrize(
    "code",
    [b"\xf4", b"\xfa", b"\xfb", b"\xe6\xe9", b"\xec"],  # hlt, cli, sti, out 0xe9, al, in al, dx
)
def test_privileged_instructions_at_cpl3_raise_gp(code):
    _, ex = run_at_cpl3(code)
    assert (ex.reason, ex.vector, ex.error_code, ex.eip) == (ExitReason.FAULT, 13, 0, BASE)


def test_io_at_cpl3_allowed_when_iopl_is_3():
    _, ex = run_at_cpl3(b"\xe6\xe9", eflags=0x3202)  # out 0xe9, al with IOPL 3
    assert ex.reason == ExitReason.IO


def test_popf_at_cpl3_silently_keeps_if_and_iopl():
    # push 0 ; popfd   (tries to clear IF and IOPL)
    m, ex = run_at_cpl3(bytes.fromhex("6a 00 9d"), eflags=0x1202)
    assert ex.vector == 13  # the HLT after it
    assert m.eflags & S.FLAG_IF and m.eflags & S.FLAG_IOPL == 0x1000


def test_popf_at_cpl0_changes_if():
    m = machine_with(bytes.fromhex("6a 00 9d f4"))  # push 0 ; popfd ; hlt
    m.eflags = 0x202
    m.run()
    assert not m.eflags & S.FLAG_IF


def test_pushf_reveals_the_real_flags():
    m = machine_with(bytes.fromhex("9c 58 f4"))  # pushfd ; pop eax ; hlt
    m.eflags = 0x3202
    m.run()
    assert m.regs.eax == 0x3202


def test_cpuid_names_the_vendor():
    m = machine_with(bytes.fromhex("31 c0 0f a2 f4"))  # xor eax, eax ; cpuid ; hlt
    m.run()
    vendor = b"".join(m.regs[r].to_bytes(4, "little") for r in ("ebx", "edx", "ecx"))
    assert vendor == b"vmlabvmlab86"


def test_rep_movsb_is_interruptible_and_resumes():
    # mov esi, 0x2000 ; mov edi, 0x3000 ; mov ecx, 100 ; rep movsb ; hlt
    code = bytes.fromhex("be 00 20 00 00 bf 00 30 00 00 b9 64 00 00 00 f3 a4 f4")
    m = machine_with(code)
    m.load(0x2000, bytes(range(100)))
    assert m.run(budget=3 + 10).reason == ExitReason.BUDGET
    assert m.regs.ecx == 90 and m.eip == BASE + 15
    assert m.run().reason == ExitReason.HALT
    assert m.read(0x3000, 100) == bytes(range(100))


def test_call_ret_push_pop_and_leave():
    code = bytes.fromhex(
        "e8 01 00 00 00"  # call f
        "f4"  # hlt
        "55"  # f: push ebp
        "89 e5"  # mov ebp, esp
        "6a 07"  # push 7
        "8b 45 fc"  # mov eax, [ebp-4]
        "c9"  # leave
        "c3"  # ret
    )
    m = machine_with(code, esp=0x8000)
    assert m.run().reason == ExitReason.HALT
    assert m.regs.eax == 7 and m.regs.esp == 0x8000 and m.eip == BASE + 6


def test_a_faulting_push_leaves_esp_unchanged():
    m = machine_with(b"\x50" + HLT, esp=2)  # push eax with ESP near 0: wraps out of memory
    ex = m.run()
    assert ex.vector == 13 and m.regs.esp == 2


def test_snapshot_restore_continues_identically():
    code = bytes.fromhex(
        "b9 e8 03 00 00"  # mov ecx, 1000
        "01 c8"  # l: add eax, ecx
        "31 c3"  # xor ebx, eax
        "89 1c 8d 00 20 00 00"  # mov [ecx*4 + 0x2000], ebx
        "e2 f3"  # loop l
        "f4"  # hlt
    )
    m = machine_with(code)
    m.run(budget=500)
    snap = m.snapshot()
    m.run()
    after = (m.regs.as_dict(), m.read(0x2000, 4004), m.instructions, m.cycles, m.eflags)
    m.restore(snap)
    assert m.regs.eax != after[0]["eax"]
    m.run()
    assert (m.regs.as_dict(), m.read(0x2000, 4004), m.instructions, m.cycles, m.eflags) == after


def test_random_bytes_never_crash_the_host():
    rng = random.Random(1234)
    for _ in range(200):
        m = Machine(memory_size=8192)
        m.load(0, bytes(rng.randrange(256) for _ in range(8192)))
        m.eip = rng.randrange(8192)
        m.regs.esp = rng.randrange(1 << 32)
        for _ in range(5):
            ex = m.run(budget=2000)
            assert ex.reason in set(ExitReason)
            if ex.reason in (ExitReason.HALT, ExitReason.FAULT):
                break
            if ex.reason == ExitReason.IO and ex.is_in:
                m.complete_in(0)


def test_a_corrupt_memory_window_shuts_down_instead_of_crashing():
    m = machine_with(HLT)
    m.state[S.MEM_SIZE] = 1 << 40
    assert m.run().reason == ExitReason.SHUTDOWN


def test_machine_api_rejects_bad_arguments():
    m = Machine(memory_size=4096)
    with pytest.raises(ValueError, match="budget"):
        m.run(budget=0)
    with pytest.raises(ValueError, match="do not fit"):
        m.load(4000, bytes(200))
    with pytest.raises(ValueError, match="32 bits"):
        m.regs.eax = 1 << 40
    with pytest.raises(AttributeError, match="no register"):
        m.regs.rax = 1
    with pytest.raises(ValueError, match="memory_size"):
        Machine(memory_size=10)


def test_registers_by_name_including_byte_registers():
    m = Machine(memory_size=4096)
    m.regs.eax = 0x12345678
    assert (m.regs.al, m.regs.ah) == (0x78, 0x56)
    m.regs.ah = 0xAB
    assert m.regs["eax"] == 0x1234AB78
    assert "eax=0x1234ab78" in repr(m.regs)


def test_cycles_follow_the_cost_table():
    # mov eax, 100 ; mov ecx, 3 ; div ecx ; hlt
    m = machine_with(bytes.fromhex("b8 64 00 00 00 b9 03 00 00 00 f7 f1 f4"))
    m.run()
    assert m.instructions == 4
    assert m.cycles == 1 + 1 + 20 + 1


def test_code_near_the_end_of_an_odd_sized_memory_faults_cleanly():
    m = Machine(memory_size=4096 + 100)
    m.load(4096, b"\x90" * 100)  # nops up to the very end, then nothing
    m.eip = 4096
    ex = m.run(budget=1000)
    assert (ex.reason, ex.vector, ex.eip) == (ExitReason.FAULT, 13, 4096 + 100)
    assert m.instructions == 100
