"""Paravirtualization: toyos built to make hypercalls, the Xen-like VMM that answers them,
and a guest that tries every hypercall with arguments meant to hurt."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest

import vm
from vm.asm import assemble
from vm.guest.toyos import WORKLOADS, build
from vm.hypervisor.host import Host
from vm.hypervisor.paravirt import EFAULT, EINVAL, ENOSYS, EPERM, ParavirtVM
from vm.hypervisor.patching import scan
from vm.hypervisor.vmm_area import VMM_AREA
from vm.interface import GUEST_RAM

SIZE = GUEST_RAM + VMM_AREA


@pytest.fixture(scope="module")
def native():
    return {w: vm.boot(w).run() for w in WORKLOADS}


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("workload", WORKLOADS)
def test_the_paravirtual_kernel_prints_what_the_native_one_does(workload, batch, native):
    result = vm.boot(workload, "paravirt", batch=batch).run()
    assert result.ok, result.message
    assert result.console == native[workload].console


def test_system_calls_go_straight_to_the_guest_kernel():
    guest = vm.boot("syscalls", "paravirt")
    result = guest.run()
    assert result.stats["syscalls"] == 2008
    assert "INT 0x80" not in result.stats["exits_by_reason"]  # the fast system call: no exit
    assert result.stats["exits"] < 20
    assert result.stats["cycles"] < 1.10 * vm.boot("syscalls").run().stats["cycles"]


def test_batching_sends_many_page_table_operations_in_one_exit():
    batched = vm.boot("spawn", "paravirt").run().stats
    one_each = vm.boot("spawn", "paravirt", batch=False).run().stats
    assert (
        batched["exits_by_reason"]["multicall"] > 0
        and "multicall" not in one_each["exits_by_reason"]
    )
    assert one_each["exits"] >= 4 * batched["exits"]
    assert batched["cycles"] < one_each["cycles"]


def test_events_name_each_hypercall_with_its_arguments_and_batch_size():
    batched, one_each = (
        vm.boot("pagetable", "paravirt"),
        vm.boot("pagetable", "paravirt", batch=False),
    )
    batched.run(), one_each.run()
    texts = [e.text for e in batched.events if e.action == "hypercall"]
    # each round's unmap of 4 pages: 4 entries cleared and 4 TLB entries dropped, one exit
    pairs = (
        rf"mmu_update\(\[0x[0-9a-f]+\] = 0x0\), mmuext_op\(invlpg 0x40{page}000\)"
        for page in range(4, 8)
    )
    unmap = re.compile(rf"multicall\(8: {', '.join(pairs)}\) -> ok")
    assert sum(1 for t in texts if unmap.fullmatch(t)) == 50  # (50 rounds, one unmap each)
    assert any(
        t.startswith("multicall(8: set_trap_table(21 handlers), stack_switch(ss 0x11")
        for t in texts
    )
    single = [e for e in one_each.events if e.kind == "mmu_update"]
    assert single and all(
        re.fullmatch(r"mmu_update\(\[0x[0-9a-f]+\] = 0x[0-9a-f]+\) -> ok", e.text) for e in single
    )


def test_the_paravirtual_kernel_has_no_privileged_instruction_the_native_one_needs():
    privileged = frozenset(
        {"cli", "sti", "hlt", "in", "out", "lgdt", "lidt", "ltr", "mov_to_cr", "mov_from_cr",
         "invlpg", "pushf", "popf"}
    )  # fmt: skip
    found = {}
    for defines in ((), ("PARAVIRT",)):
        kernel, _ = build(defines)
        code = np.frombuffer(kernel.code, dtype=np.uint8)
        window = np.zeros(kernel.origin + code.size + 16, dtype=np.uint8)
        window[kernel.origin : kernel.origin + code.size] = code
        sites, _ = scan(window, kernel.origin, kernel.symbols["text_end"], privileged)
        found[defines] = {ins.name for ins in sites.values()}
    assert found[()] >= {"cli", "sti", "hlt", "out", "lgdt", "lidt", "ltr", "mov_to_cr"}
    assert found[("PARAVIRT",)] == set()  # all of them became hypercalls
    paravirt, _ = build(("PARAVIRT",))
    assert bytes.fromhex("0f01c1") in paravirt.code  # VMCALL


def test_on_bare_metal_the_paravirtual_kernel_stops_at_its_first_hypercall_and_says_why():
    guest = vm.boot("syscalls", "native", kernel="paravirt")
    result = guest.run()
    assert result.status == "fault" and result.console == ""
    assert "hypercall" in result.message and "#UD" in result.message
    assert "VMCALL at 0x" in result.message


# ---- the pv_ops kernel: one binary for both worlds ----------------------------------------
def _image(guest, kernel) -> bytes:
    return guest.vm.machine.window[kernel.origin : kernel.origin + len(kernel.code)].tobytes()


def _sites(kernel) -> list[tuple[int, int]]:
    """The (call site, paravirtual body) pairs the pv_ops kernel lists for its patcher."""
    at = kernel.symbols["pvop_sites"] - kernel.origin
    pairs = []
    while True:
        site, body = struct.unpack_from("<II", kernel.code, at + 8 * len(pairs))
        if site == 0:
            return pairs
        pairs.append((site, body))


def _callee(guest, site: int) -> int:
    rel = int.from_bytes(guest.vm.machine.window[site + 1 : site + 5].tobytes(), "little")
    return (site + 5 + rel) & 0xFFFFFFFF


@pytest.mark.parametrize("mode", ["native", "paravirt", "trap-emulate"])
@pytest.mark.parametrize("workload", WORKLOADS)
def test_the_pv_ops_kernel_prints_what_the_native_one_does_everywhere(workload, mode, native):
    result = vm.boot(workload, mode, kernel="pvops").run()
    assert result.ok, result.message
    assert result.console == native[workload].console


def test_the_same_pv_ops_bytes_keep_native_calls_on_bare_metal_and_patch_them_under_the_vmm():
    kernel, _ = build(("PVOPS",))
    names = {address: name for name, address in kernel.symbols.items()}
    sites = _sites(kernel)
    assert len(sites) >= 30 and len({site for site, _ in sites}) == len(sites)
    bare = vm.boot("syscalls", "native", kernel="pvops")
    para = vm.boot("syscalls", "paravirt", kernel="pvops")
    assert _image(bare, kernel) == _image(para, kernel) == kernel.code  # one binary
    assert bare.stats["pv_ops"] == para.stats["pv_ops"] == "not decided yet"

    bare_result, para_result = bare.run(), para.run()
    assert bare_result.stats["pv_ops"].startswith("native") and bare_result.stats["exits"] == 0
    assert para_result.stats["pv_ops"] == (
        f"paravirtual ({len(sites)} call sites patched to their paravirtual ops)"
    )
    for site, paravirtual in sites:
        assert names[_callee(bare, site)].startswith("native_")  # as assembled
        assert _callee(para, site) == paravirtual and names[paravirtual].startswith("pv_")
    # Under the VMM it asked CPUID (an exit), then ran as the paravirtual kernel does:
    # system calls straight to the kernel, page tables through hypercalls.
    cpuid = [e for e in para.events if e.kind == "CPUID"]
    assert [e.text for e in cpuid[:2]] == ["CPUID leaf 0x1", "CPUID leaf 0x40000000"]
    assert "INT 0x80" not in para_result.stats["exits_by_reason"]
    assert para_result.stats["exits_by_reason"]["multicall"] > 0
    # What one binary for both costs: a call and a return around each op.
    native_cycles = vm.boot("syscalls").run().stats["cycles"]
    paravirt_cycles = vm.boot("syscalls", "paravirt").run().stats["cycles"]
    assert native_cycles < bare_result.stats["cycles"] < 1.05 * native_cycles
    assert paravirt_cycles < para_result.stats["cycles"] < 1.15 * paravirt_cycles


def test_pv_ops_path_is_only_for_the_pv_ops_kernel():
    with pytest.raises(ValueError, match="not the pv_ops build"):
        vm.boot("io").pvops_path()


def test_paravirtual_guests_side_by_side_run_as_alone():
    host = Host(3 * SIZE)
    plan = [("syscalls", "paravirt"), ("spawn", "paravirt"), ("pagetable", "trap-emulate")]
    guests = [vm.boot(w, m, host=host) for w, m in plan]
    results = host.run(slice_budget=15_000)
    for (workload, mode), result in zip(plan, results, strict=True):
        alone = vm.boot(workload, mode).run()
        assert (result.console, result.stats) == (alone.console, alone.stats)
    assert all(g.status == "shutdown" for g in guests)


def test_a_snapshot_of_a_paravirtual_guest_replays_identically():
    guest = vm.boot("spawn", "paravirt")
    guest.run(150_000)
    snap = guest.snapshot()
    first = guest.run()
    events = list(guest.events)
    guest.restore(snap)
    second = guest.run()
    assert first.ok and (first.console, first.stats) == (second.console, second.stats)
    assert list(guest.events) == events


# ---- hostile hypercalls ------------------------------------------------------------------------
def pv_kernel(body: str, data: str = "", host: Host | None = None):
    """A paravirtual guest kernel: body, then a clean shutdown; results are EAX's."""
    source = f"""
    bits 32
    org 0x1000
    mov esp, 0x9000
{body}
    mov ebx, 2
    xor ecx, ecx
    mov eax, 29
    vmcall                       ; sched_op(shutdown, 0)
    hlt
results: times 32 dd 0
{data}
"""
    program = assemble(source)
    machine = (host or Host(SIZE)).new_machine(SIZE)
    machine.load(program.origin, program.code)
    machine.eip = program.origin
    return ParavirtVM(machine, GUEST_RAM), program


