"""Several guests on one host: side by side, and unable to reach each other's memory."""

from __future__ import annotations

import struct

import vm
from vm.asm import assemble
from vm.cpu import state as S
from vm.cpu.exits import ExitReason
from vm.hypervisor.host import Host

WORKLOADS = ["compute", "syscalls", "spawn", "io"]


def test_four_toyos_guests_run_side_by_side_as_they_run_alone():
    host = Host(memory_size=16 << 20)
    guests = [vm.boot(w, host=host) for w in WORKLOADS]
    results = {}
    while len(results) < len(guests):  # round robin, 50,000 instructions a turn
        for workload, guest in zip(WORKLOADS, guests, strict=True):
            if workload not in results:
                result = guest.run(budget=50_000)
                if result.status != "budget":
                    results[workload] = result
    for workload in WORKLOADS:
        alone = vm.boot(workload).run()
        assert results[workload].ok
        assert results[workload].console == alone.console
        assert results[workload].stats == alone.stats


def test_a_guest_cannot_reach_outside_its_window():
    host = Host(memory_size=3 * 65536)
    left, attacker, right = (host.new_machine(65536) for _ in range(3))
    left.load(0, b"\x11" * 65536)
    right.load(0, b"\x22" * 65536)
    # 1. write everywhere with paging off: rep stosd until something stops it
    source = "bits 32\norg 0x1000\nmov edi, 0x1100\nmov ecx, 0x100000\nmov eax, -1\nrep stosd"
    code = assemble(source).code
    attacker.load(0x1000, code)
    attacker.eip = 0x1000
    for _ in range(100):
        ex = attacker.run(budget=1_000_000)
        if ex.reason != ExitReason.BUDGET:
            break
    assert (ex.reason, ex.vector) == (ExitReason.FAULT, 13)
    assert attacker.regs.edi == 65536  # it wrote its own memory and stopped at the edge
    # 2. page tables that point at the neighbours' frames
    attacker.load(0x2000, struct.pack("<I", 0x3000 | 7) + bytes(4092))
    entries = [(65536 + 0x1000 * i) | 7 for i in range(16)]  # frames past the window
    attacker.load(0x3000, b"".join(struct.pack("<I", e) for e in entries) + bytes(4096 - 64))
    attacker.load(0x1000, assemble("bits 32\norg 0x1000\nmov dword [0x5000], 1\nhlt").code)
    attacker.state[S.CR3] = 0x2000
    attacker.state[S.CR0] |= S.CR0_PG
    attacker.eip = 0x1000
    ex = attacker.run(budget=100)
    assert (ex.reason, ex.vector) == (ExitReason.FAULT, 13)
    assert left.read(0, 65536) == b"\x11" * 65536
    assert right.read(0, 65536) == b"\x22" * 65536


def test_every_mode_counts_the_cycles_a_halted_cpu_waits():
    for mode in vm.MODES:
        sleeper = vm.boot("sleeper", mode).run().stats
        assert sleeper["idle_cycles"] > sleeper["cycles"] // 2, mode  # it mostly sleeps
        busy = vm.boot("syscalls", mode).run().stats
        assert busy["idle_cycles"] == 0, mode
        assert sleeper["idle_cycles"] + sleeper["vmm_cycles"] < sleeper["cycles"], mode
