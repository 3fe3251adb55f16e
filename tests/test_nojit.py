"""The core behaves identically compiled by numba and interpreted (NUMBA_DISABLE_JIT=1),
and so do the VMMs around it.

A set of generated programs (tests/oracle) is single-stepped in a subprocess with the JIT
disabled, recording after every step the exit, EIP, the eight registers, EFLAGS, the
counters and a digest of the whole state array (and of memory at the end); the jitted core
in this process must give the same trace. The CPU unit tests must also pass without JIT.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from oracle import FAMILIES, generate
from oracle.runner import MachineSide, assemble
from oracle.trace import trace

import vm

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

# One program biased towards each instruction family, and some mixed ones.
PROGRAMS = [(30_000_000 + i, family) for i, family in enumerate(sorted(FAMILIES))]
PROGRAMS += [(31_000_000 + i, None) for i in range(40)]

STEP_FIELDS = ["exit", "eip", "vector", "eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"]
STEP_FIELDS += ["eflags", "instructions", "cycles", "state digest"]


def without_jit(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python args`` from the repository root with NUMBA_DISABLE_JIT=1."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    paths = [str(TESTS), str(ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return subprocess.run(
        [sys.executable, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )


def describe(step: list) -> str:
    if step and step[0] == "memory":
        return f"memory digest {step[1]}"
    return ", ".join(
        f"{name}={value:#x}" if isinstance(value, int) and value >= 0 else f"{name}={value}"
        for name, value in zip(STEP_FIELDS, step, strict=False)
    )


def first_difference(jit: list[list], nojit: list[list]) -> str | None:
    for i, (a, b) in enumerate(zip(jit, nojit, strict=False)):
        if a != b:
            return f"step {i}:\n  jit:    {describe(a)}\n  no jit: {describe(b)}"
    if len(jit) != len(nojit):
        return f"traces differ in length: jit {len(jit)} steps, no jit {len(nojit)}"
    return None


def test_single_step_traces_are_identical_without_jit():
    jobs = []
    for seed, family in PROGRAMS:
        code, _ = assemble(generate(seed, family).source())
        jobs.append({"seed": seed, "family": family, "code": code.hex()})
    child = without_jit(["-m", "oracle.trace"], stdin=json.dumps(jobs))
    assert child.returncode == 0, f"the no-JIT trace run failed:\n{child.stderr[-4000:]}"
    nojit = json.loads(child.stdout)
    side = MachineSide()
    problems = []
    for job, theirs in zip(jobs, nojit, strict=True):
        code = bytes.fromhex(job["code"])
        ours = json.loads(json.dumps(trace(side, job["seed"], job["family"], code)))
        difference = first_difference(ours, theirs)
        if difference:
            program = generate(job["seed"], job["family"])
            problems.append(f"seed {job['seed']} ({job['family']}), {difference}")
            if len(problems) == 1:
                problems.append(program.listing())
    assert len(nojit) == len(jobs)
    assert not problems, "jitted and interpreted traces differ:\n" + "\n".join(problems)


def test_cpu_unit_tests_pass_without_jit():
    files = sorted(str(p.relative_to(ROOT)) for p in TESTS.glob("test_cpu_*.py"))
    if not files:
        pytest.skip("no CPU unit tests (tests/test_cpu_*.py) yet")
    child = without_jit(["-m", "pytest", "-q", "-p", "no:cacheprovider", *files])
    output = child.stdout[-6000:] + child.stderr[-2000:]
    assert child.returncode == 0, f"CPU unit tests fail with NUMBA_DISABLE_JIT=1:\n{output}"


def test_trace_ends_with_the_exit_and_memory():
    """The trace itself: one entry per step, the last one the HLT (or fault) exit, then the
    digest of memory."""
    from vm.cpu.exits import ExitReason

    seed = PROGRAMS[-1][0]
    code, _ = assemble(generate(seed).source())
    steps = trace(MachineSide(), seed, None, code)
    assert steps[-1][0] == "memory"
    assert steps[-2][0] in (ExitReason.HALT, ExitReason.FAULT)
    assert all(step[0] == ExitReason.BUDGET for step in steps[:-2])


VMM_RUN = """
import json
import vm
from vm.hypervisor.modes import MODE_TABLE
out = {}
for mode in vm.MODES[1:]:
    spec = MODE_TABLE[mode]  # (containers share their one kernel: no pvops for them)
    for kernel in sorted({spec.kernel} if spec.tenants else {spec.kernel, "pvops"}):
        guest = vm.boot("io", mode, kernel=kernel)
        result = guest.run()
        out[f"{mode} {kernel}"] = [result.console, result.stats, [list(e) for e in guest.events]]
print(json.dumps(out))
"""


def test_the_vmms_give_the_same_exits_and_event_log_jitted_or_not():
    # Every VMM, with its own kernel and with the pv_ops one (which patches its own code).
    out = without_jit(["-c", VMM_RUN])
    assert out.returncode == 0, out.stderr
    nojit = json.loads(out.stdout)
    assert len(nojit) >= 2 * (len(vm.MODES) - 1) - 1
    for key, (console, stats, log) in nojit.items():
        mode, kernel = key.split()
        guest = vm.boot("io", mode, kernel=kernel)
        result = guest.run()
        assert console == result.console and "io: line 40" in console, key
        assert stats == json.loads(json.dumps(result.stats)), key
        assert log == json.loads(json.dumps([list(event) for event in guest.events])), key
