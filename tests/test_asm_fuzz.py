"""A fuzzer of hostile assembly source: every source ends in bytes or an AsmError at one of
its lines, within 2 seconds.

Sources are random tokens, statements with malformed operands, adversarial shapes (deep
nesting, huge counts, recursive and exponential macros, giant numbers, odd bytes and
unicode, directives with missing or wrong arguments) and mutations of toyos's sources.
Each source comes from its own seed, which a failure prints with the source:
``generate(random.Random(seed))`` makes it again.

The normal run tries a few hundred sources; the large run (``-m slow``) 100,000, or the
count in VMLAB_ASM_FUZZ_COUNT. As a script, ``python tests/test_asm_fuzz.py COUNT [SEED]``
runs COUNT sources and prints the figures.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest

from vm.asm import AsmError, Program, assemble
from vm.asm.encoder import CREGS, REG8, REG16, REG32, SREGS
from vm.isa import FORMS_BY_MNEMONIC

TIME_BOUND = 2.0  # seconds per source: the target, checked by the large (slow) run
DEFAULT_RUN_BOUND = 15.0  # the default run only catches what is far off it: CI machines are
# shared and noisy, and a speed target is met in a benchmark, not in a timed test
HANG = 30  # seconds after which a source counts as a hang (the run goes on)
GUEST = Path(__file__).resolve().parent.parent / "vm" / "guest"
VALID = [(GUEST / name).read_text() for name in ("toyos.asm", "user.asm")]

MNEMONICS = [*sorted({m.split()[-1] for m in FORMS_BY_MNEMONIC}), "rep", "repne", "lock", "mvo"]
REGISTERS = [*REG32, *REG16, *REG8, *SREGS, *CREGS]
DIRECTIVES = ["db", "dw", "dd", "times", "align", "org", "bits", "equ", "section", "global"]
DIRECTIVES += ["extern", "cpu", "default", "byte", "word", "dword", "short", "near", "ptr"]
PREPROCESSOR = ["%define", "%xdefine", "%undef", "%assign", "%if", "%ifdef", "%ifndef"]
PREPROCESSOR += ["%elif", "%else", "%endif", "%macro", "%endmacro", "%include", "%error"]
PREPROCESSOR += [
    "%warning",
    "%line",
    "%pragma",
    "%rep",
    "%endrep",
    "%exitrep",
    "%1",
    "%2",
    "%0",
    "%%x",
]
OPERATORS = ["+", "-", "*", "/", "//", "%", "%%", "<<", ">>", "&", "|", "^", "~", "!", "("]
OPERATORS += [")", "[", "]", ",", ":", "<", ">", "=", "==", "!=", "<=", ">=", "&&", "||"]
ODD = ["\x00", "\x7f", "\x0c", "\x0b", "\r", "\t", "\u00a0", "\ufeff", "\u200f", "\u0663"]
ODD += ["\U0001f600", "e\u0301", "\uff41", "\ud800", "\udcff", "\\", "#", "@", "?", "{", "}"]
ODD += ["\u2028", "\x85", "ß", "Ω", "日本"]
LABELS = ["x", "y", "start", ".loop", "..@1.a", "$", "$$", "_", "a.b", "L1", "eax", "nop"]


def number(rng: random.Random) -> str:
    """A number literal in one of NASM's forms, sometimes giant, sometimes malformed."""
    r = rng.random()
    if r < 0.1:  # giant
        digits = rng.choice(["9", "f", "1", "7"]) * int(10 ** rng.uniform(1, 3.8))
        return (
            rng.choice(["", "0x", "0b", "0o", "$"])
            + digits.replace("f", "1")
            + rng.choice(["", "h", "d", "q"])
        )
    if r < 0.15:  # malformed
        return rng.choice(["0xZZ", "12q9", "1_", "0b102", "$", "0x", "9h9", "1e5", "0.5", "08o"])
    value = rng.choice([0, 1, 2, 3, 4, 7, 8, 16, 127, 128, 255, 256, 65535, 1 << 31, 1 << 32])
    value = rng.choice([value, value - 1, rng.getrandbits(rng.choice([8, 16, 32, 64, 70]))])
    form = rng.randrange(8)
    if form == 0:
        return f"0x{value:x}"
    if form == 1:
        return f"0{value:x}h"
    if form == 2:
        return f"0b{value:b}"
    if form == 3:
        return f"{value:o}q"
    if form == 4:
        return f"${value:x}"
    if form == 5:
        return f"{value:_}"
    return ("-" if rng.random() < 0.3 else "") + str(value)


