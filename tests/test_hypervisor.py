"""Full virtualization: trap-and-emulate (patched and not), binary translation, shadow
paging, isolation, and several VMs on one host."""

from __future__ import annotations

import json

import pytest
from test_commands import vm as vm_command

import vm
from vm.asm import assemble
from vm.guest.toyos import WORKLOADS
from vm.hypervisor.binary_translation import BinaryTranslationVM
from vm.hypervisor.host import Host, run_side_by_side
from vm.hypervisor.modes import MODE_TABLE
from vm.hypervisor.trap_emulate import TrapEmulateVM
from vm.hypervisor.vmm_area import IDT_LINEAR, VMM_AREA
from vm.interface import GUEST_RAM, MODES, Guest

VIRTUAL = ("trap-emulate", "binary-translation")


def boot(mode: str, workload: str, **options):
    return vm.boot(workload, mode, **options)


@pytest.fixture(scope="module")
def native():
    """Each workload's bare-metal run, the reference for the others."""
    return {w: boot("native", w).run() for w in WORKLOADS}


@pytest.mark.parametrize("mode", VIRTUAL)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_every_workload_prints_exactly_what_it_prints_natively(mode, workload, native):
    result = boot(mode, workload).run()
    assert result.ok, result.message
    assert result.console == native[workload].console
    stats = result.stats
    assert stats["exits"] == sum(stats["exits_by_reason"].values()) > 0
    assert stats["cycles"] > native[workload].stats["cycles"]  # virtualization is not free


def test_trap_and_emulate_costs_more_than_translation_which_costs_more_than_native(native):
    for workload in ("syscalls", "spawn", "pagetable"):
        te = boot("trap-emulate", workload).run().stats["cycles"]
        bt = boot("binary-translation", workload).run().stats["cycles"]
        assert te > bt > native[workload].stats["cycles"], workload


def test_without_patching_popf_loses_the_virtual_if_and_the_vmm_names_it():
    guest = boot("trap-emulate", "sleeper", patch=False)
    result = guest.run()
    assert result.status == "hang" and not result.ok
    assert result.stats["lost_ticks"] >= 1
    popf = guest.vm.lost_enable
    assert guest.vm.machine.window[popf] == 0x9D  # 9D  POPFD, left unpatched in the kernel
    assert f"POPF at {popf:#x}" in result.message
    assert "silently keeps IF" in result.message
    kernel = guest.kernel_symbols
    assert kernel["idle"] < popf < kernel["panic_no_memory"]  # the idle loop's irqrestore
    seen = [e.kind for e in guest.events if e.kind in ("hole", "hang")]
    assert seen[-1] == "hang" and set(seen[:-1]) == {"hole"}  # the POPFs that lost IF


def test_patching_rewrites_only_pushf_popf_and_iret_and_translation_every_sensitive_site():
    te, bt = boot("trap-emulate", "io").vm, boot("binary-translation", "io").vm
    assert {ins.name for ins in te.sites.values()} == {"pushf", "popf", "iret"}
    assert {"cli", "sti", "out", "mov_to_cr", "lgdt", "iret"} <= {
        ins.name for ins in bt.sites.values()
    }
    for address in te.sites:
        assert te.machine.window[address] == 0xCC  # INT3
    result = bt.run()
    assert result.stats["callouts"] > 0 and "#GP" not in result.stats["exits_by_reason"]
    # What it translates comes from the instruction table, and it can emulate all of it.
    from vm.hypervisor.binary_translation import TRANSLATED
    from vm.isa import PRIVILEGED_NAMES

    assert PRIVILEGED_NAMES <= TRANSLATED <= bt.emulator.names


