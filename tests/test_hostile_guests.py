"""Guest kernels written to hurt their host, their neighbours, or the truth of what they
see: each finding of an adversarial review (its reproducers were short scripts against the
API of 2026-12-02) as a regression test.

A guest kernel here is a few lines of assembly run three ways: on bare metal (the native
mode's monitor), under trap-and-emulate and under binary translation. Where bare metal
takes an interrupt, faults or completes a store, the VMMs must do the same.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_commands import vm as vm_command

import vm
from vm.asm import assemble
from vm.hypervisor.binary_translation import BinaryTranslationVM
from vm.hypervisor.emulator import DECODE_CACHE_LIMIT
from vm.hypervisor.host import Host, run_side_by_side
from vm.hypervisor.native import BareMetalVM
from vm.hypervisor.trap_emulate import TrapEmulateVM
from vm.hypervisor.vmm import DEFAULT_BUDGET
from vm.hypervisor.vmm_area import IDT_OFFSET, TSS_OFFSET, VMM_AREA
from vm.interface import GUEST_RAM, Guest
from vm.machine import Machine

SIZE = GUEST_RAM + VMM_AREA
KINDS = {
    "native": BareMetalVM,
    "trap-emulate": TrapEmulateVM,
    "binary-translation": BinaryTranslationVM,
}


def kernel(kind: str, source: str, host: Host | None = None, text: tuple | None = None):
    """A VM of ``kind`` with source loaded at its origin (its text: up to ``text_end``)."""
    program = assemble(source)
    if kind == "native":
        machine = host.new_machine(GUEST_RAM) if host else Machine(GUEST_RAM)
    else:
        machine = (host or Host(SIZE)).new_machine(SIZE)
    machine.load(program.origin, program.code)
    machine.eip = program.origin
    if kind == "native":
        return BareMetalVM(machine), program
    end = program.symbols.get("text_end", program.origin + len(program.code))
    return KINDS[kind](machine, GUEST_RAM, kernel_text=text or (program.origin, end)), program


def console_of(kind: str, source: str, budget: int = 200_000) -> bytes:
    monitor, _ = kernel(kind, source)
    monitor.run(budget)
    return bytes(monitor.board.console.data)


def with_idt(body: str, data: str = "") -> str:
    """A guest kernel with a flat GDT and an IDT whose gate v prints 'F', v and exits 1;
    then body, then 'W' (the body got through) and a clean exit. Gate 0x80 has DPL 3."""
    stubs = "\n".join(f"stub{v}:\n    push dword {v}\n    jmp common" for v in range(0x81))
    gates = "\n".join(
        f"    dw stub{v} & 0xffff, 0x08, {0xEE00 if v == 0x80 else 0x8E00:#x}, stub{v} >> 16"
        for v in range(0x81)
    )
    return f"""
    bits 32
    org 0x1000
    mov esp, 0x9000
    lgdt [gdt_pointer]
    lidt [idt_pointer]
{body}
    mov al, 'W'
    out 0xe9, al
    mov al, 0
    out 0xf4, al
common:
    mov al, 'F'
    out 0xe9, al
    pop eax
    out 0xe9, al
    mov al, 1
    out 0xf4, al
{stubs}
text_end:
{data}
gdt_pointer:
    dw 0x17
    dd gdt
gdt:
    dd 0, 0
    dd 0x0000ffff, 0x00cf9a00
    dd 0x0000ffff, 0x00cf9200
idt_pointer:
    dw {0x81 * 8 - 1}
    dd idt
idt:
{gates}
"""


def paging_on(remap: str) -> str:
    """Identity-map the first 32 pages (directory 0x10000, table 0x11000), then remap."""
    return f"""
    mov dword [0x10000], 0x11007
    xor ecx, ecx
map:
    mov eax, ecx
    shl eax, 12
    or eax, 7
    mov [0x11000 + ecx*4], eax
    inc ecx
    cmp ecx, 32
    jne map
    {remap}
    mov eax, 0x10000
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
"""


# ---- 1. a guest that stalls or kills the host -------------------------------------------------
STRADDLE = with_idt(
    paging_on(
        """
    mov dword [0x10004], 0x12003          ; PDE 1 -> page table at 0x12000
    mov dword [0x12000], 0x10003          ; linear 0x400000 -> the page directory
    mov dword [0x12004], 0x12003          ; linear 0x401000 -> that page table itself
