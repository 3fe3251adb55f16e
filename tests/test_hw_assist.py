"""Hardware-assisted virtualization: VMX non-root mode, its control structure, nested
paging, and the hw-assist VMM running toyos unmodified.

Byte literals carry their assembly in a comment. Tables come from tests/systables.py.
"""

from __future__ import annotations

import json
import random
import struct

import numpy as np
import pytest
from systables import IDT, KERNEL_STACK, protected_machine, set_gate
from test_commands import vm as vm_command
from test_nojit import without_jit

import vm
from vm.cpu import state as S
from vm.cpu.exits import ExitReason
from vm.cpu.memory import host_index_slow
from vm.cpu.vmcs import VMCS, describe_exit
from vm.guest.toyos import WORKLOADS
from vm.hypervisor.hw_assist import HardwareAssistVM
from vm.machine import Machine

PAGINGS = ("nested", "shadow")
P, RW, US, A, D, PS = 1, 2, 4, 0x20, 0x40, 0x80


@pytest.fixture(scope="module")
def native():
    """Each workload's bare-metal run, the reference."""
    return {w: vm.boot(w, "native").run() for w in WORKLOADS}


# ---- toyos under hw-assist -----------------------------------------------------------------------


def test_cli_paging_and_console_choose_the_run_and_refuse_other_modes():
    out = vm_command(
        "run", "--mode", "hw-assist", "--paging", "nested", "--console", "assigned",
        "--workload", "syscalls", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)["stats"]
    assert stats["paging"] == "nested" and "INT 0x80" not in stats["exits_by_reason"]
    emulated = vm.boot("syscalls", "hw-assist", paging="nested").run()
    console_outs = emulated.stats["exits_by_reason"]["IO"] - stats["exits_by_reason"]["IO"]
    assert console_outs >= len(emulated.console)  # (an assigned console's OUTs do not exit)
    table = vm_command("run", "--mode", "hw-assist", "--paging", "shadow", "--workload", "io")
    assert table.returncode == 0 and "io: line 40" in table.stdout
    assert "patched sites" not in table.stdout  # (nothing is patched under hardware assist)
    assert "patched sites" in vm_command("run", "--mode", "trap-emulate").stdout
    for flag, value in (("--paging", "nested"), ("--console", "assigned")):
        bad = vm_command("run", "--mode", "paravirt", flag, value)
        assert bad.returncode == 2 and f"{flag} is for --mode hw-assist" in bad.stderr
        assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("paging", PAGINGS)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_toyos_prints_exactly_what_it_prints_natively(workload, paging, native):
    guest = vm.boot(workload, "hw-assist", paging=paging)
    result = guest.run()
    assert result.status == native[workload].status, result.message
    assert result.exit_code == native[workload].exit_code
    assert result.console == native[workload].console
    stats = result.stats
    assert stats["paging"] == paging
    assert "INT 0x80" not in stats["exits_by_reason"]  # system calls never exit
    assert not any(kind.startswith("#GP") for kind in stats["exits_by_reason"])  # no POPF hole
    if paging == "nested":
        assert not {"#PF", "CR access", "INVLPG"} & set(stats["exits_by_reason"])
    elif workload in ("spawn", "pagetable"):
        assert stats["shadow"]["hidden faults"] > 0 and stats["exits_by_reason"]["#PF"] > 0


@pytest.mark.parametrize("preset", ["pentium4", "haswell"])
def test_system_calls_run_near_native_with_nested_paging_and_never_exit(preset):
    """No exit on INT 0x80: with nested paging and the console assigned to the guest (its
    OUTs are then no exits either), syscalls runs within 5% of native; trap-and-emulate,
    which traps every one, far above; with the console emulated, its OUTs are the exits."""
    native = vm.boot("syscalls", "native", cost=preset).run().stats["cycles"]
    hw = vm.boot("syscalls", "hw-assist", cost=preset, paging="nested", console="assigned").run()
    assert hw.ok and hw.stats["cycles"] <= 1.05 * native, hw.stats
    assert hw.stats["syscalls"] > 2000 and "INT 0x80" not in hw.stats["exits_by_reason"]
    te = vm.boot("syscalls", "trap-emulate", cost=preset).run().stats["cycles"]
    assert te > 5 * native
    emulated = vm.boot("syscalls", "hw-assist", cost=preset, paging="nested").run().stats
    assert set(emulated["exits_by_reason"]) <= {"IO", "IRQ 0"}