@pytest.mark.parametrize("mode", VIRTUAL)
@pytest.mark.parametrize("workload", ["spawn", "pagetable", "faulty"])
def test_shadow_tables_stay_what_the_guest_tables_imply_after_every_trap(mode, workload):
    guest = boot(mode, workload)
    guest.vm.check_shadow = True  # compares every shadow entry with a guest walk, each exit
    result = guest.run()
    assert result.ok, result.message
    shadow = result.stats["shadow"]
    assert shadow["hidden faults"] > 0 and shadow["table writes"] > 0
    kinds = shadow["hidden faults"] + shadow.get("true faults", 0) + shadow["table writes"]
    assert result.stats["exits_by_reason"]["#PF"] == kinds  # each #PF is one of the three
    assert shadow["cr3 switches"] > 0
    if workload == "faulty":
        assert shadow["true faults"] == 1  # the user's wild write, reflected to the kernel


def test_exit_counts_and_the_event_log_are_deterministic():
    first, second = boot("trap-emulate", "spawn"), boot("trap-emulate", "spawn")
    a, b = first.run(), second.run()
    assert a.stats == b.stats
    assert list(first.events) == list(second.events)
    actions = first.events.actions()
    assert actions["reflect"] > 0 and actions["shadow fill"] > 0 and actions["inject"] > 0


def test_the_event_log_is_bounded_and_each_event_is_a_structured_record():
    guest = boot("trap-emulate", "syscalls")
    guest.events.resize(100)
    guest.run()
    assert len(guest.events) == 100 and guest.events.total > 4000
    events = list(guest.events)
    assert [e.seq for e in events] == list(range(events[0].seq, events[0].seq + 100))
    assert [e.cycle for e in events] == sorted(e.cycle for e in events)
    assert all(e.text and e.eip >= 0 and e.cpl in (0, 3) and e.cost >= 0 for e in events)
    assert {e.kind for e in events} >= {"INT 0x80", "INT3"}  # system calls and their IRETs


def test_the_guest_after_boot_believes_what_the_cpu_is_natively():
    """Every instruction the VMM emulated during boot left the guest where bare metal is:
    the view of what the guest believes equals the native hardware."""
    native = boot("native", "compute")
    init = native.user_symbols["init"]
    assert native.run_until(address=init).status == "stopped"
    bare = native.view()
    for mode in VIRTUAL:
        guest = boot(mode, "compute")
        assert guest.run_until(address=init).status == "stopped"
        view = guest.view()
        assert view.registers == bare.registers  # the registers, EIP and EFLAGS
        assert view.guest._replace(eflags=0) == bare.hardware._replace(eflags=0)
        assert view.guest.eflags & 0xCD5 == bare.hardware.eflags & 0xCD5  # arithmetic flags
        assert view.hardware.cs == bare.hardware.cs == 0x1B  # user mode is not deprivileged
        assert view.hardware.cr3 != bare.hardware.cr3  # the CPU walks the shadow tables


RED_PILL = """
    bits 32
    org 0x1000
    lidt [idt_pointer]      ; traps: the VMM records the guest's IDT
    sidt [stored]           ; does not trap: the real IDTR shows
    mov eax, [stored + 2]
    out 0xf4, al            ; (the exit port ends the run)
idt_pointer:
    dw 0x7ff
    dd 0x20000
stored:
    dd 0, 0
"""


def _kernel_vm(kind, source: str, host: Host | None = None) -> TrapEmulateVM:
    host = host or Host(GUEST_RAM + VMM_AREA)
    machine = host.new_machine(GUEST_RAM + VMM_AREA)
    program = assemble(source)
    machine.load(program.origin, program.code)
    machine.eip = program.origin
    text = (program.origin, program.origin + len(program.code))
    return kind(machine, GUEST_RAM, kernel_text=text), program


def test_red_pill_sidt_shows_the_vmms_idt_not_the_guests():
    monitor, program = _kernel_vm(TrapEmulateVM, RED_PILL)
    monitor.run(10_000)
    stored = monitor.machine.read32(program.symbols["stored"] + 2)
    assert stored == IDT_LINEAR == 0xFFCFE800
    assert monitor.vcpu.idtr == (0x20000, 0x7FF)
    # Binary translation rewrites the kernel's SIDT: the guest sees its own IDT.
    monitor, program = _kernel_vm(BinaryTranslationVM, RED_PILL)
    monitor.run(10_000)
    assert monitor.machine.read32(program.symbols["stored"] + 2) == 0x20000


