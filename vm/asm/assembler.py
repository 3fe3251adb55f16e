"""The assembler proper: labels, directives, instructions, and the passes that settle them.

Like NASM, it runs passes until every label keeps its address: a forward reference is
unknown on the first pass and takes its longest encoding; later passes shrink jumps and
immediates to the shortest form that fits, until nothing moves.

A statement whose bytes cannot depend on a symbol or on its own address (``mov eax, 1``,
``db 'text'``, ``times 4096 db 0``) is encoded once, on the first pass, and its bytes are
reused by the later ones; ``times`` encodes such a statement once and repeats its bytes.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vm.asm.encoder import (
    CREGS,
    FORMS_BY_MNEMONIC,
    REG8,
    REG16,
    REG32,
    SIZES,
    SREGS,
    Operand,
    encode,
    register,
)
from vm.asm.errors import AsmError, Location
from vm.asm.lexer import Expression, Token, Unknown, tokenize
from vm.asm.limits import MAX_OUTPUT, MAX_PASSES, TIME_LIMIT, WORK_STATEMENT, Budget
from vm.asm.preprocessor import Preprocessor

PREFIXES = {"rep", "repe", "repz", "repne", "repnz"}
DATA = {"db": 1, "dw": 2, "dd": 4}
DIRECTIVES = {"bits", "org", "times", "align", "equ", "section", "segment", "global"}
DIRECTIVES |= {"extern", "cpu", "default", *DATA}
# Instructions whose bytes depend on their own address: the relative jumps and calls.
BRANCHES = {
    mnemonic
    for mnemonic, forms in FORMS_BY_MNEMONIC.items()
    if any(kind in ("rel8", "rel32") for form in forms for kind in form.operands)
}
# Words a statement may hold and still have the same bytes at any address on any pass:
# no symbol (nor $), no relative jump, no directive that looks at the address.
CONSTANT_WORDS = {m for m in FORMS_BY_MNEMONIC if " " not in m} - BRANCHES
CONSTANT_WORDS |= {*DATA, "times", *PREFIXES, *SIZES, *REG32, *REG16, *REG8, *SREGS, *CREGS}
# Words after which the bytes of a `times` statement may differ from one repetition to the
# next ($ is the address of the line's start in every repetition, as in NASM)
POSITIONAL_WORDS = BRANCHES | {"align", "org", "bits"}
_VARIABLE = "variable"  # a line whose statement is encoded again on every pass
_EMPTY = (None, 0, b"", 0)  # a line without label or statement


@dataclass(slots=True)
class ListingLine:
    """One line of the listing: where its bytes went, and the source it came from."""

    address: int
    data: bytes
    line: int
    text: str
    filename: str


class Listing(Sequence):
    """The ListingLines of a program, each made when asked for: a list of them all would
    take more memory than the rest of a big program's assembly."""

    def __init__(self, lines: list[Location], addresses: array, offsets: array, code: bytes):
        self._lines = lines
        self._addresses = addresses  # of each line
        self._offsets = offsets  # where each line's bytes start in code
        self._code = code

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self._lines)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("listing index out of range")
        loc = self._lines[index]
        start = self._offsets[index]
        end = self._offsets[index + 1] if index + 1 < n else len(self._code)
        data = self._code[start:end]
        return ListingLine(self._addresses[index], data, loc.line, loc.text, loc.filename)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    def __repr__(self) -> str:
        return f"<Listing of {len(self)} lines>"


