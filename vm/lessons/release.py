"""``python -m vm lessons release``: the student versions of the lessons, and ``key``.

A student version has each solution replaced by a stub that raises NotImplementedError
and the hidden tests removed. Release refuses a lesson whose structure is wrong, where a
test fails on the instructor's solution, or where a test passes on the stubs (a test
that cannot tell a blank answer from a right one tests nothing).
"""

from __future__ import annotations

import copy
from pathlib import Path

from vm.lessons.format import LessonError, LessonSource, lint, load_lesson
from vm.lessons.grader import expectations, job_cells
from vm.lessons.sandbox import Limits, Sandbox

VERIFY_STUDENT = "release-check"


def student_version(lesson: LessonSource):
    """The lesson's notebook for students (an nbformat notebook, no outputs)."""
    notebook = copy.deepcopy(lesson.notebook)
    for cell, parsed in zip(notebook.cells, lesson.cells, strict=True):
        if parsed.kind == "solution":
            cell.source = parsed.stub_source()
        elif parsed.kind == "tests":
            cell.source = parsed.public_source().rstrip() + "\n"
            cell.source = cell.source.rstrip("\n")
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    notebook.metadata["vmlab"] = {"lesson": lesson.name}
    return notebook


def verify(lesson: LessonSource, sandbox: Sandbox) -> list[str]:
    """Why the lesson may not be released (empty: it may)."""
    problems = lint(lesson)
    if problems:
        return problems
    cells, hidden = job_cells(lesson, None)
    solved = sandbox.run(cells, hidden, student=VERIFY_STUDENT)
    try:
        expected = expectations(solved, f"{lesson.name} with its solutions")
    except LessonError as error:
        return [str(error)]
    if not expected.tests:
        return [f"{lesson.name}: its tests cells register no tests"]
    stubs = {c.exercise: c.stub_source() for c in lesson.cells if c.kind == "solution"}
    cells, hidden = job_cells(lesson, stubs)
    stubbed = sandbox.run(cells, hidden, student=VERIFY_STUDENT)
    for t in stubbed.tests:
        want = expected.tests.get((t.exercise, t.test, t.hidden))
        if t.error is None and t.observed == want:
            problems.append(
                f"{lesson.name}: test {t.test} of {t.exercise} passes on the stub "
                "(it does not test the student's answer)"
            )
    return problems


def release(names: list[str], output: Path, folder: Path | None = None) -> list[Path]:
    """Check each lesson, then write its student version (.ipynb and .py) to ``output``;
    LessonError (naming every problem) if any lesson is refused."""
    import jupytext
    import nbformat

    lessons = [load_lesson(name, folder) for name in names]
    problems: list[str] = []
    with Sandbox(Limits(seconds=120), [output.resolve()]) as sandbox:
        for lesson in lessons:
            problems += verify(lesson, sandbox)
    if problems:
        raise LessonError("refused: " + "\n  ".join(problems))
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for lesson in lessons:
        notebook = student_version(lesson)
        path = output / f"{lesson.name}.ipynb"
        nbformat.write(notebook, path)
        jupytext.write(notebook, output / f"{lesson.name}.py", fmt="py:percent")
        written.append(path)
    return written


def key(name: str, seed: int | None = None, student: str | None = None) -> str:
    """The answer key for one student's variant: the variant and each test's expectations."""
    lesson = load_lesson(name)
    cells, hidden = job_cells(lesson, None)
    with Sandbox(Limits(seconds=120)) as sandbox:
        result = sandbox.run(cells, hidden, student=student, seed=seed)
    expected = expectations(result, f"lesson {lesson.name}")
    who = f"student {student!r}" if student else f"seed {seed}"
    lines = [f"{lesson.name}, {who}"]
    lines += [f"  {k} = {v!r}" for k, v in expected.variant.items()]
    by_test = {(t.exercise, t.test, t.hidden): t for t in result.tests}
    for exercise in lesson.exercises():
        lines.append(f"{exercise}:")
        for k, values in expected.tests.items():
            if k[0] != exercise:
                continue
            report = by_test[k]
            tag = " (hidden)" if k[2] else ""
            for what, value in zip(report.whats, values, strict=True):
                lines.append(f"  {k[1]}{tag}: {what} = {value!r}")
    return "\n".join(lines)
