"""The grader on a folder of real and hostile submissions made from lesson 00: each gets
the expected grade and reason, the batch always finishes, the same submission gets the
same grade twice, and a run killed half-way resumes without re-grading what finished."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vm.lessons.format import load_lesson
from vm.lessons.grader import grade_folder, read_journal
from vm.lessons.release import student_version
from vm.lessons.sandbox import Limits

ROOT = Path(__file__).resolve().parent.parent
LESSON = "00-machine"
SOURCE = ROOT / "lessons" / f"{LESSON}.py"
FULL, WITHOUT_REGISTERS = 10.0, 7.0  # lesson 00's points; 00-registers is worth 3

# name -> (the 00-registers cell, the score, words the reason must hold)
HOSTILE = {
    "endless-loop": ("while True:\n    pass", WITHOUT_REGISTERS, "time limit"),
    "endless-loop-that-catches": (
        "while True:\n    try:\n        while True:\n            pass\n"
        "    except BaseException:\n        pass",
        0.0,
        "time limit",
    ),
    "sys-exit": ("import sys\nsys.exit(3)", WITHOUT_REGISTERS, "sys.exit(3)"),
    "os-exit": ("import os\nos._exit(0)", 0.0, "ended its own process"),
    "fork": ("import os\nos.fork()", WITHOUT_REGISTERS, "os.fork is not allowed"),
    "subprocess": (
        "import subprocess\nsubprocess.run(['true'])",
        WITHOUT_REGISTERS,
        "not allowed",
    ),
    "prints-gigabytes": (
        "while True:\n    print('x' * 1_000_000)",
        WITHOUT_REGISTERS,
        "output cap",
    ),
    "eats-memory": (
        "hog = []\nwhile True:\n    hog.append(bytearray(50_000_000))",
        WITHOUT_REGISTERS,
        "out of memory",
    ),
    "reads-hidden-tests": (f"open({str(SOURCE)!r}).read()", WITHOUT_REGISTERS, "not allowed"),
    "rewrites-hidden-tests": (
        f"open({str(SOURCE)!r}, 'a').write('# mine')",
        WITHOUT_REGISTERS,
        "not allowed",
    ),
    "imports-the-solution": (
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('s', {str(SOURCE)!r})\n"
        "module = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(module)",
        WITHOUT_REGISTERS,
        "not allowed",
    ),
    "patches-the-checker": (
        "import vm.lessons.runtime as r\n"
        "r.run_test = lambda test: r.TestOutcome(test.name, [])\nSOURCE = 'hlt'",
        0.0,
        "changed the grader",
    ),
    "patches-the-tester": (
        "from vm.lessons.runtime import Tester\nTester.expect = lambda *a, **k: None",
        0.0,
        "changed the grader",
    ),
    "kills-the-grader": (
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        WITHOUT_REGISTERS,
        "not allowed",
    ),
    "syntax-error": ("SOURCE = 'hlt\n", WITHOUT_REGISTERS, "syntax error on line 1"),
    "wrong-answer": ("SOURCE = 'mov eax, 1\\nhlt'", WITHOUT_REGISTERS + 1, ""),  # 1 of 3 tests
}


def solved_notebook() -> dict:
    """Lesson 00 as a student who solved everything would hand it in."""
    lesson = load_lesson(LESSON)
    notebook = student_version(lesson)
    for cell, parsed in zip(notebook.cells, lesson.cells, strict=True):
        if parsed.kind == "solution":
            cell.source = parsed.source
    return json.loads(json.dumps(notebook))


def with_cell(notebook: dict, exercise: str, source: str | None) -> dict:
    """The notebook with one answer cell replaced (None: removed)."""
    cells = []
    for cell in notebook["cells"]:
        grader = cell.get("metadata", {}).get("nbgrader", {})
        if grader.get("solution") and grader.get("grade_id") == exercise:
            if source is None:
                continue
            cell = dict(cell, source=source)
        cells.append(cell)
    return dict(notebook, cells=cells)


def replaces_a_public_test(good: dict) -> dict:
    """A wrong 00-registers, and a later answer cell that swaps that exercise's public test
    for one that meets what check() said was expected."""
    faults = next(
        c["source"] for c in good["cells"]
        if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "00-faults"
    )  # fmt: skip
    attack = (
        "\n@lesson.test('00-registers')\n"
        "def eax_holds_your_operation(t):\n"
        "    t.expect('HALT', 'HALT', 'how it ended')\n"
        "    t.expect(operation(**NUMBERS), 0, 'EAX')\n"
    )
    notebook = with_cell(good, "00-registers", "SOURCE = 'hlt'")
    return with_cell(notebook, "00-faults", faults + attack)


def write(folder: Path, student: str, notebook: dict | str) -> None:
    path = folder / student / f"{LESSON}.ipynb"
    path.parent.mkdir(parents=True)
    path.write_text(notebook if isinstance(notebook, str) else json.dumps(notebook))


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("submissions")
    out = tmp_path_factory.mktemp("grades")
    good = solved_notebook()
    write(folder, "good", good)
    write(folder, "blank", json.loads(json.dumps(student_version(load_lesson(LESSON)))))
    for name, (source, _, _) in HOSTILE.items():
        write(folder, name, with_cell(good, "00-registers", source))
    write(folder, "missing-cell", with_cell(good, "00-registers", None))
    write(folder, "replaces-a-public-test", replaces_a_public_test(good))
    write(folder, "not-json", "{ this is not a notebook")
    limits = Limits(seconds=12, cell_seconds=3, memory=400 << 20, output=256 << 10)
    started = time.monotonic()
    grades = grade_folder(folder, out / "grades.csv", 2, None, limits, progress=lambda _: None)
    took = time.monotonic() - started
    return {g.student: g for g in grades}, folder, out, limits, took


def test_the_right_answers_get_full_marks(graded):
    grades = graded[0]
    assert grades["good"].score == FULL and grades["good"].reason == ""
    assert [e.public for e in grades["good"].exercises] == ["2/2", "1/1", "2/2", "2/2"]


def test_the_blank_student_version_gets_nothing(graded):
    grade = graded[0]["blank"]
    assert grade.score == 0 and "NotImplementedError" in grade.reason


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_submission_is_graded_with_a_reason(graded, name):
    grade = graded[0][name]
    _, score, reason = HOSTILE[name]
    assert grade.score == score, (grade.score, grade.reason)
    assert reason in grade.reason, grade.reason


def test_an_answer_cannot_replace_a_test(graded):
    grade = graded[0]["replaces-a-public-test"]
    registers = grade.exercises[0]
    assert registers.public == "1/2" and grade.score == WITHOUT_REGISTERS + 1


def test_missing_cell_and_not_json(graded):
    grades = graded[0]
    assert grades["missing-cell"].score == WITHOUT_REGISTERS
    assert "missing cell 00-registers" in grades["missing-cell"].reason
    assert grades["not-json"].score == 0 and "not a notebook" in grades["not-json"].reason
    assert grades["not-json"].points == FULL


def test_hidden_tests_stay_hidden_in_feedback(graded):
    _, _, out, _, _ = graded
    page = (out / "feedback" / "wrong-answer-00-machine.md").read_text()
    assert "hidden tests: 0/1 passed" in page
    assert "1000" not in page and "other numbers" not in page  # the hidden test's inputs
    assert "expected" in page and "happened" in page


def test_outputs_csv_json_gradescope(graded):
    grades, _, out, _, _ = graded
    rows = list(csv.DictReader((out / "grades.csv").open()))
    assert {r["student"] for r in rows} == set(grades)
    assert len(json.loads((out / "grades.json").read_text())) == len(grades)
    results = json.loads((out / "gradescope" / "good-00-machine" / "results.json").read_text())
    assert results["score"] == FULL and len(results["tests"]) == 4
    assert sum(t["max_score"] for t in results["tests"]) == FULL


def test_the_same_submission_gets_the_same_grade_twice(graded, tmp_path):
    grades, folder, _, limits, _ = graded
    again = grade_folder(folder, tmp_path / "grades.csv", 2, None, limits, progress=lambda _: None)
    assert {g.student: (g.score, g.reason) for g in again} == {
        s: (g.score, g.reason) for s, g in grades.items()
    }


def test_resume_after_a_kill_regrades_nothing_finished(tmp_path):
    folder, out = tmp_path / "subs", tmp_path / "out"
    out.mkdir()
    slow = with_cell(solved_notebook(), "00-registers", "import time\ntime.sleep(0.7)")
    for n in range(6):
        write(folder, f"s{n}", slow)
    journal = out / "grades.csv.jsonl"
    command = [sys.executable, "-m", "vm", "grade", str(folder), "-o", str(out / "grades.csv")]
    (tmp_path / "tmp").mkdir()  # (the killed run's sandbox leaves its scratch folder here)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(tmp_path / "tmp"))
    first = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (journal.exists() and len(journal.read_text().splitlines()) >= 2):
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    finished = read_journal(journal)
    assert 2 <= len(finished) < 6
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stderr
    assert f"{len(finished)} already graded" in second.stdout
    lines = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    students = [line["student"] for line in lines if "student" in line]
    assert sorted(students) == sorted(set(students)) and len(set(students)) == 6
    assert all(g["score"] == WITHOUT_REGISTERS for g in lines)


def test_grading_speed(graded):
    """Not a benchmark (the target is measured in the report): the batch of 20 hostile and
    real submissions, two at a time, ends well within the limits it was given."""
    grades, _, _, limits, took = graded
    assert took < len(grades) * limits.seconds / 2


def test_bad_input_is_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for args in (["grade", str(tmp_path / "nowhere")], ["lessons", "key", "99-nothing"]):
        run = subprocess.run(
            [sys.executable, "-m", "vm", *args], env=env, capture_output=True, text=True
        )
        assert run.returncode == 2
        assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr


def test_a_sandbox_that_dies_is_replaced_and_the_batch_goes_on(tmp_path, monkeypatch):
    from vm.lessons import grader as grader_module

    folder, out = tmp_path / "subs", tmp_path / "out"
    out.mkdir()
    for n in range(3):
        write(folder, f"s{n}", solved_notebook())
    real_grade, killed = grader_module.Grader.grade, []

    def grade_killing_the_first_zygote(self, sandbox, submission):
        if not killed:
            killed.append(submission.student)
            os.kill(sandbox.process.pid, signal.SIGKILL)
            sandbox.process.wait()
        return real_grade(self, sandbox, submission)

    monkeypatch.setattr(grader_module.Grader, "grade", grade_killing_the_first_zygote)
    said = []
    grades = grade_folder(
        folder, out / "grades.csv", 1, None, Limits(seconds=30), progress=said.append
    )
    assert any("not graded" in line and "run again" in line for line in said)
    assert sorted(g.student for g in grades) == sorted({"s0", "s1", "s2"} - set(killed))
    monkeypatch.setattr(grader_module.Grader, "grade", real_grade)
    again = grade_folder(
        folder, out / "grades.csv", 1, None, Limits(seconds=30), progress=said.append
    )
    assert len(again) == 3 and all(g.score == FULL for g in again)
