"""`python -m vm`: run, bench, demo, and clear errors for bad arguments."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vm.hypervisor.modes import MODES


def vm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vm", *args], capture_output=True, text=True, timeout=timeout
    )


def test_run_prints_the_console_and_stats():
    out = vm("run", "--workload", "syscalls")
    assert out.returncode == 0, out.stderr
    assert "syscalls: 2000 getpid calls" in out.stdout
    assert "system calls  2,008" in out.stdout


def test_run_json_is_one_object():
    out = vm("run", "--workload", "compute", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["mode"] == "native" and report["status"] == "shutdown"
    assert "compute: checksum c71365d3" in report["console"]
    assert report["stats"]["instructions"] > 1_000_000


def test_a_killed_user_process_is_not_a_failure():
    out = vm("run", "--workload", "faulty")
    assert out.returncode == 0
    assert "killed by exception 14" in out.stdout


def test_a_budget_overrun_fails_with_a_message():
    out = vm("run", "--workload", "compute", "--budget", "5000")
    assert out.returncode == 1
    assert "did not finish within 5,000 instructions" in out.stderr
    assert "Traceback" not in out.stderr


def test_trace_shows_disassembly():
    out = vm("run", "--workload", "io", "--trace", "3")
    assert out.returncode == 0
    assert "00001000  ring 0  mov esp, 0x9000" in out.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--workload", "nope"],
        ["run", "--budget", "-3"],
        ["bench", "--fast"],
        ["fly"],
        [],
    ],
)
def test_bad_arguments_fail_cleanly(args):
    out = vm(*args)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert "usage:" in out.stderr


def test_bench_quick_json_has_every_figure():
    out = vm("bench", "--quick", "--json", timeout=600)
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    keys = [
        "compute_mips",
        "compute_unicorn_mips",
        "memory_mips",
        "memory_unicorn_mips",
        "nojit_mips",
        "exit_roundtrip_us",
        "cold_compile_s",
        "warm_start_s",
        "boot_instructions",
        "toyos_compute_mips",
        "trap_handler_us",
        "trap_exit_us",
        "trap_roundtrip_us",
        "storm_us_per_unit",
        "compute_te_vs_native",
        "compute_bt_vs_native",
    ]
    for key in keys:
        assert figures[key] > 0, key
    cycles = figures["mode_cycles"]["compute"]
    assert set(cycles) == set(MODES)


def test_demo_runs():
    out = vm("demo")
    assert out.returncode == 0, out.stderr
    assert "FAULT #DE" in out.stdout and "toyos: halt" in out.stdout
    assert "binary-translation" in out.stdout and "POPF at 0x" in out.stdout
