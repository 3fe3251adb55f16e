"""Small helpers lessons share: run a few lines of assembly on a bare machine and say
what the CPU did, in the words a student reads."""

from __future__ import annotations

import struct

import numpy as np

from vm.asm import AsmError, assemble
from vm.cpu.state import EXIT_ON_HLT
from vm.machine import Exit, ExitReason, Machine


class GuestCodeError(Exception):
    """The student's assembly did not assemble: the message says where and why."""


def run_asm(source: str, budget: int = 10_000, setup: dict[str, int] | None = None) -> Machine:
    """Assemble ``source``, run it on a fresh bare machine (ring 0, flat memory) until it
    halts, faults or uses ``budget`` instructions; the machine's ``exit`` says which."""
    machine = Machine()
    try:
        machine.load_asm(source)
    except AsmError as error:
        raise GuestCodeError(f"your assembly does not assemble: {error}") from None
    for name, value in (setup or {}).items():
        machine.regs[name] = value
    machine.exit = machine.run(budget)
    return machine


def outcome(machine: Machine) -> str:
    """How a run ended: 'HALT', '#GP', '#UD', 'BUDGET', ..."""
    exit: Exit = machine.exit
    if exit.reason == ExitReason.FAULT:
        return str(exit).split()[1].split("(")[0]
    return exit.reason.name


def assembles(source: str) -> bytes:
    """The bytes of ``source`` (NASM syntax), or GuestCodeError."""
    try:
        return assemble(source).code
    except AsmError as error:
        raise GuestCodeError(f"your assembly does not assemble: {error}") from None


# ---- protected mode on a bare machine (lesson 01) ------------------------------------------

GDT, IDT, TSS = 0x500, 0x800, 0x1000 - 0x68
KERNEL_CODE, KERNEL_DATA, USER_CODE, USER_DATA, TSS_SELECTOR = 0x08, 0x10, 0x2B, 0x33, 0x38
KERNEL_STACK = 0x9000
LOAD_ADDRESS = 0x1000


