"""The assembler proper: labels, directives, instructions, and the passes that settle them.

Like NASM, it runs passes until every label keeps its address: a forward reference is
unknown on the first pass and takes its longest encoding; later passes shrink jumps and
immediates to the shortest form that fits, until nothing moves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vm.asm.encoder import (
    FORMS_BY_MNEMONIC,
    SIZES,
    Operand,
    encode,
    register,
)
from vm.asm.errors import AsmError, Location
from vm.asm.lexer import Expression, Token, Unknown, tokenize
from vm.asm.preprocessor import Preprocessor

MAX_PASSES = 40
MAX_OUTPUT = 64 << 20  # bytes: a runaway `times` stops here
PREFIXES = {"rep", "repe", "repz", "repne", "repnz"}
DATA = {"db": 1, "dw": 2, "dd": 4}
DIRECTIVES = {"bits", "org", "times", "align", "equ", "section", "segment", "global"}
DIRECTIVES |= {"extern", "cpu", "default", *DATA}


@dataclass
class ListingLine:
    """One line of the listing: where its bytes went, and the source it came from."""

    address: int
    data: bytes
    line: int
    text: str
    filename: str


@dataclass
class Program:
    """The result of assembling: flat binary code, its origin, symbols and listing."""

    code: bytes
    origin: int
    symbols: dict[str, int]
    listing: list[ListingLine] = field(default_factory=list)

    def listing_text(self) -> str:
        """Address, bytes and source of every line, like ``nasm -l``."""
        out = []
        for entry in self.listing:
            data = entry.data.hex().upper()
            if len(data) > 18:
                data = data[:16] + "-"
            out.append(f"{entry.line:6} {entry.address:08X} {data:<18} {entry.text.rstrip()}")
        return "\n".join(out)


class Pass:
    """One pass over the logical lines."""

    def __init__(
        self,
        lines: list[Location],
        previous: dict[str, int],
        final: bool,
        long_jumps: set[int],
    ) -> None:
        self.lines = lines
        self.previous = previous  # symbols as the last pass left them
        self.final = final
        self.symbols: dict[str, int] = {}
        self.origin: int | None = None
        self.org_seen = False
        self.output = bytearray()
        self.listing: list[ListingLine] = []
        self.scope = ""  # the last non-local label, for .local labels
        self.unknown = False  # some expression used a symbol not yet known
        self.long_jumps = long_jumps  # instructions (by count) whose short jump fell short
        self.count = 0
        self.grew = False

    @property
    def here(self) -> int:
        return (self.origin or 0) + len(self.output)

    # ---- symbols -------------------------------------------------------------------------
    def full_name(self, name: str) -> str:
        if name.startswith(".") and not name.startswith(".."):
            return self.scope + name
        return name

    def lookup(self, loc: Location):
        def find(name: str, column: int) -> int:
            if name == "$":
                return self.here
            if name == "$$":
                return self.origin or 0
            full = self.full_name(name)
            if full in self.symbols:
                return self.symbols[full]
            if full in self.previous:  # a forward reference, as the last pass placed it
                return self.previous[full]
            if self.final:
                raise loc.error(f"undefined symbol '{name}'", column)
            self.unknown = True
            raise Unknown(name)

        return find

    def define(self, name: str, value: int, loc: Location, column: int) -> None:
        if register(name) or name.lower() in FORMS_BY_MNEMONIC or name.lower() in DIRECTIVES:
            raise loc.error(f"'{name}' is a reserved word and cannot be a label", column)
        if not name.startswith(".") and not name.startswith("..@"):
            self.scope = name
        full = self.full_name(name)
        if full in self.symbols:
            raise loc.error(f"label '{name}' is defined twice", column)
        self.symbols[full] = value

    def value(self, tokens: list[Token], loc: Location) -> int | None:
        """An expression's value, or None while it uses an unknown forward reference."""
        expr = Expression(tokens, loc, self.lookup(loc))
        try:
            v = expr.parse()
        except Unknown:
            return None
        if expr.peek() is not None:
            raise loc.error(f"unexpected '{expr.peek().value}'", expr.peek().column)
        return v

    def known(self, tokens: list[Token], loc: Location, what: str) -> int:
        v = self.value(tokens, loc)
        if v is None:
            column = tokens[0].column if tokens else 1
            raise loc.error(f"{what} must not depend on a later label", column)
        return v

    # ---- lines ---------------------------------------------------------------------------
    def run(self) -> None:
        for loc in self.lines:
            start = len(self.output)
            address = self.here
            self.line(tokenize(loc.text, loc), loc)
            if len(self.output) > MAX_OUTPUT:
                raise loc.error("the program is larger than 64 MiB")
            self.listing.append(
                ListingLine(address, bytes(self.output[start:]), loc.line, loc.text, loc.filename)
            )

    def line(self, tokens: list[Token], loc: Location) -> None:
        if not tokens:
            return
        first = tokens[0]
        # NAME equ EXPR
        if len(tokens) >= 2 and tokens[1].kind == "id" and tokens[1].value.lower() == "equ":
            if first.kind != "id":
                raise loc.error("equ needs a name before it", first.column)
            value = self.value(tokens[2:], loc)
            if value is None:
                value = 0
            self.define(first.value, value, loc, first.column)
            return
        # label: or label followed by an instruction
        if first.kind == "id" and len(tokens) >= 2 and tokens[1].value == ":":
            self.define(first.value, self.here, loc, first.column)
            tokens = tokens[2:]
        elif (
            first.kind == "id"
            and not self.is_word(first.value)
            and (len(tokens) == 1 or (tokens[1].kind == "id" and self.is_word(tokens[1].value)))
        ):
            self.define(first.value, self.here, loc, first.column)
            tokens = tokens[1:]
        if not tokens:
            return
        self.statement(tokens, loc)

    @staticmethod
    def is_word(name: str) -> bool:
        n = name.lower()
        return n in FORMS_BY_MNEMONIC or n in DIRECTIVES or n in PREFIXES or n == "lock"

    def statement(self, tokens: list[Token], loc: Location) -> None:
        word = tokens[0]
        if word.kind != "id":
            raise loc.error("an instruction or directive was expected", word.column)
        name = word.value.lower()
        rest = tokens[1:]
        if name == "times":
            count_end = self.split_times(rest, loc)
            count = self.known(rest[:count_end], loc, "a times count")
            if count < 0:
                raise loc.error("times count is negative", rest[0].column)
            if count * 1 > MAX_OUTPUT:
                raise loc.error("times count is too large", rest[0].column)
            body = rest[count_end:]
            if not body:
                raise loc.error("times needs something to repeat", word.column)
            for _ in range(count):
                self.statement(body, loc)
                if len(self.output) > MAX_OUTPUT:
                    raise loc.error("the program is larger than 64 MiB")
            return
        if name in DATA:
            self.data(DATA[name], rest, loc)
            return
        if name == "bits":
            if self.known(rest, loc, "bits") != 32:
                raise loc.error("vmlab assembles 32-bit code only: use 'bits 32'", word.column)
            return
        if name == "org":
            if self.output or self.org_seen:
                raise loc.error("org must come once, before any code or data", word.column)
            self.org_seen = True
            self.origin = self.known(rest, loc, "org") & 0xFFFFFFFF
            return
        if name == "align":
            self.align(rest, loc)
            return
        if name in ("section", "segment"):
            raise loc.error("sections are not supported: flat binary output only", word.column)
        if name in ("global", "extern", "cpu", "default"):
            return
        if name == "lock":
            raise loc.error("the LOCK prefix is not supported", word.column)
        if name in PREFIXES:
            if not rest or rest[0].kind != "id":
                raise loc.error(f"'{name}' needs a string instruction after it", word.column)
            name = f"{name} {rest[0].value.lower()}"
            rest = rest[1:]
            if name not in FORMS_BY_MNEMONIC:
                raise loc.error(f"'{name}' is not a string instruction", word.column)
        operands = [self.operand(group, loc) for group in self.split_operands(rest, loc)]
        self.count += 1
        long_jump = self.count in self.long_jumps
        code, short = encode(name, operands, self.here, loc, self.final, word.column, long_jump)
        if short and not long_jump:
            self.long_jumps.add(self.count)
            self.grew = True
        self.output += code

    def split_times(self, tokens: list[Token], loc: Location) -> int:
        """Where the count expression of `times` ends (at the repeated statement's word)."""
        for i, t in enumerate(tokens):
            if i > 0 and t.kind == "id" and self.is_word(t.value):
                prev = tokens[i - 1]
                if not (prev.kind == "op" and prev.value not in (")",)):
                    return i
        raise loc.error("times needs a count and something to repeat")

    def split_operands(self, tokens: list[Token], loc: Location) -> list[list[Token]]:
        if not tokens:
            return []
        groups: list[list[Token]] = [[]]
        depth = 0
        for t in tokens:
            if t.kind == "op" and t.value in "([":
                depth += 1
            elif t.kind == "op" and t.value in ")]":
                depth -= 1
            if t.kind == "op" and t.value == "," and depth == 0:
                groups.append([])
                continue
            groups[-1].append(t)
        for g in groups:
            if not g:
                raise loc.error("empty operand", tokens[0].column)
        return groups

    def operand(self, tokens: list[Token], loc: Location) -> Operand:
        first = tokens[0]
        size = 0
        strict = ""
        while (
            tokens
            and tokens[0].kind == "id"
            and tokens[0].value.lower()
            in (
                *SIZES,
                "short",
                "near",
            )
        ):
            word = tokens[0].value.lower()
            if word in SIZES:
                size = SIZES[word]
            else:
                strict = word
            tokens = tokens[1:]
            if tokens and tokens[0].kind == "id" and tokens[0].value.lower() == "ptr":
                raise loc.error("'ptr' is MASM syntax: NASM writes 'dword [x]'", tokens[0].column)
        if not tokens:
            raise loc.error("an operand was expected", first.column)
        t = tokens[0]
        if len(tokens) == 1 and t.kind == "id" and register(t.value):
            kind, number, reg_size = register(t.value)
            return Operand(kind, t.column, number=number, size=reg_size)
        if t.kind == "op" and t.value == "[":
            if tokens[-1].value != "]":
                raise loc.error("']' expected", tokens[-1].column)
            return self.memory(tokens[1:-1], loc, size, t.column)
        value = self.value(tokens, loc)
        return Operand("imm", t.column, size=size, value=value, strict=strict)

    def memory(self, tokens: list[Token], loc: Location, size: int, column: int) -> Operand:
        """[base + index*scale + displacement], terms in any order."""
        if not tokens:
            raise loc.error("empty memory operand", column)
        op = Operand("mem", column, size=size)
        terms: list[tuple[int, list[Token]]] = []
        sign, depth, current = 1, 0, []
        for t in tokens:
            if t.kind == "op" and t.value == "(":
                depth += 1
            elif t.kind == "op" and t.value == ")":
                depth -= 1
            if depth == 0 and t.kind == "op" and t.value in "+-" and current:
                terms.append((sign, current))
                sign, current = (1 if t.value == "+" else -1), []
                continue
            if depth == 0 and t.kind == "op" and t.value == ":":
                raise loc.error("segment overrides are not supported (segments are flat)", t.column)
            current.append(t)
        terms.append((sign, current))
        displacement: list[Token] = []
        for sign, term in terms:
            regs = [t for t in term if t.kind == "id" and register(t.value)]
            if not regs:
                if displacement or sign < 0:
                    displacement.append(Token("op", "+" if sign > 0 else "-", term[0].column))
                displacement += term
                continue
            reg = regs[0]
            kind, number, reg_size = register(reg.value)
            if kind != "reg" or reg_size != 4 or sign < 0 or len(regs) > 1:
                raise loc.error("an address uses 32-bit registers, added (eax+ebx*4+8)", reg.column)
            scale = 1
            if len(term) > 1:
                others = [t for t in term if t is not reg]
                if others[0].value == "*":
                    others = others[1:]
                elif others[-1].value == "*":
                    others = others[:-1]
                else:
                    raise loc.error("a register in an address is scaled with '*'", reg.column)
                scale = self.known(others, loc, "a scale")
            if scale == 1 and op.base is None:
                op.base = number
            elif op.index is None:
                op.index, op.scale = number, scale
            else:
                raise loc.error("an address has at most two registers", reg.column)
        if displacement:
            op.disp = self.value(displacement, loc)
            if op.disp is not None:
                op.disp &= 0xFFFFFFFF
                if op.disp >= 0x80000000:
                    op.disp -= 1 << 32
        return op

    def data(self, unit: int, tokens: list[Token], loc: Location) -> None:
        if not tokens:
            raise loc.error("data directive without values")
        for group in self.split_operands(tokens, loc):
            if (
                len(group) == 1
                and group[0].kind == "str"
                and (unit == 1 or len(group[0].value) > 4)
            ):
                raw = group[0].value
                self.output += raw + bytes((-len(raw)) % unit)
                continue
            v = self.value(group, loc)
            v = 0 if v is None else v
            if not -(1 << (unit * 8 - 1)) <= v < (1 << (unit * 8)):
                raise loc.error(f"value {v:#x} does not fit in {unit * 8} bits", group[0].column)
            self.output += (v & ((1 << (unit * 8)) - 1)).to_bytes(unit, "little")

    def align(self, tokens: list[Token], loc: Location) -> None:
        groups = self.split_operands(tokens, loc)
        boundary = self.known(groups[0], loc, "align")
        if boundary <= 0 or boundary & (boundary - 1):
            raise loc.error("align needs a power of two", groups[0][0].column)
        padding = (-(self.here - (self.origin or 0))) % boundary
        if len(groups) == 1:
            self.output += b"\x90" * padding  # NOPs, as NASM's align does
        else:
            for _ in range(padding):
                self.statement(groups[1], loc)


