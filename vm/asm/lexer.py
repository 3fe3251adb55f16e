"""Tokens of one source line, and NASM's expressions over them.

Numbers in every NASM form (0x1F, 1Fh, $1F, 0b101, 101b, 0o17, 17q, 17o, 0d10, 10d,
with underscores), strings and character constants in '...', "..." and `...` (with
C escapes), identifiers (labels, local .labels, $, $$), and operators.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from vm.asm.errors import Location


@dataclass(frozen=True)
class Token:
    kind: str  # "num", "str", "id", "op"
    value: object  # int for num, bytes for str, str for id and op
    column: int  # 1-based, in the line's text


_OPERATORS = ["<<", ">>", "//", "%%", "==", "!=", "<=", ">=", "&&", "||"]
_OPERATORS += list("+-*/%&|^~!()[],:<>=")
_ID_START = re.compile(r"[A-Za-z_.?@$]")
_ID_CHARS = re.compile(r"[A-Za-z0-9_.?@$#~]*")
_NUMBER = re.compile(r"\$?[0-9][0-9A-Za-z_]*")
_ESCAPES = {
    "n": 10,
    "t": 9,
    "r": 13,
    "0": 0,
    "\\": 92,
    "'": 39,
    '"': 34,
    "`": 96,
    "a": 7,
    "b": 8,
    "e": 27,
    "f": 12,
    "v": 11,
}


def parse_number(text: str) -> int | None:
    """The value of a NASM number literal, or None if it is not one."""
    t = text.replace("_", "").lower()
    try:
        if t.startswith("$"):
            return int(t[1:], 16)
        if t.startswith("0x") or t.startswith("0h"):
            return int(t[2:], 16)
        if t.startswith("0b") or t.startswith("0y"):
            return int(t[2:], 2)
        if t.startswith("0o") or t.startswith("0q"):
            return int(t[2:], 8)
        if t.startswith("0d") or t.startswith("0t"):
            return int(t[2:], 10)
        if t.endswith("h"):
            return int(t[:-1], 16)
        if t.endswith(("b", "y")):
            return int(t[:-1], 2)
        if t.endswith(("q", "o")):
            return int(t[:-1], 8)
        if t.endswith(("d", "t")):
            return int(t[:-1], 10)
        return int(t, 10)
    except ValueError:
        return None


def _string(text: str, start: int, loc: Location) -> tuple[bytes, int]:
    quote = text[start]
    i = start + 1
    out = bytearray()
    while i < len(text):
        c = text[i]
        if c == quote:
            return bytes(out), i + 1
        if quote == "`" and c == "\\" and i + 1 < len(text):
            e = text[i + 1]
            if e == "x" and re.match(r"[0-9a-fA-F]{1,2}", text[i + 2 : i + 4]):
                digits = re.match(r"[0-9a-fA-F]{1,2}", text[i + 2 : i + 4]).group(0)
                out.append(int(digits, 16))
                i += 2 + len(digits)
                continue
            if e in _ESCAPES:
                out.append(_ESCAPES[e])
                i += 2
                continue
            raise loc.error(f"unknown escape '\\{e}' in a string", i + 1)
        out += c.encode("utf-8")
        i += 1
    raise loc.error("unterminated string", start + 1)


def tokenize(text: str, loc: Location) -> list[Token]:
    """The tokens of one line (a comment after ';' is dropped)."""
    tokens: list[Token] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
            continue
        if c == ";":
            break
        column = i + 1
        if c in "'\"`":
            value, i = _string(text, i, loc)
            tokens.append(Token("str", value, column))
            continue
        m = _NUMBER.match(text, i)
        if c.isdigit() or (c == "$" and m and len(m.group(0)) > 1 and text[i + 1].isdigit()):
            word = m.group(0)
            value = parse_number(word)
            if value is None:
                raise loc.error(f"bad number '{word}'", column)
            tokens.append(Token("num", value, column))
            i += len(word)
            continue
        if _ID_START.match(c):
            word = c + _ID_CHARS.match(text, i + 1).group(0)
            tokens.append(Token("id", word, column))
            i += len(word)
            continue
        for op in _OPERATORS:
            if text.startswith(op, i):
                tokens.append(Token("op", op, column))
                i += len(op)
                break
        else:
            raise loc.error(f"unexpected character {c!r}", column)
    return tokens


class Unknown(Exception):
    """An expression uses a symbol not yet defined (a forward reference, on early passes)."""


# Binary operators by precedence, lowest first (NASM's order).
_LEVELS = [
    ["||"],
    ["&&"],
    ["==", "=", "!=", "<", ">", "<=", ">="],
    ["|"],
    ["^"],
    ["&"],
    ["<<", ">>"],
    ["+", "-"],
    ["*", "/", "//", "%", "%%"],
]


class Expression:
    """Evaluate NASM expressions over tokens[pos:], symbols from ``lookup``.

    ``lookup(name, column)`` returns an int or raises Unknown (forward reference) or an
    AsmError (undefined on the last pass).
    """

    def __init__(self, tokens: list[Token], loc: Location, lookup: Callable[[str, int], int]):
        self.tokens = tokens
        self.loc = loc
        self.lookup = lookup
        self.pos = 0

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def column(self) -> int:
        t = self.peek()
        return t.column if t else len(self.loc.text.rstrip()) + 1

    def parse(self, level: int = 0) -> int:
        if level == len(_LEVELS):
            return self.unary()
        value = self.parse(level + 1)
        while True:
            t = self.peek()
            if t is None or t.kind != "op" or t.value not in _LEVELS[level]:
                return value
            self.pos += 1
            right = self.parse(level + 1)
            value = self.apply(t, value, right)

    def apply(self, t: Token, a: int, b: int) -> int:
        op = t.value
        if op in ("/", "//", "%", "%%") and b == 0:
            raise self.loc.error("division by zero", t.column)
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":  # unsigned
            return (a & 0xFFFFFFFFFFFFFFFF) // (b & 0xFFFFFFFFFFFFFFFF)
        if op == "%":
            return (a & 0xFFFFFFFFFFFFFFFF) % (b & 0xFFFFFFFFFFFFFFFF)
        if op == "//":  # signed, rounding toward zero
            q = abs(a) // abs(b)
            return q if (a < 0) == (b < 0) else -q
        if op == "%%":
            q = abs(a) // abs(b)
            q = q if (a < 0) == (b < 0) else -q
            return a - q * b
        if op == "<<":
            return a << (b & 63)
        if op == ">>":
            return (a & 0xFFFFFFFFFFFFFFFF) >> (b & 63)
        if op == "&":
            return a & b
        if op == "|":
            return a | b
        if op == "^":
            return a ^ b
        if op == "&&":
            return int(bool(a) and bool(b))
        if op == "||":
            return int(bool(a) or bool(b))
        compare = {
            "==": a == b,
            "=": a == b,
            "!=": a != b,
            "<": a < b,
            ">": a > b,
            "<=": a <= b,
            ">=": a >= b,
        }
        return int(compare[op])

    def unary(self) -> int:
        t = self.peek()
        if t is None:
            raise self.loc.error("expression expected", self.column())
        if t.kind == "op" and t.value in ("-", "+", "~", "!"):
            self.pos += 1
            v = self.unary()
            return {"-": -v, "+": v, "~": ~v, "!": int(not v)}[t.value]
        if t.kind == "op" and t.value == "(":
            self.pos += 1
            v = self.parse()
            close = self.peek()
            if close is None or close.value != ")":
                raise self.loc.error("')' expected", self.column())
            self.pos += 1
            return v
        if t.kind == "num":
            self.pos += 1
            return t.value
        if t.kind == "str":
            if len(t.value) > 4:
                raise self.loc.error("a character constant has at most 4 characters", t.column)
            self.pos += 1
            return int.from_bytes(t.value, "little")
        if t.kind == "id":
            self.pos += 1
            return self.lookup(t.value, t.column)
        raise self.loc.error(f"unexpected '{t.value}' in an expression", t.column)
