"""``python -m vm grade SUBMISSIONS/ -o grades.csv [-j N]``: grade a class's notebooks.

Each submission runs in a sandboxed child (vm.lessons.sandbox) with a time limit, a memory
limit and an output cap. Only the instructor's setup cells, the student's answer cells and
the tests run (prose, experiments and views are skipped). What the student's code produced
is compared with a trusted run of the instructor's solution for the same student's variant.

Results go to a journal (``grades.csv.jsonl``) as each submission finishes; a second run
reads it and re-grades nothing finished (unless the notebook changed). From the journal
come ``grades.csv``, ``grades.json``, ``feedback/STUDENT-LESSON.md`` and
``gradescope/STUDENT-LESSON/results.json``.

Submissions: ``SUBMISSIONS/STUDENT/LESSON.ipynb`` or ``SUBMISSIONS/STUDENT.ipynb`` (the
lesson from ``--lesson``, or the notebook's ``vmlab.lesson`` metadata).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vm.lessons.format import (
    LESSON_NAME,
    LessonError,
    LessonSource,
    cells_of,
    find_lesson,
    lesson_names,
    lessons_dir,
    load_lesson,
)
from vm.lessons.runtime import show
from vm.lessons.sandbox import CellRun, JobResult, Limits, Sandbox, SandboxError


@dataclass
class ExerciseGrade:
    """One exercise of one submission."""

    exercise: str
    score: float
    points: float
    public: str  # "2/3"
    hidden: str  # "1/2"
    feedback: list[str] = field(default_factory=list)


@dataclass
class Grade:
    """One submission's grade, with the reason when something stopped it."""

    student: str
    lesson: str
    path: str
    sha256: str
    score: float
    points: float
    reason: str = ""
    exercises: list[ExerciseGrade] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.student}/{self.lesson}"


@dataclass
class Submission:
    student: str
    lesson: str | None
    path: Path


@dataclass
class Expected:
    """A trusted run's expectations: (exercise, test, hidden) -> values, and the variant."""

    tests: dict[tuple[str, str, bool], list[Any]]
    variant: dict[str, Any]


# --------------------------------------------------------------------------- one lesson


def job_cells(
    lesson: LessonSource, answers: dict[str, str] | None
) -> tuple[list[CellRun], list[str]]:
    """The cells a job runs (setup, answers, public tests) and the hidden tests' code.

    ``answers`` maps exercise to the student's cell (None: the instructor's solutions)."""
    cells, hidden = [], []
    for number, cell in enumerate(lesson.cells):
        if cell.kind == "setup":
            cells.append(CellRun(f"setup cell {number}", cell.source, "setup"))
        elif cell.kind == "solution":
            source = cell.source if answers is None else answers.get(cell.exercise or "")
            if source is not None:
                cells.append(CellRun(str(cell.exercise), source, "solution"))
        elif cell.kind == "tests":
            cells.append(CellRun(f"{cell.exercise} tests", cell.public_source(), "tests"))
            if cell.hidden_source().strip():
                hidden.append(cell.hidden_source())
    return cells, hidden


def expectations(result: JobResult, what: str) -> Expected:
    """The expectations of a trusted run, or a LessonError if that run is itself wrong."""
    problems = [f"{label}: {error}" for label, error in result.cell_errors.items()]
    if result.ended:
        problems.append(result.ended)
    tests = {}
    for t in result.tests:
        if t.error or t.observed != t.expected:
            problems.append(f"test {t.test}: {t.error or 'its solution does not meet it'}")
        tests[(t.exercise, t.test, t.hidden)] = t.expected
    if problems:
        raise LessonError(f"{what}: " + "; ".join(problems[:3]))
    return Expected(tests, result.variant)