"""
    )
    + """
    mov eax, [0x400000]                   ; touch both (shadow them)
    mov eax, [0x401000]
    mov dword [0x400ffe], 0x00070000      ; one dword across the two tables
    mov eax, [0x10000]                    ; (what landed in each)
    out 0xe9, al
    mov eax, [0x12000]
    out 0xe9, al
"""
)


@pytest.mark.parametrize("kind", ["trap-emulate", "binary-translation"])
def test_a_store_across_two_shadowed_page_tables_does_what_bare_metal_does(kind):
    # (vmlab's bare metal refuses an access across two pages that are not physically
    # adjacent with #GP(0): README, Differences. The next test's tables are adjacent.)
    native = console_of("native", STRADDLE)
    assert native == b"F\x0d"
    host = Host(3 * SIZE)
    good = vm.boot("syscalls", "trap-emulate", host=host)
    evil, _ = kernel(kind, STRADDLE, host)
    host.guests.append(Guest(evil, "straddle", {}, {}))
    other = vm.boot("spawn", "binary-translation", host=host)
    results = host.run(slice_budget=20_000)  # (no RecursionError leaves it)
    assert bytes(evil.board.console.data) == native
    for guest, result in ((good, results[0]), (other, results[2])):
        alone = vm.boot(guest.workload, guest.mode).run()
        assert (result.console, result.stats) == (alone.console, alone.stats)
    assert results[1].stats["shadow"]["table writes"] >= 2  # the step opened both tables
    assert results[1].status == "panic"  # (the guest's #GP handler exits with status 1)


def test_a_store_the_flood_heuristic_would_unshadow_midway_still_completes():
    # the dword at 0x401ffe straddles the table that maps the code and another table
    body = paging_on(
        """
    mov dword [0x10004], 0x12003          ; PDE 1 -> page table 0x12000
    mov dword [0x12004], 0x11003          ; linear 0x401000 -> page table 0x11000
    mov dword [0x12008], 0x12003          ; linear 0x402000 -> page table 0x12000
"""
    ) + ("    mov eax, [0x401000]\n    mov eax, [0x402000]\n    mov dword [0x401ffe], 0x00030000\n")
    source = with_idt(body)
    native = console_of("native", source)
    assert native == b"W"  # the store completed
    for kind in ("trap-emulate", "binary-translation"):
        monitor, _ = kernel(kind, source)
        result = monitor.run(50_000)
        assert bytes(monitor.board.console.data) == native, kind
        assert result.stats["exits"] < 200, kind  # a handful, not a livelock


DECODE_FLOOD = """
    bits 32
    org 0x1000
again:
    cli                 ; #GP at ring 1: the VMM decodes the 15 bytes from here
    db 0xb8             ; mov eax, imm32 ...
counter:
    dd 0                ; ... whose immediate changes every time
    inc dword [counter]
    jmp again
text_end:
"""


@pytest.mark.parametrize("kind", ["trap-emulate", "binary-translation"])
def test_the_vmms_decode_cache_stays_bounded_whatever_the_guest_makes_it_decode(kind):
    monitor, _ = kernel(kind, DECODE_FLOOD, text=(0x1000, 0x1000))  # (nothing rewritten)
    result = monitor.run(60_000)
    assert result.stats["emulated"]["cli"] > 3 * DECODE_CACHE_LIMIT
    assert len(monitor.emulator.decoded) <= DECODE_CACHE_LIMIT


STORM = """
    bits 32
    org 0x1000
    mov al, 0xfe
    out 0x21, al
    mov al, 0x34
    out 0x43, al
    mov al, 1               ; a tick every PIT count: faster than the VMM serves a tick
    out 0x40, al
    mov al, 0
    out 0x40, al
spin:
    jmp spin