def string(rng: random.Random) -> str:
    quote = rng.choice("'\"`")
    body = "".join(
        rng.choice(["a", " ", "\\n", "\\x4", "\\x41", "\\q", "\\", "'", '"', "`", "\u00e9", "\t"])
        for _ in range(rng.randrange(8))
    )
    return quote + body + (quote if rng.random() < 0.85 else "")


def memory(rng: random.Random) -> str:
    """A memory operand, often malformed."""
    parts = []
    for _ in range(rng.randrange(0, 5)):
        kind = rng.randrange(5)
        if kind == 0:
            parts.append(rng.choice(REGISTERS))
        elif kind == 1:
            parts.append(
                f"{rng.choice(REG32)}*{rng.choice(['1', '2', '3', '4', '5', '8', '9', '0'])}"
            )
        elif kind == 2:
            parts.append(number(rng))
        elif kind == 3:
            parts.append(rng.choice(LABELS))
        else:
            parts.append(rng.choice(["", "(", ")", "*", ":", "+", "-", "[", "]"]))
    text = "".join(p + rng.choice(["+", "-", "+", "*", " ", ""]) for p in parts)
    size = rng.choice(["", "", "byte ", "word ", "dword ", "dword ptr "])
    return size + "[" + text + ("]" if rng.random() < 0.9 else "")