def compare(
    lesson: LessonSource, expected: Expected, result: JobResult, missing: set[str]
) -> list[ExerciseGrade]:
    """Grade each exercise: the student's observations against the trusted expectations."""
    reports = {(t.exercise, t.test, t.hidden): t for t in result.tests}
    grades = []
    for exercise, points in lesson.exercises().items():
        keys = [k for k in expected.tests if k[0] == exercise]
        passed = {False: 0, True: 0}
        total = {False: 0, True: 0}
        feedback = []
        if exercise in missing:
            feedback.append(f"the cell {exercise} is missing from the notebook")
        if exercise in result.cell_errors:
            feedback.append(f"your cell raised: {result.cell_errors[exercise]}")
        for key in keys:
            total[key[2]] += 1
            report = reports.get(key)
            want = expected.tests[key]
            ok = report is not None and report.error is None and report.observed == want
            passed[key[2]] += ok
            if ok or key[2]:
                continue
            name = key[1].replace("_", " ")
            if report is None:
                feedback.append(f"{name}: did not run")
            elif report.error:
                feedback.append(f"{name}: {report.error}")
            else:
                feedback.append(f"{name}: {explain(report, want)}")
        tests = total[False] + total[True]
        score = points * (passed[False] + passed[True]) / tests if tests else 0.0
        if total[True] and passed[True] < total[True]:
            feedback.append(f"hidden tests: {passed[True]}/{total[True]} passed")
        grades.append(
            ExerciseGrade(
                exercise,
                round(score, 2),
                points,
                f"{passed[False]}/{total[False]}",
                f"{passed[True]}/{total[True]}",
                feedback,
            )
        )
    return grades


def explain(report, want: list[Any]) -> str:
    """The first expectation the student's code missed, in plain words."""
    if len(report.observed) != len(want):
        return f"the test looked at {len(report.observed)} things instead of {len(want)}"
    for observed, expected, what, hint in zip(
        report.observed, want, report.whats, report.hints, strict=False
    ):
        if observed != expected:
            text = f"{what}: expected {show(expected)}, happened {show(observed)}."
            return text + (f" Hint: {hint}" if hint else "")
    return "failed"


# --------------------------------------------------------------------------- the grader


class Grader:
    """Grades submissions with sandboxes of its own; caches trusted runs per variant."""

    def __init__(
        self, limits: Limits | None = None, lessons: Path | None = None, deny: list[Path] = ()
    ) -> None:
        self.limits = limits or Limits()
        self.folder = lessons or lessons_dir()
        self.deny = [self.folder, *deny]
        self._lessons: dict[str, LessonSource] = {}
        self._expected: dict[tuple[str, str], Expected] = {}
        self._lock = threading.Lock()

    def lesson(self, name: str) -> LessonSource:
        with self._lock:
            if name not in self._lessons:
                self._lessons[name] = load_lesson(name, self.folder)
            return self._lessons[name]

    def expected(self, sandbox: Sandbox, lesson: LessonSource, student: str) -> Expected:
        key = (lesson.name, student)
        if key not in self._expected:
            cells, hidden = job_cells(lesson, None)
            result = sandbox.run(cells, hidden, student=student)
            what = f"lesson {lesson.name}'s solution for student {student!r}"
            self._expected[key] = expectations(result, what)
        return self._expected[key]

    def grade(self, sandbox: Sandbox, submission: Submission) -> Grade:
        """One submission's grade; never raises for anything in the submission."""
        started = time.monotonic()
        path = submission.path
        try:
            data = path.read_bytes()
        except OSError as error:
            data = b""
            unreadable = str(error)
        else:
            unreadable = ""
        sha = hashlib.sha256(data).hexdigest()
        base = Grade(submission.student, submission.lesson or "?", str(path), sha, 0.0, 0.0)
        if unreadable:
            base.reason = f"cannot read the file: {unreadable}"
            return base
        try:
            notebook = json.loads(data.decode("utf-8"))
            if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
                raise ValueError("it has no list of cells")
        except (UnicodeDecodeError, ValueError, RecursionError) as error:
            base.reason = f"not a notebook: {str(error)[:120]}"
            return self._zero(base)
        name = submission.lesson or lesson_of(notebook)
        if name is None:
            base.reason = "which lesson is this? (give --lesson, or name it after the lesson)"
            return base
        try:
            lesson = self.lesson(name)
        except LessonError as error:
            base.reason = str(error)
            return base
        base.lesson = lesson.name
        base.points = sum(lesson.exercises().values())
        answers = {}
        for cell in cells_of(notebook):
            if cell.kind == "solution" and cell.exercise in lesson.exercises():
                answers.setdefault(cell.exercise, cell.source)
        missing = set(lesson.exercises()) - set(answers)
        try:
            expected = self.expected(sandbox, lesson, submission.student)
        except LessonError as error:  # the instructor's problem: say so, grade the rest
            base.reason = f"not graded: {error}"
            return base
        cells, hidden = job_cells(lesson, answers)
        result = sandbox.run(cells, hidden, student=submission.student)
        base.exercises = compare(lesson, expected, result, missing)
        base.score = round(sum(e.score for e in base.exercises), 2)
        reasons = []
        if missing:
            reasons.append("missing cell " + ", ".join(sorted(missing)))
        if result.tamper:
            reasons.append("it changed the grader (" + "; ".join(result.tamper) + "): score 0")
            base.score = 0.0
            for e in base.exercises:
                e.score = 0.0
        if result.ended:
            reasons.append(result.ended)
        for label, error in result.cell_errors.items():
            if label in lesson.exercises():
                reasons.append(f"{label}: {error}")
        base.reason = "; ".join(reasons)[:500]
        base.seconds = round(time.monotonic() - started, 3)
        return base

    def _zero(self, grade: Grade) -> Grade:
        if grade.lesson != "?":
            try:
                lesson = self.lesson(grade.lesson)
                grade.points = sum(lesson.exercises().values())
                grade.lesson = lesson.name
            except LessonError:
                pass
        return grade


