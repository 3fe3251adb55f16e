"""The lesson format: a jupytext percent-format file ``lessons/NN-name.py`` (the one edited
and diffed) paired with ``lessons/NN-name.ipynb`` (committed without outputs).

Cells, told apart by their metadata (nbgrader's schema, so nbgrader reads them too):

- ``# %% tags=["setup"]``: code the exercises need (imports, the variant, helpers); the
  grader runs it, from the instructor's copy, before the student's answers.
- ``# %% nbgrader={"solution": true, "grade_id": "00-registers", ...}``: the student's
  answer to exercise ``00-registers``, with the instructor's between ``### BEGIN SOLUTION``
  and ``### END SOLUTION`` (the student version gets a stub that raises
  NotImplementedError).
- ``# %% nbgrader={"grade": true, "grade_id": "00-registers-check", "points": 3, ...}``:
  the exercise's tests; those between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN
  TESTS`` are removed from the student version and run only at grading.
- everything else (prose, experiments, views): skipped by the grader.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
CHECK_SUFFIX = "-check"
LESSON_NAME = re.compile(r"^\d\d-[a-z0-9-]+$")


class LessonError(Exception):
    """A lesson or notebook that cannot be read: the message says what and where."""


@dataclass
class Cell:
    """One cell of a lesson, with its role: markdown, setup, solution, tests or other."""

    kind: str
    source: str
    exercise: str | None = None
    points: float = 0.0
    metadata: dict[str, Any] | None = None

    def public_source(self) -> str:
        """A tests cell without its hidden tests."""
        return strip_block(self.source, BEGIN_HIDDEN, END_HIDDEN, None)

    def hidden_source(self) -> str:
        """Only the hidden tests of a tests cell (empty when it has none)."""
        return "\n".join(blocks(self.source, BEGIN_HIDDEN, END_HIDDEN))

    def stub_source(self) -> str:
        """A solution cell with each solution replaced by a stub."""
        return strip_block(self.source, BEGIN_SOLUTION, END_SOLUTION, STUB)


@dataclass
class LessonSource:
    """A parsed lesson: its name, its cells, and the notebook it came from."""

    name: str
    path: Path
    cells: list[Cell]
    notebook: Any  # the nbformat NotebookNode

    def exercises(self) -> dict[str, float]:
        """Each exercise's id and points, in order."""
        return {c.exercise: c.points for c in self.cells if c.kind == "tests" and c.exercise}

    def solution(self, exercise: str) -> Cell:
        for c in self.cells:
            if c.kind == "solution" and c.exercise == exercise:
                return c
        raise LessonError(f"{self.path}: exercise {exercise} has no solution cell")


def role(cell: dict[str, Any]) -> tuple[str, str | None, float]:
    """(kind, exercise, points) of a notebook cell from its metadata."""
    if cell.get("cell_type") != "code":
        return "markdown", None, 0.0
    meta = cell.get("metadata") or {}
    grader = meta.get("nbgrader") or {}
    if not isinstance(grader, dict):
        grader = {}
    grade_id = grader.get("grade_id")
    if grader.get("solution") and isinstance(grade_id, str):
        return "solution", grade_id, 0.0
    if grader.get("grade") and isinstance(grade_id, str):
        exercise = grade_id.removesuffix(CHECK_SUFFIX)
        points = grader.get("points", 0)
        return "tests", exercise, float(points) if isinstance(points, int | float) else 0.0
    tags = meta.get("tags") or []
    if isinstance(tags, list) and "setup" in tags:
        return "setup", None, 0.0
    return "other", None, 0.0