def test_with_a_later_generation_nested_paging_beats_translation_and_shadow_paging():
    for workload in ("spawn", "pagetable"):
        runs = {
            name: vm.boot(workload, mode, cost="haswell", **options).run().stats["cycles"]
            for name, mode, options in (
                ("nested", "hw-assist", {"paging": "nested"}),
                ("shadow", "hw-assist", {"paging": "shadow"}),
                ("bt", "binary-translation", {}),
            )
        }
        assert runs["nested"] < runs["bt"] < runs["shadow"], (workload, runs)


def test_paging_defaults_to_what_the_preset_processor_has():
    assert vm.boot("syscalls", "hw-assist", cost="pentium4").vm.paging == "shadow"
    assert vm.boot("syscalls", "hw-assist", cost="haswell").vm.paging == "nested"
    with pytest.raises(ValueError, match="nested"):
        vm.boot("syscalls", "hw-assist", paging="ept")


def test_nested_paging_takes_no_mmu_exits_where_shadow_paging_takes_many():
    for workload in ("spawn", "pagetable"):
        nested = vm.boot(workload, "hw-assist", paging="nested").run().stats
        shadow = vm.boot(workload, "hw-assist", paging="shadow").run().stats
        assert shadow["cycles"] > 2 * nested["cycles"], workload
        assert shadow["exits"] > 3 * nested["exits"], workload


def test_the_vmcs_and_each_exits_qualification_are_in_the_events_and_the_guest():
    guest = vm.boot("pagetable", "hw-assist", paging="shadow")
    assert guest.events[0].kind == "vmcs" and "exception bitmap #14" in guest.events[0].text
    guest.run()
    texts = {e.kind: e.text for e in guest.events}
    assert any("to port 0xe9, 1 byte" in e.text for e in guest.events if e.kind == "IO")
    assert texts["INVLPG"].startswith("INVLPG 0x")
    assert texts["CR access"].startswith("MOV CR")
    assert "#PF at 0x" in texts["#PF"]
    vmcs = guest.control_structure()
    assert isinstance(vmcs, VMCS) and vmcs.non_root and vmcs.cr3_load_exiting
    assert "exit information" in str(vmcs) and "cr0 read shadow" in str(vmcs)
    assert vm.boot("syscalls", "native").control_structure() is None


def test_cpuid_exits_and_says_a_hypervisor_is_there_but_sidt_still_tells_the_truth():
    m, hv = hw_machine("""
        mov eax, 1
        cpuid
        mov esi, ecx
        mov eax, 0x40000000
        cpuid
        sidt [0x3000]
        hlt
    """)
    result = hv.run()
    assert result.status == "halt"
    assert m.regs.esi >> 31 == 1  # leaf 1, ECX bit 31: a hypervisor
    assert struct.pack("<III", m.regs.ebx, m.regs.ecx, m.regs.edx) == b"vmlabvmlabHV"
    limit, base = struct.unpack("<HI", m.read(0x3000, 6))
    assert (base, limit) == (IDT, 256 * 8 - 1)  # the red pill: SIDT did not exit
    assert result.stats["exits_by_reason"] == {"CPUID": 2, "HLT": 1}


