"""toyos on bare metal: it boots, runs every workload, survives faulty processes."""

from __future__ import annotations

import pytest

import vm
from vm.guest.toyos import WORKLOADS

EXPECTED = {
    "compute": "compute: checksum c71365d3",
    "syscalls": "syscalls: 2000 getpid calls",
    "spawn": "spawn: 20 children, exit codes sum to 210",
    "pagetable": f"pagetable: 50 rounds of 4 pages mapped and unmapped, sum {50 * 4 * 0x1234:08x}",
    "io": "io: line 40",
    "faulty": "toyos: process 2 killed by exception 14 at eip",
    "sleeper": "sleeper: slept and yielded",
}


@pytest.mark.parametrize("workload", sorted(EXPECTED))
def test_each_workload_prints_its_result_and_shuts_down(workload):
    result = vm.boot(workload).run()
    assert result.ok, result.console
    lines = result.console.splitlines()
    assert lines[0] == "toyos: booting"
    assert any(line.startswith(EXPECTED[workload]) for line in lines), result.console
    code = 4294967295 if workload == "faulty" else 0  # a killed process exits with -1
    assert lines[-2:] == [f"init: workload exited with {code}", "toyos: halt"]


def test_the_timer_preempts_a_long_computation_and_wakes_sleepers():
    # A tick every 1,000,000 cycles (toyos.CYCLES_PER_PIT_COUNT): the 38 M cycles of
    # compute see dozens; the sleeper's sleep(3) needs three, taken in the idle loop's HLT.
    compute = vm.boot("compute").run()
    assert compute.stats["interrupts"] >= 30
    assert compute.stats["cycles"] // 1_000_000 - compute.stats["interrupts"] in range(3)
    sleeper = vm.boot("sleeper").run()
    assert sleeper.ok and sleeper.stats["interrupts"] >= 3


def test_a_faulting_process_does_not_take_the_others_down():
    result = vm.boot("all").run()
    assert result.ok
    for line in EXPECTED.values():
        if not line.startswith("toyos: process"):
            assert line in result.console
    assert "killed by exception 14" in result.console
    assert result.stats["faults"] == {"#PF": 1}
    assert result.stats["syscalls"] > 2000


def test_two_runs_give_the_same_console_stats_and_trace():
    def trace(n: int) -> list[int]:
        guest = vm.boot("spawn")
        addresses = []
        for _ in range(n):
            guest.step()
            addresses.append(guest.view().eip)
        return addresses

    assert trace(3000) == trace(3000)
    first, second = vm.boot("all").run(), vm.boot("all").run()
    assert (first.console, first.stats) == (second.console, second.stats)


def test_boot_reaches_the_first_user_process_in_under_200000_instructions():
    guest = vm.boot("compute")
    result = guest.run_until(address=guest.user_symbols["init"])
    assert result.status == "stopped" and guest.view().hardware.cpl == 3
    assert guest.instructions < 200_000


def test_a_kernel_fault_panics_with_the_registers():
    guest = vm.boot("syscalls")
    guest.vm.machine.load(guest.kernel_symbols["sys_getpid"], b"\x0f\x0b")  # ud2 in the kernel
    result = guest.run()
    assert result.status == "panic" and result.exit_code == 2
    assert "PANIC: kernel exception 6" in result.console
    assert "eax ebx ecx edx:" in result.console


def test_a_budget_overrun_is_reported():
    result = vm.boot("compute").run(budget=10_000)
    assert result.status == "budget" and not result.ok


def test_unknown_workload_is_a_clear_error():
    with pytest.raises(ValueError, match="no workload 'nope'"):
        vm.boot("nope")
    assert "compute" in WORKLOADS
