"""The lessons: each one's structure, release (every test passes on the solutions and
fails on the stubs, and a broken lesson is refused), the student version, check() in the
notebook, and the answer key. (Each lesson also runs headless in tests/test_notebooks.py
and in a real browser in tests/test_browser.py.)"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vm.lessons import runtime
from vm.lessons.format import LessonError, lesson_names, lint, load_lesson
from vm.lessons.grader import job_cells
from vm.lessons.release import release, student_version, verify
from vm.lessons.sandbox import Sandbox

ROOT = Path(__file__).resolve().parent.parent
LESSONS = lesson_names()


def test_there_are_lessons():
    assert {
        "00-machine",
        "01-privilege",
        "02-trap-and-emulate",
        "03-hardware-assist",
        "04-paravirt",
        "05-containers",
        "06-side-by-side",
    } <= set(LESSONS)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox() as box:
        yield box


@pytest.mark.parametrize("name", LESSONS)
def test_lesson_is_well_formed_and_paired(name):
    lesson = load_lesson(name)
    assert lint(lesson) == []
    assert 2 <= len(lesson.exercises()) <= 4
    assert (ROOT / "lessons" / f"{name}.ipynb").exists()


@pytest.mark.parametrize("name", LESSONS)
def test_release_accepts_lesson_solutions_pass_and_stubs_fail(name, sandbox):
    assert verify(load_lesson(name), sandbox) == []


@pytest.mark.parametrize("name", LESSONS)
def test_grading_skips_views_and_experiments(name):
    """Only setup cells, answers and tests run at grading: no widget is ever made."""
    cells, _ = job_cells(load_lesson(name), None)
    assert cells and all("widgets." not in c.source for c in cells)
    assert {c.kind for c in cells} == {"setup", "solution", "tests"}
    assert all("BEGIN HIDDEN" not in c.source for c in cells)


def template_lesson(folder: Path, change=None) -> Path:
    """lessons/TEMPLATE.py as lesson 99-template in ``folder``, optionally changed."""
    text = (ROOT / "lessons" / "TEMPLATE.py").read_text()
    path = folder / "99-template.py"
    path.write_text(change(text) if change else text)
    return path


def test_the_template_is_a_lesson_release_accepts(tmp_path, sandbox):
    assert verify(load_lesson(template_lesson(tmp_path)), sandbox) == []


@pytest.mark.parametrize(
    "change, words",
    [
        (  # a test that does not look at the answer passes on the stub
            lambda s: s.replace(
                "### BEGIN HIDDEN TESTS",
                '@lesson.test("99-double")\ndef looks_at_nothing(t):\n'
                '    t.expect(1, 1, "one")\n\n\n### BEGIN HIDDEN TESTS',
            ),
            "passes on the stub",
        ),
        (  # the solution is wrong
            lambda s: s.replace("add eax, eax", "add eax, 1"),
            "its solution does not meet it",
        ),
        (  # a marker without its end
            lambda s: s.replace("### END HIDDEN TESTS\n", ""),
            "without its",
        ),
    ],
    ids=["test-passes-on-stub", "solution-fails", "unbalanced-marker"],
)
def test_release_refuses_a_broken_lesson(tmp_path, change, words):
    folder = tmp_path / "lessons"
    folder.mkdir()
    template_lesson(folder, change)
    with pytest.raises(LessonError, match="refused") as refused:
        release(["99-template"], tmp_path / "out", folder)
    assert words in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_student_version_has_stubs_and_no_hidden_tests(tmp_path):
    (path,) = release(["00-machine"], tmp_path)
    for text in (path.read_text(), path.with_suffix(".py").read_text()):
        assert "BEGIN SOLUTION" not in text and "HIDDEN" not in text
        assert "raise NotImplementedError()" in text
        assert "other_numbers" not in text and "boundaries" not in text
        assert "eax_holds_your_operation" in text  # the public tests stay
    notebook = student_version(load_lesson("00-machine"))
    assert notebook.metadata["vmlab"] == {"lesson": "00-machine"}


def run_cells(name: str, stubs: bool) -> dict:
    """A lesson's setup, answer and tests cells run here, as a notebook would."""
    namespace: dict = {"__name__": "__main__"}
    for cell in load_lesson(name).cells:
        if cell.kind in ("setup", "solution", "tests"):
            source = cell.stub_source() if stubs and cell.kind == "solution" else cell.source
            with contextlib.suppress(NotImplementedError):
                exec(compile(source, f"<cell {cell.exercise}>", "exec"), namespace)
    return namespace


def test_check_answers_in_plain_words_and_quickly():
    namespace = run_cells("00-machine", stubs=False)
    check = namespace["check"]
    result = check("00-registers")  # (its time, warm: python -m vm bench --lessons)
    assert repr(result).splitlines()[0] == ("00-registers: public 2/2, hidden tests run at grading")
    assert "other numbers" not in repr(result)
    with pytest.raises(ValueError, match="no exercise '00-nothing' in lesson 00-machine"):
        check("00-nothing")


@pytest.mark.parametrize("name", LESSONS)
def test_with_stubs_every_check_fails_and_says_why(name):
    namespace = run_cells(name, stubs=True)
    lesson = namespace["lesson"]
    for exercise in lesson.exercises():
        text = repr(namespace["check"](exercise))
        assert text.startswith(f"{exercise}: public 0/"), text
        assert "✗" in text and "Traceback" not in text


def test_a_wrong_answer_hears_expected_happened_and_a_hint():
    namespace = run_cells("00-machine", stubs=False)
    namespace["SOURCE"] = "mov eax, 1\nhlt"
    text = repr(namespace["check"]("00-registers"))
    assert "public 1/2" in text and "expected" in text and "happened 0x1 (1)" not in text
    assert "happened 1." in text


def test_variants_differ_by_student_and_repeat_for_one():
    a = runtime.Lesson("00-machine", student="ada")
    b = runtime.Lesson("00-machine", student="grace")
    picks = [(x.pick("N", range(10**6)), x.seed) for x in (a, b)]
    assert picks[0] != picks[1]
    again = runtime.Lesson("00-machine", student="ada")
    assert again.pick("N", range(10**6)) == picks[0][0]


def test_key_prints_the_variant_and_answers():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run(
        [sys.executable, "-m", "vm", "lessons", "key", "00-machine", "--seed", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "00-machine, seed 3"
    assert any(line.startswith("  OPERATION = ") for line in lines)
    assert any("(hidden)" in line for line in lines)


def test_bad_lesson_paths_are_one_line(tmp_path):
    bad = tmp_path / "01-bad.ipynb"
    bad.write_text("{not json")
    with pytest.raises(LessonError, match=r"01-bad\.ipynb: not a notebook"):
        load_lesson(bad)
    with pytest.raises(LessonError, match="no lesson '42'"):
        load_lesson("42")
    shutil.rmtree(tmp_path)
