"""Every mode side by side: vm.compare and `python -m vm compare` / `run --compare`, under
each cost preset, and clear errors for bad arguments."""

from __future__ import annotations

import json

import pytest
from test_commands import vm as vm_command

import vm
from vm.compare import compare, measure
from vm.cpu.cost import PRESETS


def test_a_comparison_runs_every_mode_there_is_under_each_preset():
    table = compare(["syscalls", "io"], presets=["pentium4", "haswell"])
    assert table.modes == vm.MODES and table.ok
    for p in ("pentium4", "haswell"):
        for w in ("syscalls", "io"):
            native = table.run(p, w, "native")
            assert native.vs_native == 1.0 and native.exits == 0
            for mode in vm.MODES:
                run = table.run(p, w, mode)
                assert run.cycles == vm.boot(w, mode, cost=p).run().stats["cycles"]
                assert run.vs_native == run.cycles / native.cycles
    # bare metal costs the same under every preset (so do containers, which take no exits
    # there); exits are cheaper on Haswell
    assert (
        table.run("pentium4", "io", "native").cycles == table.run("haswell", "io", "native").cycles
    )
    for mode in vm.MODES[1:]:
        haswell, pentium4 = (table.run(p, "io", mode) for p in ("haswell", "pentium4"))
        if pentium4.exits:
            assert haswell.cycles < pentium4.cycles, mode
        else:
            assert haswell.cycles == pentium4.cycles and mode == "containers", mode


def test_the_pentium4_comparison_is_the_golden_files():
    from vm.golden import GOLDEN

    golden = json.loads(GOLDEN.read_text())
    for mode in vm.MODES:
        run = measure("pentium4", "spawn", mode)
        assert (run.cycles, run.exits) == (
            golden["spawn"][mode]["cycles"],
            golden["spawn"][mode]["exits"],
        )


def test_the_text_table_has_a_line_per_workload_and_a_column_per_mode():
    table = compare(["syscalls", "io"], presets=["haswell"])
    text = table.text()
    assert "preset haswell: Intel Haswell" in text and "VM exit 512" in text
    header = next(line for line in text.splitlines() if line.startswith("workload"))
    assert header.split()[3:] == [m for m in vm.MODES if m != "native"]
    te = table.run("haswell", "syscalls", "trap-emulate")
    assert f"{te.vs_native:.3f}x {te.exits:,}" in text


def test_bad_names_are_clear_errors():
    with pytest.raises(ValueError, match="no workload 'nope'"):
        compare(["nope"])
    with pytest.raises(ValueError, match="no preset 'pentium5'; choose from pentium4"):
        compare(["io"], presets=["pentium5"])
    with pytest.raises(ValueError, match="no mode 'xen'"):
        compare(["io"], modes=["xen"])


def test_compare_command_json_has_every_preset_workload_and_mode():
    out = vm_command("compare", "--workload", "syscalls", "--workload", "io", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["modes"] == list(vm.MODES) and report["workloads"] == ["syscalls", "io"]
    assert list(report["presets"]) == list(PRESETS)
    for name, entry in report["presets"].items():
        assert entry["costs"]["vm_exit"] == PRESETS[name].vm_exit
        assert set(entry["sources"]) == set(entry["costs"])
        for workload in ("syscalls", "io"):
            runs = entry["runs"][workload]
            assert list(runs) == list(vm.MODES)
            for figures in runs.values():
                assert figures["status"] == "shutdown"
                assert {"cycles", "vs_native", "exits", "exits_by_reason"} <= set(figures)


def test_compare_command_prints_a_table_per_preset_asked_for():
    out = vm_command("compare", "--workload", "spawn", "--preset", "core2", "--cost", "haswell")
    assert out.returncode == 0, out.stderr
    assert "preset core2" in out.stdout and "preset haswell" in out.stdout
    assert "preset pentium4" not in out.stdout
    for mode in vm.MODES[1:]:
        assert mode in out.stdout


def test_run_compare_takes_preset_and_its_old_name_cost():
    by_preset = vm_command("run", "--compare", "--workload", "io", "--preset", "haswell", "--json")
    by_cost = vm_command("run", "--compare", "--workload", "io", "--cost", "haswell", "--json")
    assert by_preset.returncode == by_cost.returncode == 0, by_preset.stderr + by_cost.stderr
    assert json.loads(by_preset.stdout) == json.loads(by_cost.stdout)
    report = json.loads(by_preset.stdout)
    assert set(vm.MODES) <= set(report)
    te = measure("haswell", "io", "trap-emulate")
    assert report["trap-emulate"]["cycles"] == te.cycles


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """`python -m vm ARGS` in this process (quicker than a new one): exit code, out, err."""
    from vm.cli import main

    try:
        code = main(list(args))
    except SystemExit as stop:  # (argparse's way out)
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "args",
    [
        ["compare", "--workload", "nope"],
        ["compare", "--preset", "pentium5"],
        ["run", "--preset", "pentium5"],
        ["run", "--cost"],
        ["consolidate", "--guests", "0"],
        ["consolidate", "--guests", "33"],
        ["consolidate", "--guests", "many"],
        ["consolidate", "--mode", "xen"],
        ["consolidate", "--cycles", "-5"],
        ["consolidate", "--workload", "nope"],
    ],
)
def test_bad_arguments_say_what_and_exit_2(capsys, args):
    code, _, err = cli(capsys, *args)
    assert code == 2
    assert "error:" in err and args[-1].lstrip("-") in err


def test_a_bad_argument_in_a_new_process_is_one_line_and_no_traceback():
    out = vm_command("consolidate", "--guests", "40")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "argument --guests: must be from 1 to 32, not 40" in out.stderr
