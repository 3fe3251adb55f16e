"""NASM's preprocessor, the part vmlab uses.

%define (with and without parameters), %undef, %assign, %ifdef / %ifndef / %if /
%elif / %else / %endif, %macro / %endmacro with %1..%N, %0 and %%local labels,
%include, %error. Produces the logical lines the assembler sees, each remembering the
file and line it came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from vm.asm.errors import AsmError, Location
from vm.asm.lexer import Expression, tokenize

MAX_INCLUDE_DEPTH = 32
MAX_MACRO_DEPTH = 64
MAX_EXPANSION = 1000  # substitutions of single-line macros in one line
MAX_LINES = 2_000_000  # a runaway expansion stops here

_IDENT = re.compile(r"[A-Za-z_.?@$][A-Za-z0-9_.?@$#~]*")


@dataclass
class Macro:
    name: str
    min_params: int
    max_params: int
    body: list[tuple[Location, str]]
    loc: Location


def split_args(text: str) -> list[str]:
    """Split macro arguments at top-level commas (not inside strings, [], (), {})."""
    args = []
    depth = 0
    quote = ""
    current = ""
    for c in text:
        if quote:
            current += c
            if c == quote:
                quote = ""
            continue
        if c in "'\"`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            args.append(current.strip())
            current = ""
            continue
        elif c == ";":
            break
        current += c
    if current.strip() or args:
        args.append(current.strip())
    return [a[1:-1] if a.startswith("{") and a.endswith("}") else a for a in args]


class Preprocessor:
    """Turns source files into logical lines."""

    def __init__(self, include_paths=(), defines: dict[str, str | int] | None = None) -> None:
        self.include_paths = [Path(p) for p in include_paths]
        self.defines: dict[str, tuple[list[str] | None, str]] = {}
        for name, value in (defines or {}).items():
            self.defines[name] = (None, str(value))
        self.macros: dict[str, Macro] = {}
        self.out: list[Location] = []
        self.unique = 0
        self.includes: list[str] = []

    # ---- single-line macros --------------------------------------------------------------
    def substitute(self, text: str, loc: Location) -> str:
        """Replace %define'd names in a line (not inside strings)."""
        for _ in range(MAX_EXPANSION):
            changed = False
            out = []
            i = 0
            while i < len(text):
                c = text[i]
                if c == ";":
                    out.append(text[i:])
                    break
                if c in "'\"`":
                    end = text.find(c, i + 1)
                    end = len(text) if end < 0 else end + 1
                    out.append(text[i:end])
                    i = end
                    continue
                m = _IDENT.match(text, i)
                if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "_%")):
                    name = m.group(0)
                    i = m.end()
                    if name in self.defines:
                        params, body = self.defines[name]
                        if params is None:
                            out.append(body)
                            changed = True
                            continue
                        if i < len(text) and text[i] == "(":
                            depth, j = 0, i
                            while j < len(text):
                                depth += text[j] == "("
                                depth -= text[j] == ")"
                                if depth == 0:
                                    break
                                j += 1
                            if depth:
                                raise loc.error(f"unterminated arguments of {name}", i + 1)
                            args = split_args(text[i + 1 : j])
                            if len(args) != len(params):
                                message = f"{name} takes {len(params)} arguments, not {len(args)}"
                                raise loc.error(message, i + 1)
                            expanded = body
                            for p, a in zip(params, args, strict=True):
                                expanded = re.sub(rf"\b{re.escape(p)}\b", a, expanded)
                            out.append(expanded)
                            i = j + 1
                            changed = True
                            continue
                    out.append(name)
                    continue
                out.append(c)
                i += 1
            text = "".join(out)
            if not changed:
                return text
        raise loc.error("a %define expands without end")

    def evaluate(self, text: str, loc: Location, column: int) -> int:
        """A %if / %assign expression (numbers and defines only)."""
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
        self.process(text.split("\n"), filename, Path(filename).parent, depth=0)
        return self.out

    def include(self, path: Path, loc: Location | None, depth: int = 0) -> None:
        name = str(path)
        if name in self.includes:
            raise (loc.error if loc else AsmError)(f"'{path.name}' includes itself")
        if depth > MAX_INCLUDE_DEPTH:
            raise loc.error("%include nests too deep")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            if loc is None:
                raise AsmError(f"cannot read {path}: {error}", str(path)) from None
            raise loc.error(f"cannot read {path}: {error}") from None
        self.includes.append(name)
        self.process(text.split("\n"), name, path.parent, depth)
        self.includes.pop()

    def find_include(self, name: str, here: Path, loc: Location, column: int) -> Path:
        for folder in [here, *self.include_paths]:
            candidate = folder / name
            if candidate.is_file():
                return candidate.resolve()
        raise loc.error(f"include file '{name}' not found", column)

    # ---- lines ---------------------------------------------------------------------------
    def process(self, lines: list[str], filename: str, here: Path, depth: int) -> None:
        located = [(Location(filename, n, text), text) for n, text in enumerate(lines, 1)]
        self.process_located(located, here, depth)

    def process_located(self, lines, here: Path, depth: int, macro_depth: int = 0) -> None:
        conditions: list[list[bool]] = []  # [active now, some branch taken]
        macro: Macro | None = None
        for loc, text in lines:
            stripped = text.strip()
            word = stripped.split(None, 1)[0].lower() if stripped else ""
            rest = stripped[len(word) :].strip() if word else ""
            column = text.find(word) + 1 if word else 1
            if macro is not None:  # collecting a %macro body
                if word == "%endmacro":
                    self.macros[macro.name.lower()] = macro
                    macro = None
                elif word == "%macro":
                    raise loc.error("%macro inside %macro is not supported", column)
                else:
                    macro.body.append((loc, text))
                continue
            active = all(c[0] for c in conditions)
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
                outer = all(c[0] for c in conditions[:-1])
                if word == "%else":
                    top[0] = outer and not top[1]
                else:
                    top[0] = outer and not top[1] and bool(self.evaluate(rest, loc, column))
                top[1] = top[1] or top[0]
                continue
            if not active:
                continue
            if word == "%define" or word == "%xdefine":
                m = re.match(r"([A-Za-z_.?@$][\w.?@$#~]*)(\(([^)]*)\))?\s*(.*)$", rest)
                if not m:
                    raise loc.error("%define needs a name", column)
                params = [p.strip() for p in m.group(3).split(",")] if m.group(2) else None
                body = m.group(4).split(";")[0].strip()
                if word == "%xdefine":
                    body = self.substitute(body, loc)
                self.defines[m.group(1)] = (params, body)
            elif word == "%undef":
                self.defines.pop(rest.split()[0] if rest else "", None)
            elif word == "%assign":
                parts = rest.split(None, 1)
                if len(parts) != 2:
                    raise loc.error("%assign needs a name and a value", column)
                self.defines[parts[0]] = (None, str(self.evaluate(parts[1], loc, column)))
            elif word == "%macro":
                m = re.match(r"([A-Za-z_.?@$][\w.?@$#~]*)\s+(\d+)(?:-(\d+|\*))?", rest)
                if not m:
                    raise loc.error("%macro needs a name and a parameter count", column)
                low = int(m.group(2))
                high = low if m.group(3) is None else (99 if m.group(3) == "*" else int(m.group(3)))
                macro = Macro(m.group(1), low, high, [], loc)
            elif word == "%endmacro":
                raise loc.error("%endmacro without %macro", column)
            elif word == "%include":
                m = re.match(r"""["'<](.*)["'>]""", rest)
                if not m:
                    raise loc.error("%include needs a file name in quotes", column)
                name_column = text.find(m.group(1)) + 1
                path = self.find_include(m.group(1), here, loc, name_column)
                self.include(path, loc, depth + 1)
            elif word == "%error":
                raise loc.error(rest.strip("\"'") or "%error")
            elif word in ("%warning", "%line", "%pragma"):
                pass
            elif word.startswith("%") and not word.startswith("%%"):
                raise loc.error(f"unknown preprocessor directive '{word}'", column)
            else:
                self.line(loc, text, here, depth, macro_depth)
            if len(self.out) > MAX_LINES:
                raise loc.error("the source expands to too many lines")
        if macro is not None:
            raise macro.loc.error(f"%macro {macro.name} has no %endmacro")
        if conditions:
            raise lines[-1][0].error("%if without %endif") if lines else AsmError("%if")

    def line(self, loc: Location, text: str, here: Path, depth: int, macro_depth: int) -> None:
        """An ordinary line: expand a macro call, or substitute defines and keep it."""
        stripped = text.split(";")[0].strip()
        label = ""
        m = re.match(r"([A-Za-z_.?@$][\w.?@$#~]*:)\s*(.*)$", stripped)
        if m:
            label, stripped = m.group(1), m.group(2)
        name = stripped.split(None, 1)[0] if stripped else ""
        macro = self.macros.get(name.lower())
        if macro is None:
            self.out.append(Location(loc.filename, loc.line, self.substitute(text, loc)))
            return
        if macro_depth >= MAX_MACRO_DEPTH:
            raise loc.error("macros nest too deep (a macro that calls itself?)")
        if label:
            self.out.append(Location(loc.filename, loc.line, label))
        args = split_args(stripped[len(name) :])
        if macro.max_params == 1 and len(args) > 1:  # a lone parameter takes the whole rest
            args = [stripped[len(name) :].strip()]
        if not macro.min_params <= len(args) <= macro.max_params:
            want = str(macro.min_params)
            if macro.max_params != macro.min_params:
                want += f" to {macro.max_params}"
            raise loc.error(f"macro {macro.name} takes {want} parameters, not {len(args)}")
        self.unique += 1
        tag = f"..@{self.unique}."

        def expand(body_text: str) -> str:
            body_text = body_text.replace("%%", tag)
            body_text = re.sub(r"%0\b", str(len(args)), body_text)

            def param(m: re.Match) -> str:
                n = int(m.group(1))
                return args[n - 1] if n <= len(args) else ""

            return re.sub(r"%(\d+)", param, body_text)

        body = [(Location(loc.filename, loc.line, expand(t)), expand(t)) for _, t in macro.body]
        self.process_located(body, here, depth, macro_depth + 1)