"""


def test_a_timer_storm_counts_every_exit_against_the_budget():
    monitor, _ = kernel("trap-emulate", STORM)
    for budget in (1, 7, 1000, 25_000):
        before = monitor.stats()["instructions"], monitor.acct.core_exits
        result = monitor.run(budget)
        used = result.stats["instructions"] - before[0] + monitor.acct.core_exits - before[1]
        assert result.status == "budget" and used == budget


def test_a_host_stops_a_guest_that_only_makes_its_vmm_work():
    host = Host(2 * SIZE)
    storm, _ = kernel("trap-emulate", STORM, host)
    good = vm.boot("io", "binary-translation", host=host)
    results = run_side_by_side([Guest(storm, "storm", {}, {}), good], 5_000, max_exits=20_000)
    assert results[0].status == "budget" and 20_000 <= storm.acct.core_exits <= 25_000
    assert results[1].ok and results[1].console == vm.boot("io").run().console
    assert DEFAULT_BUDGET >= 500_000_000  # (a Guest alone keeps its large default)


# ---- 2. a guest that sees another machine than bare metal --------------------------------
FIDELITY = {
    "int 0x21 through a DPL-0 gate, from the kernel": "    int 0x21",
    "int3 through a DPL-0 gate, from the kernel": "    int3",
    "int 1 through a DPL-0 gate, from the kernel": "    int 1",
    "mov ds beyond the GDT limit": "    mov eax, 0xfff8\n    mov ds, ax",
    "mov ss of a code segment": "    mov eax, 0x08\n    mov ss, ax",
    "ltr of a data segment": "    mov eax, 0x10\n    ltr ax",
    "iret to a data segment": (
        "    pushf\n    push dword 0x10\n    push dword next\n    iret\nnext:"
    ),
}


@pytest.mark.parametrize("case", sorted(FIDELITY))
def test_what_the_vmm_emulates_it_checks_as_the_cpu_does(case):
    source = with_idt(FIDELITY[case])
    native = console_of("native", source)
    assert native  # (it printed what happened)
    for kind in ("trap-emulate", "binary-translation"):
        assert console_of(kind, source) == native, kind


@pytest.mark.parametrize("vector", [0x00, 0x06, 0x08, 0x0D, 0x0E])
def test_a_user_int_n_for_an_exception_vector_is_a_gp_as_on_bare_metal(vector):
    outcome = {}
    for mode in vm.MODES:
        guest = vm.boot("compute", mode)
        init = guest.user_symbols["init"]
        guest.vm.machine.write(init - 0x400000 + 0x80000, bytes([0xCD, vector]))  # INT vector
        outcome[mode] = guest.run(3_000_000).console
    assert "killed by exception 13" in outcome["native"]
    assert outcome["trap-emulate"] == outcome["binary-translation"] == outcome["native"]


SLICING = """
    bits 32
    org 0x1000
    mov esp, 0x9000
    lidt [idtp]
    lgdt [gdtp]
    mov eax, 0x28
    ltr ax
    cli
    mov al, 0x34
    out 0x43, al
    mov al, 0x00          ; a tick every 16384 cycles
    out 0x40, al
    mov al, 0x40
    out 0x40, al
    mov al, 0xfe
    out 0x21, al
    mov ecx, 20000        ; spin past the first tick (it waits: virtual IF = 0)
spin:
    loop spin
    jmp 0x30000           ; (the IRET there lies outside the kernel text: unpatched)
text_end:
idtp: dw 0x107
    dd idt
gdtp: dw 0x2f
    dd gdt
gdt: dd 0, 0
    dd 0x0000ffff, 0x00cf9a00
    dd 0x0000ffff, 0x00cf9200
    dd 0x0000ffff, 0x00cffa00
    dd 0x0000ffff, 0x00cff200
    dd 0x70000067, 0x00008900
idt:
    times 32 dd 0, 0
    dw timer, 0x08, 0x8e00, 0
timer:
    mov eax, ebx          ; the user's loop count when the tick arrived
    out 0xe9, al
    shr eax, 8
    out 0xe9, al
    mov al, 0
    out 0xf4, al
"""
SLICING_USER = """
    bits 32
    org 0x30000
    push dword 0x23
    push dword 0x38000
    push dword 0x202
    push dword 0x1b
    push dword user
    iret
user:
    inc ebx
    jmp user
