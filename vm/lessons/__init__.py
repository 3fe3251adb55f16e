"""Lessons and their grader: the lesson format (vm.lessons.format), what a notebook uses
(``Lesson`` and ``check``, vm.lessons.runtime), the sandbox that runs a submission
(vm.lessons.sandbox), the grader (vm.lessons.grader) and release (vm.lessons.release).

Nothing here holds a solution or a hidden test: those live only in the instructor's
sources under ``lessons/``.
"""

from vm.lessons.runtime import CheckResult, Lesson, seed_for

__all__ = ["CheckResult", "Lesson", "seed_for"]