def operand(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.choice(REGISTERS)
    if kind == 1:
        return memory(rng)
    if kind == 2:
        return number(rng)
    if kind == 3:
        return expression(rng, rng.randrange(1, 4))
    if kind == 4:
        return rng.choice(LABELS) + rng.choice(["", "+4", "-$", " + 1"])
    return string(rng)


def expression(rng: random.Random, depth: int) -> str:
    if depth <= 0 or rng.random() < 0.3:
        return rng.choice([number(rng), rng.choice(LABELS), string(rng), "$", "$$"])
    r = rng.random()
    if r < 0.2:
        return rng.choice("-~!+") + expression(rng, depth - 1)
    if r < 0.4:
        return "(" + expression(rng, depth - 1) + (")" if rng.random() < 0.95 else "")
    op = rng.choice([*OPERATORS[:12], "<", ">", "==", "&&", "||"])
    return expression(rng, depth - 1) + f" {op} " + expression(rng, depth - 1)


def statement(rng: random.Random) -> str:
    """A plausible statement: an instruction, data, times, align, equ, org, bits."""
    r = rng.random()
    if r < 0.45:
        mnemonic = rng.choice(MNEMONICS)
        ops = ", ".join(operand(rng) for _ in range(rng.choice([0, 1, 2, 2, 3])))
        return f"{mnemonic} {ops}".strip()
    if r < 0.6:
        values = ", ".join(
            rng.choice([number(rng), string(rng), expression(rng, 2)])
            for _ in range(rng.randrange(0, 5))
        )
        return f"{rng.choice(['db', 'dw', 'dd'])} {values}"
    if r < 0.72:
        count = rng.choice([number(rng), "0", "1", "3", "-1", "$-$$", "x", "100000", "(1<<26)"])
        return f"times {count} {statement(rng) if rng.random() < 0.8 else ''}"
    if r < 0.8:
        args = rng.choice(["", number(rng), "4", "16", "3", "0", "1 << 40", "8, db 0", "4, nop"])
        return f"align {args}"
    if r < 0.88:
        return f"{rng.choice(LABELS)} equ {expression(rng, 2)}"
    if r < 0.94:
        return f"{rng.choice(['org', 'bits', 'section', 'cpu'])} {number(rng)}"
    return f"{rng.choice(LABELS)}: {statement(rng) if rng.random() < 0.5 else ''}"


# ---- the generators -------------------------------------------------------------------------
def random_tokens(rng: random.Random) -> str:
    vocabulary = [MNEMONICS, REGISTERS, DIRECTIVES, PREPROCESSOR, OPERATORS, ODD, LABELS]
    lines = []
    for _ in range(rng.randrange(1, 25)):
        words = []
        for _ in range(rng.randrange(0, 12)):
            r = rng.random()
            if r < 0.1:
                words.append(number(rng))
            elif r < 0.15:
                words.append(string(rng))
            else:
                words.append(rng.choice(rng.choice(vocabulary)))
        lines.append(rng.choice([" ", "", ", ", "\t", " "]).join(words))
    return "\n".join(lines)


def statements(rng: random.Random) -> str:
    lines = ["bits 32"] if rng.random() < 0.7 else []
    for _ in range(rng.randrange(1, 30)):
        line = statement(rng)
        if rng.random() < 0.2:
            line = rng.choice(LABELS) + ": " + line
        if rng.random() < 0.1:
            line += " ; " + random_tokens(rng).split("\n")[0]
        lines.append(line)
    return "\n".join(lines)


def deep(rng: random.Random) -> str:
    depth = int(10 ** rng.uniform(0, 4.7))
    inner = rng.choice(["1", "x", "$", "(", "", "1+", "'ab'"])
    closing = ")" * (depth - rng.choice([0, 0, 0, 1, -1]))
    nested = "(" * depth + inner + closing
    unary = "".join(rng.choice("-~!+") for _ in range(depth)) + "1"
    ifs = rng.randrange(1, 3000)
    shape = rng.randrange(7)
    if shape == 0:
        return f"mov eax, {nested}"
    if shape == 1:
        return f"dd {unary}"
    if shape == 2:
        return f"%if {nested}\nnop\n%endif"
    if shape == 3:
        return f"mov eax, [ebx + {nested}]"
    if shape == 4:
        return f"times {nested} nop"
    if shape == 5:  # nested %if, perhaps unbalanced
        ends = ifs - rng.choice([0, 0, 1, -1])
        return "%if 1\n" * ifs + "nop\n" + "%else\n" * rng.randrange(2) + "%endif\n" * ends
    return f"%define D {nested}\ndd D"


def huge_counts(rng: random.Random) -> str:
    def count() -> str:
        return rng.choice(
            [str(rng.getrandbits(rng.choice([8, 16, 24, 26, 27, 32, 64, 70]))), "-1", "0", "$"]
        )

    bodies = ["nop", "align 1", "align 4", "db ''", "jmp $", "dd $", "db 1, 2", "push dword $"]
    bodies += ["call x", "align 16, db 0", "mov eax, [x]", "times 0 nop", "org 5", "bits 32"]
    lines = ["bits 32", "x:"]
    for _ in range(rng.randrange(1, 4)):
        nest = " ".join(f"times {count()}" for _ in range(rng.randrange(1, 5)))
        lines.append(f"{nest} {rng.choice(bodies)}")
    if rng.random() < 0.3:
        lines.append(f"align {count()}{rng.choice(['', ', nop', ', dd 1', ', jmp $'])}")
    return "\n".join(lines)


def macros(rng: random.Random) -> str:
    body = rng.choice(["nop", "%%a: jmp %%a", "db %1", "%assign n n+1", "%if 0\nnop\n%endif"])
    shape = rng.randrange(7)
    if shape == 6:  # %rep: nested, huge, unbalanced, exiting, inside macros
        count = rng.choice(["0", "1", "3", "-1", "x", "1000000", "1000001", "$", "n", "(1<<40)"])
        nest = rng.randrange(1, 120)
        ends = nest - rng.choice([0, 0, 0, 1, -1])
        inner = rng.choice([body, "%exitrep", "%if n > 3\n%exitrep\n%endif\n%assign n n+1"])
        text = f"%assign n 0\n%macro m 0-1\n{body}\n%endmacro\n"
        return text + f"%rep {count}\n" * nest + f"{inner}\nm\n" + "%endrep\n" * ends
    if shape == 0:  # recursion through itself, once or twice per level
        calls = "\n".join(["m %1-1"] * rng.randrange(1, 4))
        return f"%macro m 1\n%if %1 > 0\n{calls}\n%endif\n{body}\n%endmacro\nm {rng.randrange(64)}"
    if shape == 1:  # an exponential chain of distinct macros
        levels = rng.randrange(2, 40)
        width = rng.randrange(2, 4)
        text = f"%assign n 0\n%macro m0 0-1\n{body}\n%endmacro\n"
        for i in range(1, levels + 1):
            text += f"%macro m{i} 0\n" + f"m{i - 1}\n" * width + "%endmacro\n"
        return text + f"m{levels}"
    if shape == 2:  # mutual recursion
        return "%macro a 1\nb %1\n%endmacro\n%macro b 1\na %1\n%endmacro\na 3"
    if shape == 3:  # parameters: wrong counts, out of range, greedy, labels
        params = rng.choice(["0", "1", "2", "1-3", "0-*", "99999999999", "2-1"])
        uses = " ".join(rng.choice(["%1", "%2", "%0", "%00", "%99", "%%l", "%" + "9" * 30]))
        args = ", ".join(operand(rng) for _ in range(rng.randrange(0, 4)))
        return f"%macro m {params}\n%%l: db {uses}\n%endmacro\nlbl: m {args}\nm"
    if shape == 4:  # broken structure
        return rng.choice(
            [
                "%macro m 0\nnop",
                "%endmacro",
                "%macro\n%endmacro",
                "%macro m 0\n%macro n 0\n%endmacro\n%endmacro",
                "%macro m x\n%endmacro",
                "%macro m 0\n%if 1\n%endmacro\nm",
            ]
        )
    depth = rng.randrange(1, 80)  # a chain of distinct macros, each calling the next
    text = "".join(f"%macro m{i} 0\nm{i + 1}\n%endmacro\n" for i in range(depth))
    return text + f"%macro m{depth} 0\nnop\n%endmacro\nm0"


def defines(rng: random.Random) -> str:
    shape = rng.randrange(7)
    if shape == 0:
        return rng.choice(
            ["%define X X X\nmov eax, X", "%define X 1, X\ndb X", "%define X X\ndb X"]
        )
    if shape == 1:
        depth = rng.randrange(1, 60)
        return "%define F(x) x x\ndd " + "F(" * depth + "1" + ")" * depth
    if shape == 2:  # exponential chain
        n = rng.randrange(2, 50)
        text = "%define A0 1\n" + "".join(f"%define A{i} A{i - 1}+A{i - 1}\n" for i in range(1, n))
        return text + f"dd A{n - 1}\n%if A{n - 1}\n%endif"
    if shape == 3:
        return "%define A B\n%define B C\n%define C A\ndb A, B, C"
    if shape == 4:  # wrong arguments
        return rng.choice(
            [
                "%define F(x, y) x-y\ndb F(1)",
                "%define F(x) x\ndb F(1",
                "%define F(x) x\ndb F((1, 2)",
                "%define F() 5\ndb F(), F",
                "%define F(x) x\ndb F(\\1), F(\\g<0>)",
                "%define\n%define 1x 2\n%undef\n%assign\n%assign x\n%assign x 1/0",
                "%define F(x x",
                "%ifdef\n%endif",
            ]
        )
    if shape == 5:  # %assign growth
        return "%assign x 3\n" + "%assign x x*x\n" * rng.randrange(1, 200) + "dd x"
    n = rng.randrange(1, 40)  # long bodies
    return f"%define L {'x' * int(10 ** rng.uniform(1, 5))}\n%define M " + "L " * n + "\ndb M"


def odd_bytes(rng: random.Random) -> str:
    lines = statements(rng).split("\n")
    for _ in range(rng.randrange(1, 8)):
        i = rng.randrange(len(lines))
        j = rng.randrange(len(lines[i]) + 1)
        lines[i] = lines[i][:j] + rng.choice(ODD) + lines[i][j:]
    separator = rng.choice(["\n", "\r\n", "\r", "\n\x00"])
    return separator.join(lines)


def labels(rng: random.Random) -> str:
    """Jumps and labels: forward chains that take many passes, labels that never settle."""
    shape = rng.randrange(4)
    if shape == 0:
        n = rng.randrange(1, 60)
        jumps = "".join(f"jmp l{i}\n" for i in range(n))
        return jumps + "".join(f"l{i}: times {rng.randrange(200)} nop\n" for i in range(n))
    if shape == 1:
        a, b = rng.randrange(-500, 500), rng.randrange(-80, 80)
        return f"x: add eax, [ebx + {a} + {b}*(y - x)]\ny:"
    if shape == 2:
        return "\n".join(
            rng.choice(["x:", "x: nop", ".a:", "eax:", "x equ y", "y equ x"]) for _ in range(8)
        )
    return f"times (y - x) nop\nx: nop\ny: jmp {rng.choice(['x', 'y', '$', 'z', '$$+1'])}"


def includes(rng: random.Random) -> str:
    name = rng.choice(["missing.asm", "", "/", "..", "a\x00b", "x" * 300, "."])
    return rng.choice([f'%include "{name}"', f"%include {name}", f"%include '{name}'", "%include"])


def mutation(rng: random.Random) -> str:
    """A window of toyos's sources, mutated a few times."""
    lines = rng.choice(VALID).split("\n")
    if rng.random() < 0.97:
        start = rng.randrange(len(lines))
        lines = lines[start : start + rng.randrange(5, 200)]
    for _ in range(rng.randrange(1, 10)):
        if not lines:
            break
        i = rng.randrange(len(lines))
        line = lines[i]
        r = rng.random()
        if r < 0.2:
            j = rng.randrange(len(line) + 1)
            lines[i] = line[:j] + line[j + rng.randrange(1, 6) :]
        elif r < 0.4:
            j = rng.randrange(len(line) + 1)
            token = rng.choice([number(rng), string(rng), rng.choice(OPERATORS), rng.choice(ODD)])
            lines[i] = line[:j] + token + line[j:]
        elif r < 0.5:
            lines.insert(i, line)
        elif r < 0.6:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif r < 0.7:
            lines.insert(i, rng.choice(["%endif", "%endmacro", "%else", "%if 0", "%macro q 1"]))
        elif r < 0.8:
            lines[i] = statement(rng)
        elif r < 0.9:
            del lines[i]
        else:
            lines = [*lines[:i], line[: rng.randrange(len(line) + 1)]]
    return "\n".join(lines)


@functools.cache
def _corpus() -> list[str]:
    from test_asm_oracle import corpus

    return corpus(seed=11, per_form=4)


def valid_ish(rng: random.Random) -> str:
    """Instructions of every form (the NASM oracle's corpus), around labels and data, with
    a few of them mutated."""
    lines = [
        "bits 32",
        f"org {rng.choice(['0', '0x1000', '0xfffff000', '0xffffffff'])}",
        "near_label:",
    ]
    lines += rng.sample(_corpus(), rng.randrange(1, 80))
    lines += [statement(rng) for _ in range(rng.randrange(3))]
    lines += [f"times {rng.randrange(300)} nop", "far_label:", "data: dd 1, 2, 3", "align 16"]
    for _ in range(rng.choice([0, 0, 1, 2])):
        i = rng.randrange(len(lines))
        j = rng.randrange(len(lines[i]) + 1)
        lines[i] = lines[i][:j] + rng.choice([*OPERATORS, *ODD, number(rng)]) + lines[i][j:]
    return "\n".join(lines)


GENERATORS = [
    (valid_ish, 10),
    (random_tokens, 14),
    (statements, 20),
    (deep, 6),
    (huge_counts, 8),
    (macros, 8),
    (defines, 8),
    (odd_bytes, 10),
    (labels, 6),
    (includes, 2),
    (mutation, 18),
]


def generate(rng: random.Random) -> str:
    """One hostile source."""
    make = rng.choices([g for g, _ in GENERATORS], [w for _, w in GENERATORS])[0]
    source = make(rng)
    if rng.random() < 0.1:  # two shapes in one source
        source += "\n" + generate(rng)
    return source


# ---- the harness ----------------------------------------------------------------------------
class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang


def check(seed: int, bound: float = TIME_BOUND) -> tuple[float, str]:
    """Assemble the source of a seed; (seconds, "bytes" or "AsmError"), or AssertionError
    with the seed and the source when the result is anything else or comes too late."""
    source = generate(random.Random(seed))
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG)
    started = time.perf_counter()
    problem = None
    try:
        result = assemble(source)
        outcome = "bytes"
        if not isinstance(result, Program) or not isinstance(result.code, bytes):
            problem = f"assemble returned {type(result).__name__}"
    except AsmError as error:
        outcome = "AsmError"
        lines = source.count("\n") + 1
        if not 1 <= error.line <= lines or error.column < 1:
            problem = f"AsmError at line {error.line}, column {error.column}: {error.message}"
        str(error)  # the message with its caret must format
    except Hang:
        problem = f"no result after {HANG} s"
    except Exception as error:  # any other exception is the finding
        problem = f"{type(error).__name__}: {error}"[:500]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    seconds = time.perf_counter() - started
    if problem is None and seconds > bound:
        problem = f"took {seconds:.2f} s (bound {bound} s)"
    if problem:
        shown = source if len(source) <= 3000 else source[:3000] + f"... ({len(source):,} chars)"
        raise AssertionError(
            f"seed {seed}: {problem}\n"
            f"(generate(random.Random({seed})) makes the source again)\n"
            f"source: {shown!r}"
        )
    return seconds, outcome