@dataclass
class Program:
    """The result of assembling: flat binary code, its origin, symbols and listing."""

    code: bytes
    origin: int
    symbols: dict[str, int]
    listing: Sequence[ListingLine] = field(default_factory=list)

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
        final: bool,  # raise the errors that wait for the last pass, instead of noting them
        long_jumps: set[int],
        cache: list | None = None,
        budget: Budget | None = None,
        memo: dict | None = None,
    ) -> None:
        self.lines = lines
        # per line, shared by the passes: None (not seen yet), _VARIABLE, or the
        # (label, its column, bytes, instructions) of a line whose bytes never change
        self.cache = [None] * len(lines) if cache is None else cache
        self.memo = {} if memo is None else memo  # such lines without a label, by their text
        self.budget = budget or Budget(None)
        self.where: dict[str, tuple[Location, int]] = {}  # where each symbol is defined
        self.grew_at: tuple[Location, int] | None = None
        self.previous = previous  # symbols as the last pass left them
        self.final = final
        self.error: AsmError | None = None  # the first error the last pass would raise
        self.symbols: dict[str, int] = {}
        self.origin: int | None = None
        self.org_seen = False
        self.output = bytearray()
        self.addresses = array("q")  # the listing: each line's address
        self.offsets = array("I")  # and where its bytes start in the output
        self.scope = ""  # the last non-local label, for .local labels
        self.unknown = False  # some expression used a symbol not yet known
        self.long_jumps = long_jumps  # instructions (by count) whose short jump fell short
        self.count = 0
        self.grew = False
        self.start = 0  # the address of the line being assembled: $

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
            if name == "$":  # the line's address, even in its 100th repetition (as NASM)
                return self.start
            if name == "$$":
                return self.origin or 0
            full = self.full_name(name)
            if full in self.symbols:
                return self.symbols[full]
            if full in self.previous:  # a forward reference, as the last pass placed it
                return self.previous[full]
            self.fail(loc.error(f"undefined symbol '{name}'", column))
            self.unknown = True
            raise Unknown(name)

        return find

    def fail(self, error: AsmError) -> None:
        """An error that only a pass whose labels have settled may report (on an earlier
        pass, a symbol may be defined later and a value may still shrink)."""
        if self.final:
            raise error
        if self.error is None:
            self.error = error

    def define(self, name: str, value: int, loc: Location, column: int) -> None:
        if register(name) or name.lower() in FORMS_BY_MNEMONIC or name.lower() in DIRECTIVES:
            raise loc.error(f"'{name}' is a reserved word and cannot be a label", column)
        if not name.startswith(".") and not name.startswith("..@"):
            self.scope = name
        full = self.full_name(name)
        if full in self.symbols:
            raise loc.error(f"label '{name}' is defined twice", column)
        self.symbols[full] = value
        self.where[full] = (loc, column)

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
        output = self.output
        cache, memo = self.cache, self.memo
        budget = self.budget
        addresses, offsets = self.addresses, self.offsets
        for index, loc in enumerate(self.lines):
            if not index & 255:
                budget.spend(32, loc)  # (a line whose bytes are known costs 1/8 unit)
            entry = cache[index]
            if entry is None:  # a line seen before with the same text, and constant?
                entry = cache[index] = memo.get(loc.text)
            start = len(output)
            if entry is None or entry is _VARIABLE:
                address = self.start = self.here
                tokens = tokenize(loc.text, loc)
                budget.spend(WORK_STATEMENT + (len(tokens) >> 1), loc)
                self.line(tokens, loc, index)
            else:
                label, column, data, count = entry
                address = (self.origin or 0) + start
                if label is not None:
                    self.define(label, address, loc, column)
                output += data
                self.count += count
            if len(output) > MAX_OUTPUT:
                raise loc.error(f"the program is larger than {MAX_OUTPUT >> 20} MiB")
            addresses.append(address)
            offsets.append(start)

    def line(self, tokens: list[Token], loc: Location, index: int) -> None:
        cache = self.cache
        if not tokens:
            cache[index] = self.memo[loc.text] = _EMPTY
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
            cache[index] = _VARIABLE
            return
        # label: or label followed by an instruction
        label = None
        if first.kind == "id" and len(tokens) >= 2 and tokens[1].value == ":":
            label = first
            tokens = tokens[2:]
        elif (
            first.kind == "id"
            and not self.is_word(first.value)
            and (len(tokens) == 1 or (tokens[1].kind == "id" and self.is_word(tokens[1].value)))
        ):
            label = first
            tokens = tokens[1:]
        if label is not None:
            self.define(label.value, self.here, loc, label.column)
        if cache[index] is None:
            start, count = len(self.output), self.count
            if not tokens or self.constant(tokens, loc):
                data = bytes(memoryview(self.output)[start:])  # (one copy, not two)
                if label is None:
                    cache[index] = self.memo[loc.text] = (None, 0, data, self.count - count)
                else:
                    cache[index] = (label.value, label.column, data, self.count - count)
                return
            cache[index] = _VARIABLE
        if tokens:
            self.statement(tokens, loc)

    def constant(self, tokens: list[Token], loc: Location) -> bool:
        """Run a statement that holds no symbol, no $ and no relative jump, if it is one and
        assembles without error: then its bytes are the same at any address on any pass."""
        for t in tokens:
            if t.kind == "id" and t.value.lower() not in CONSTANT_WORDS:
                return False
        start, count, final = len(self.output), self.count, self.final
        self.final = True  # report now what the last pass would report
        try:
            self.statement(tokens, loc)
            return True
        except AsmError:  # let the passes meet the error where they would have
            del self.output[start:]
            self.count = count
            return False
        finally:
            self.final = final

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
            count_end = self.split_times(rest, loc, word.column)
            count = self.known(rest[:count_end], loc, "a times count")
            if count < 0:
                raise loc.error("times count is negative", rest[0].column)
            if count > MAX_OUTPUT:
                raise loc.error("times count is too large", rest[0].column)
            body = rest[count_end:]
            if not body:
                raise loc.error("times needs something to repeat", word.column)
            self.repeat(count, body, loc, word.column)
            return
        if name in DATA:
            self.data(DATA[name], rest, loc, word.column)
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
            self.align(rest, loc, word.column)
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
        code, short = encode(name, operands, self.here, loc, self.fail, word.column, long_jump)
        if short and not long_jump:
            self.long_jumps.add(self.count)
            self.grew = True
            self.grew_at = (loc, word.column)
        self.output += code

    def repeat(self, count: int, body: list[Token], loc: Location, column: int) -> None:
        """Run a statement count times (for `times`, and `align` with a statement to pad with).

        When the statement's bytes cannot differ from one repetition to the next (no relative
        jump, no align), it runs once and its bytes are repeated. Otherwise it runs
        each time, and stops early once a repetition changes nothing (`times N align 4`): all
        later ones would change nothing either.
        """
        if count == 0:
            return
        output = self.output
        if not any(t.kind == "id" and t.value.lower() in POSITIONAL_WORDS for t in body):
            start, instructions = len(output), self.count
            self.statement(body, loc)
            data = bytes(memoryview(output)[start:])
            if count > 1 and data:
                if start + len(data) * count > MAX_OUTPUT:
                    raise loc.error(f"the program is larger than {MAX_OUTPUT >> 20} MiB", column)
                output += data * (count - 1)
            self.count += (self.count - instructions) * (count - 1)
            return
        for _ in range(count):
            before = (len(output), self.count, self.origin, self.org_seen)
            self.budget.spend(WORK_STATEMENT + (len(body) >> 1), loc, column)
            self.statement(body, loc)
            if len(output) > MAX_OUTPUT:
                raise loc.error(f"the program is larger than {MAX_OUTPUT >> 20} MiB", column)
            if (len(output), self.count, self.origin, self.org_seen) == before:
                break

    def split_times(self, tokens: list[Token], loc: Location, column: int) -> int:
        """Where the count expression of `times` ends (at the repeated statement's word)."""
        for i, t in enumerate(tokens):
            if i > 0 and t.kind == "id" and self.is_word(t.value):
                prev = tokens[i - 1]
                if not (prev.kind == "op" and prev.value not in (")",)):
                    return i
        raise loc.error("times needs a count and something to repeat", column)

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
        sign, depth, current, operator = 1, 0, [], None
        for t in tokens:
            if t.kind == "op" and t.value == "(":
                depth += 1
            elif t.kind == "op" and t.value == ")":
                depth -= 1
            if depth == 0 and t.kind == "op" and t.value in "+-" and current:
                terms.append((sign, current))
                sign, current, operator = (1 if t.value == "+" else -1), [], t
                continue
            if depth == 0 and t.kind == "op" and t.value == ":":
                raise loc.error("segment overrides are not supported (segments are flat)", t.column)
            current.append(t)
        if not current and operator is not None:  # [ebx+]: NASM's "expression syntax error"
            raise loc.error(
                f"expression syntax error: a term is missing after '{operator.value}'",
                operator.column + 1,
            )
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

    def data(self, unit: int, tokens: list[Token], loc: Location, column: int) -> None:
        if not tokens:
            raise loc.error("data directive without values", column)
        for group in self.split_operands(tokens, loc):
            if len(group) == 1 and group[0].kind == "num":
                v = group[0].value
            elif (
                len(group) == 1
                and group[0].kind == "str"
                and (unit == 1 or len(group[0].value) > 4)
            ):
                raw = group[0].value
                self.output += raw + bytes((-len(raw)) % unit)
                continue
            else:
                v = self.value(group, loc)
                v = 0 if v is None else v
            if not -(1 << (unit * 8 - 1)) <= v < (1 << (unit * 8)):
                raise loc.error(f"value {v:#x} does not fit in {unit * 8} bits", group[0].column)
            self.output += (v & ((1 << (unit * 8)) - 1)).to_bytes(unit, "little")

    def align(self, tokens: list[Token], loc: Location, column: int) -> None:
        """align N, or align N, statement: pad to a multiple of N with NOPs or the statement
        (NASM: times (((N) - (($-$$) % (N))) % (N)) statement)."""
        if not tokens:
            raise loc.error("align needs a boundary (a power of two)", column)
        groups = self.split_operands(tokens, loc)
        boundary = self.known(groups[0], loc, "align")
        if boundary <= 0 or boundary & (boundary - 1):
            raise loc.error("align needs a power of two", groups[0][0].column)
        padding = (-(self.here - (self.origin or 0))) % boundary
        if len(self.output) + padding > MAX_OUTPUT:
            raise loc.error(f"the program is larger than {MAX_OUTPUT >> 20} MiB", column)
        if len(groups) == 1:
            self.output += b"\x90" * padding  # NOPs, as NASM's align does
        else:
            fill = tokens[len(groups[0]) + 1 :]  # everything after the first comma
            self.repeat(padding, fill, loc, fill[0].column)