def paging_on(remap: str) -> str:
    """Assembly that identity-maps the first 32 pages, then ``remap``, then turns paging on
    (page directory at 0x10000, its table at 0x11000)."""
    return f"""
    mov dword [0x10000], 0x11007          ; PDE 0 -> page table at 0x11000
    xor ecx, ecx
map:
    mov eax, ecx
    shl eax, 12
    or eax, 7
    mov [0x11000 + ecx*4], eax            ; identity-map the first 32 pages
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


# A flat GDT (ring 0 code 0x08, data 0x10) that test kernels load before anything can be
# delivered to them: the CPU checks the gate's code segment in it, and so does the VMM.
FLAT_GDT = """
gdt_pointer:
    dw 0x17
    dd gdt
gdt:
    dd 0, 0
    dd 0x0000ffff, 0x00cf9a00
    dd 0x0000ffff, 0x00cf9200
"""

ESCAPE = (
    """
    bits 32
    org 0x1000
    mov esp, 0x9000
    lgdt [gdt_pointer]
    lidt [idt_pointer]
"""
    + paging_on("mov dword [0x11000 + 20*4], TARGET | 7  ; ... but page 20 -> TARGET")
    + """
    mov dword [0x14000], 0xdeadbeef       ; write through the forged mapping
    mov al, 'W'                           ; (it worked: the isolation failed)
    out 0xe9, al
    mov al, 0
    out 0xf4, al
page_fault:
    mov al, 'F'
    out 0xe9, al
    mov al, 1
    out 0xf4, al
idt_pointer:
    dw 0x7f
    dd idt
idt:
    times 28 dd 0                         ; vectors 0..13: no gate
    dw page_fault, 0x08, 0x8e00, 0        ; vector 14: #PF
