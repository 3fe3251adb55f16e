"""What a lesson notebook uses: ``Lesson`` (the student's seeded variant, the exercises'
tests) and ``check(exercise)``, which runs that exercise's public tests and says in plain
words what was expected, what happened, and a hint.

>>> lesson = Lesson("00-machine", seed=7)
>>> lesson.pick("A", range(10, 20)) == Lesson("00-machine", seed=7).pick("A", range(10, 20))
True

While the grader runs a submission, ``GRADING`` holds the student it grades: the seed
comes from the grader (never from the notebook), and ``check`` does nothing.
"""

from __future__ import annotations

import hashlib
import random
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# Set by the grader's sandbox before any lesson code runs: {"student": id} or {"seed": n}.
GRADING: dict[str, Any] | None = None


def seed_for(student: str) -> int:
    """The seed of a student's variant (the same for every lesson)."""
    return int.from_bytes(hashlib.sha256(student.strip().encode()).digest()[:4], "big")


class Mismatch(AssertionError):
    """One expectation a test made that the student's code did not meet."""


@dataclass
class Expectation:
    """One thing a test looked at: what it expected, what happened, and a hint."""

    what: str
    observed: Any
    expected: Any
    hint: str = ""

    @property
    def ok(self) -> bool:
        return self.observed == self.expected


@dataclass
class Tester:
    """What a test function receives: ``t.expect(observed, expected, what, hint=...)``.

    A test records observations of the student's code; a test passes when every observation
    equals its expectation and nothing raised."""

    records: list[Expectation] = field(default_factory=list)

    def expect(self, observed: Any, expected: Any, what: str, hint: str = "") -> None:
        """Record that ``what`` should be ``expected``; it was ``observed``."""
        self.records.append(Expectation(what, plain(observed), plain(expected), hint))


@dataclass
class Test:
    """A test of one exercise: a function of a Tester."""

    exercise: str
    name: str
    function: Callable[[Tester], None]
    hidden: bool = False


@dataclass
class TestOutcome:
    """What one test run found."""

    test: str
    records: list[Expectation]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(r.ok for r in self.records)

    def explain(self) -> str:
        """Plain words: the first unmet expectation (expected, happened, a hint) or error."""
        if self.error is not None:
            return self.error
        for r in self.records:
            if not r.ok:
                text = f"{r.what}: expected {show(r.expected)}, happened {show(r.observed)}."
                return text + (f" Hint: {r.hint}" if r.hint else "")
        return "ok"


@dataclass
class CheckResult:
    """check()'s answer; shown as plain text in the notebook."""

    exercise: str
    outcomes: list[TestOutcome]
    hidden: int
    seconds: float

    @property
    def passed(self) -> int:
        return sum(o.ok for o in self.outcomes)

    @property
    def ok(self) -> bool:
        return self.passed == len(self.outcomes)

    def __repr__(self) -> str:
        head = f"{self.exercise}: public {self.passed}/{len(self.outcomes)}"
        head += ", hidden tests run at grading"
        lines = [head]
        for o in self.outcomes:
            mark = "✓" if o.ok else "✗"
            lines.append(
                f"  {mark} {o.test.replace('_', ' ')}" + ("" if o.ok else f": {o.explain()}")
            )
        if self.ok:
            lines.append("  All public tests pass.")
        return "\n".join(lines)


def plain(value: Any) -> Any:
    """``value`` as plain data (int, float, str, bool, None, lists, dicts with str keys), so
    that it compares and travels as JSON; anything else becomes its repr in angle brackets."""
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind in (list, tuple):
        return [plain(v) for v in value]
    if kind is dict:
        return {str(k): plain(v) for k, v in value.items()}
    try:  # numpy integers and the like
        import numpy as np

        if isinstance(value, np.integer):
            return int(value)
        if isinstance(value, np.floating):
            return float(value)
    except ImportError:  # pragma: no cover
        pass
    return f"<{kind.__name__}>"


def show(value: Any) -> str:
    """A value as a student reads it: integers from 256 up in hex too."""
    if type(value) is int and abs(value) >= 256:
        return f"{value:#x} ({value})"
    if type(value) is str:
        return repr(value)
    return str(value)


