"""NASM's preprocessor, the part vmlab uses.

%define (with and without parameters), %xdefine, %undef, %assign, %ifdef / %ifndef / %if /
%elif / %else / %endif, %macro (and %rmacro) / %endmacro with %1..%N, %0 and %%local
labels, %include, %error. Macro names are not case-sensitive (%imacro is %macro).
Produces the logical lines the assembler sees, each remembering the file and line it came
from.

Macros expand as in NASM: a single-line macro is not expanded again inside its own
expansion or its own arguments (``%define X X X`` gives ``X X``), and a multi-line macro
is not expanded inside its own expansion (a call of it there is left as an ordinary line,
so a ``%macro push 1`` can use the PUSH instruction; a %rmacro may call itself, up to
MAX_MACRO_DEPTH deep). What a source may cost is bounded by vm.asm.limits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vm.asm import limits
from vm.asm.errors import AsmError, Location
from vm.asm.lexer import Expression, tokenize

_IDENT = re.compile(r"[A-Za-z_.?@$][A-Za-z0-9_.?@$#~]*")
# A line in pieces for %define expansion: strings, the comment, identifiers that can name a
# macro (not right after a letter, digit, '_' or '%'), blanks, and everything else.
_PIECES = re.compile(
    r"(?P<str>'[^']*'?|\"[^\"]*\"?|`(?:[^`\\]|\\.)*`?)"
    r"|(?P<comment>;.*)"
    r"|(?P<id>(?<![\w%])[A-Za-z_.?@$][A-Za-z0-9_.?@$#~]*)"
    r"|(?P<blank>[ \t]+)"
    r"|(?P<other>[\w%]+|.)",
    re.S,
)
_PARAM = re.compile(r"%([0-9]+)")
_PARAM_COUNT = re.compile(r"%0\b")
_NO_HIDE: frozenset[str] = frozenset()
_MACRO_WORDS = ("%macro", "%imacro", "%rmacro", "%irmacro")


class _ExitRep(Exception):
    """%exitrep: leave the innermost %rep now."""


# A piece of a line being expanded: its text, its kind (a _PIECES group name), the macros
# it may no longer expand (those whose expansion it came from), and the column of the
# original text it came from (for errors).
Piece = tuple[str, str, frozenset, int]


@dataclass
class Define:
    """A single-line macro: its parameters (None: none, not even parentheses) and body."""

    params: list[str] | None
    body: str
    pieces: list[tuple[str, str, int]]  # text, kind, parameter number (-1: none)
    size: int  # characters in the body

    def __post_init__(self) -> None:
        self.reversed = self.pieces[::-1]


@dataclass
class Macro:
    name: str
    min_params: int
    max_params: int
    body: list[tuple[Location, str]]
    loc: Location
    recursive: bool = False  # %rmacro: expanded inside its own expansion too


def split_args(text: str) -> list[str]:
    """Split macro arguments at top-level commas (not inside strings, [], (), {})."""
    args = []
    depth = 0
    quote = ""
    start = 0
    end = len(text)
    for i, c in enumerate(text):
        if quote:
            if c == quote:
                quote = ""
        elif c in "'\"`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
        elif c == ";":
            end = i
            break
    current = text[start:end].strip()
    if current or args:
        args.append(current)
    return [a[1:-1] if a.startswith("{") and a.endswith("}") else a for a in args]


def _strip(arg: list[Piece]) -> list[Piece]:
    """An argument without blanks around it, nor the braces that may wrap it ({a, b})."""
    start, end = 0, len(arg)
    while start < end and arg[start][1] == "blank":
        start += 1
    while end > start and arg[end - 1][1] == "blank":
        end -= 1
    if end - start >= 2 and arg[start][0] == "{" and arg[end - 1][0] == "}":
        start, end = start + 1, end - 1
    return arg[start:end]


def _make_define(params: list[str] | None, body: str) -> Define:
    pieces = []
    for m in _PIECES.finditer(body):
        text, kind = m.group(0), m.lastgroup
        number = params.index(text) if kind == "id" and params and text in params else -1
        pieces.append((text, kind, number))
    return Define(params, body, pieces, len(body))


class _LineExpansion:
    """Counters for the %define expansion of one line."""

    __slots__ = ("added", "budget", "count", "loc")

    def __init__(self, loc: Location, budget: limits.Budget) -> None:
        self.loc = loc
        self.budget = budget
        self.count = 0
        self.added = 0

    def expanded(self, name: str, column: int) -> None:
        self.budget.spend(limits.WORK_EXPANSION, self.loc, column)
        self.count += 1
        if self.count > limits.MAX_DEFINE_EXPANSIONS:
            message = (
                f"single-line macros expand more than {limits.MAX_DEFINE_EXPANSIONS:,} times "
                f"in this line (at '{name}')"
            )
            raise self.loc.error(message, column)

    def add(self, size: int, column: int) -> None:
        self.added += size
        if self.added > limits.MAX_LINE:
            message = (
                f"%define expansions add more than {limits.MAX_LINE:,} characters to this line"
            )
            raise self.loc.error(message, column)


class Preprocessor:
    """Turns source files into logical lines."""

    def __init__(
        self,
        include_paths=(),
        defines: dict[str, str | int] | None = None,
        budget: limits.Budget | None = None,
    ) -> None:
        self.include_paths = [Path(p) for p in include_paths]
        self.defines: dict[str, Define] = {}
        for name, value in (defines or {}).items():
            self.defines[name] = _make_define(None, str(value))
        self.macros: dict[str, Macro] = {}
        self.out: list[Location] = []
        self.unique = 0
        self.includes: list[str] = []
        self.budget = budget or limits.Budget()
        self.expanding: dict[str, int] = {}  # multi-line macros being expanded now (how often)
        self.macro_calls = 0
        self.repeating = 0  # %rep bodies being processed now
        self.source_size = 0
        self.lines_read = 0
        self.expanded_size = 0
        self._hidden: dict[tuple[frozenset, str], frozenset] = {}  # hide sets, made once

    # ---- single-line macros --------------------------------------------------------------
    def substitute(self, text: str, loc: Location) -> str:
        """Replace %define'd names in a line (not inside strings or the comment)."""
        defines = self.defines
        if not defines or not any(word in defines for word in _IDENT.findall(text)):
            return text
        pieces = [
            (m.group(0), m.lastgroup, _NO_HIDE, m.start() + 1) for m in _PIECES.finditer(text)
        ]
        out = self._expand(pieces, _LineExpansion(loc, self.budget), 0)
        return "".join(piece[0] for piece in out)

    def _expand(self, pieces: list[Piece], line: _LineExpansion, depth: int) -> list[Piece]:
        """Expand the macros in pieces, rescanning each expansion with what follows it."""
        out: list[Piece] = []
        pending = pieces[::-1]  # a stack: the next piece is at the end
        while pending:
            piece = pending.pop()
            name, kind, hide, column = piece
            define = self.defines.get(name) if kind == "id" else None
            if define is None or name in hide:
                out.append(piece)
                continue
            args = None
            if define.params is not None:
                args = self._arguments(pending, name, line.loc, column)
                if args is None:  # the name alone, without arguments: not a call
                    out.append(piece)
                    continue
                if len(args) != len(define.params):
                    message = f"{name} takes {len(define.params)} arguments, not {len(args)}"
                    raise line.loc.error(message, column)
            line.expanded(name, column)
            hidden = self._hidden.get((hide, name))
            if hidden is None:
                hidden = self._hidden[hide, name] = hide | {name}
            if args is None:
                line.add(define.size, column)
                pending += [(text, kind, hidden, column) for text, kind, _ in define.reversed]
                continue
            if depth >= limits.MAX_DEFINE_DEPTH:
                message = f"single-line macro calls nest deeper than {limits.MAX_DEFINE_DEPTH}"
                raise line.loc.error(message, column)
            values = []
            for arg in args:  # arguments expand first, with this macro already hidden
                arg = [(t, k, h | hidden if h else hidden, c) for t, k, h, c in arg]
                values.append(self._expand(arg, line, depth + 1))
            sizes = [sum(len(piece[0]) for piece in value) for value in values]
            expansion: list[Piece] = []
            for text, kind, number in define.pieces:
                if number < 0:
                    line.add(len(text), column)
                    expansion.append((text, kind, hidden, column))
                else:
                    line.add(sizes[number], column)
                    expansion += values[number]
            pending.extend(reversed(expansion))
        return out

    @staticmethod
    def _arguments(
        pending: list[Piece], name: str, loc: Location, column: int
    ) -> list[list[Piece]] | None:
        """Take a call's arguments, "(a, b)", off the pending pieces; None if none follow."""
        k = len(pending) - 1
        while k >= 0 and pending[k][1] == "blank":
            k -= 1
        if k < 0 or pending[k][0] != "(":
            return None
        args: list[list[Piece]] = [[]]
        parens = 0  # open ( inside the call's parentheses
        nest = 0  # open ( [ { (a comma inside them does not separate arguments)
        j = k - 1
        while j >= 0:
            piece = pending[j]
            text, kind = piece[0], piece[1]
            if kind == "comment":
                j = -1
                break
            if kind == "other" and len(text) == 1:
                if text == ")" and parens == 0:
                    break
                if text == "(":
                    parens += 1
                elif text == ")":
                    parens -= 1
                if text in "([{":
                    nest += 1
                elif text in ")]}":
                    nest -= 1
                elif text == "," and nest == 0:
                    args.append([])
                    j -= 1
                    continue
            args[-1].append(piece)
            j -= 1
        if j < 0:
            raise loc.error(f"unterminated arguments of {name}", pending[k][3])
        del pending[j:]
        args = [_strip(arg) for arg in args]
        return [] if args == [[]] else args

    def evaluate(self, text: str, loc: Location, column: int) -> int:
        """A %if / %assign expression (numbers and defines only)."""
        self.budget.spend(limits.WORK_EXPRESSION, loc, column)
        text = self.substitute(text, loc)
        tokens = tokenize(text, loc)

        def lookup(name: str, col: int) -> int:
            raise loc.error(f"'{name}' is not defined here (only numbers in %if)", column)

        expr = Expression(tokens, Location(loc.filename, loc.line, text), lookup)
        value = expr.parse()
        if expr.peek() is not None:
            raise loc.error("junk after the expression", column)
        return value

    # ---- files ---------------------------------------------------------------------------
    def run_file(self, path: Path) -> list[Location]:
        self.include(path, None)
        return self.out

    def run_text(self, text: str, filename: str) -> list[Location]:
        self.count_source(len(text), Location(filename, 1, ""))
        self.process(text.split("\n"), filename, Path(filename).parent, depth=0)
        return self.out

    def count_source(self, size: int, loc: Location, column: int = 1) -> None:
        self.source_size += size
        self.budget.allow(size)
        if self.source_size > limits.MAX_SOURCE:
            message = f"the source is larger than {limits.MAX_SOURCE >> 20} MiB"
            raise loc.error(message + (" with its includes" if self.includes else ""), column)

    def include(self, path: Path, loc: Location | None, depth: int = 0, column: int = 1) -> None:
        name = str(path)
        where = loc or Location(name, 0, "")
        if name in self.includes:
            raise where.error(f"'{path.name}' includes itself", column)
        if depth > limits.MAX_INCLUDE_DEPTH:
            raise where.error("%include nests too deep", column)
        try:
            if self.source_size + path.stat().st_size > limits.MAX_SOURCE:
                self.count_source(path.stat().st_size, where, column)
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise where.error(f"cannot read {path}: {error}", column) from None
        self.count_source(len(text), where, column)
        self.includes.append(name)
        self.process(text.split("\n"), name, path.parent, depth)
        self.includes.pop()

    def find_include(self, name: str, here: Path, loc: Location, column: int) -> Path:
        for folder in [here, *self.include_paths]:
            try:
                candidate = folder / name
                if candidate.is_file():
                    return candidate.resolve()
            except (OSError, ValueError):  # a name the file system cannot take
                break
        raise loc.error(f"include file '{name}' not found", column)

    # ---- lines ---------------------------------------------------------------------------
    def process(self, lines: list[str], filename: str, here: Path, depth: int) -> None:
        located = ((Location(filename, n, text), text) for n, text in enumerate(lines, 1))
        self.process_located(located, here, depth)

    def process_located(
        self, lines: Iterable[tuple[Location, str]], here: Path, depth: int, macro_depth: int = 0
    ) -> None:
        # [active (this level and every outer one), some branch taken]
        conditions: list[list[bool]] = []
        macro: Macro | None = None
        rep: list | None = None  # a %rep being collected: [count, its location, body, nesting]
        loc = None
        budget = self.budget
        for loc, text in lines:
            self.lines_read += 1
            budget.work += 1
            if not self.lines_read & 255:
                if self.lines_read > limits.MAX_LINES:
                    message = f"the source expands to more than {limits.MAX_LINES:,} lines"
                    raise loc.error(message)
                if budget.work > budget.allowance:
                    budget.exhausted(loc)
                budget.check_time(loc)
            if macro is None and rep is None and "%" not in text:  # the common case: a plain line
                if conditions and not conditions[-1][0]:
                    continue
                self.line(loc, text, here, depth, macro_depth)
                continue
            budget.work += limits.WORK_DIRECTIVE - 1
            stripped = text.strip()
            word = stripped.split(None, 1)[0].lower() if stripped else ""
            rest = stripped[len(word) :].strip() if word else ""
            column = text.find(word) + 1 if word else 1
            if macro is not None:  # collecting a %macro body
                if word == "%endmacro":
                    self.macros[macro.name.lower()] = macro
                    macro = None
                elif word in _MACRO_WORDS:
                    raise loc.error(f"{word} inside %macro is not supported", column)
                else:
                    macro.body.append((loc, text))
                continue
            if rep is not None:  # collecting a %rep body (up to its own %endrep)
                if word == "%rep":
                    rep[3] += 1
                elif word == "%endrep" and rep[3]:
                    rep[3] -= 1
                elif word == "%endrep":
                    count, rep_loc, body, _ = rep
                    rep = None
                    self.repeat(count, body, rep_loc, here, depth, macro_depth)
                    continue
                rep[2].append((loc, text))
                continue
            active = conditions[-1][0] if conditions else True
            if word in ("%ifdef", "%ifndef", "%if"):
                if not active:
                    conditions.append([False, True])
                    continue
                if word == "%if":
                    ok = bool(self.evaluate(rest, loc, column))
                else:
                    if not rest:
                        raise loc.error(f"{word} needs a name", column)
                    ok = (rest.split()[0] in self.defines) == (word == "%ifdef")
                conditions.append([ok, ok])
                continue
            if word in ("%elif", "%else", "%endif"):
                if not conditions:
                    raise loc.error(f"{word} without %if", column)
                if word == "%endif":
                    conditions.pop()
                    continue
                top = conditions[-1]
                outer = conditions[-2][0] if len(conditions) > 1 else True
                if word == "%else":
                    top[0] = outer and not top[1]
                else:
                    top[0] = outer and not top[1] and bool(self.evaluate(rest, loc, column))
                top[1] = top[1] or top[0]
                continue
            if not active:
                continue
            if word == "%rep":
                rep = [self.repeat_count(rest, loc, column), loc, [], 0]
                continue
            macro = self.directive(word, rest, loc, text, column, here, depth, macro_depth)
        if macro is not None:
            raise macro.loc.error(f"%macro {macro.name} has no %endmacro")
        if rep is not None:
            raise rep[1].error("%rep has no %endrep")
        if conditions:
            if loc is None:
                raise AsmError("%if without %endif")
            raise loc.error("%if without %endif")

    def directive(
        self,
        word: str,
        rest: str,
        loc: Location,
        text: str,
        column: int,
        here: Path,
        depth: int,
        macro_depth: int,
    ) -> Macro | None:
        """A preprocessor directive other than the conditionals (or a line starting with %);
        a %macro returns the macro whose body follows."""
        if word == "%define" or word == "%xdefine":
            m = re.match(r"([A-Za-z_.?@$][\w.?@$#~]*)(\(([^)]*)\))?\s*(.*)$", rest)
            if not m:
                raise loc.error(f"{word} needs a name", column)
            params = None
            if m.group(2):
                params = [p.strip() for p in m.group(3).split(",")] if m.group(3).strip() else []
            body = m.group(4).split(";")[0].strip()
            if word == "%xdefine":
                body = self.substitute(body, loc)
            self.defines[m.group(1)] = _make_define(params, body)
        elif word == "%undef":
            self.defines.pop(rest.split()[0] if rest else "", None)
        elif word == "%assign":
            parts = rest.split(None, 1)
            if len(parts) != 2:
                raise loc.error("%assign needs a name and a value", column)
            value = self.evaluate(parts[1], loc, column)
            self.defines[parts[0]] = _make_define(None, str(value))
        elif word in _MACRO_WORDS:
            m = re.match(r"([A-Za-z_.?@$][\w.?@$#~]*)\s+([0-9]{1,9})(?:-([0-9]{1,9}|\*))?", rest)
            if not m:
                raise loc.error(f"{word} needs a name and a parameter count", column)
            low = int(m.group(2))
            high = low if m.group(3) is None else (99 if m.group(3) == "*" else int(m.group(3)))
            return Macro(m.group(1), low, high, [], loc, recursive=word in ("%rmacro", "%irmacro"))
        elif word == "%endmacro":
            raise loc.error("%endmacro without %macro", column)
        elif word == "%endrep":
            raise loc.error("%endrep without %rep", column)
        elif word == "%exitrep":
            if not self.repeating:
                raise loc.error("%exitrep outside %rep", column)
            raise _ExitRep
        elif word == "%include":
            m = re.match(r"""["'<](.*)["'>]""", rest)
            if not m:
                raise loc.error("%include needs a file name in quotes", column)
            name_column = text.find(m.group(1)) + 1
            path = self.find_include(m.group(1), here, loc, name_column)
            self.include(path, loc, depth + 1, name_column)
        elif word == "%error":
            raise loc.error(rest.strip("\"'") or "%error", column)
        elif word in ("%warning", "%line", "%pragma"):
            pass
        elif word.startswith("%") and not word.startswith("%%"):
            raise loc.error(f"unknown preprocessor directive '{word}'", column)
        else:
            self.line(loc, text, here, depth, macro_depth)
        return None

    def repeat_count(self, rest: str, loc: Location, column: int) -> int:
        """The count of a %rep: a number from 0 to NASM's --limit-rep."""
        if not rest.strip():
            raise loc.error("%rep needs a count", column)
        count = self.evaluate(rest, loc, column)
        if count < 0:
            raise loc.error(f"%rep count {count} is negative", column)
        if count > limits.MAX_REP:
            raise loc.error(f"%rep count {count:,} is over {limits.MAX_REP:,}", column)
        return count

    def repeat(
        self, count: int, body: list, loc: Location, here: Path, depth: int, macro_depth: int
    ) -> None:
        """Process a %rep's body ``count`` times (each time is a level of nesting, as a
        macro's expansion is; %exitrep ends it)."""
        if macro_depth >= limits.MAX_MACRO_DEPTH:
            raise loc.error(f"%rep and macros nest deeper than {limits.MAX_MACRO_DEPTH}")
        self.repeating += 1
        try:
            for _ in range(count):
                self.budget.spend(limits.WORK_DIRECTIVE, loc)
                self.process_located(iter(body), here, depth, macro_depth + 1)
        except _ExitRep:
            pass
        finally:
            self.repeating -= 1

    def emit(self, loc: Location, text: str) -> None:
        """Hand a logical line on to the assembler."""
        self.expanded_size += len(text)
        self.budget.work += len(text) >> 4  # (a unit per 16 characters, to tokenize)
        if self.expanded_size > limits.MAX_EXPANDED:
            message = f"the source expands to more than {limits.MAX_EXPANDED >> 20} MiB of text"
            raise loc.error(message)
        self.out.append(loc if text is loc.text else Location(loc.filename, loc.line, text))

    def line(self, loc: Location, text: str, here: Path, depth: int, macro_depth: int) -> None:
        """An ordinary line: expand a macro call, or substitute defines and keep it."""
        if not self.macros:
            self.emit(loc, self.substitute(text, loc))
            return
        stripped = text.split(";")[0].strip()
        label = ""
        m = re.match(r"([A-Za-z_.?@$][\w.?@$#~]*:)\s*(.*)$", stripped)
        if m:
            label, stripped = m.group(1), m.group(2)
        name = stripped.split(None, 1)[0] if stripped else ""
        key = name.lower()
        macro = self.macros.get(key)
        if macro is None or (key in self.expanding and not macro.recursive):  # (as NASM)
            self.emit(loc, self.substitute(text, loc))
            return
        column = text.find(name) + 1
        if macro_depth >= limits.MAX_MACRO_DEPTH:
            raise loc.error(f"macros nest deeper than {limits.MAX_MACRO_DEPTH}", column)
        self.budget.spend(limits.WORK_CALL, loc, column)
        self.macro_calls += 1
        if self.macro_calls > limits.MAX_MACRO_CALLS:
            message = f"more than {limits.MAX_MACRO_CALLS:,} macro expansions in all"
            raise loc.error(message, column)
        if label:
            self.emit(loc, label)
        args = split_args(stripped[len(name) :])
        if macro.max_params == 1 and len(args) > 1:  # a lone parameter takes the whole rest
            args = [stripped[len(name) :].strip()]
        if not macro.min_params <= len(args) <= macro.max_params:
            want = str(macro.min_params)
            if macro.max_params != macro.min_params:
                want += f" to {macro.max_params}"
            message = f"macro {macro.name} takes {want} parameters, not {len(args)}"
            raise loc.error(message, column)
        self.unique += 1
        tag = f"..@{self.unique}."
        count = str(len(args))

        def expand(body_text: str) -> str:
            body_text = _PARAM_COUNT.sub(count, body_text.replace("%%", tag))
            out = []
            size = 0
            start = 0
            for m in _PARAM.finditer(body_text):
                digits = m.group(1)
                n = int(digits) if len(digits) < 4 else 0
                arg = args[n - 1] if 1 <= n <= len(args) else ""
                size += m.start() - start + len(arg)
                if size > limits.MAX_LINE:
                    message = (
                        f"the expansion of {macro.name} has a line longer than "
                        f"{limits.MAX_LINE:,} characters"
                    )
                    raise loc.error(message, column)
                out += (body_text[start : m.start()], arg)
                start = m.end()
            if not out:
                return body_text
            out.append(body_text[start:])
            return "".join(out)

        def body():
            for _, t in macro.body:
                text = expand(t)
                yield Location(loc.filename, loc.line, text), text

        self.expanding[key] = self.expanding.get(key, 0) + 1
        try:
            self.process_located(body(), here, depth, macro_depth + 1)
        finally:
            self.expanding[key] -= 1
            if not self.expanding[key]:
                del self.expanding[key]