def _segment(access: int, base: int = 0, limit: int = 0xFFFFF, flags: int = 0xC) -> bytes:
    """An 8-byte segment descriptor (flat, 32-bit, 4 KiB granularity by default)."""
    low = (limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    high = ((base >> 16) & 0xFF) | (access << 8) | (limit & 0xF0000) | (flags << 20)
    high |= base & 0xFF000000
    return struct.pack("<II", low, high)


def gate(offset: int, dpl: int = 0, trap: bool = False) -> bytes:
    """An 8-byte 32-bit interrupt (or trap) gate into ring 0 code at ``offset``."""
    kind = 0xF if trap else 0xE
    low = (offset & 0xFFFF) | (KERNEL_CODE << 16)
    high = (offset & 0xFFFF0000) | 0x8000 | (dpl << 13) | (kind << 8)
    return struct.pack("<II", low, high)


def protected_machine(esp0: int = KERNEL_STACK) -> Machine:
    """A machine with a GDT (ring 0 and ring 3 code and data), an empty IDT and a TSS whose
    ring 0 stack is ``esp0``; at ring 0. Exceptions still exit to Python (FAULT) unless
    ``m.cpu.exc_exit_bitmap`` is cleared; HLT at ring 0 ends a run."""
    m = Machine()
    gdt = b"".join(
        [
            bytes(8),
            _segment(0x9A),  # 0x08 ring 0 code
            _segment(0x92),  # 0x10 ring 0 data
            _segment(0xBA),  # 0x18 ring 1 code
            _segment(0xB2),  # 0x20 ring 1 data
            _segment(0xFA),  # 0x28 ring 3 code
            _segment(0xF2),  # 0x30 ring 3 data
            _segment(0x89, base=TSS, limit=0x67, flags=0),  # 0x38 the TSS
        ]
    )
    m.load(GDT, gdt)
    tss = bytearray(0x68)
    struct.pack_into("<II", tss, 4, esp0, KERNEL_DATA)
    m.load(TSS, bytes(tss))
    m.cpu.gdtr_base, m.cpu.gdtr_limit = GDT, len(gdt) - 1
    m.cpu.idtr_base, m.cpu.idtr_limit = IDT, 256 * 8 - 1
    m.cpu.tr, m.cpu.tss_base = TSS_SELECTOR, TSS
    m.cpu.exit_controls = EXIT_ON_HLT
    m.regs.esp = esp0
    return m


def enter_ring3(m: Machine, eip: int, esp: int) -> None:
    """Make the machine continue at ring 3 (user code and stack selectors) at ``eip``."""
    m.cpu.cs, m.cpu.ss = USER_CODE, USER_DATA
    m.eip, m.regs.esp = eip, esp


def at_ring3(instruction: str) -> str:
    """Run one instruction at ring 3 (IOPL 0) and say what happened: 'ok' or the fault."""
    m = protected_machine()
    try:
        m.load_asm(f"{instruction}\nnop", LOAD_ADDRESS)
    except AsmError as error:
        raise GuestCodeError(f"{instruction!r} does not assemble: {error}") from None
    m.regs.eax = 0
    enter_ring3(m, LOAD_ADDRESS, 0x8000)
    exit = m.step()
    m.exit = exit
    return outcome(m) if exit.reason == ExitReason.FAULT else "ok"


_FIRST_USER_EIP: dict[str, int] = {}  # workload -> where its first ring 3 instruction is


def boot_to_user(workload: str = "syscalls", mode: str = "native"):
    """toyos booted until its first user instruction runs at ring 3 (a Guest)."""
    import vm

    guest = vm.boot(workload, mode=mode)
    if workload in _FIRST_USER_EIP:  # the same user image in every mode: stop there
        address = _FIRST_USER_EIP[workload]
        guest.add_breakpoint(address)
        guest.run(5_000_000)
        guest.remove_breakpoint(address)
        view = guest.view()
        if view.guest.cpl == 3 and view.eip == address:
            return guest
        guest = vm.boot(workload, mode=mode)
    guest.run(13_000)
    for _ in range(50_000):
        view = guest.view()
        if view.guest.cpl == 3:
            _FIRST_USER_EIP[workload] = view.eip
            return guest
        guest.step()
    raise RuntimeError("toyos never reached ring 3")


def physical_reader(guest):
    """read32(physical address) over a guest's RAM (-1 outside it)."""
    window = guest.vm.machine.window if hasattr(guest, "vm") else guest._vm.machine.window
    size = window.size

    def read32(address: int) -> int:
        if not 0 <= address <= size - 4:
            return -1
        return int.from_bytes(window[address : address + 4].tobytes(), "little")

    return read32


def interrupt_frame(user_esp: int, user_eip: int, esp0: int, eflags: int = 0x202):
    """Run ``int 0x80`` at ring 3 (at ``user_eip``, stack ``user_esp``, EFLAGS ``eflags``)
    through a DPL-3 gate whose handler halts at once; return (ESP in the handler, the five
    dwords from ESP up)."""
    m = protected_machine(esp0)
    m.cpu.exc_exit_bitmap = 0
    m.set_soft_int_exits([])
    handler = 0x3000
    m.load_asm("hlt", handler)
    m.load(IDT + 8 * 0x80, gate(handler, dpl=3))
    m.load_asm("int 0x80\nnop", user_eip)
    enter_ring3(m, user_eip, user_esp)
    m.eflags = eflags
    m.exit = m.run(10)
    esp = m.regs.esp
    return esp, [m.read32(esp + 4 * i) for i in range(5)]


def run_user_code(source: str, mode: str, budget: int = 10_000) -> dict[str, int]:
    """Run ``source`` as toyos user code at ring 3 in ``mode`` (it replaces the code of
    the syscalls program where it stands) until the instruction after it; the registers
    then, as the guest sees them. Stops early if the code faults or runs too long."""
    guest = boot_to_user("syscalls", mode)
    view = guest.view()
    start = view.eip
    try:
        code = assemble(source, origin=start).code
    except AsmError as error:
        raise GuestCodeError(f"your assembly does not assemble: {error}") from None
    physical = view.translate(start).physical
    window = guest.vm.machine.window
    if physical < 0 or (physical + len(code)) // 4096 != physical // 4096:
        raise GuestCodeError("your code is too long for this page (keep it under 1 KiB)")
    window[physical : physical + len(code) + 1] = np.frombuffer(code + b"\x90", np.uint8)
    end = start + len(code)
    guest.add_breakpoint(end)
    guest.run(budget)
    registers = dict(guest.view().registers)
    registers["finished"] = int(guest.view().eip == end)
    return registers


def kernel_code(kernel: str = "native") -> tuple[bytes, int]:
    """(the bytes of toyos's kernel text, the address they start at)."""
    from vm.guest.toyos import build, kernel_text
    from vm.hypervisor.modes import kernel_defines

    program, _ = build(kernel_defines(kernel, True))
    start, end = kernel_text(program)
    return program.code[start - program.origin : end - program.origin], start


def boot_with_sites(workload: str, sites) -> object:
    """toyos under trap-and-emulate with the kernel patched at ``sites`` (addresses) instead
    of the sites the VMM's own scan finds."""
    import vm
    from vm.cpu.decode import MAX_INSTRUCTION, decode_form
    from vm.hypervisor import patching

    addresses = sorted({int(a) for a in sites})
    original = patching.scan

    def scan(window, start, end, wanted):
        found = {}
        for a in addresses:
            if start <= a < end:
                ins = decode_form(window[a : a + MAX_INSTRUCTION].tobytes())
                if ins is not None and ins.name in wanted:
                    found[a] = ins
        return found, end

    patching.scan = scan
    try:
        return vm.boot(workload, mode="trap-emulate")
    finally:
        patching.scan = original


# ---- VMX non-root mode on a bare machine (lesson 03) ---------------------------------------


def first_exit(source: str, budget: int = 1_000) -> dict[str, object]:
    """Run ``source`` at ring 0 in VMX non-root mode (a bare machine with system tables)
    with I/O, HLT, CPUID, CR3-load, CR3-store and INVLPG exiting on, and the VMM owning
    CR0's PG and WP bits; stop at the first VM exit and return what the hardware reports:
    ``{"reason": "IO", "qualification": ..., "length": ..., "value": ...}``."""
    from vm.cpu import state as S

    m = protected_machine()
    try:
        m.load_asm(source, LOAD_ADDRESS)
    except AsmError as error:
        raise GuestCodeError(f"your assembly does not assemble: {error}") from None
    m.state[S.NON_ROOT] = 1
    m.state[S.EXIT_CONTROLS] = (
        S.EXIT_ON_IO
        | S.EXIT_ON_HLT
        | S.EXIT_ON_CPUID
        | S.EXIT_ON_CR3_LOAD
        | S.EXIT_ON_CR3_STORE
        | S.EXIT_ON_INVLPG
    )
    m.state[S.CR0_GUEST_HOST_MASK] = S.CR0_PG | S.CR0_WP
    m.state[S.CR0_READ_SHADOW] = int(m.state[S.CR0])
    exit = m.run(budget)
    return {
        "reason": exit.reason.name,
        "qualification": int(m.state[S.EXIT_QUALIFICATION]) & 0xFFFFFFFF,
        "length": int(m.state[S.EXIT_INSTRUCTION_LENGTH]),
        "value": int(m.state[S.EXIT_VALUE]) & 0xFFFFFFFF,
    }