"""
    + FLAT_GDT
)


@pytest.mark.parametrize("target", [GUEST_RAM, GUEST_RAM + VMM_AREA, 0x7FFF0000])
def test_a_guest_cannot_write_outside_its_ram_whatever_its_page_tables_say(target):
    host = Host(2 * (GUEST_RAM + VMM_AREA))
    monitor, _ = _kernel_vm(TrapEmulateVM, ESCAPE.replace("TARGET", hex(target)), host)
    neighbour = host.new_machine(GUEST_RAM + VMM_AREA)
    before = host.memory.copy()
    result = monitor.run(100_000)
    assert result.console == "F" and result.exit_code == 1  # a page fault, in the guest
    assert result.stats["shadow"]["true faults"] == 1
    outside = host.memory.copy()
    outside[:GUEST_RAM] = before[:GUEST_RAM]  # (the guest's own RAM may change)
    vmm_area = slice(GUEST_RAM, GUEST_RAM + VMM_AREA)
    outside[vmm_area] = before[vmm_area]  # (its shadow tables change, not by the guest)
    end = host.memory_size  # (after it: the core's fetch scratch, in no window)
    assert (outside[:end] == before[:end]).all()
    assert neighbour.read(0, 16) == bytes(16)


def test_four_guests_run_side_by_side_exactly_as_each_runs_alone():
    host = Host(5 * (GUEST_RAM + VMM_AREA))
    plan = [
        ("trap-emulate", "syscalls"),
        ("binary-translation", "spawn"),
        ("trap-emulate", "pagetable"),
        ("binary-translation", "io"),
    ]
    guests = [vm.boot(w, mode, host=host, name=f"vm{i}") for i, (mode, w) in enumerate(plan)]
    assert host.guests == guests
    results = host.run(slice_budget=20_000)
    for (mode, workload), result in zip(plan, results, strict=True):
        alone = boot(mode, workload).run()
        assert result.ok and result.console == alone.console
        assert result.stats == alone.stats  # exits and cycles too: slicing changes nothing


def test_bad_mode_and_workload_are_clear_errors():
    with pytest.raises(ValueError, match="no mode 'vt'"):
        vm.boot("compute", "vt")
    with pytest.raises(ValueError, match="no workload 'x'"):
        vm.boot("x", "trap-emulate")
    with pytest.raises(ValueError, match="takes no option 'patch'"):
        vm.boot("compute", "binary-translation", patch=False)
    with pytest.raises(ValueError, match="no kernel 'linux'"):
        vm.boot("compute", kernel="linux")
    assert MODES == vm.MODES
    assert MODES == (
        "native", "trap-emulate", "binary-translation", "hw-assist", "paravirt", "containers"
    )  # fmt: skip


def test_cli_compare_json_is_one_object_keyed_by_mode():
    out = vm_command("run", "--workload", "syscalls", "--compare", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert list(report) == [*MODES, "paravirt unbatched"]  # (batching's effect beside it)
    for entry in report.values():
        assert "syscalls: 2000 getpid calls" in entry["console"]
        assert entry["exits"] == sum(entry["exits_by_reason"].values())
    assert report["native"]["exits"] == 0 and report["trap-emulate"]["exits"] > 2000


def test_cli_compare_table_and_no_patch_report():
    out = vm_command("run", "--workload", "syscalls", "--compare")
    assert out.returncode == 0, out.stderr
    assert "trap-emulate" in out.stdout and "binary-translation" in out.stdout
    assert "INT 0x80" in out.stdout
    out = vm_command("run", "--workload", "sleeper", "--mode", "trap-emulate", "--no-patch")
    assert out.returncode == 1
    assert "POPF at 0x" in out.stderr and "Traceback" not in out.stderr
    out = vm_command("run", "--mode", "native", "--no-patch")
    assert out.returncode == 2 and "error: --no-patch" in out.stderr
    out = vm_command("run", "--mode", "trap-emulate", "--no-batch")
    assert out.returncode == 2 and "error: --no-batch is for --mode paravirt" in out.stderr


def test_cli_kernel_picks_the_build_and_the_pv_ops_one_says_which_path_it_took():
    out = vm_command("run", "--workload", "io", "--mode", "paravirt", "--kernel", "pvops")
    assert out.returncode == 0, out.stderr
    assert "io: line 40" in out.stdout and "pv_ops path" in out.stdout
    assert "paravirtual (44 call sites patched" in out.stdout
    out = vm_command("run", "--workload", "io", "--kernel", "pvops", "--compare", "--json")
    report = json.loads(out.stdout)
    # (every mode that boots a kernel of its own; containers share the host's one kernel)
    own_kernel = [mode for mode in MODES if MODE_TABLE[mode].tenants is None]
    assert "containers" not in own_kernel
    assert list(report) == own_kernel
    assert report["native"]["console"] == report["paravirt"]["console"]
    out = vm_command("run", "--mode", "native", "--kernel", "paravirt")
    assert out.returncode == 1 and "#UD" in out.stderr and "Traceback" not in out.stderr
    out = vm_command("run", "--mode", "paravirt", "--workload", "spawn", "--no-batch", "--json")
    assert "multicall" not in json.loads(out.stdout)["stats"]["exits_by_reason"]


def test_cli_log_shows_the_vmms_last_events():
    out = vm_command("run", "--workload", "io", "--mode", "trap-emulate", "--log", "3", "--json")
    assert out.returncode == 0, out.stderr
    log = json.loads(out.stdout)["log"]
    fields = {"seq", "instruction", "cycle", "kind", "eip", "cpl", "action", "cost", "text"}
    assert len(log) == 3 and set(log[0]) == fields
    out = vm_command("run", "--workload", "io", "--log", "-1")
    assert out.returncode == 2 and "--log: must be from 0" in out.stderr


@pytest.mark.parametrize("mode", VIRTUAL)
def test_each_emulated_instruction_leaves_the_guest_as_the_native_run_leaves_the_cpu(mode):
    # Under the VMM: the guest's view after every instruction the VMM emulated, until
    # init's first instruction (the first tick comes later, so both runs agree so far).
    guest = boot(mode, "syscalls")
    emulator = guest.vm.emulator
    emulated, seen = {}, {}
    emulate = emulator.emulate

    def recording(ins, eip):
        emulate(ins, eip)
        k = seen[eip] = seen.get(eip, 0) + 1
        view = guest.view()
        emulated[eip, k] = (ins.name, view.registers, view.guest)

    emulator.emulate = recording
    assert guest.run_until(address=guest.user_symbols["init"]).status == "stopped"
    # Bare metal: step the same boot, noting the CPU after the same instructions.
    native = boot("native", "syscalls")
    counts, steps, compared = {}, 0, 0
    while native.view().hardware.cpl != 3 and steps < 100_000:
        eip = native.view().eip
        native.step()
        steps += 1
        k = counts[eip] = counts.get(eip, 0) + 1
        if (eip, k) in emulated:
            name, registers, believed = emulated[eip, k]
            view = native.view()
            assert registers == view.registers, f"{name} at {eip:#x}"
            assert believed == view.hardware, f"{name} at {eip:#x}"
            compared += 1
    names = {name for name, _, _ in emulated.values()}
    assert {"lgdt", "lidt", "ltr", "mov_to_cr", "out", "cli", "sti", "popf"} <= names
    assert compared == len(emulated) >= 30  # every one was compared


@pytest.mark.parametrize("mode", VIRTUAL)
def test_a_snapshot_taken_mid_run_replays_the_rest_identically(mode):
    guest = boot(mode, "spawn")
    guest.run(100_000)
    snap = guest.snapshot()
    first = guest.run()
    log = list(guest.events)
    guest.restore(snap)
    second = guest.run()
    assert first.ok and (first.console, first.stats) == (second.console, second.stats)
    assert list(guest.events) == log


PORTS = """
    bits 32
    org 0x1000
    mov al, 'A'
    out 0xe9, al            ; its own console
    mov al, 0xff
    out 0x21, al            ; mask every IRQ of ... its own virtual PIC
    mov al, 0x34
    out 0x43, al
    mov al, 0xff
    out 0x40, al            ; a new timer divisor ... for its own PIT
    out 0x40, al
    mov edx, 0x3f8
    out dx, al              ; the serial port: its own console again
    in al, 0x60             ; a port with nothing behind it: 0xff
    out 0xe9, al
    mov al, 0
    out 0xf4, al