def assemble_lines(lines: list[Location], origin: int | None = None) -> Program:
    """Run passes over preprocessed lines until the labels settle."""
    previous: dict[str, int] = {}
    long_jumps: set[int] = set()
    for n in range(MAX_PASSES):
        p = Pass(lines, previous, final=False, long_jumps=long_jumps)
        p.origin = origin
        p.run()
        if not p.grew and p.symbols == previous and n > 0:
            break  # settled (the last pass reports any symbol still undefined)
        previous = p.symbols
    else:
        raise AsmError("the labels do not settle (a jump that keeps changing size?)")
    last = Pass(lines, p.symbols, final=True, long_jumps=long_jumps)
    last.origin = origin
    last.run()
    return Program(bytes(last.output), last.origin or 0, last.symbols, last.listing)


def assemble(
    source: str,
    *,
    filename: str = "<source>",
    include_paths=(),
    defines: dict[str, str | int] | None = None,
    origin: int | None = None,
) -> Program:
    """Assemble NASM-syntax source to a flat binary Program."""
    if not isinstance(source, str):
        raise TypeError("source must be a str")
    pre = Preprocessor(include_paths, defines)
    lines = pre.run_text(source, filename)
    return assemble_lines(lines, origin)


def assemble_file(path, *, include_paths=(), defines=None, origin=None) -> Program:
    """Assemble a source file (its %includes are found beside it first)."""
    path = Path(path)
    pre = Preprocessor(include_paths, defines)
    lines = pre.run_file(path.resolve())
    return assemble_lines(lines, origin)
