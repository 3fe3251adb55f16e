"""The golden file: every workload's cycles, exits and console in every mode are what
tests/golden.json says. A change to them must be made on purpose: `python -m vm golden`
rewrites the file, and the diff shows what moved."""

from __future__ import annotations

import json

import pytest

from vm.golden import GOLDEN, VARIANTS, measure
from vm.guest.toyos import WORKLOADS
from vm.hypervisor.modes import MODES

GOLDEN_TABLE = json.loads(GOLDEN.read_text())


def test_the_golden_file_covers_every_workload_in_every_mode():
    assert sorted(GOLDEN_TABLE) == sorted(WORKLOADS)
    for workload, rows in GOLDEN_TABLE.items():
        assert sorted(rows) == sorted((*MODES, *VARIANTS)), workload


@pytest.mark.parametrize("mode", (*MODES, *VARIANTS))
@pytest.mark.parametrize("workload", WORKLOADS)
def test_cycles_exits_and_console_are_the_golden_ones(workload, mode):
    now = measure(workload, mode)
    expected = dict(GOLDEN_TABLE[workload][mode])
    if expected["console"] == "(the same as native)":
        expected["console"] = GOLDEN_TABLE[workload]["native"]["console"]
    assert now == expected, (
        f"{workload} in {mode} moved from tests/golden.json; if that is deliberate, run "
        "`python -m vm golden` and commit the file with the change"
    )