def describe_error(error: BaseException, limit: int = 300) -> str:
    """One line for an exception raised by a student's code, without a Python traceback."""
    if isinstance(error, NotImplementedError):
        return "not written yet (the cell still raises NotImplementedError)"
    if isinstance(error, NameError):
        return f"{error} (run the exercise's cell first, or check its name)"
    if isinstance(error, SystemExit):
        return f"the code called sys.exit({error.code!r})"
    if isinstance(error, RecursionError):
        return "endless recursion (RecursionError)"
    if isinstance(error, SyntaxError):
        return f"syntax error on line {error.lineno}: {error.msg}"
    text = f"{type(error).__name__}: {error}"
    frames = traceback.extract_tb(error.__traceback__)
    mine = [f for f in frames if f.filename.startswith("<cell")]
    if mine:
        text += f" ({mine[-1].filename[1:-1]}, line {mine[-1].lineno})"
    return text[:limit]


def run_test(test: Test) -> TestOutcome:
    """Run one test and catch everything it raises."""
    tester = Tester()
    try:
        test.function(tester)
    except Mismatch as error:
        return TestOutcome(test.name, tester.records, str(error))
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt):
            raise
        return TestOutcome(test.name, tester.records, describe_error(error))
    return TestOutcome(test.name, tester.records)


class Lesson:
    """One lesson's variant and exercises, made at the top of the notebook.

    ``Lesson("00-machine", student="ada")`` (or ``seed=``) picks the student's variant;
    ``lesson.pick(name, choices)`` draws a value of it; ``@lesson.test("00-x")`` registers a
    test; ``lesson.check("00-x")`` runs the exercise's public tests.
    """

    def __init__(self, name: str, student: str | None = None, seed: int | None = None) -> None:
        if GRADING is not None:  # the grader decides whose variant this is
            student, seed = GRADING.get("student"), GRADING.get("seed")
        if seed is None:
            seed = seed_for(student) if student else 0
        self.name = name
        self.student = student
        self.seed = int(seed)
        self.variant: dict[str, Any] = {}
        self.tests: list[Test] = []
        self._rng = random.Random(f"{name}:{self.seed}")
        if GRADING is not None:
            GRADING.setdefault("lessons", []).append(self)

    def pick(self, name: str, choices: Iterable[Any]) -> Any:
        """One value of this student's variant, drawn from ``choices`` and remembered in
        ``lesson.variant`` (the key prints it)."""
        options: Sequence[Any] = choices if isinstance(choices, Sequence) else list(choices)
        value = options[self._rng.randrange(len(options))]
        self.variant[name] = value
        return value

    def sample(self, name: str, population: Iterable[Any], k: int) -> list[Any]:
        """``k`` different values of this student's variant, drawn from ``population``."""
        values = self._rng.sample(list(population), k)
        self.variant[name] = values
        return values

    def test(self, exercise: str, hidden: bool = False) -> Callable:
        """Decorator: register ``function(t)`` as a test of ``exercise``."""

        def register(function: Callable[[Tester], None]) -> Callable[[Tester], None]:
            self.tests = [
                t for t in self.tests if t.name != function.__name__ or t.exercise != exercise
            ]
            self.tests.append(Test(exercise, function.__name__, function, hidden))
            return function

        return register

    def exercises(self) -> list[str]:
        """The exercises that have tests, in order."""
        return list(dict.fromkeys(t.exercise for t in self.tests))

    def check(self, exercise: str) -> CheckResult | None:
        """Run ``exercise``'s public tests now and say how they went (does nothing while
        the grader runs)."""
        if GRADING is not None:
            return None
        known = self.exercises()
        if exercise not in known:
            raise ValueError(
                f"no exercise {exercise!r} in lesson {self.name} (it has: {', '.join(known)})"
            )
        started = time.perf_counter()
        mine = [t for t in self.tests if t.exercise == exercise]
        outcomes = [run_test(t) for t in mine if not t.hidden]
        hidden = sum(t.hidden for t in mine)
        return CheckResult(exercise, outcomes, hidden, time.perf_counter() - started)

    def __repr__(self) -> str:
        who = f"student {self.student!r}, " if self.student else ""
        return f"Lesson {self.name} ({who}seed {self.seed})"