def source_text(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    if isinstance(source, list):
        source = "".join(s for s in source if isinstance(s, str))
    return source if isinstance(source, str) else ""


def cells_of(notebook: dict[str, Any]) -> list[Cell]:
    """The cells of a notebook (a dict as JSON gives it), with their roles."""
    out = []
    for cell in notebook.get("cells", []):
        if not isinstance(cell, dict):
            continue
        kind, exercise, points = role(cell)
        out.append(Cell(kind, source_text(cell), exercise, points, cell.get("metadata")))
    return out


def lessons_dir() -> Path:
    """The lessons/ folder beside vm/ (the instructor's sources)."""
    return Path(__file__).resolve().parent.parent.parent / "lessons"


def lesson_names(folder: Path | None = None) -> list[str]:
    """Every lesson in a folder: the NN-name.py files."""
    folder = folder or lessons_dir()
    return sorted(p.stem for p in folder.glob("*.py") if LESSON_NAME.match(p.stem))


def find_lesson(name: str, folder: Path | None = None) -> Path:
    """The source of a lesson by name ("00-machine"), by number ("00") or by path."""
    folder = folder or lessons_dir()
    path = Path(name)
    if path.suffix in (".py", ".ipynb") and path.exists():
        return path.with_suffix(".py") if path.with_suffix(".py").exists() else path
    names = lesson_names(folder)
    matches = [n for n in names if n == name or n.split("-", 1)[0] == name]
    if len(matches) != 1:
        raise LessonError(
            f"no lesson {name!r} in {folder} (there are: {', '.join(names) or 'none'})"
        )
    return folder / f"{matches[0]}.py"


def load_lesson(name: str | Path, folder: Path | None = None) -> LessonSource:
    """Parse a lesson's source (the jupytext .py, or an .ipynb)."""
    path = find_lesson(str(name), folder)
    notebook = read_notebook(path)
    return LessonSource(path.stem, path, cells_of(notebook), notebook)


def read_notebook(path: Path) -> Any:
    """A notebook from a .py (jupytext) or .ipynb file, or a LessonError saying why not."""
    import nbformat

    if not path.exists():
        raise LessonError(f"{path}: no such file")
    try:
        if path.suffix == ".py":
            import jupytext

            return jupytext.read(path)
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
        return nbformat.from_dict(data)
    except json.JSONDecodeError as error:
        raise LessonError(f"{path}: not a notebook (not JSON: {error})") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise LessonError(f"{path}: cannot read it ({error})") from None


def blocks(source: str, begin: str, end: str) -> list[str]:
    """The text between each begin and end marker line."""
    out, current = [], None
    for line in source.splitlines():
        if line.strip() == begin:
            current = []
        elif line.strip() == end and current is not None:
            out.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return out


def strip_block(source: str, begin: str, end: str, replacement: str | None) -> str:
    """``source`` with each marked block removed, or replaced (indented like its marker)."""
    out, inside = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == begin:
            inside = True
            if replacement is not None:
                indent = line[: len(line) - len(line.lstrip())]
                out.extend(indent + r for r in replacement.splitlines())
        elif stripped == end and inside:
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise LessonError(f"a {begin!r} without its {end!r}")
    return "\n".join(out)


def lint(lesson: LessonSource) -> list[str]:
    """What is wrong with a lesson's structure (empty when nothing is)."""
    problems = []
    exercises = lesson.exercises()
    if not exercises:
        problems.append(f"{lesson.path}: no tests cell (nbgrader grade: true)")
    solutions = [c.exercise for c in lesson.cells if c.kind == "solution"]
    for exercise in exercises:
        if solutions.count(exercise) != 1:
            problems.append(f"{lesson.path}: exercise {exercise} needs exactly one solution cell")
        if not exercise.startswith(lesson.name[:3]):
            problems.append(
                f"{lesson.path}: exercise {exercise} should start with {lesson.name[:3]}"
            )
    for c in lesson.cells:
        if c.kind == "solution" and BEGIN_SOLUTION not in c.source:
            problems.append(f"{lesson.path}: solution cell {c.exercise} has no {BEGIN_SOLUTION}")
        if c.kind == "solution" and c.exercise not in exercises:
            problems.append(f"{lesson.path}: solution cell {c.exercise} has no tests cell")
        try:
            c.stub_source(), c.public_source()
        except LessonError as error:
            problems.append(f"{lesson.path}: cell {c.exercise or c.kind}: {error}")
    return problems