def test_popf_and_cli_sti_run_in_the_guest_and_do_what_they_mean():
    m, hv = hw_machine("""
        cli
        pushfd
        pop ebx
        push 0x202
        popfd
        pushfd
        pop ecx
        sti
        hlt
    """)
    m.state[S.EXIT_CONTROLS] &= ~S.EXIT_ON_HLT
    assert m.run().reason == ExitReason.HALT  # (timer off: nothing wakes it)
    assert not m.regs.ebx & S.FLAG_IF and m.regs.ecx & S.FLAG_IF  # POPF set IF at ring 0
    assert hv.acct.exits == {}


# ---- each exit control on its own (a bare machine in non-root mode) ------------------------------


def non_root(source: str, controls: int = 0, bitmap: int = 0) -> Machine:
    """A machine with system tables, in non-root mode with only these controls."""
    m = protected_machine()
    m.load_asm(source)
    m.state[S.NON_ROOT] = 1
    m.state[S.EXIT_CONTROLS] = controls
    m.state[S.EXC_EXIT_BITMAP] = bitmap
    return m


def test_hlt_exiting():
    m = non_root("nop\nhlt\nnop", S.EXIT_ON_HLT)  # F4  HLT
    m.eflags |= S.FLAG_IF
    exit_ = m.run()
    assert exit_.reason == ExitReason.HALT and exit_.length == 1 and exit_.eip == 0x1002
    m = non_root("mov eax, 7\nhlt", 0)  # without it: HLT waits (no timer: nothing wakes it)
    m.state[S.TIMER_PERIOD] = 1000
    m.state[S.TIMER_NEXT] = 1000
    m.eflags |= S.FLAG_IF
    assert m.run(3).reason == ExitReason.BUDGET  # (idled to the tick, then on)


def test_io_exiting_qualification_has_port_size_and_direction():
    m = non_root("mov edx, 0x3f8\nout dx, al\nin eax, 0x60\nhlt", S.EXIT_ON_IO)
    exit_ = m.run()  # EE  OUT DX, AL
    q = int(m.state[S.EXIT_QUALIFICATION])
    assert exit_.reason == ExitReason.IO and exit_.length == 1
    assert (q & 7, q & 8, q & 0x40, q >> 16) == (0, 0, 0, 0x3F8)
    assert "OUT" in describe_exit(ExitReason.IO, m.state)
    exit_ = m.run()  # E5 60  IN EAX, 0x60
    q = int(m.state[S.EXIT_QUALIFICATION])
    assert exit_.length == 2 and (q & 7, q & 8, q & 0x40, q >> 16) == (3, 8, 0x40, 0x60)


def test_cpuid_exiting():
    m = non_root("xor eax, eax\ncpuid\nhlt", S.EXIT_ON_CPUID | S.EXIT_ON_HLT)
    assert m.run().reason == ExitReason.CPUID and m.last_exit().length == 2  # 0F A2  CPUID
    m = non_root("mov eax, 1\ncpuid\nhlt", S.EXIT_ON_HLT)
    assert m.run().reason == ExitReason.HALT and m.regs.eax == 0x300


def test_cr3_load_and_store_exiting():
    code = "mov eax, 0x5000\nmov cr3, eax\nmov ebx, cr3\nhlt"
    m = non_root(code, S.EXIT_ON_CR3_LOAD | S.EXIT_ON_HLT)
    exit_ = m.run()  # 0F 22 D8  MOV CR3, EAX
    q = int(m.state[S.EXIT_QUALIFICATION])
    assert exit_.reason == ExitReason.CR_ACCESS and (q & 0xF, q >> 4 & 3, q >> 8 & 0xF) == (3, 0, 0)
    assert exit_.value == 0x5000 and m.state[S.CR3] == 0  # not loaded: the VMM decides
    assert m.run().reason == ExitReason.HALT and m.regs.ebx == 0  # no store exiting
    m = non_root(code, S.EXIT_ON_CR3_STORE | S.EXIT_ON_HLT)
    exit_ = m.run()  # 0F 20 DB  MOV EBX, CR3
    q = int(m.state[S.EXIT_QUALIFICATION])
    assert exit_.reason == ExitReason.CR_ACCESS and m.state[S.CR3] == 0x5000
    assert (q & 0xF, q >> 4 & 3, q >> 8 & 0xF) == (3, 1, 3)  # CR3, MOV from CR, EBX