"""


def test_port_io_reaches_only_the_guests_own_devices():
    host = Host(3 * (GUEST_RAM + VMM_AREA))
    noisy, _ = _kernel_vm(TrapEmulateVM, PORTS, host)
    quiet = vm.boot("syscalls", "trap-emulate", host=host)
    results = run_side_by_side([Guest(noisy, "ports", {}, {}), quiet], slice_budget=5)
    board = noisy.board
    assert results[0].ok and bytes(board.console.data) == b"A\xff\xff"  # (IN 0x60 gave 0xff)
    assert board.imr == 0xFF and board.timer_divisor == 0xFFFF
    alone = boot("trap-emulate", "syscalls").run()
    assert (results[1].console, results[1].stats) == (alone.console, alone.stats)
    assert quiet.vm.board.imr == 0xFE  # toyos's own mask, untouched


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


def test_a_timer_faster_than_the_vmm_livelocks_the_guest_but_never_the_host():
    monitor, _ = _kernel_vm(TrapEmulateVM, STORM)
    result = monitor.run(10_000)
    assert result.status == "budget"
    assert result.stats["exits_by_reason"]["IRQ 0"] > 1000
    assert result.stats["lost_ticks"] > 1000  # (the guest's IF is off: each tick merges)


FIRST_TOUCH_IS_A_WRITE = (
    """
    bits 32
    org 0x1000