def lesson_of(notebook: dict) -> str | None:
    """The lesson a notebook says it is (metadata vmlab.lesson)."""
    meta = notebook.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("vmlab"), dict):
        name = meta["vmlab"].get("lesson")
        return name if isinstance(name, str) else None
    return None


def find_submissions(folder: Path, lesson: str | None, lessons: Path) -> list[Submission]:
    """Every notebook under ``folder``: STUDENT/LESSON.ipynb or STUDENT.ipynb."""
    if not folder.is_dir():
        raise LessonError(f"{folder}: no such folder of submissions")
    known = lesson_names(lessons)
    found = []
    for path in sorted(folder.rglob("*.ipynb")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        relative = path.relative_to(folder)
        if len(relative.parts) >= 2:
            student = relative.parts[0]
            stem = path.stem
            name = stem if stem in known or LESSON_NAME.match(stem) else lesson
        else:
            student, name = path.stem, lesson
        found.append(Submission(student, name, path))
    return found


# --------------------------------------------------------------------------- outputs


def read_journal(path: Path) -> dict[str, Grade]:
    """The grades finished so far (the last line for each key wins)."""
    grades: dict[str, Grade] = {}
    if not path.exists():
        return grades
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            data = json.loads(line)
            data["exercises"] = [ExerciseGrade(**e) for e in data["exercises"]]
            grade = Grade(**data)
        except (ValueError, TypeError, KeyError):
            continue  # a line cut short by an interruption
        grades[grade.key] = grade
    return grades


def write_outputs(grades: list[Grade], csv_path: Path) -> None:
    """grades.csv, grades.json, a feedback page per student and Gradescope results."""
    grades = sorted(grades, key=lambda g: (g.student, g.lesson))
    exercises = list(dict.fromkeys(e.exercise for g in grades for e in g.exercises))
    temporary = csv_path.with_name(csv_path.name + ".tmp")
    with open(temporary, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "lesson", "score", "points", *exercises, "reason"])
        for g in grades:
            by = {e.exercise: e.score for e in g.exercises}
            writer.writerow(
                [
                    g.student,
                    g.lesson,
                    g.score,
                    g.points,
                    *(by.get(x, "") for x in exercises),
                    g.reason,
                ]
            )
    os.replace(temporary, csv_path)
    json_path = csv_path.with_suffix(".json")
    json_path.write_text(json.dumps([asdict(g) for g in grades], indent=1), encoding="utf-8")
    feedback = csv_path.parent / "feedback"
    gradescope = csv_path.parent / "gradescope"
    for g in grades:
        name = safe(f"{g.student}-{g.lesson}")
        feedback.mkdir(exist_ok=True)
        (feedback / f"{name}.md").write_text(feedback_page(g), encoding="utf-8")
        folder = gradescope / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(
            json.dumps(gradescope_results(g), indent=1), encoding="utf-8"
        )


def safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def feedback_page(g: Grade) -> str:
    """A student's feedback page (markdown)."""
    lines = [f"# {g.lesson}: {g.student}", "", f"**Score: {g.score:g} / {g.points:g}**", ""]
    if g.reason:
        lines += [f"Note: {g.reason}", ""]
    for e in g.exercises:
        lines.append(f"## {e.exercise}: {e.score:g} / {e.points:g}")
        lines.append(f"public tests {e.public}, hidden tests {e.hidden}")
        lines += [f"- {line}" for line in e.feedback] or ["- all tests pass"]
        lines.append("")
    return "\n".join(lines)


def gradescope_results(g: Grade) -> dict:
    """Gradescope's results.json for one submission."""
    tests = [
        {
            "name": e.exercise,
            "score": e.score,
            "max_score": e.points,
            "output": "\n".join([f"public {e.public}, hidden {e.hidden}", *e.feedback]),
            "visibility": "visible",
        }
        for e in g.exercises
    ]
    return {"score": g.score, "output": g.reason or "graded", "tests": tests}


# --------------------------------------------------------------------------- the command


def grade_folder(
    folder: Path,
    output: Path,
    jobs: int = 1,
    lesson: str | None = None,
    limits: Limits | None = None,
    lessons: Path | None = None,
    progress=print,
) -> list[Grade]:
    """Grade every submission in ``folder`` not already finished in the journal."""
    lessons = lessons or lessons_dir()
    if lesson is not None:
        find_lesson(lesson, lessons)  # an unknown lesson: a LessonError now
    submissions = find_submissions(folder, lesson, lessons)
    output.parent.mkdir(parents=True, exist_ok=True)
    journal_path = output.with_name(output.name + ".jsonl")
    done = read_journal(journal_path)
    todo = []
    for s in submissions:
        try:
            sha = hashlib.sha256(s.path.read_bytes()).hexdigest()
        except OSError:
            sha = ""
        finished = [g for g in done.values() if g.path == str(s.path) and g.sha256 == sha]
        if not finished:
            todo.append(s)
    progress(f"{len(submissions)} submissions, {len(submissions) - len(todo)} already graded")
    grader = Grader(limits, lessons, deny=[output.parent.resolve(), folder.resolve()])
    work: queue.Queue = queue.Queue()
    for s in todo:
        work.put(s)
    lock = threading.Lock()
    journal = open(journal_path, "a", encoding="utf-8")  # noqa: SIM115
    errors: list[BaseException] = []

    def worker() -> None:
        if work.empty():
            return
        sandbox, failures = None, 0
        try:
            sandbox = Sandbox(grader.limits, grader.deny)
            while True:
                try:
                    submission = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    grade = grader.grade(sandbox, submission)
                except SandboxError as error:  # not the submission's doing: a new sandbox
                    failures += 1
                    progress(f"{submission.student}: not graded ({error}); run again for it")
                    sandbox.close()
                    sandbox = None
                    if failures > 3:
                        raise
                    sandbox = Sandbox(grader.limits, grader.deny)
                    continue
                with lock:
                    journal.write(json.dumps(asdict(grade)) + "\n")
                    journal.flush()
                    os.fsync(journal.fileno())
                    reason = f"  ({grade.reason})" if grade.reason else ""
                    progress(f"{grade.key}: {grade.score:g}/{grade.points:g}{reason}")
        except BaseException as error:
            errors.append(error)
        finally:
            if sandbox is not None:
                sandbox.close()

    workers = max(1, min(jobs, len(todo)))
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    journal.close()
    if errors:
        raise errors[0]
    final = read_journal(journal_path)
    wanted = {str(s.path) for s in submissions}
    grades = [g for g in final.values() if g.path in wanted]
    write_outputs(grades, output)
    return grades