def hypercall(number: int, slot: int, ebx: int | str = 0, ecx: int | str = 0, edx=0) -> str:
    return (
        f"    mov ebx, {ebx}\n    mov ecx, {ecx}\n    mov edx, {edx}\n    mov eax, {number}\n"
        f"    vmcall\n    mov [results + {4 * slot}], eax\n"
    )


def results_of(monitor: ParavirtVM, program, n: int) -> list[int]:
    at = program.symbols["results"]
    raw = monitor.machine.read(at, 4 * n)
    return [v - (1 << 32) if v & 0x80000000 else v for v in np.frombuffer(raw, "<u4").tolist()]


# (the page tables the hostile kernel builds: a directory at 0x20000, a table at 0x21000)
TABLES = """
    mov dword [0x20000], 0x21003          ; PDE 0 -> the table
    mov edi, 0x21000
    mov eax, 3
    mov ecx, 1024
fill:
    mov [edi], eax                        ; identity-map the first 4 MiB
    add eax, 0x1000
    add edi, 4
    loop fill
    mov dword [0x21000 + 0x20 * 4], 0x20001   ; the directory: read-only
    mov dword [0x21000 + 0x21 * 4], 0x21001   ; the table: read-only
"""


def test_every_hostile_hypercall_gets_an_error_and_hurts_no_one():
    host = Host(3 * SIZE)
    left = host.new_machine(SIZE)
    left.window[:] = 0x5A
    body = TABLES + "".join(
        [
            hypercall(99, 0),  # no such hypercall
            hypercall(18, 1, 0, 16, 0xFFFF0000),  # console_io of an address not mapped
            hypercall(18, 2, 0, 1 << 20, "ops"),  # console_io of a megabyte
            hypercall(26, 3, "pin_table", 1),  # pin the table (its entries are fine)
            hypercall(26, 4, "pin_directory", 1),  # pin the directory
            hypercall(1, 5, "map_vmm", 1),  # map a frame of the VMM's area
            hypercall(1, 6, "map_table_rw", 1),  # map the page table writable
            hypercall(1, 7, "write_vmm_slot", 1),  # the directory's last entry
            hypercall(1, 8, "pde_unpinned", 1),  # a PDE to a frame that is no table
            hypercall(1, 9, "ops", 5000),  # an oversized batch
            hypercall(1, 10, "not_a_table", 1),  # an entry of a frame never pinned
            hypercall(26, 11, "new_base_unpinned", 1),  # CR3 of an unpinned frame
            hypercall(26, 12, "unpin_used_table", 1),  # unpin a table a directory uses
            hypercall(3, 13, 0x08, 0x8000),  # stack_switch to a ring 0 segment
            hypercall(24, 14, 10, "results + 1"),  # vcpu_info not aligned
            hypercall(13, 15, "nested_multicall", 1),  # a multicall inside a multicall
            hypercall(0, 16, "bad_traps"),  # a trap table whose cs is not the kernel's
            hypercall(26, 17, "pin_bad_table", 1),  # pin a table that maps the VMM's area
            hypercall(1, 18, "good_update", 1),  # and one that is fine
        ]
    )
    data = """
ops: dd 0, 0
pin_table: dd 0, 0x21000
pin_directory: dd 1, 0x20000
map_vmm: dd 0x21000 + 4 * 0x50, 0x400003         ; entry 0x50 -> the VMM's first frame
map_table_rw: dd 0x21000 + 4 * 0x51, 0x21003     ; entry 0x51 -> the table itself, RW
write_vmm_slot: dd 0x20000 + 4 * 1023, 0x21003
pde_unpinned: dd 0x20000 + 4 * 2, 0x30003        ; PDE 2 -> 0x30000: not a pinned table
not_a_table: dd 0x30000, 0x31003
new_base_unpinned: dd 5, 0x30000
unpin_used_table: dd 4, 0x21000
nested_multicall: dd 13, 0, 0, 0, 0, 0, 0
bad_traps: db 14, 0
    dw 0x1b                                       ; a handler in user code
    dd 0x1000
    dd 0, 0
pin_bad_table: dd 0, 0x32000
good_update: dd 0x21000 + 4 * 0x52, 0x52003
"""
    monitor, program = pv_kernel(
        "    mov dword [0x32000], 0x400003    ; (a table that maps the VMM's first frame)\n" + body,
        data,
        host,
    )
    right = host.new_machine(SIZE)
    right.window[:] = 0xA5
    before = host.memory.copy()
    result = monitor.run(200_000)
    assert result.ok, result.message
    got = results_of(monitor, program, 19)
    assert got == [
        ENOSYS, EFAULT, EINVAL, 0, 0, EPERM, EPERM, EPERM, EINVAL, EINVAL,
        EINVAL, EINVAL, EPERM, EINVAL, EINVAL, 0, EINVAL, EPERM, 0,
    ]  # fmt: skip
    assert monitor.machine.read32(program.symbols["nested_multicall"] + 24) == EINVAL & 0xFFFFFFFF
    after = host.memory
    assert np.array_equal(after[:SIZE], before[:SIZE])  # the neighbours, byte for byte
    assert np.array_equal(after[2 * SIZE : 3 * SIZE], before[2 * SIZE : 3 * SIZE])
    assert monitor.acct.emulated["mmu_update refused"] == 6


def test_a_callback_at_a_bad_address_stops_that_guest_with_a_reason():
    body = (
        hypercall(24, 0, 10, "info")
        + hypercall(4, 1, 0xDEAD0000)  # events go to an address no one maps
        + hypercall(15, 2, 1000)  # a timer
        + "    mov byte [info + 1], 0\nspin:\n    jmp spin\n"
    )
    monitor, _ = pv_kernel(body, "    align 16\ninfo: dd 0, 0, 0, 0")
    neighbour = vm.boot("syscalls", "paravirt")
    result = monitor.run(2_000_000)
    assert result.status == "fault" and "triple fault" in result.message
    assert neighbour.run().ok


def test_a_timer_storm_is_clamped_to_what_the_vmm_can_serve():
    body = hypercall(24, 0, 10, "info") + hypercall(15, 1, 1) + "spin:\n    jmp spin\n"
    monitor, _ = pv_kernel(body, "    align 16\ninfo: dd 0, 0x100, 0, 0")
    result = monitor.run(200_000)
    assert result.status == "budget"
    assert result.stats["instructions"] > 100_000  # the guest makes progress