def assemble_lines(
    lines: list[Location], origin: int | None = None, budget: Budget | None = None
) -> Program:
    """Run passes over preprocessed lines until the labels settle.

    A pass has settled when every value it used was final: on the first pass, when no
    expression met a label not defined yet; on a later one, when every label kept the
    address the pass before gave it. No jump may have grown either. That pass's bytes are
    the program's, and the first error it noted (an undefined symbol, a value too large)
    is the program's error.
    """
    budget = budget or Budget(None)
    previous: dict[str, int] = {}
    older: dict[str, int] = {}
    long_jumps: set[int] = set()
    cache: list = [None] * len(lines)
    memo: dict = {}
    for n in range(MAX_PASSES):
        p = Pass(lines, previous, False, long_jumps, cache, budget, memo)
        p.origin = origin
        p.run()
        if not p.grew and (p.symbols == previous if n else not p.unknown):
            if p.error is not None:
                raise p.error
            code = bytes(p.output)
            listing = Listing(lines, p.addresses, p.offsets, code)
            return Program(code, p.origin or 0, p.symbols, listing)
        older, previous = previous, p.symbols
    raise _unsettled(p, older, lines)


def _unsettled(p: Pass, older: dict[str, int], lines: list[Location]) -> AsmError:
    """The error when MAX_PASSES passes did not settle the labels, at a label that moved."""
    for name, value in p.symbols.items():
        if name in older and older[name] != value:
            loc, column = p.where[name]
            message = (
                f"the labels do not settle: '{name}' still moves after {MAX_PASSES} passes "
                f"({older[name]:#x}, then {value:#x})"
            )
            return loc.error(message, column)
    loc, column = p.grew_at or (lines[-1], 1)
    message = f"the labels do not settle after {MAX_PASSES} passes (a jump keeps growing)"
    return loc.error(message, column)


def assemble(
    source: str,
    *,
    filename: str = "<source>",
    include_paths=(),
    defines: dict[str, str | int] | None = None,
    origin: int | None = None,
    time_limit: float | None = TIME_LIMIT,
) -> Program:
    """Assemble NASM-syntax source to a flat binary Program.

    Whatever the source, this returns or raises AsmError (at a line of it) within the limits
    of vm.asm.limits, and within time_limit seconds (None: no limit on time).
    """
    if not isinstance(source, str):
        raise TypeError("source must be a str")
    budget = Budget(time_limit)
    pre = Preprocessor(include_paths, defines, budget)
    lines = pre.run_text(source, filename)
    return assemble_lines(lines, origin, budget)


def assemble_file(
    path, *, include_paths=(), defines=None, origin=None, time_limit: float | None = TIME_LIMIT
) -> Program:
    """Assemble a source file (its %includes are found beside it first)."""
    path = Path(path)
    budget = Budget(time_limit)
    pre = Preprocessor(include_paths, defines, budget)
    lines = pre.run_file(path.resolve())
    return assemble_lines(lines, origin, budget)
