"""Tokens of one source line, and NASM's expressions over them.

Numbers in every NASM form (0x1F, 1Fh, $1F, 0b101, 101b, 0o17, 17q, 17o, 0d10, 10d,
with underscores), strings and character constants in '...', "..." and `...` (with
C escapes), identifiers (labels, local .labels, $, $$), and operators.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from vm.asm.errors import Location


class Token(NamedTuple):
    kind: str  # "num", "str", "id", "op"
    value: object  # int for num, bytes for str, str for id and op
    column: int  # 1-based, in the line's text


_OPERATORS = ["<<", ">>", "//", "%%", "==", "!=", "<=", ">=", "&&", "||"]
_OPERATORS += list("+-*/%&|^~!()[],:<>=")
# One token at a position: blanks, a number ($1F is one), an identifier, an operator.
_TOKEN = re.compile(
    r"(?P<blank>[ \t\r\n]+)"
    r"|(?P<num>\$?[0-9][0-9A-Za-z_]*)"
    r"|(?P<id>[A-Za-z_.?@$][A-Za-z0-9_.?@$#~]*)"
    r"|(?P<op>" + "|".join(re.escape(op) for op in _OPERATORS) + ")"
)
_HEX_ESCAPE = re.compile(r"[0-9a-fA-F]{1,2}")
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
MASK64 = (1 << 64) - 1


def wrap64(value: int) -> int:
    """A value as NASM keeps it: a signed 64-bit integer (wider results wrap around)."""
    return ((value + (1 << 63)) & MASK64) - (1 << 63)


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
    except ValueError:  # not digits of its base, or too many decimal digits to convert
        return None


def _encode(text: str, loc: Location, column: int) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise loc.error("a string holds a character that is not valid Unicode", column) from None


def _string(text: str, start: int, loc: Location) -> tuple[bytes, int]:
    quote = text[start]
    if quote != "`":  # '...' and "..." take no escapes
        end = text.find(quote, start + 1)
        if end < 0:
            raise loc.error("unterminated string", start + 1)
        return _encode(text[start + 1 : end], loc, start + 1), end + 1
    i = start + 1
    out = bytearray()
    while i < len(text):
        c = text[i]
        if c == quote:
            return bytes(out), i + 1
        if c == "\\" and i + 1 < len(text):
            e = text[i + 1]
            digits = _HEX_ESCAPE.match(text, i + 2) if e == "x" else None
            if digits:
                out.append(int(digits.group(0), 16))
                i += 2 + len(digits.group(0))
                continue
            if e in _ESCAPES:
                out.append(_ESCAPES[e])
                i += 2
                continue
            raise loc.error(f"unknown escape '\\{e}' in a string", i + 1)
        j = i + 1  # a run of plain characters at once
        while j < len(text) and text[j] not in "`\\":
            j += 1
        out += _encode(text[i:j], loc, i + 1)
        i = j
    raise loc.error("unterminated string", start + 1)


def tokenize(text: str, loc: Location) -> list[Token]:
    """The tokens of one line (a comment after ';' is dropped)."""
    tokens: list[Token] = []
    append = tokens.append
    match = _TOKEN.match
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == ";":
            break
        if c in "'\"`":
            value, end = _string(text, i, loc)
            append(Token("str", value, i + 1))
            i = end
            continue
        m = match(text, i)
        if m is None:
            raise loc.error(f"unexpected character {c!r}", i + 1)
        kind = m.lastgroup
        word = m.group(0)
        if kind == "num":
            value = parse_number(word)
            if value is None:
                raise loc.error(f"bad number '{word[:40]}'", i + 1)
            append(Token("num", wrap64(value), i + 1))
        elif kind != "blank":
            append(Token(kind, word, i + 1))
        i = m.end()
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
_PRECEDENCE = {op: level for level, ops in enumerate(_LEVELS) for op in ops}
_UNARY = ("-", "+", "~", "!")
_OPEN = -1  # an open parenthesis on the operator stack


class Expression:
    """Evaluate NASM expressions over tokens[pos:], symbols from ``lookup``.

    ``lookup(name, column)`` returns an int or raises Unknown (forward reference) or an
    AsmError (undefined on the last pass). Values are 64-bit, as in NASM. The parser keeps
    its own stacks instead of recursing, so any depth of parentheses or unary operators
    costs time in proportion to the tokens, never Python's recursion limit.
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

    def parse(self) -> int:
        """The value of the expression at pos; pos stops at the first token after it."""
        tokens = self.tokens
        n = len(tokens)
        values: list[int] = []
        # Pending operators: (precedence, token) for binary ones, (_OPEN, token) for "(",
        # and (None, token) for unary ones, which bind tighter than any binary operator.
        stack: list[tuple[int | None, Token]] = []
        while True:
            # An operand: unary operators and "(" first, then a number, string or symbol.
            t = tokens[self.pos] if self.pos < n else None
            if t is None:
                raise self.loc.error("expression expected", self.column())
            kind = t.kind
            if kind == "op":
                if t.value in _UNARY:
                    stack.append((None, t))
                    self.pos += 1
                    continue
                if t.value == "(":
                    stack.append((_OPEN, t))
                    self.pos += 1
                    continue
                raise self.loc.error(f"unexpected '{t.value}' in an expression", t.column)
            if kind == "num":
                value = t.value
            elif kind == "str":
                if len(t.value) > 4:
                    raise self.loc.error("a character constant has at most 4 characters", t.column)
                value = int.from_bytes(t.value, "little")
            else:
                value = wrap64(self.lookup(t.value, t.column))
            self.pos += 1
            values.append(self._unary(stack, value))
            # After an operand: a binary operator, a ")" or the end.
            while True:
                t = tokens[self.pos] if self.pos < n else None
                level = _PRECEDENCE.get(t.value) if t is not None and t.kind == "op" else None
                if level is not None:
                    while stack and stack[-1][0] is not None and stack[-1][0] >= level:
                        self._reduce(stack, values)
                    stack.append((level, t))
                    self.pos += 1
                    break  # the next operand
                while stack and stack[-1][0] is not None and stack[-1][0] >= 0:
                    self._reduce(stack, values)
                if not stack:
                    return values[-1]
                # an open parenthesis waits for its ")"
                if t is None or t.value != ")":
                    raise self.loc.error("')' expected", self.column())
                stack.pop()
                self.pos += 1
                values.append(self._unary(stack, values.pop()))

    def _unary(self, stack: list[tuple[int | None, Token]], value: int) -> int:
        """Apply the unary operators just before an operand (innermost first)."""
        while stack and stack[-1][0] is None:
            op = stack.pop()[1].value
            if op == "-":
                value = wrap64(-value)
            elif op == "~":
                value = ~value
            elif op == "!":
                value = int(not value)
        return value

    def _reduce(self, stack: list[tuple[int | None, Token]], values: list[int]) -> None:
        right = values.pop()
        values[-1] = wrap64(self.apply(stack.pop()[1], values[-1], right))

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
            return (a & MASK64) // (b & MASK64)
        if op == "%":
            return (a & MASK64) % (b & MASK64)
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
            return (a & MASK64) >> (b & 63)
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