"""
    + paging_on("mov dword [0x11000 + 20*4], 0x11007   ; page 20 -> the page table itself")
    + """
    mov eax, [0x2000]                     ; (page 2 is now shadowed, from the table)
    mov dword [0x14000 + 2*4], 0x3007     ; first touch of page 20, a write: page 2 -> 3
    mov eax, [0x2000]                     ; (reads page 3 now)
    out 0xf4, al
"""
)


def test_a_page_table_written_through_an_address_never_touched_before():
    monitor, _ = _kernel_vm(TrapEmulateVM, FIRST_TOUCH_IS_A_WRITE)
    monitor.machine.write32(0x2000, 0x22)
    monitor.machine.write32(0x3000, 0x33)
    monitor.check_shadow = True
    result = monitor.run(10_000)
    assert result.exit_code == 0x33  # page 3's value: the guest's new mapping took effect
    assert result.stats["shadow"]["table writes"] == 1


# Privileged and sensitive instructions, mixed into random bytes by the fuzz test below.
SENSITIVE = [
    "fa", "fb", "f4", "9c", "9d", "cf", "0f22d8", "0f22c0", "0f20c0", "0f0110", "0f0118",
    "0f00d8", "0f0138", "8ed0", "e621", "e460", "cd80", "cc", "ee", "ec", "0f0108",
]  # fmt: skip


def _fuzz(cases: int, seed: int) -> None:
    import random

    rng = random.Random(seed)
    statuses = set()
    for _ in range(cases):
        code = b""
        while len(code) < 64:
            if rng.random() < 0.4:
                code += bytes.fromhex(rng.choice(SENSITIVE))
            else:
                code += bytes([rng.randrange(256)])
        kind = rng.choice([TrapEmulateVM, BinaryTranslationVM])
        host = Host(GUEST_RAM + VMM_AREA)
        machine = host.new_machine(GUEST_RAM + VMM_AREA)
        machine.load(0x1000, code)
        machine.eip = 0x1000
        for r in range(8):
            machine.state[r] = rng.choice([0, 0x1000, 0x10000, 0xFFFFFFFF, rng.getrandbits(32)])
        monitor = kind(machine, GUEST_RAM, kernel_text=(0x1000, 0x1000 + len(code)))
        result = monitor.run(2_000)  # no Python exception, no hang: a status
        statuses.add(result.status)
        assert result.status in {"shutdown", "panic", "budget", "hang", "fault", "halt"}, (
            result.message
        )
    assert len(statuses) >= 3


def test_random_kernels_never_crash_or_hang_the_vmm():
    _fuzz(150, seed=1)


@pytest.mark.slow
def test_random_kernels_never_crash_or_hang_the_vmm_long():
    _fuzz(20_000, seed=2)


def test_a_vmm_short_of_shadow_memory_starts_over_and_the_guest_never_notices():
    guest = boot("trap-emulate", "spawn")
    shadow = guest.vm.shadow
    shadow.pool_frames = 4  # a directory and three tables: one address space at a time
    shadow.reset()
    shadow.switch(-1)
    guest.vm.check_shadow = True
    result = guest.run()
    assert result.ok and result.console == boot("native", "spawn").run().console
    assert result.stats["shadow"]["resets"] > 10


def test_a_user_int3_that_the_gate_forbids_becomes_a_gp_at_the_int3():
    # init's first instruction becomes INT3 (CC). toyos's gate 3 has DPL 0, so user mode
    # gets #GP(3*8+2) with EIP at the INT3, which kills init, exactly as on bare metal.
    runs = {}
    for mode in MODES:
        guest = boot(mode, "compute")
        init = guest.user_symbols["init"]
        guest.vm.machine.write(init - 0x400000 + 0x80000, b"\xcc")  # (the user image's frame)
        runs[mode] = guest.run().console
    assert f"toyos: process 1 killed by exception 13 at eip {init:08x}" in runs["native"]
    assert runs["trap-emulate"] == runs["binary-translation"] == runs["native"]
