"""What one assembly may cost: every input ends in bytes or an AsmError that names a line.

Each limit bounds a way a short source can ask for unbounded work: macros that expand
into macros, `times` counts, labels that keep moving. NASM bounds the same things with its
``--limit-*`` options, and vmlab takes NASM's numbers where NASM has them. Above those, a
work budget keeps the time an assembly takes in proportion to the size of its source:
WORK_BASE units for any source, and WORK_PER_CHAR more per character of source read. A
unit is about four microseconds of work: a plain line read (and a unit per 16 characters
of the lines handed to the assembler); a directive, a macro expansion, and a line assembled
on one pass or one repetition of `times` that must run by itself (plus a unit per two of
their tokens), and a %if or %assign expression cost the WORK_* units below. toyos's
kernel uses about 24,000 of its 256,000.
"""

from __future__ import annotations

import time

from vm.asm.errors import Location

MAX_SOURCE = 16 << 20  # characters of source read: the text and each %include, each time
MAX_LINES = 4_000_000  # lines the preprocessor reads, from files and macro bodies
MAX_EXPANDED = 64 << 20  # characters of the logical lines the preprocessor hands on
MAX_LINE = 1 << 20  # characters that %define or macro parameters may add to one line
MAX_DEFINE_EXPANSIONS = 100_000  # single-line macro expansions in one line
MAX_DEFINE_DEPTH = 64  # single-line macro calls nested in each other's arguments
MAX_MACRO_CALLS = 100_000  # multi-line macro expansions in all (NASM's --limit-mmacros)
MAX_MACRO_DEPTH = 100  # multi-line macros expanding inside each other (2 Python frames each)
MAX_REP = 1_000_000  # repetitions of one %rep (NASM's --limit-rep)
MAX_INCLUDE_DEPTH = 32
MAX_PASSES = 40
MAX_OUTPUT = 64 << 20  # bytes of output
WORK_BASE = 120_000  # units of work any source may use (about half a second)
WORK_PER_CHAR = 2  # more units per character of source read
WORK_DIRECTIVE = 3  # units for a preprocessor directive (%if, %assign...; a plain line: 1)
WORK_EXPANSION = 2  # units for a single-line macro expansion
WORK_CALL = 4  # units for a multi-line macro expansion (besides its lines)
WORK_EXPRESSION = 12  # units for a %if or %assign expression (substituted, lexed, parsed)
WORK_STATEMENT = 6  # units for a statement assembled on one pass, or a `times` repetition
TIME_LIMIT = 60.0  # seconds of wall time for one assembly (None: no limit)

_CHECK_EVERY = 256  # lines between two looks at the clock


class Budget:
    """The work and wall time one assembly has left, shared by its preprocessor and passes."""

    def __init__(self, time_limit: float | None = TIME_LIMIT) -> None:
        if time_limit is not None and not time_limit > 0:
            raise ValueError("time_limit must be a positive number of seconds, or None")
        self.time_limit = time_limit
        self.deadline = None if time_limit is None else time.monotonic() + time_limit
        self.work = 0
        self.allowance = WORK_BASE
        self.ticks = 0

    def allow(self, characters: int) -> None:
        """More source was read: it may cost more work."""
        self.allowance += WORK_PER_CHAR * characters

    def spend(self, units: int, loc: Location, column: int = 1) -> None:
        """Count work done at a line; stop when the source has used what its size allows."""
        self.work += units
        if self.work > self.allowance:
            self.exhausted(loc, column)
        self.ticks += 1
        if self.ticks % _CHECK_EVERY == 0:
            self.check_time(loc)

    def exhausted(self, loc: Location, column: int = 1) -> None:
        raise loc.error(
            f"assembling this source takes more work than its size allows ({self.allowance:,} "
            "units: macro expansions, times repetitions, passes over its lines)",
            column,
        )

    def check_time(self, loc: Location) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise loc.error(f"assembly took longer than its time limit ({self.time_limit:g} s)")