def test_cr0_writes_exit_only_for_the_bits_the_vmm_owns_and_reads_see_the_shadow():
    code = "mov eax, 0x11\nmov cr0, eax\nmov ebx, cr0\nsmsw ecx\n"
    code += "mov eax, 0x80000011\nmov cr0, eax\nhlt"
    m = non_root(code, S.EXIT_ON_HLT)
    m.state[S.CR0_GUEST_HOST_MASK] = S.CR0_PG | S.CR0_WP
    m.state[S.CR0_READ_SHADOW] = 0x1
    m.state[S.CR0] = 0x00010001  # (the real WP: the VMM's)
    exit_ = m.run()  # the second MOV CR0, EAX changes PG
    assert exit_.reason == ExitReason.CR_ACCESS and exit_.value == 0x80000011
    assert m.state[S.CR0] == 0x00010011  # the first one's ET went in; WP stayed
    assert m.regs.ebx == 0x11 and m.regs.ecx == 0x11  # MOV from CR0, SMSW: the shadow's PG/WP


def test_invlpg_exiting_gives_the_address():
    m = non_root("invlpg [0x12345]\nhlt", S.EXIT_ON_INVLPG | S.EXIT_ON_HLT)
    exit_ = m.run()  # 0F 01 3D 45 23 01 00  INVLPG [0x12345]
    assert exit_.reason == ExitReason.INVLPG and m.state[S.EXIT_QUALIFICATION] == 0x12345
    assert exit_.length == 7 and exit_.eip == 0x1007
    m = non_root("invlpg [0x12345]\nhlt", S.EXIT_ON_HLT)
    assert m.run().reason == ExitReason.HALT


def test_vmcall_exiting_and_without_it_ud():
    m = non_root("vmcall\nhlt", S.EXIT_ON_VMCALL)  # 0F 01 C1  VMCALL
    assert m.run().reason == ExitReason.HYPERCALL and m.eip == 0x1000
    m = non_root("vmcall\nhlt", 0, bitmap=1 << 6)
    exit_ = m.run()
    assert exit_.reason == ExitReason.FAULT and exit_.vector == 6


def test_exception_bitmap_chooses_which_exceptions_exit():
    m = non_root("ud2", 0, bitmap=1 << 6)  # 0F 0B  UD2
    assert m.run().vector == 6
    m = non_root("ud2", 0, bitmap=1 << 8)  # #UD delivered (no gate: #DF), #DF exits
    m.state[S.IDTR_LIMIT] = 0
    exit_ = m.run()
    assert exit_.reason == ExitReason.FAULT and exit_.vector == 8


def test_external_interrupt_exiting_whatever_if_says():
    m = non_root("nop\nnop\nhlt", S.EXIT_ON_INTERRUPT | S.EXIT_ON_HLT)
    m.state[S.PIC_IMR] = 0xFE
    m.state[S.PIC_IRR] = 1
    exit_ = m.run()
    assert exit_.reason == ExitReason.INTERRUPT and exit_.vector == 0x20 and m.eip == 0x1000


def test_interrupt_window_exits_once_if_is_on_after_sti_blocking():
    m = non_root("nop\nsti\nnop\nnop\nhlt", S.EXIT_ON_INTERRUPT_WINDOW | S.EXIT_ON_HLT)
    exit_ = m.run()
    assert exit_.reason == ExitReason.INTERRUPT_WINDOW
    assert m.eip == 0x1003  # the NOP after STI ran first (blocking by STI)
    m = non_root("nop\nhlt", S.EXIT_ON_INTERRUPT_WINDOW | S.EXIT_ON_HLT)
    m.state[S.NON_ROOT] = 0  # (a non-root control: ignored in root mode)
    m.eflags |= S.FLAG_IF
    assert m.run().reason == ExitReason.HALT


