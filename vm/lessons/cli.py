"""``python -m vm lessons list|key|release|check`` and ``python -m vm grade``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vm.lessons.format import LessonError, lesson_names, lessons_dir, load_lesson


def add_commands(commands) -> None:
    """Add the lessons and grade subcommands to vm's argument parser."""
    lessons = commands.add_parser("lessons", help="list, release and key the lessons")
    sub = lessons.add_subparsers(dest="lessons_command", required=True)
    sub.add_parser("list", help="the lessons and their exercises")
    key = sub.add_parser("key", help="the answer key for one student's variant")
    key.add_argument("lesson")
    who = key.add_mutually_exclusive_group()
    who.add_argument("--seed", type=int, default=None)
    who.add_argument("--student", default=None)
    release = sub.add_parser(
        "release", help="write student versions (stubs, no hidden tests); checks each lesson"
    )
    release.add_argument("lessons", nargs="*", help="default: every lesson")
    release.add_argument("-o", "--output", type=Path, default=Path("release"))

    grade = commands.add_parser("grade", help="grade a folder of submitted notebooks")
    grade.add_argument("submissions", type=Path)
    grade.add_argument("-o", "--output", type=Path, default=Path("grades.csv"))
    grade.add_argument("-j", "--jobs", type=int, default=1)
    grade.add_argument("--lesson", default=None, help="the lesson, if the files do not say")
    grade.add_argument("--time-limit", type=float, default=60.0, help="seconds per submission")
    grade.add_argument("--memory-limit", type=int, default=1024, help="MiB per submission")
    grade.add_argument("--output-limit", type=int, default=1024, help="KiB of printing")


def run(args: argparse.Namespace) -> int:
    """Run a lessons or grade subcommand; a LessonError is one line on stderr."""
    try:
        if args.command == "grade":
            return grade_command(args)
        if args.lessons_command == "list":
            for name in lesson_names():
                lesson = load_lesson(name)
                parts = ", ".join(f"{e} ({p:g})" for e, p in lesson.exercises().items())
                print(f"{name}: {parts}")
            return 0
        if args.lessons_command == "key":
            from vm.lessons.release import key

            seed = args.seed if args.seed is not None or args.student else 0
            print(key(args.lesson, seed=seed, student=args.student))
            return 0
        from vm.lessons.release import release

        names = args.lessons or lesson_names()
        for path in release(names, args.output):
            print(f"wrote {path} (and {path.with_suffix('.py').name})")
        return 0
    except LessonError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def grade_command(args: argparse.Namespace) -> int:
    from vm.lessons.grader import grade_folder
    from vm.lessons.sandbox import Limits

    limits = Limits(
        seconds=args.time_limit,
        cell_seconds=min(20.0, args.time_limit),
        memory=args.memory_limit << 20,
        output=args.output_limit << 10,
    )
    if args.jobs < 1:
        raise LessonError(f"-j must be at least 1, not {args.jobs}")
    started = time.monotonic()
    grades = grade_folder(
        args.submissions, args.output, args.jobs, args.lesson, limits, lessons_dir()
    )
    took = time.monotonic() - started
    print(
        f"graded {len(grades)} submissions in {took:.1f} s; wrote {args.output}, "
        f"{args.output.with_suffix('.json')}, {args.output.parent / 'feedback'}/ and "
        f"{args.output.parent / 'gradescope'}/"
    )
    return 0
