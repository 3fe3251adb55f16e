"""The lessons' speed targets, measured: ``python -m vm bench --lessons``.

For each lesson: how long it runs top to bottom headless (a Jupyter kernel, as
tests/test_notebooks.py runs it), the slowest ``check(...)`` with a warm cache, and how
many submissions a minute the grader marks (a folder of solved notebooks, one student
each, so every variant is new to the grader).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

from vm.lessons.format import find_lesson, lesson_names, load_lesson

TARGETS = {  # (what the issue asks; python -m vm bench --lessons says PASS or MISS)
    "headless_s": ("<=", 60.0),
    "check_s": ("<=", 2.0),
    "per_minute": (">=", 60.0),  # for a lesson with four exercises
}


def solved_notebook(name: str) -> dict:
    """The lesson as a student who solved every exercise would hand it in."""
    from vm.lessons.release import student_version

    lesson = load_lesson(name)
    notebook = student_version(lesson)
    for cell, parsed in zip(notebook.cells, lesson.cells, strict=True):
        if parsed.kind == "solution":
            cell.source = parsed.source
    return json.loads(json.dumps(notebook))


def headless_seconds(name: str) -> float:
    """Wall time to run the lesson's notebook top to bottom in a fresh Jupyter kernel."""
    import nbformat
    from nbclient import NotebookClient

    path = find_lesson(name).with_suffix(".ipynb")
    root = str(path.parent.parent)
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": root}}
    )
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, old]))
    try:
        started = time.perf_counter()
        client.execute()
        return time.perf_counter() - started
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


def check_seconds(name: str) -> float:
    """The slowest ``check(exercise)`` of the lesson once its cells have run (the tests
    cells call check once already: this is a second call, the warm cache's)."""
    namespace: dict = {"__name__": "__main__"}
    for cell in load_lesson(name).cells:
        if cell.kind in ("setup", "solution", "tests"):
            with contextlib.redirect_stdout(None):
                exec(compile(cell.source, f"<{name} {cell.kind}>", "exec"), namespace)
    slowest = 0.0
    for exercise in namespace["lesson"].exercises():
        started = time.perf_counter()
        namespace["check"](exercise)
        slowest = max(slowest, time.perf_counter() - started)
    return slowest


def grading_per_minute(name: str, submissions: int, jobs: int) -> tuple[float, float]:
    """Grade ``submissions`` solved notebooks, ``jobs`` at a time: (submissions a minute,
    the mean score as a fraction of the lesson's points, which should be 1)."""
    from vm.lessons.grader import grade_folder

    notebook = json.dumps(solved_notebook(name))
    with tempfile.TemporaryDirectory(prefix="vmlab-measure-") as scratch:
        folder = Path(scratch) / "submissions"
        for i in range(submissions):
            path = folder / f"student{i:03d}" / f"{name}.ipynb"
            path.parent.mkdir(parents=True)
            path.write_text(notebook)
        started = time.perf_counter()
        grades = grade_folder(folder, Path(scratch) / "grades.csv", jobs, progress=lambda *_: None)
        seconds = time.perf_counter() - started
    full = sum(load_lesson(name).exercises().values())
    return submissions / seconds * 60, sum(g.score for g in grades) / (full * len(grades))


def measure(names: list[str] | None = None, submissions: int = 60, jobs: int = 2) -> dict:
    """Each lesson's figures, by name."""
    out = {}
    for name in names or lesson_names():
        per_minute, score = grading_per_minute(name, submissions, jobs)
        out[name] = {
            "exercises": len(load_lesson(name).exercises()),
            "headless_s": headless_seconds(name),
            "check_s": check_seconds(name),
            "per_minute": per_minute,
            "graded_score": score,
            "submissions": submissions,
            "jobs": jobs,
        }
    return out


def verdict(key: str, value: float) -> str:
    op, target = TARGETS[key]
    ok = value <= target if op == "<=" else value >= target
    return f"{'PASS' if ok else 'MISS'}"


def text(figures: dict) -> str:
    """A line per lesson, each figure beside its target."""
    lines = [
        "lesson                exercises  headless (s)  slowest check (s)  graded a minute",
        f"{'(target)':<22}{'':>9}  {'<= 60':>12}  {'<= 2':>17}  {'>= 60 (4 exercises)':>15}",
    ]
    for name, f in figures.items():
        graded = f"{f['per_minute']:.0f} {verdict('per_minute', f['per_minute'])}"
        if f["exercises"] != 4:
            graded = f"{f['per_minute']:.0f}"
        lines.append(
            f"{name:<22}{f['exercises']:>9}  "
            f"{f['headless_s']:>7.1f} {verdict('headless_s', f['headless_s'])}  "
            f"{f['check_s']:>12.3f} {verdict('check_s', f['check_s'])}  {graded:>15}"
        )
    some = next(iter(figures.values()), {})
    lines.append(
        f"(grading: {some.get('submissions', 0)} solved submissions, -j {some.get('jobs', 0)}, "
        "each a new student and so a new variant; every one should score full marks: "
        + ", ".join(f"{n} {f['graded_score']:.0%}" for n, f in figures.items())
        + ")"
    )
    return "\n".join(lines)