def test_event_injection_on_entry_delivers_through_the_guests_idt():
    m = non_root("nop\nhlt\nhandler:\nmov eax, 42\nhlt", S.EXIT_ON_HLT)
    set_gate(m, 0x20, m.program.symbols["handler"])
    set_gate(m, 13, m.program.symbols["handler"])
    m.state[S.ENTRY_INTERRUPTION] = S.EVENT_VALID | 0x20  # external interrupt, vector 0x20
    assert m.run().reason == ExitReason.HALT and m.regs.eax == 42
    assert m.read32(KERNEL_STACK - 12) == 0x1000  # the frame's EIP: where it was entered
    assert m.state[S.ENTRY_INTERRUPTION] == 0
    m = non_root("nop\nhlt\nhandler:\nmov eax, 42\nhlt", S.EXIT_ON_HLT)
    set_gate(m, 13, m.program.symbols["handler"])
    info = S.EVENT_VALID | S.EVENT_DELIVER_ERROR | (S.EVENT_HARDWARE_EXCEPTION << 8) | 13
    m.state[S.ENTRY_INTERRUPTION], m.state[S.ENTRY_ERROR] = info, 0x18
    assert m.run().reason == ExitReason.HALT and m.read32(KERNEL_STACK - 16) == 0x18


def test_nested_page_fault_exit_names_the_guest_physical_and_linear_address():
    m = non_root("mov eax, [0x7000]\nhlt", S.EXIT_ON_HLT)
    root = nested_identity(m, 0xF0000, (0x7000,), size=0xF0000)  # guest 0x7000 not mapped
    m.state[S.EPT_POINTER] = root | S.EPT_ENABLE
    exit_ = m.run()
    assert exit_.reason == ExitReason.NESTED_PAGE_FAULT and m.eip == 0x1000
    assert m.state[S.EXIT_GUEST_PHYSICAL] == 0x7000 and m.state[S.EXIT_GUEST_LINEAR] == 0x7000
    q = int(m.state[S.EXIT_QUALIFICATION])
    assert q & S.NPF_READ and not q & S.NPF_WRITE and q & S.NPF_FINAL
    assert "guest-physical 0x7000" in describe_exit(ExitReason.NESTED_PAGE_FAULT, m.state)


# ---- the two-dimensional walk --------------------------------------------------------------------