def run(count: int, first_seed: int = 0, bound: float = TIME_BOUND) -> dict:
    """Check count sources; the figures, and the failures (at most 20 kept).

    A source over the time bound is tried once more: the machines are shared, and a
    neighbour's burst can stall one run. It fails if the second run is over the bound too;
    the first time counts as the source's time either way.
    """
    figures = {"count": 0, "bytes": 0, "AsmError": 0, "failed": 0, "retried": 0}
    figures |= {"failures": [], "slowest": (0.0, None)}
    started = time.perf_counter()
    for seed in range(first_seed, first_seed + count):
        figures["count"] += 1
        try:
            try:
                seconds, outcome = check(seed, bound)
            except AssertionError as failure:
                if "took" not in str(failure).split("\n")[0]:
                    raise
                first = float(str(failure).split("took ")[1].split(" s")[0])
                figures["retried"] += 1
                _, outcome = check(seed, bound)
                seconds = first
        except AssertionError as failure:
            figures["failed"] += 1
            if len(figures["failures"]) < 20:
                figures["failures"].append(str(failure))
            continue
        figures[outcome] += 1
        if seconds > figures["slowest"][0]:
            figures["slowest"] = (seconds, seed)
    figures["seconds"] = time.perf_counter() - started
    return figures


def summary(figures: dict) -> str:
    slowest, seed = figures["slowest"]
    return (
        f"{figures['count']:,} hostile sources in {figures['seconds']:.0f} s: "
        f"{figures['bytes']:,} assembled, {figures['AsmError']:,} AsmError, "
        f"{figures['failed']} failures (other exceptions, bad lines, over {TIME_BOUND:g} s "
        f"twice); {figures['retried']} over {TIME_BOUND:g} s once but not again; slowest "
        f"{slowest:.2f} s (seed {seed})"
    )


def test_the_generators_are_reproducible():
    assert [generate(random.Random(s)) for s in range(50)] == [
        generate(random.Random(s)) for s in range(50)
    ]


def test_hostile_sources_end_in_bytes_or_an_asm_error():
    count = int(os.environ.get("VMLAB_ASM_FUZZ_SMALL", "600"))
    figures = run(count, first_seed=1_000_000, bound=DEFAULT_RUN_BOUND)
    print(summary(figures))
    assert not figures["failures"], "\n\n".join(figures["failures"])
    assert figures["bytes"] > 0 and figures["AsmError"] > 0


@pytest.mark.slow
def test_hostile_sources_end_in_bytes_or_an_asm_error_large():
    figures = run(int(os.environ.get("VMLAB_ASM_FUZZ_COUNT", "100000")))
    print(summary(figures))
    assert not figures["failures"], "\n\n".join(figures["failures"])


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    first = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    figures = run(count, first)
    print(summary(figures))
    for failure in figures["failures"]:
        print("\n" + failure)
    sys.exit(1 if figures["failures"] else 0)
