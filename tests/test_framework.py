"""The hypervisor framework: one Guest interface for every mode, its exit table and events,
views that change nothing, and the shared VMM services tested on their own."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

import vm
from vm.asm import assemble
from vm.cpu.cost import DEFAULT
from vm.cpu.decode import decode_form
from vm.cpu.exits import ExitReason
from vm.hypervisor.descriptors import GuestDescriptors
from vm.hypervisor.guest_memory import CACHE_LIMIT, GuestFault, GuestMemory, GuestPageFault
from vm.hypervisor.host import Host
from vm.hypervisor.modes import MODE_TABLE
from vm.hypervisor.shadow import HIDDEN, TABLE_WRITE, TRUE
from vm.hypervisor.trap_emulate import TrapEmulateVM
from vm.hypervisor.vcpu import VCPU
from vm.hypervisor.vmm import ANY, VM, ExitRow
from vm.hypervisor.vmm_area import VMM_AREA
from vm.interface import GUEST_RAM

ROOT = Path(__file__).resolve().parent.parent


# ---- the Guest interface ------------------------------------------------------------------
@pytest.mark.parametrize("mode", vm.MODES)
def test_every_mode_has_the_same_surface(mode):
    guest = vm.boot("io", mode)
    assert guest.mode == mode and guest.status == "ready" and guest.cost is DEFAULT
    result = guest.run()
    assert result.ok and guest.status == "shutdown" and "io: line 40" in guest.console
    assert guest.stats["syscalls"] == result.stats["syscalls"] > 40
    assert "FAULT" in guest.exit_table() or mode == "native"
    view = guest.view()
    assert set(view.registers) == {"eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi",
                                   "eip", "eflags"}  # fmt: skip
    roles = dict(guest.rings)
    # The guest's own idea of its ring follows from the hardware's: a fully virtualized
    # kernel at ring 1 believes ring 0; a paravirtual one knows it runs at ring 1.
    assert view.mode == mode and view.guest.cpl == guest.vm.believed_cpl[view.hardware.cpl]
    assert view.guest.cpl == (1 if mode == "paravirt" else 0) or view.hardware.cpl == 3
    assert roles[3] == "guest user" and any(r.startswith("guest kernel") for r in roles.values())
    # (hw-assist: the VMM and the guest kernel share ring 0, of root and non-root mode)
    assert ("VMM" in roles.get(0, "")) == (mode != "native")
    assert (roles.get(0) == "VMM") == (mode not in ("native", "hw-assist"))


def _eips(guest, steps: int) -> list[int]:
    out = []
    for _ in range(steps):
        result = guest.step()
        assert result.status == "stopped", result.message
        out.append(guest.view().eip)
    return out


def test_step_advances_exactly_one_guest_instruction_in_every_mode():
    # Boot's first 2,500 steps come before the first timer tick in every mode, so each
    # mode's guest must go through exactly the instructions bare metal goes through,
    # one per step, whatever exits its VMM takes on the way (hidden page faults, traps).
    native = _eips(vm.boot("syscalls"), 2500)
    assert len(set(native)) > 20
    for mode in vm.MODES[1:]:
        if MODE_TABLE[mode].kernel == "native":  # (the same kernel: the same instructions)
            assert _eips(vm.boot("syscalls", mode), 2500) == native, mode
    paravirt = _eips(vm.boot("syscalls", "paravirt"), 2500)  # (its own kernel: its own path)
    assert paravirt == _eips(vm.boot("syscalls", "paravirt"), 2500) and len(set(paravirt)) > 20


@pytest.mark.parametrize("mode", vm.MODES)
def test_a_step_over_a_system_call_lands_in_the_kernel_handler(mode):
    guest = vm.boot("syscalls", mode)
    assert guest.run_until(address=guest.user_symbols["init"]).status == "stopped"
    for _ in range(10_000):  # to the first INT 0x80
        view = guest.view()
        if view.disassemble(before=0, after=0)[0].text == "int 0x80":
            break
        guest.step()
    guest.step()
    view = guest.view()
    kernel_ring = next(ring for ring, role in guest.rings if role.startswith("guest kernel"))
    assert view.eip == guest.kernel_symbols["isr_syscall"]
    assert view.hardware.cpl == kernel_ring and view.guest.cpl in (0, kernel_ring)


def _fingerprint(guest) -> str:
    machine = guest.vm.machine
    digest = hashlib.sha256(machine.state.tobytes())
    digest.update(machine.window.tobytes())
    digest.update(repr((guest.events.total, guest.stats, guest.status)).encode())
    return digest.hexdigest()


@pytest.mark.parametrize("mode", vm.MODES)
def test_a_view_changes_nothing(mode):
    guest = vm.boot("pagetable", mode)
    guest.run(300_000)
    before = _fingerprint(guest)
    view = guest.view()
    for linear in (view.eip, view.registers["esp"], 0x400000, 0x1000, 0xFFCFE800, 0x7FFFF000):
        view.translate(linear)
        view.read(linear, 64)
    view.disassemble()
    assert _fingerprint(guest) == before


def test_a_translation_walks_the_guests_tables_then_the_shadow_to_the_host():
    guest = vm.boot("spawn", "trap-emulate")
    guest.run_until(address=guest.user_symbols["init"])
    guest.step()  # (the first step fills the shadow entry of init's page)
    eip = guest.view().eip
    walk = guest.view().translate(eip)
    tables = [step.table for step in walk.steps]
    assert tables == ["guest directory", "guest table", "shadow directory", "shadow table"]
    assert walk.physical >= 0 and walk.host == guest.vm.machine.cpu.mem_base + walk.physical
    assert guest.view().read(eip, 4) == guest.vm.machine.read(walk.physical, 4)
    native = vm.boot("spawn")
    native.run_until(address=native.user_symbols["init"])
    native.step()
    assert [s.table for s in native.view().translate(eip).steps] == tables[:2]
    assert guest.view().translate(0xDEAD0000).why  # (nothing there: it says why)


def test_the_guest_believes_ring_0_while_the_hardware_runs_its_kernel_at_ring_1():
    guest = vm.boot("compute", "trap-emulate")
    guest.step()
    view = guest.view()
    assert (view.guest.cpl, view.hardware.cpl) == (0, 1)
    assert view.guest.cs == 0x08 and view.hardware.cs == 0x09
    assert view.hardware.idtr[0] == 0xFFCFE800 != view.guest.idtr[0]


@pytest.mark.parametrize("mode", vm.MODES)
def test_subscribers_get_every_event_in_order(mode):
    guest = vm.boot("spawn", mode)
    seen = []
    stop = guest.on_event(seen.append)
    guest.run(200_000)
    stop()
    guest.run()
    first = seen[0].seq if seen else 0
    assert [e.seq for e in seen] == list(range(first, first + len(seen)))
    assert seen == guest.events.since(first)[: len(seen)]
    assert guest.events.total > len(seen) or mode == "native"


def test_run_until_stops_at_an_event_kind_a_console_line_or_an_event_number():
    guest = vm.boot("syscalls", "trap-emulate")
    result = guest.run_until("INT 0x80")
    assert result.status == "stopped" and guest.events[-1].kind == "INT 0x80"
    result = guest.run_until(console="getpid")
    assert result.status == "stopped" and guest.console.endswith("2000 getpid")
    target = guest.events.total + 10
    assert guest.run_until(seq=target).status == "stopped" and guest.events.total == target + 1
    with pytest.raises(ValueError, match="event kinds"):
        guest.run_until(13)
    with pytest.raises(ValueError, match="32-bit address"):
        guest.run_until(address=-1)


def test_a_user_breakpoint_stops_the_run_and_the_run_goes_on_past_it():
    guest = vm.boot("syscalls", "trap-emulate")
    where = guest.kernel_symbols["sys_getpid"]
    guest.add_breakpoint(where)
    result = guest.run()
    assert result.status == "breakpoint" and guest.view().eip == where
    assert guest.breakpoints == [where]
    guest.remove_breakpoint(where)
    assert guest.run().ok


def test_restore_keeps_the_breakpoints_set_now_and_position_only_grows():
    guest = vm.boot("syscalls", "trap-emulate")
    start, at_start = guest.snapshot(), guest.position
    assert at_start[:2] == (0, 0) and guest.cycles == 0  # (boot may record an event: patching)
    guest.run(5_000)
    assert (
        all(a <= b for a, b in zip(at_start, guest.position, strict=True))
        and guest.position > at_start
    )
    where = guest.kernel_symbols["sys_getpid"]
    guest.add_breakpoint(where)
    guest.restore(start)  # (a snapshot taken with no breakpoint)
    assert guest.breakpoints == [where] and guest.position == at_start
    assert guest.run().status == "breakpoint" and guest.view().eip == where
    base, size, ram = guest.window
    assert ram == 4 << 20 and size > ram and base >= 0  # (toyos guests get 4 MiB)


def test_a_cost_preset_by_name_makes_exits_cheaper_not_the_guests_work_different():
    core2 = vm.boot("syscalls", "trap-emulate", cost="core2").run()
    pentium4 = vm.boot("syscalls", "trap-emulate").run()
    assert core2.console == pentium4.console
    assert core2.stats["exits_by_reason"]["INT 0x80"] == 2008  # (the same system calls)
    assert core2.stats["cycles"] < pentium4.stats["cycles"]  # (an exit: 937 cycles, not 2,409)
    with pytest.raises(ValueError, match="no cost model 'p5'"):
        vm.boot("syscalls", cost="p5")


def test_restore_takes_only_a_snapshot_of_its_own_mode():
    te, native = vm.boot("io", "trap-emulate"), vm.boot("io")
    with pytest.raises(ValueError, match="restore"):
        te.restore(native.snapshot())


# ---- the exit table ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", vm.MODES)
def test_every_exit_table_row_names_a_handler_of_its_mode(mode):
    monitor = vm.boot("io", mode).vm
    for row in monitor.exit_rows():
        assert callable(getattr(monitor, row.handler)), row
        assert row.note and (row.vector is ANY or 0 <= row.vector < 256)


def test_a_row_for_one_vector_wins_over_a_row_for_any_vector():
    class Tiny(VM):
        mode = "tiny"
        EXIT_TABLE = (
            ExitRow(ExitReason.FAULT, ANY, "any_fault", "every exception"),
            ExitRow(ExitReason.FAULT, 13, "gp", "#GP"),
        )

        def any_fault(self):
            return None, "any", 0, ""

        def gp(self):
            return None, "gp", 0, ""

    machine = Host(1 << 16).new_machine(1 << 16)
    tiny = Tiny(machine)
    machine.load(0x1000, bytes.fromhex("0f0b 8ed8"))  # ud2 ; mov ds, eax (#GP: no GDT)
    machine.eip = 0x1000
    tiny.cpu.eax = 0x10
    tiny.run(1)
    tiny.cpu.eip = 0x1002
    tiny.run(1)
    assert [e.action for e in tiny.events] == ["any", "gp"]
    assert [e.kind for e in tiny.events] == ["#UD", "#GP"]


def test_the_hypervisor_names_what_it_touches_never_a_slot_number():
    for path in (ROOT / "vm" / "hypervisor").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"\bS\.[A-Z]", text), path.name
        assert "state[" not in text, path.name
        assert "import state as S" not in text, path.name


# ---- the shared services on their own -------------------------------------------------------
def _memory(paging: bool = True) -> tuple[GuestMemory, VCPU, np.ndarray]:
    window = np.zeros(1 << 20, dtype=np.uint8)
    vcpu = VCPU()
    memory = GuestMemory(window, 1 << 19, vcpu)
    words = window.view(np.uint32)
    words[0x10000 >> 2] = 0x11000 | 7  # PDE 0 -> table 0x11000
    for page in range(64):
        words[(0x11000 >> 2) + page] = (page << 12) | 7
    words[(0x11000 >> 2) + 5] = (5 << 12) | 5  # page 5: present, user, read-only
    words[(0x11000 >> 2) + 6] = 0  # page 6: not mapped
    words[(0x11000 >> 2) + 7] = 0x90000 | 7  # page 7 -> 0x90000, outside the RAM
    words[(0x11000 >> 2) + 8] = (8 << 12) | 5  # page 8: read-only
    if paging:
        vcpu.cr0 |= 0x80000000
        vcpu.cr3 = 0x10000
    return memory, vcpu, window


def test_guest_memory_faults_where_the_cpu_would():
    memory, _, _ = _memory()
    with pytest.raises(GuestPageFault) as fault:
        memory.write(0x4FFE, 0xAABBCCDD)  # across pages 4 and 5: page 5 is read-only
    assert (fault.value.linear, fault.value.error, fault.value.vector) == (0x5000, 3, 14)
    assert memory.read(0x4FFC) == 0  # (nothing of it was written)
    with pytest.raises(GuestPageFault) as fault:
        memory.read(0x6000)
    assert fault.value.error == 0
    with pytest.raises(GuestPageFault):
        memory.read(0x7000)  # the guest maps a frame outside its RAM: refused
    assert memory.read(0x5000) == 0  # (the faulting write changed nothing)


def test_guest_memory_reads_and_writes_across_pages_and_pushes_all_or_nothing():
    memory, _, window = _memory()
    memory.write(0x2FFE, 0x11223344)
    assert memory.read(0x2FFE) == 0x11223344 and memory.read_bytes(0x2FFF, 2) == b"\x33\x22"
    assert memory.read_dwords(0x3000 - 6, 2) == [0, 0x11223344]
    esp = memory.push(0x4000, [1, 2, 3])
    assert esp == 0x3FF4 and memory.read_dwords(esp, 3) == [3, 2, 1]
    snapshot = window.copy()
    with pytest.raises(GuestPageFault):
        memory.push(0x9008, [7, 8, 9])  # two slots on page 9, the third on read-only page 8
    assert np.array_equal(window, snapshot)


def test_guest_memory_tells_the_shadow_of_writes_to_protected_frames_and_stays_bounded():
    memory, vcpu, _ = _memory()
    heard = []
    memory.protected.add(0x2000)
    memory.on_table_write = lambda frame, before: heard.append((frame, int(before[0])))
    memory.write(0x2000, 5)
    assert heard == [(0x2000, 0)]  # (one resync per table written, with what it held)
    for page in range(2 * CACHE_LIMIT):
        vcpu.cr0 &= ~0x80000000  # (paging off: every page below the RAM is there)
        memory.read((page % 120) << 12)
    assert len(memory.cache) <= CACHE_LIMIT


def test_descriptors_apply_the_cpus_rules_at_the_guests_cpl():
    memory, vcpu, window = _memory(paging=False)
    gdt = window[0x8000:0x8030].view(np.uint32)
    gdt[2:12] = [
        0x0000FFFF, 0x00CF9A00,  # 0x08 ring 0 code
        0x0000FFFF, 0x00CF9200,  # 0x10 ring 0 data
        0x0000FFFF, 0x00CFFA00,  # 0x18 ring 3 code
        0x0000FFFF, 0x00CFF200,  # 0x20 ring 3 data
        0x70000067, 0x00008900,  # 0x28 an available TSS at 0x7000
    ]  # fmt: skip
    vcpu.gdtr = (0x8000, 0x2F)
    table = GuestDescriptors(memory, vcpu)
    assert table.code_segment_dpl(0x08, 8) == 0 and table.code_segment_dpl(0x1B, 0x18) == 3
    table.check_data_selector(0x10, True, 0)  # SS at ring 0: fine
    for selector, stack, cpl, error in [
        (0x08, True, 0, 8),
        (0x10, False, 3, 0x10),
        (0x30, False, 0, 0x30),
    ]:
        with pytest.raises(GuestFault) as fault:
            table.check_data_selector(selector, stack, cpl)
        assert (fault.value.vector, fault.value.error) == (13, error)
    assert table.task_state_segment(0x28)[0] == 0x7000
    with pytest.raises(GuestFault):
        table.task_state_segment(0x10)


def test_the_decoder_names_each_system_form_from_the_instruction_table():
    names = {
        "fa": "cli", "fb": "sti", "f4": "hlt", "9c": "pushf", "9d": "popf", "cf": "iret",
        "0f22d8": "mov_to_cr", "0f20c0": "mov_from_cr", "0f0110": "lgdt", "0f0118": "lidt",
        "0f0138": "invlpg", "0f00d8": "ltr", "8ed0": "mov_to_sreg", "8cc8": "mov_from_sreg",
        "e621": "out", "ec": "in", "0f0100": "sgdt", "0f0108": "sidt",
    }  # fmt: skip
    for code, name in names.items():
        ins = decode_form(bytes.fromhex(code) + bytes(8))
        assert ins is not None and ins.name == name and ins.length == len(code) // 2, code
    assert decode_form(bytes.fromhex("0f01c1") + bytes(8)).name == "vmcall"
    assert decode_form(bytes.fromhex("0f01c8") + bytes(8)) is None  # (0F 01 /1, mod 3: #UD)


def _te(source: str) -> TrapEmulateVM:
    machine = Host(GUEST_RAM + VMM_AREA).new_machine(GUEST_RAM + VMM_AREA)
    program = assemble(source)
    machine.load(program.origin, program.code)
    machine.eip = program.origin
    return TrapEmulateVM(machine, GUEST_RAM)


def test_the_shadow_pager_tells_hidden_faults_from_true_ones_and_from_table_writes():
    monitor = _te("bits 32\norg 0x1000\nnop")
    memory, shadow, vcpu = monitor.memory, monitor.shadow, monitor.vcpu
    words = memory.words
    words[0x10000 >> 2] = 0x11000 | 7
    for page in range(32):
        words[(0x11000 >> 2) + page] = (page << 12) | 7
    words[(0x11000 >> 2) + 20] = 0  # page 20: the guest maps nothing
    monitor.write_cr(3, 0x10000)
    monitor.write_cr(0, vcpu.cr0 | 0x80000000)
    assert shadow.page_fault(0x3000, 0, True, 0x10000) == (HIDDEN, 0)
    assert shadow.page_fault(0x14000, 2, True, 0x10000) == (TRUE, 2)
    assert shadow.page_fault(0x11000, 2, True, 0x10000) == (TABLE_WRITE, 0x11000)
    assert shadow.mismatches(True, 0x10000) == []
    shadow.invlpg(0x3000)
    assert shadow.shadow_entry(0x3000) >= 0 and not words[shadow.shadow_entry(0x3000) >> 2]
