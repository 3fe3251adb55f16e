"""`python -m vm bench --lessons`: the lessons' speed targets are measured there, not
asserted in timed tests (the machines are shared and noisy); this checks that it measures."""

from __future__ import annotations

import json

from test_commands import vm as vm_command

from vm.lessons.measure import TARGETS, text


def test_bench_lessons_measures_every_figure_and_grades_solutions_full():
    out = vm_command("bench", "--lessons", "--quick", "--json")
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    assert list(figures) == ["00-machine"]
    lesson = figures["00-machine"]
    assert lesson["exercises"] == 4 and lesson["submissions"] == 10
    assert lesson["graded_score"] == 1.0  # (every solved submission got full marks)
    for key in TARGETS:
        assert lesson[key] > 0, key
    table = text(figures)
    assert "00-machine" in table and ("PASS" in table or "MISS" in table)