"""


@pytest.mark.parametrize("kind", ["trap-emulate", "binary-translation"])
def test_cutting_a_run_into_slices_never_changes_when_the_guest_sees_its_interrupt(kind):
    def run(slice_size: int):
        monitor, _ = kernel(kind, SLICING)
        monitor.machine.load(0x7004, (0x8000).to_bytes(4, "little") + (0x10).to_bytes(4, "little"))
        monitor.machine.load(0x30000, assemble(SLICING_USER).code)
        used = 0
        while (result := monitor.run(slice_size)).status == "budget" and used < 2_000_000:
            used += slice_size
        return result.status, bytes(monitor.board.console.data), result.stats

    whole = run(1_000_000)
    assert whole[0] == "shutdown" and len(whole[1]) == 2
    for slice_size in (5_000, 100, 7):
        assert run(slice_size) == whole, slice_size


@pytest.mark.parametrize("patch", [True, False])
def test_cutting_toyos_into_slices_changes_nothing_patched_or_not(patch):
    def run(slice_size: int):
        guest = vm.boot("spawn", "trap-emulate", **({} if patch else {"patch": False}))
        while (result := guest.run(slice_size)).status == "budget":
            pass
        return result.console, result.stats

    whole = run(500_000_000)
    for slice_size in (100_000, 997, 50):
        assert run(slice_size) == whole, slice_size


def test_an_unpatched_kernel_with_more_popfs_than_breakpoints_still_boots():
    popfs = "    push dword 0x202\n    popf\n" * 65
    source = f"bits 32\norg 0x1000\n    mov esp, 0x9000\n{popfs}    mov al, 0\n    out 0xf4, al\n"
    program = assemble(source)
    machine = Host(SIZE).new_machine(SIZE)
    machine.load(program.origin, program.code)
    machine.eip = program.origin
    text = (program.origin, program.origin + len(program.code))
    unpatched = TrapEmulateVM(machine, GUEST_RAM, kernel_text=text, patch=False)
    assert len(unpatched.watched) == 64
    assert unpatched.events[0].text == "watching 64 of 65 POPF sites (unpatched)"
    assert unpatched.run(10_000).ok


def test_a_guest_gdt_of_the_largest_size_cannot_reach_the_vmms_idt_or_tss():
    body = """
    mov edi, 0x20000
    mov ecx, 0x4000
    mov eax, 0x41414141
    rep stosd             ; a GDT of 8,192 descriptors of 'AAAA AAAA'
    lgdt [gp]"""
    for kind in ("trap-emulate", "binary-translation"):
        monitor, _ = kernel(kind, with_idt(body, data="gp: dw 0xffff\n    dd 0x20000"))
        window = monitor.machine.window
        start = monitor.area.start
        tables = slice(start + TSS_OFFSET, start + IDT_OFFSET + 0x800)
        before = window[tables].copy()
        monitor.run(200_000)
        assert monitor.vcpu.gdtr == (0x20000, 0xFFFF)
        assert np.array_equal(window[tables], before), kind  # the VMM's TSS and IDT


# ---- 3. the API and the command line -----------------------------------------------------
def test_a_budget_must_be_a_positive_integer_that_fits():
    guest = vm.boot("compute", "trap-emulate")
    for bad in (True, 0, -1, 2**63, 1.5, "10"):
        with pytest.raises(ValueError, match="budget"):
            guest.run(bad)
    assert guest.run(np.int64(1000)).status == "budget"


@pytest.mark.parametrize("args", [["--budget", "99999999999999999999999"], ["--log", "-1"]])
def test_the_command_line_refuses_out_of_range_numbers_cleanly(args):
    out = vm_command("run", "--workload", "syscalls", "--mode", "trap-emulate", *args)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "must be from" in out.stderr


def test_tracing_past_the_guests_shutdown_keeps_it_clean():
    out = vm_command("run", "--workload", "io", "--trace", "1000000", timeout=600)
    assert out.returncode == 0, out.stderr[-500:]
    assert "the guest stopped: shutdown" in out.stdout and "io: line 40" in out.stdout


def test_trace_with_json_is_one_object_with_the_trace_inside():
    out = vm_command("run", "--workload", "compute", "--trace", "2", "--json", "--budget", "1000")
    report = json.loads(out.stdout)
    assert len(report["trace"]) >= 2 and report["trace"][0].startswith("00001000")


def test_int_3_written_as_two_bytes_over_a_translated_site_is_a_breakpoint_trap():
    body = """
    mov eax, cr3
    mov byte [site - 1], 0xcd
    mov byte [site], 0x03
    jmp site - 1
    nop
site:
    mov cr3, eax
    nop"""
    source = with_idt(body)
    native = console_of("native", source)
    assert native[:2] == b"F\x03"  # INT 3 (CD 03) through gate 3: #BP
    assert console_of("binary-translation", source) == native
    assert console_of("trap-emulate", source) == native