def nested_identity(m: Machine, at: int, holes=(), size: int | None = None) -> int:
    """4 KiB nested tables at ``at`` mapping guest-physical [0, size) to itself, except
    the pages in holes; returns the nested directory."""
    size = m.memory_size if size is None else size
    words = m.window.view("<u4")
    tables = (size + (4 << 20) - 1) >> 22
    words[at // 4 : at // 4 + 1024 * (1 + tables)] = 0
    for t in range(tables):
        words[at // 4 + t] = (at + 4096 * (1 + t)) | P | RW | US
    for page in range(0, size, 4096):
        if page not in holes:
            words[(at + 4096 * (1 + (page >> 22))) // 4 + ((page >> 12) & 0x3FF)] = page | 7
    return at


def walk_by_hand(words, root, cr3, lin, write, user, wp, size):
    """The 2D walk in Python: (host page, touched entries) or (None, kind)."""
    touched = []

    def nested(gpa, nwrite):
        pde_at = root + 4 * (gpa >> 22)
        pde = int(words[pde_at // 4])
        if not pde & P:
            return None
        if pde & PS:
            if nwrite and not pde & RW:
                return None
            page = (pde & 0xFFC00000) + (gpa & 0x3FF000)
            if page + 4096 > size:
                return None
            touched.append((pde_at, A | (D if nwrite else 0)))
            return page
        pte_at = (pde & ~0xFFF) + 4 * ((gpa >> 12) & 0x3FF)
        pte = int(words[pte_at // 4])
        if not pte & P or (nwrite and not pde & pte & RW):
            return None
        touched.extend([(pde_at, A), (pte_at, A | (D if nwrite else 0))])
        return pte & ~0xFFF

    pde_gpa = (cr3 & ~0xFFF) + 4 * (lin >> 22)
    host = nested(pde_gpa & ~0xFFF, True)
    if host is None:
        return None, "nested"
    pde_at = host + (pde_gpa & 0xFFF)
    pde = int(words[pde_at // 4])
    if not pde & P:
        return None, "#PF"
    pte_gpa = (pde & ~0xFFF) + 4 * ((lin >> 12) & 0x3FF)
    host = nested(pte_gpa & ~0xFFF, True)
    if host is None:
        return None, "nested"
    pte_at = host + (pte_gpa & 0xFFF)
    pte = int(words[pte_at // 4])
    if not pte & P:
        return None, "#PF"
    if user and not pde & pte & US:
        return None, "#PF"
    if write and not pde & pte & RW and (user or wp):
        return None, "#PF"
    page = nested(pte & ~0xFFF, write)
    if page is None:
        return None, "nested"
    touched.extend([(pde_at, A), (pte_at, A | (D if write else 0))])
    return page, touched


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("large", [False, True])
def test_the_nested_walk_equals_walking_both_tables_by_hand_a_and_d_bits_included(seed, large):
    rng = random.Random(seed)
    ram = 512 << 10  # guest RAM: [0, ram) guest-physical, scattered over 2 MiB of host
    m = Machine(memory_size=2 << 20)
    words = m.window.view("<u4")
    root = 0x1F0000  # the nested tables, in the host's part only
    words[root // 4 : root // 4 + 1024] = 0
    frames = rng.sample(range(0x100, 0x1E0), ram // 4096)  # guest page -> host frame
    if large:  # one 4 MiB nested page (bigger than the window: its end refused)
        words[root // 4] = 0 | PS | P | RW | US
    else:
        table = root + 4096
        words[table // 4 : table // 4 + 1024] = 0
        words[root // 4] = table | P | RW | US
        for page, frame in enumerate(frames):
            if rng.random() < 0.95:  # some guest pages unmapped, some read-only
                words[table // 4 + page] = (frame << 12) | P | (RW if rng.random() < 0.8 else 0)

    def host_of(gpa):
        return (frames[gpa >> 12] << 12) if not large else gpa & ~0xFFF

    # guest tables: a directory and 8 tables at random guest-physical pages, random entries
    guest_pages = rng.sample(range(ram // 4096), 9)
    directory = guest_pages[0] << 12
    for gp in guest_pages:
        h = host_of(gp << 12)
        words[h // 4 : h // 4 + 1024] = 0
    for i, gp in enumerate(guest_pages[1:]):
        words[host_of(directory) // 4 + i] = (gp << 12) | rng.choice([0, 1, 3, 5, 7, 7, 7])
        h = host_of(gp << 12)
        for j in range(1024):
            if rng.random() < 0.7:
                frame = rng.randrange(ram // 4096 + 16)  # a few beyond the guest's RAM
                words[h // 4 + j] = (frame << 12) | rng.choice([1, 3, 5, 7, 7, 0x41, 0x63])
    m.state[S.EPT_POINTER] = root | S.EPT_ENABLE
    m.state[S.NON_ROOT] = 1
    m.state[S.CR3] = directory
    m.state[S.CR0] = S.CR0_PE | S.CR0_PG | (S.CR0_WP if seed % 2 else 0)
    for _ in range(300):
        lin = (rng.randrange(8) << 22) | (rng.randrange(1024) << 12) | rng.randrange(4096 - 4)
        write, user = rng.random() < 0.5, rng.random() < 0.5
        m.flush_tlb()
        expected = words.copy()
        page, touched = walk_by_hand(
            expected, root, directory, lin, write, user, bool(seed % 2), m.memory_size
        )
        got = host_index_slow(m.memory, m.state, lin, 4, write, user)
        if page is None:
            assert got == -1
            vector = int(m.state[S.FAULT_VECTOR])
            assert vector == (256 if touched == "nested" else 14), (hex(lin), touched)
            continue
        assert got == page + (lin & 0xFFF), hex(lin)
        for at, bits in touched:
            expected[at // 4] |= bits
        assert np.array_equal(words, expected), hex(lin)
        assert host_index_slow(m.memory, m.state, lin, 4, write, user) == got  # from the TLB


def test_a_4mib_nested_page_in_the_cache_makes_a_2d_walk_cost_what_a_native_one_does():
    m = non_root("mov eax, [0x20000]\nmov eax, [0x30000]\nhlt", S.EXIT_ON_HLT)
    words = m.window.view("<u4")
    root = 0xF0000
    words[root // 4 : root // 4 + 1024] = 0
    words[root // 4] = PS | P | RW | US
    m.state[S.EPT_POINTER] = root | S.EPT_ENABLE  # (guest paging off: 1D through it)
    assert m.run().reason == ExitReason.HALT
    assert m.state[S.STAT_PAGE_WALKS] == 1  # one nested walk, then the cache
    m.flush_tlb()
    nested_identity(m, 0xE0000)
    m.state[S.EPT_POINTER] = 0xE0000 | S.EPT_ENABLE
    m.eip, before = 0x1000, int(m.state[S.STAT_PAGE_WALKS])
    assert m.run().reason == ExitReason.HALT
    assert m.state[S.STAT_PAGE_WALKS] - before == 3  # 4 KiB nested pages: a walk per page


# ---- isolation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_a_guest_never_reaches_outside_its_memory_whatever_its_tables_say(seed):
    """A guest kernel in non-root mode with nested paging stores everywhere, with random
    page tables and random code: every byte of the host outside its RAM stays the same
    (the nested tables' A/D bits are the hardware's own writes)."""
    rng = random.Random(seed)
    ram, base = 1 << 20, 3 << 20
    host = np.frombuffer(rng.randbytes((8 << 20) + S.SCRATCH_SIZE), dtype=np.uint8).copy()
    m = Machine(memory_size=2 << 20, host_memory=host, base=base)
    m.window[:ram] = np.frombuffer(rng.randbytes(ram), dtype=np.uint8)
    root = nested_identity(m, ram, size=ram)
    words = m.window.view("<u4")
    code = m.load_asm("again:\nmov [ebx], eax\nadd ebx, ecx\nmov [ebx + 0x123], ebx\njmp again")
    cr3 = rng.randrange(ram >> 12) << 12
    pde = cr3 // 4  # map the code page at its own address, whatever else the tables say
    table = (words[pde] & 0xFFFFF000) % ram
    words[pde] = table | 7
    words[table // 4 + 1] = 0x1000 | 7
    m.state[S.CR3], m.state[S.CR0] = cr3, S.CR0_PE | S.CR0_PG
    m.state[S.EPT_POINTER] = root | S.EPT_ENABLE
    m.state[S.NON_ROOT] = 1
    m.state[S.EXC_EXIT_BITMAP] = 0xFFFFFFFF
    m.state[S.EXIT_CONTROLS] = S.EXIT_ON_HLT | S.EXIT_ON_IO | S.EXIT_ON_CPUID
    outside = np.ones(host.size, dtype=bool)
    outside[base : base + ram] = False
    outside[-S.SCRATCH_SIZE :] = False  # (the core's scratch bytes for fetches across pages)
    before = host.copy()
    for _ in range(400):
        m.regs.eax, m.regs.ebx, m.regs.ecx = (rng.getrandbits(32) for _ in range(3))
        if rng.random() < 0.2:  # and sometimes its tables, and its code, at random
            words[rng.randrange(ram // 4)] = rng.getrandbits(32)
        m.state[S.ENTRY_INTERRUPTION] = 0
        m.eip = code.origin
        m.run(50)
    changed = np.flatnonzero((host != before) & outside)
    tables = (base + root, base + root + 4096 * 2)
    assert all(tables[0] <= i < tables[1] for i in changed), [hex(i) for i in changed[:5]]
    assert not ((host[changed] ^ before[changed]) & ~np.uint8(A | D)).any()


# ---- determinism, JIT on and off -----------------------------------------------------------------


@pytest.mark.parametrize("paging", PAGINGS)
def test_runs_are_deterministic_and_a_snapshot_replays_identically(paging):
    first = vm.boot("spawn", "hw-assist", paging=paging)
    a = first.run()
    b = vm.boot("spawn", "hw-assist", paging=paging).run()
    assert a.stats == b.stats and a.console == b.console
    guest = vm.boot("spawn", "hw-assist", paging=paging)
    guest.run(60_000)
    snap = guest.snapshot()
    rest = guest.run()
    events = [e for e in guest.events]
    guest.restore(snap)
    again = guest.run()
    assert again.stats == rest.stats and [e for e in guest.events] == events


NOJIT_SCRIPT = """
import json, vm
out = {}
for paging in ("nested", "shadow"):
    r = vm.boot("syscalls", "hw-assist", paging=paging).run()
    out[paging] = [r.status, r.console, r.stats["cycles"], r.stats["instructions"],
                   r.stats["exits_by_reason"]]
print(json.dumps(out))
"""


def test_the_same_without_jit():
    child = without_jit(["-c", NOJIT_SCRIPT])
    assert child.returncode == 0, child.stderr[-3000:]
    theirs = json.loads(child.stdout)
    for paging in PAGINGS:
        r = vm.boot("syscalls", "hw-assist", paging=paging).run()
        stats = r.stats
        figures = [stats[k] for k in ("cycles", "instructions", "exits_by_reason")]
        ours = [r.status, r.console, *figures]
        assert ours == theirs[paging], paging


# ---- helpers -------------------------------------------------------------------------------------


def hw_machine(source: str) -> tuple[Machine, HardwareAssistVM]:
    """A machine with system tables running source at ring 0 under the hw-assist VMM."""
    m = protected_machine(memory_size=(4 << 20) + (1 << 20))
    m.load_asm(source)
    return m, HardwareAssistVM(m, 4 << 20, paging="nested")


MACHINE_LEVEL = (
    "test_hlt_exiting",
    "test_io_exiting_qualification_has_port_size_and_direction",
    "test_cpuid_exiting",
    "test_cr3_load_and_store_exiting",
    "test_cr0_writes_exit_only_for_the_bits_the_vmm_owns_and_reads_see_the_shadow",
    "test_invlpg_exiting_gives_the_address",
    "test_vmcall_exiting_and_without_it_ud",
    "test_exception_bitmap_chooses_which_exceptions_exit",
    "test_external_interrupt_exiting_whatever_if_says",
    "test_interrupt_window_exits_once_if_is_on_after_sti_blocking",
    "test_event_injection_on_entry_delivers_through_the_guests_idt",
    "test_nested_page_fault_exit_names_the_guest_physical_and_linear_address",
    "test_the_nested_walk_equals_walking_both_tables_by_hand_a_and_d_bits_included",
    "test_a_4mib_nested_page_in_the_cache_makes_a_2d_walk_cost_what_a_native_one_does",
    "test_a_guest_never_reaches_outside_its_memory_whatever_its_tables_say",
)


def test_the_machine_level_tests_pass_without_jit():
    """The exit controls, injection, the 2D walk and isolation, interpreted."""
    tests = [f"{__file__}::{name}" for name in MACHINE_LEVEL]
    child = without_jit(["-m", "pytest", "-q", "-p", "no:cacheprovider", *tests])
    output = child.stdout[-6000:] + child.stderr[-2000:]
    assert child.returncode == 0, f"fails with NUMBA_DISABLE_JIT=1:\n{output}"
    assert "\n24 passed" in child.stdout, output  # (the 15 tests, with their parameters)
