"""Seeded random programs of user-level x86 instructions, in NASM syntax.

A ``Generator`` writes one program from a seed. It keeps a model of what it knows while it
writes (the values of some registers, ESP always, the direction flag, which arithmetic flags
are *defined*, what is on the stack), so that

- memory operands always address the data area or the stack area, through any register
  whose value it knows, with every addressing mode (no base, base, base+index*scale,
  disp 0/8/32, ESP and EBP bases);
- instructions that read flags (Jcc, SETcc, ADC/SBB, RCL/RCR, CMC, PUSHF) are written only
  when the flags they read are defined (by the manual: the table's ``undefined`` letters,
  plus the count rules of shifts and rotates);
- DIV/IDIV get operands that do not fault, except in the ``divfault`` family, which ends the
  program with a #DE on purpose;
- CALLs go to small subroutines written after the final HLT, and return.

The model is conservative: when it cannot know something (a CL count it did not set, the
end of a REPE scan) it forgets the value or marks the flags undefined.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from vm.isa import COND_CODES

from .layout import (
    ARITH,
    CODE,
    DATA,
    DATA_SIZE,
    EAX,
    EBP,
    EBX,
    ECX,
    EDI,
    EDX,
    EFLAGS_FIXED,
    ESI,
    ESP,
    ESP0,
    FLAG_BITS,
    REG8,
    REG16,
    REG32,
    STACK,
    STACK_END,
    STACK_HIGH_WATER,
    STACK_LOW_WATER,
)

MASK32 = 0xFFFFFFFF

# Flags each condition code reads, by its low opcode nibble.
COND_READS = ["o", "o", "c", "c", "z", "z", "cz", "cz", "s", "s", "p", "p", "so", "so"]
COND_READS += ["zso", "zso"]

ALU_OPS = ("add", "or", "adc", "sbb", "and", "sub", "xor", "cmp")
SHIFT_OPS = ("shl", "shr", "sal", "sar")
ROTATE_OPS = ("rol", "ror", "rcl", "rcr")
# Shift counts worth trying: 0 leaves the flags alone, 1 defines OF, >= 8 and >= 32 wrap.
COUNTS = (0, 1, 1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 63, 64, 255)

SPECIAL_VALUES = (
    0,
    1,
    2,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x10000,
    0x7FFFFFFF,
    0x80000000,
    0x80000001,
    0xFFFFFFFE,
    0xFFFFFFFF,
)


def signed32(value: int) -> int:
    value &= MASK32
    return value - (1 << 32) if value & 0x80000000 else value


def hexnum(value: int) -> str:
    """A NASM number, signed: '0x1f', '-0x10'."""
    return f"-{-value:#x}" if value < 0 else f"{value:#x}"


def address_text(parts: list[str], disp: int) -> str:
    """'ebx+ecx*4-0x10' from the register parts and a signed displacement."""
    if not parts:
        return f"{disp & MASK32:#x}"
    text = "+".join(parts)
    if disp:
        text += f"{'+' if disp >= 0 else '-'}{abs(disp):#x}"
    return text


@dataclass
class Line:
    """One line of a generated program and what the model says after it."""

    text: str
    label: str | None = None  # every instruction line gets a label, to map addresses back
    defined: frozenset[str] = frozenset()  # arithmetic flags defined after it
    df: int | None = None  # DF after it (None: unknown)
    # Its own effect, for following definedness along the path a run takes (a LOOP body's
    # second pass, a skipped block): flags it defines, flags it leaves undefined, DF it sets.
    defines: frozenset[str] = frozenset()
    undefines: frozenset[str] = frozenset()
    sets_df: int | None = None

    @property
    def is_instruction(self) -> bool:
        return self.label is not None


@dataclass
class Program:
    """A generated program and the setup both sides start from."""

    seed: int
    family: str | None
    lines: list[Line]
    eflags: int  # initial EFLAGS
    data: bytes  # initial contents of the data area
    stack: bytes  # initial contents of the stack area
    defined: frozenset[str]  # arithmetic flags defined at the end
    df: int | None  # DF at the end (None: not compared)
    faults: bool  # the program ends with #DE instead of HLT
    effects: bool = True  # lines carry their own flag effects (see Line)

    def source(self) -> str:
        """The NASM source: labels on every instruction line."""
        out = ["bits 32", f"org {CODE:#x}"]
        for line in self.lines:
            if line.label is not None:
                out.append(f"{line.label}: {line.text}")
            else:
                out.append(line.text)
        return "\n".join(out) + "\n"

    def listing(self, addresses: dict[str, int] | None = None, mark: str | None = None) -> str:
        """The program as a readable listing, with addresses when known; ``mark`` points at
        one instruction label."""
        out = []
        for line in self.lines:
            if line.label is None:
                out.append(f"{'':12}{line.text}")
                continue
            where = f"{addresses[line.label]:08x}" if addresses and line.label in addresses else ""
            arrow = "=> " if line.label == mark else "   "
            out.append(f"{arrow}{where:9}    {line.text}")
        return "\n".join(out)


@dataclass
class State:
    """What the generator knows at one point of the program it writes."""

    known: dict[int, int]  # register -> value (ESP always)
    defined: set[str]  # defined arithmetic flags
    df: int | None
    slots: dict[int, int | None]  # stack model: address -> dword pushed there
    protected: set[int]  # stack dwords that must survive (return addresses, saved EBP)
    floor: int  # POP may not take ESP above this
    locked: set[int] = field(default_factory=set)  # registers that must keep their value
    in_block: bool = False  # inside a conditional block (may or may not run)
    in_loop: bool = False  # inside a LOOP body (runs several times)
    body_used: set[int] = field(default_factory=set)  # loop: known values relied upon
    body_written: set[int] = field(default_factory=set)  # loop: registers written so far
    body_flags: set[str] = field(default_factory=set)  # loop: flags defined inside the body
    depth: int = 0  # subroutine nesting

    @property
    def esp(self) -> int:
        return self.known[ESP]

    @esp.setter
    def esp(self, value: int) -> None:
        self.known[ESP] = value & MASK32

    def copy(self) -> State:
        return State(
            dict(self.known),
            set(self.defined),
            self.df,
            dict(self.slots),
            set(self.protected),
            self.floor,
            set(self.locked),
            self.in_block,
            self.in_loop,
            set(self.body_used),
            set(self.body_written),
            set(self.body_flags),
            self.depth,
        )

    def assign(self, other: State) -> None:
        """Become a copy of other (in place: callers hold references to this object)."""
        self.__dict__.update(other.copy().__dict__)

    def merge(self, other: State) -> None:
        """Keep only what holds on both paths (after a block that may be skipped)."""
        assert self.esp == other.esp, "blocks must not move ESP"
        self.known = {r: v for r, v in self.known.items() if other.known.get(r) == v}
        self.defined &= other.defined
        if self.df != other.df:
            self.df = None
        slots = {}
        for a in self.slots.keys() | other.slots.keys():
            v = self.slots.get(a)
            slots[a] = v if other.slots.get(a) == v else None
        self.slots = slots
        self.body_used |= other.body_used
        self.body_written |= other.body_written
        self.body_flags &= other.body_flags


# Families of instructions: the generator method that writes one, where it may appear, and
# its weight in a mixed program. "block": may sit in a conditional block (ESP unchanged);
# "loop": may sit in a LOOP body.
FAMILIES = {
    "alu": ("block", "loop"),
    "test": ("block", "loop"),
    "incdec": ("block", "loop"),
    "unary": ("block", "loop"),
    "mul": ("block", "loop"),
    "div": ("block",),
    "divfault": (),
    "shift": ("block", "loop"),
    "rotate": ("block", "loop"),
    "setcc": ("block", "loop"),
    "jcc": (),
    "jmp": (),
    "bt": ("block", "loop"),
    "movx": ("block", "loop"),
    "lea": ("block", "loop"),
    "xchg": ("block", "loop"),
    "mov": ("block", "loop"),
    "stack": (),
    "pushad": (),
    "pushf": (),
    "convert": ("block", "loop"),
    "flagops": ("block", "loop"),
    "string": ("block",),
    "call": (),
    "leave": (),
    "loop": (),
    "nop": ("block", "loop"),
}

WEIGHTS = {
    "alu": 14,
    "test": 3,
    "incdec": 4,
    "unary": 3,
    "mul": 4,
    "div": 3,
    "divfault": 0.25,
    "shift": 6,
    "rotate": 5,
    "setcc": 3,
    "jcc": 4,
    "jmp": 1,
    "bt": 3,
    "movx": 3,
    "lea": 3,
    "xchg": 3,
    "mov": 5,
    "stack": 4,
    "pushad": 1,
    "pushf": 2,
    "convert": 2,
    "flagops": 3,
    "string": 4,
    "call": 2,
    "leave": 1,
    "loop": 2,
    "nop": 0.5,
}


class Unavailable(Exception):
    """The family cannot write an instruction here (no free register, no stack room...)."""


class Generator:
    """Writes one random program from a seed; ``family`` biases it towards one family."""

    def __init__(
        self, seed: int, family: str | None = None, length: int | None = None, focus: float = 0.6
    ) -> None:
        if family is not None and family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; try one of {', '.join(FAMILIES)}")
        self.seed = seed
        self.family = family
        self.focus = focus
        self.rng = random.Random(seed)
        self.length = length if length is not None else self.rng.randint(12, 40)
        self.lines: list[Line] = []  # current output (main, or a subroutine being written)
        self.subs: list[list[Line]] = []
        self.labels = 0
        self.faults = False
        self.defines: set[str] = set()  # flag effects of the instruction being written
        self.undefines: set[str] = set()
        self.sets_df: int | None = None
        self.st: State = State({}, set(ARITH), 0, {}, set(), STACK_HIGH_WATER)
        names = [f for f in WEIGHTS if WEIGHTS[f] > 0]
        self._names = names
        self._weights = [WEIGHTS[f] for f in names]

    # ---- output ----------------------------------------------------------------------------
    def label(self, stem: str) -> str:
        self.labels += 1
        return f"{stem}{self.labels}"

    def emit(self, text: str) -> None:
        """Append an instruction; the model must already describe the state after it."""
        self.labels += 1
        st = self.st
        line = Line(text, f"i{self.labels}", frozenset(st.defined), st.df)
        line.defines, line.undefines = frozenset(self.defines), frozenset(self.undefines)
        line.sets_df = self.sets_df
        self.lines.append(line)
        self.defines, self.undefines, self.sets_df = set(), set(), None

    def emit_label(self, name: str) -> None:
        self.lines.append(Line(f"{name}:"))

    # ---- registers ---------------------------------------------------------------------------
    def writable(self, r: int) -> bool:
        st = self.st
        return r != ESP and r not in st.locked and not (st.in_loop and r in st.body_used)

    def write(self, r: int, value: int | None = None) -> None:
        """Record that register r changes (to value, if known)."""
        if not self.writable(r):  # e.g. a loop body wrote a register it addresses through
            raise Unavailable(f"{REG32[r]} must keep its value here")
        st = self.st
        if st.in_loop:
            st.body_written.add(r)
        if value is None:
            st.known.pop(r, None)
        else:
            st.known[r] = value & MASK32

    def write8(self, r8: int) -> None:
        self.write(r8 & 3)

    def use(self, r: int) -> int:
        """Rely on the known value of register r."""
        st = self.st
        if st.in_loop and r not in st.body_written:
            st.body_used.add(r)
        return st.known[r]

    def dest32(self, exclude: tuple[int, ...] = ()) -> int:
        choices = [r for r in range(8) if self.writable(r) and r not in exclude]
        if not choices:
            raise Unavailable("no writable register")
        return self.rng.choice(choices)

    def dest8(self) -> int:
        choices = [r for r in range(8) if self.writable(r & 3)]
        if not choices:
            raise Unavailable("no writable byte register")
        return self.rng.choice(choices)

    def usable_known(self, exclude: tuple[int, ...] = ()) -> list[int]:
        """Registers whose values may be relied upon here."""
        st = self.st
        return [r for r in sorted(st.known) if r not in exclude]

    @property
    def propagate(self) -> bool:
        """Whether values may flow between registers in the model (not in loop bodies)."""
        return not self.st.in_loop

    def value(self) -> int:
        """An interesting 32-bit value."""
        rng = self.rng
        pick = rng.random()
        if pick < 0.3:
            return rng.choice(SPECIAL_VALUES)
        if pick < 0.5:
            return rng.randint(0, 64)
        if pick < 0.6:
            return (-rng.randint(1, 64)) & MASK32
        return rng.getrandbits(32)

    def imm8(self) -> int:
        rng = self.rng
        return rng.choice((0, 1, 0x7F, 0x80, 0xFF)) if rng.random() < 0.3 else rng.getrandbits(8)

    def simm8(self) -> int:
        return self.rng.randint(-128, 127)

    def imm32(self) -> int:
        """An immediate that does not fit in a signed byte (so the imm32 forms are used)."""
        while True:
            v = self.value()
            if not -128 <= signed32(v) <= 127:
                return v

    # ---- flags -------------------------------------------------------------------------------
    def readable(self, letters: str) -> bool:
        st = self.st
        ok = all(f in st.defined for f in letters)
        if st.in_loop:
            ok = ok and all(f in st.body_flags for f in letters)
        return ok

    def flags(self, writes: str, undefined: str = "") -> None:
        """Flags ``writes`` become defined, except ``undefined``, which become undefined."""
        st = self.st
        for f in undefined:
            st.defined.discard(f)
            st.body_flags.discard(f)
            self.undefines.add(f)
            self.defines.discard(f)
        for f in writes:
            if f not in undefined:
                st.defined.add(f)
                st.body_flags.add(f)
                self.defines.add(f)
                self.undefines.discard(f)

    def set_df(self, df: int) -> None:
        self.st.df = df
        self.sets_df = df

    # ---- memory operands -------------------------------------------------------------------
    def allowed(self, address: int, size: int, write: bool) -> bool:
        if address >= DATA and address + size <= DATA + DATA_SIZE:
            return True
        if not (address >= STACK and address + size <= STACK_END):
            return False
        if write:
            return not any(p < address + size and address < p + 4 for p in self.st.protected)
        return True

    def clobber(self, address: int, size: int) -> None:
        """A write to memory: forget stack slots it overlaps."""
        for a in list(self.st.slots):
            if a < address + size and address < a + 4:
                self.st.slots[a] = None

    def mem(
        self, size: int, write: bool, keyword: bool = True, bias: int = 0, mode: str | None = None
    ) -> str:
        """A memory operand of ``size`` bytes (1, 2, 4) in the data or stack area.

        ``bias`` is added to the address before the range check (BT's bit-string offset).
        """
        rng = self.rng
        st = self.st
        span = size + abs(bias)
        for _ in range(30):
            kind = mode or rng.choice(("abs", "base", "base", "base", "sib", "sib", "sib", "index"))
            base = index = None
            scale = 1
            partial = 0
            if kind in ("base", "sib"):
                base = rng.choice(self.usable_known())
                partial += st.known[base]
            if kind in ("sib", "index"):
                candidates = self.usable_known(exclude=(ESP,))
                if not candidates:
                    continue
                index = rng.choice(candidates)
                scale = rng.choice((1, 2, 4, 8))
                partial += st.known[index] * scale
            disp_kind = rng.choice(("zero", "d8", "far")) if base is not None else "far"
            if disp_kind == "zero":
                disp = 0
            elif disp_kind == "d8":
                disp = rng.randint(-128, 127)
            else:
                if rng.random() < 0.85:
                    target = DATA + rng.randrange(DATA_SIZE - span + 1)
                else:
                    target = STACK + rng.randrange(STACK_END - STACK - span + 1)
                disp = signed32(target - partial)
            address = (partial + disp) & MASK32
            lo = address + min(bias, 0)
            if not self.allowed(lo, span, write):
                continue
            parts = []
            if base is not None:
                self.use(base)
                parts.append(REG32[base])
            if index is not None:
                self.use(index)
                times = f"*{scale}" if scale > 1 or rng.random() < 0.3 else ""
                parts.append(REG32[index] + times)
            text = address_text(parts, disp)
            if write:
                self.clobber(lo, span)
            prefix = ""
            if keyword:
                prefix = {1: "byte ", 2: "word ", 4: "dword "}[size]
            return f"{prefix}[{text}]"
        raise Unavailable("no memory operand")

    # ---- operands ----------------------------------------------------------------------------
    def rm(self, size: int, write: bool, keyword: bool = True) -> tuple[str, int | None]:
        """A register or memory operand; returns (text, register number or None)."""
        if self.rng.random() < 0.5:
            if size == 4:
                r = self.dest32() if write else self.rng.randrange(8)
                return REG32[r], r
            r = self.dest8() if write else self.rng.randrange(8)
            return REG8[r], r
        return self.mem(size, write, keyword=keyword), None

    def touch(self, size: int, reg: int | None) -> None:
        """The register operand of an instruction changed (to an unknown value)."""
        if reg is not None:
            if size == 4:
                self.write(reg)
            else:
                self.write8(reg)

    def maybe_keyword(self) -> bool:
        """Whether to write a size keyword where a register operand already says it."""
        return self.rng.random() < 0.5

    # ---- program ---------------------------------------------------------------------------
    def prologue(self) -> None:
        rng = self.rng
        for r in (EAX, ECX, EDX, EBX, EBP, ESI, EDI):
            pick = rng.random()
            if (r in (EBP, ESI, EDI) and pick < 0.7) or pick < 0.3:
                value = DATA + rng.randrange(DATA_SIZE)
            else:
                value = self.value()
            self.write(r, value)
            self.emit(f"mov {REG32[r]}, {value:#x}")

    def program(self) -> Program:
        """Write the whole program."""
        rng = self.rng
        flags_value = 0
        for letter in ARITH:
            if rng.random() < 0.5:
                flags_value |= FLAG_BITS[letter]
        df = rng.randrange(2)
        flags_value |= FLAG_BITS["d"] * df | EFLAGS_FIXED
        self.st = State({ESP: ESP0}, set(ARITH), df, {}, set(), STACK_HIGH_WATER)
        data = rng.randbytes(DATA_SIZE)
        stack = rng.randbytes(STACK_END - STACK)
        self.prologue()
        self.body(self.length, context=None)
        end = self.st
        self.lines.append(Line("hlt", "halt", frozenset(end.defined), end.df))
        for sub in self.subs:
            self.lines.extend(sub)
        return Program(
            self.seed,
            self.family,
            self.lines,
            flags_value,
            data,
            stack,
            frozenset(end.defined),
            end.df,
            self.faults,
        )

    def pick_family(self, context: str | None) -> str:
        rng = self.rng
        if self.family and rng.random() < self.focus:
            name = self.family
        else:
            name = rng.choices(self._names, self._weights)[0]
        if context is not None and context not in FAMILIES[name]:
            return ""
        return name

    def body(self, picks: int, context: str | None) -> None:
        """Write ``picks`` instructions (or small groups) from random families."""
        done = 0
        tries = 0
        while done < picks and tries < picks * 20 and not self.faults:
            tries += 1
            name = self.pick_family(context)
            if not name:
                continue
            if name in ("call", "leave") and self.st.depth >= 2:
                continue
            if name == "divfault" and (self.st.depth or context or done < picks // 2):
                continue
            saved = (self.st.copy(), self.lines, len(self.lines), self.labels, len(self.subs))
            try:
                getattr(self, "gen_" + name)()
            except Unavailable:
                state, self.lines, n, self.labels, nsubs = saved
                self.st.assign(state)
                self.defines, self.undefines, self.sets_df = set(), set(), None
                del self.lines[n:]
                del self.subs[nsubs:]
                continue
            done += 1

    # ---- families ----------------------------------------------------------------------------
    def gen_nop(self) -> None:
        self.emit("nop")

    def gen_alu(self) -> None:
        rng = self.rng
        op = rng.choice(ALU_OPS)
        if op in ("adc", "sbb") and not self.readable("c"):
            op = rng.choice(("add", "sub", "and", "or", "xor", "cmp"))
        writes = op != "cmp"
        undefined = "a" if op in ("and", "or", "xor") else ""
        form = rng.choice(
            ("acc", "rm_r", "rm_r", "r_rm", "r_rm", "rm_imm", "rm_imm", "rm_imm", "same")
        )
        size = rng.choice((1, 4))
        if form == "acc":  # AL, imm8 / EAX, imm32
            if writes and not self.writable(EAX):
                raise Unavailable
            if size == 1:
                text = f"{op} al, {self.imm8():#x}"
            else:
                text = f"{op} eax, {self.imm32():#x}"
            if writes:
                self.touch(size, EAX)
        elif form == "rm_r":
            dst, reg = self.rm(size, writes, keyword=self.maybe_keyword())
            src = rng.randrange(8)
            names = REG8 if size == 1 else REG32
            text = f"{op} {dst}, {names[src]}"
            if writes:
                self.touch(size, reg)
        elif form == "r_rm":
            r = (self.dest32() if size == 4 else self.dest8()) if writes else rng.randrange(8)
            src, _ = self.rm(size, False, keyword=self.maybe_keyword())
            text = f"{op} {(REG8 if size == 1 else REG32)[r]}, {src}"
            if writes:
                self.touch(size, r)
        elif form == "same":  # xor eax, eax and friends: known results
            r = self.dest32()
            text = f"{op} {REG32[r]}, {REG32[r]}"
            if op in ("xor", "sub") and self.propagate:
                self.write(r, 0)
            elif writes and op not in ("and", "or"):
                self.write(r)
            elif writes:
                value = self.st.known.get(r)
                self.write(r, value if self.propagate else None)
        else:  # r/m, imm
            dst, reg = self.rm(size, writes)
            if size == 1:
                imm = self.imm8()
            elif rng.random() < 0.5:
                imm = self.simm8()
            else:
                imm = signed32(self.imm32())
            text = f"{op} {dst}, {hexnum(imm)}"
            if writes:
                self.touch(size, reg)
        self.flags("oszapc", undefined)
        self.emit(text)

    def gen_test(self) -> None:
        rng = self.rng
        size = rng.choice((1, 4))
        form = rng.choice(("acc", "rm_r", "r_rm", "rm_imm"))
        names = REG8 if size == 1 else REG32
        if form == "acc":
            text = f"test al, {self.imm8():#x}" if size == 1 else f"test eax, {self.imm32():#x}"
        elif form == "rm_r":
            dst, _ = self.rm(size, False, keyword=self.maybe_keyword())
            text = f"test {dst}, {names[rng.randrange(8)]}"
        elif form == "r_rm":
            src, _ = self.rm(size, False, keyword=self.maybe_keyword())
            text = f"test {names[rng.randrange(8)]}, {src}"
        else:
            dst, _ = self.rm(size, False)
            imm = self.imm8() if size == 1 else self.value()
            text = f"test {dst}, {imm:#x}"
        self.flags("oszapc", "a")
        self.emit(text)

    def gen_incdec(self) -> None:
        rng = self.rng
        op = rng.choice(("inc", "dec"))
        size = rng.choice((1, 4, 4))
        dst, reg = self.rm(size, True)
        self.touch(size, reg)
        self.flags("oszap")
        self.emit(f"{op} {dst}")

    def gen_unary(self) -> None:
        rng = self.rng
        op = rng.choice(("neg", "not"))
        size = rng.choice((1, 4))
        dst, reg = self.rm(size, True)
        self.touch(size, reg)
        if op == "neg":
            self.flags("oszapc")
        self.emit(f"{op} {dst}")

    def gen_mul(self) -> None:
        rng = self.rng
        form = rng.choice(("one", "one", "two", "three"))
        if form == "one":
            op = rng.choice(("mul", "imul"))
            size = rng.choice((1, 4))
            if not self.writable(EAX) or (size == 4 and not self.writable(EDX)):
                raise Unavailable
            src, _ = self.rm(size, False)
            self.write(EAX)
            if size == 4:
                self.write(EDX)
            text = f"{op} {src}"
        else:
            r = self.dest32()
            src, _ = self.rm(4, False, keyword=self.maybe_keyword())
            if form == "two":
                text = f"imul {REG32[r]}, {src}"
            else:
                imm = self.simm8() if rng.random() < 0.5 else signed32(self.imm32())
                text = f"imul {REG32[r]}, {src}, {hexnum(imm)}"
            self.write(r)
        self.flags("oszapc", "szap")
        self.emit(text)

    # DIV/IDIV: the generator sets the dividend and divisor so it knows the outcome.
    def division(self, signed: bool, size: int, fault: bool) -> tuple[int, int, int]:
        """(dividend, divisor, quotient) for a division that faults only if ``fault``."""
        rng = self.rng
        bits = size * 8
        while True:
            if fault and rng.random() < 0.3:
                divisor = 0
            else:
                divisor = rng.choice((1, 2, 3, 7, 10, 0x7F, 0x80, 0xFF, rng.getrandbits(bits)))
                divisor &= (1 << bits) - 1
                if rng.random() < 0.3:
                    divisor = rng.randint(1, 16)
                if divisor == 0:
                    continue
            if signed:
                sd = divisor - (1 << bits) if divisor >> (bits - 1) else divisor
                lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
                if divisor == 0:
                    dividend = rng.randint(-(1 << (2 * bits - 1)), (1 << (2 * bits - 1)) - 1)
                    return dividend & ((1 << 2 * bits) - 1), 0, 0
                if fault:
                    q = rng.choice((hi + 1, lo - 1, hi + rng.randint(1, 1 << bits)))
                    q = q if rng.random() < 0.5 else -q
                    if lo <= q <= hi:
                        continue
                else:
                    q = rng.choice((rng.randint(lo, hi), rng.randint(-100, 100), lo, hi))
                r = rng.randrange(abs(sd))
                product = q * sd
                if product < 0 or (product == 0 and rng.random() < 0.5):
                    r = -r
                dividend = product + r
                if not -(1 << (2 * bits - 1)) <= dividend < (1 << (2 * bits - 1)):
                    continue
                return dividend & ((1 << 2 * bits) - 1), divisor, q
            if divisor == 0:
                return rng.getrandbits(2 * bits), 0, 0
            if fault:
                high = rng.randint(divisor, (1 << bits) - 1)
            else:
                high = rng.randrange(divisor)
            dividend = (high << bits) | rng.getrandbits(bits)
            return dividend, divisor, dividend // divisor

    def gen_div(self, fault: bool = False) -> None:
        rng = self.rng
        if not (self.writable(EAX) and self.writable(EDX)):
            raise Unavailable
        op = rng.choice(("div", "idiv"))
        size = rng.choice((1, 4))
        dividend, divisor, _ = self.division(op == "idiv", size, fault)
        if size == 1:
            eax = dividend | (rng.getrandbits(16) << 16)
            self.write(EAX, eax)
            self.emit(f"mov eax, {eax:#x}")
        else:
            eax, edx = dividend & MASK32, dividend >> 32
            self.write(EAX, eax)
            self.write(EDX, edx)
            if rng.random() < 0.5:
                self.emit(f"mov eax, {eax:#x}")
                self.emit(f"mov edx, {edx:#x}")
            else:
                self.emit(f"mov edx, {edx:#x}")
                self.emit(f"mov eax, {eax:#x}")
        # The divisor: a register other than EAX/EDX (CL, BL, CH, BH for bytes), or memory.
        if rng.random() < 0.5:
            if size == 1:
                r8 = rng.choice([r8 for r8 in (1, 3, 5, 7) if self.writable(r8 & 3)] or [None])
                if r8 is None:
                    raise Unavailable
                r = r8 & 3
                value = rng.getrandbits(32) & ~(0xFF << (8 * (r8 >> 2)))
                value |= divisor << (8 * (r8 >> 2))
                src = REG8[r8]
            else:
                r = self.dest32(exclude=(EAX, EDX))
                value = divisor
                src = REG32[r]
            self.write(r, value)
            self.emit(f"mov {REG32[r]}, {value:#x}")
        else:
            src = self.mem(size, True)
            self.emit(f"mov {src}, {divisor:#x}")
        if fault:
            self.faults = True
            self.emit(f"{op} {src}")
            return
        q, rem = self._divide(op == "idiv", size, dividend, divisor)
        if size == 1:
            self.write(EAX, (self.st.known[EAX] & ~0xFFFF) | (rem & 0xFF) << 8 | (q & 0xFF))
        else:
            self.write(EAX, q)
            self.write(EDX, rem)
        if not self.propagate:
            self.write(EAX)
            if size == 4:
                self.write(EDX)
        self.flags("", ARITH)
        self.emit(f"{op} {src}")

    @staticmethod
    def _divide(signed: bool, size: int, dividend: int, divisor: int) -> tuple[int, int]:
        bits = size * 8
        if not signed:
            return dividend // divisor, dividend % divisor
        a = dividend - (1 << 2 * bits) if dividend >> (2 * bits - 1) else dividend
        b = divisor - (1 << bits) if divisor >> (bits - 1) else divisor
        q = abs(a) // abs(b)
        if (a < 0) != (b < 0):
            q = -q
        return q, a - q * b

    def gen_divfault(self) -> None:
        self.gen_div(fault=True)

    def shift_count(self) -> tuple[str, int | None]:
        """The count operand of a shift or rotate: ('1' | 'cl' | imm8 text, count or None)."""
        rng = self.rng
        kind = rng.choice(("1", "cl", "cl", "imm", "imm"))
        if kind == "1":
            return "1", 1
        if kind == "imm":
            count = rng.choice(COUNTS) if rng.random() < 0.7 else rng.getrandbits(8)
            return f"{count:#x}", count
        if ECX in self.st.known:
            return "cl", self.use(ECX) & 0xFF
        if self.writable(ECX) and rng.random() < 0.8:
            count = rng.choice(COUNTS) | (rng.getrandbits(24) << 8)
            self.write(ECX, count)
            self.emit(f"mov ecx, {count:#x}")
            return "cl", count & 0xFF
        return "cl", None  # a count the model does not know

    def gen_shift(self) -> None:
        rng = self.rng
        op = rng.choice(SHIFT_OPS)
        size = rng.choice((1, 4))
        count_text, count = self.shift_count()
        dst, reg = self.rm(size, True)
        self.touch(size, reg)
        if count is None:
            self.flags("", ARITH)
        elif count & 31:
            c = count & 31
            undefined = "a" + ("o" if c != 1 else "")
            if op in ("shl", "sal", "shr") and c >= size * 8:
                undefined += "c"
            self.flags(ARITH, undefined)
        self.emit(f"{op} {dst}, {count_text}")

    def gen_rotate(self) -> None:
        rng = self.rng
        op = rng.choice(ROTATE_OPS)
        size = rng.choice((1, 4))
        count_text, count = self.shift_count()
        carry_in = op in ("rcl", "rcr")
        if carry_in:
            # RCL/RCR read CF when they rotate at all.
            effective = None if count is None else (count & 31) % (9 if size == 1 else 32)
            if effective != 0 and not self.readable("c"):
                raise Unavailable
        dst, reg = self.rm(size, True)
        self.touch(size, reg)
        if count is None:
            self.flags("", "oc")
        elif count & 31:
            c = count & 31
            undefined = "o" if c != 1 else ""
            if carry_in and c % (9 if size == 1 else 32) == 0:
                self.flags("", undefined)  # 8-bit RCL/RCR by 9, 18, 27: CF stays
            else:
                self.flags("oc", undefined)
        self.emit(f"{op} {dst}, {count_text}")

    def condition(self) -> str:
        """A condition whose flags are defined, as one of its aliases."""
        choices = [cc for cc in range(16) if self.readable(COND_READS[cc])]
        if not choices:
            raise Unavailable("no defined condition")
        return self.rng.choice(COND_CODES[self.rng.choice(choices)])

    def gen_setcc(self) -> None:
        cc = self.condition()
        dst, reg = self.rm(1, True, keyword=self.rng.random() < 0.7)
        self.touch(1, reg)
        self.emit(f"set{cc} {dst}")

    def block(self, picks: int) -> State:
        """Write a block that may not run; returns the state at its end (its own copy)."""
        before = self.st
        self.st = before.copy()
        self.st.in_block = True
        self.body(picks, context="loop" if before.in_loop else "block")
        after = self.st
        after.in_block = before.in_block
        self.st = before
        return after

    def shortest(self, jump: Line, target: str, first: int) -> None:
        """Let a forward jump over lines[first:] say ``short`` or ``near`` sometimes; ``short``
        only when the lines surely fit in a rel8 (11 bytes at most per instruction here)."""
        n = sum(line.is_instruction for line in self.lines[first:])
        choices = ["", "near "] + (["short "] if n * 11 <= 127 else [])
        jump.text = jump.text.replace("@", self.rng.choice(choices)) + target

    def gen_jcc(self) -> None:
        rng = self.rng
        if self.st.in_block or self.st.in_loop:
            raise Unavailable
        cc = self.condition()
        target = self.label("skip")
        self.emit(f"j{cc} @")
        jump, first = self.lines[-1], len(self.lines)
        after = self.block(rng.randint(1, 4))
        self.st.merge(after)
        self.shortest(jump, target, first)
        self.emit_label(target)

    def gen_jmp(self) -> None:
        """An unconditional jump over dead code."""
        rng = self.rng
        if self.st.in_block or self.st.in_loop:
            raise Unavailable
        target = self.label("over")
        kind = rng.choice(("rel", "rel", "reg", "mem"))
        jump = None
        if kind == "rel":
            self.emit("jmp @")
            jump = self.lines[-1]
        elif kind == "reg":
            r = self.dest32()
            self.write(r)  # holds a code address the model does not know
            self.emit(f"mov {REG32[r]}, {target}")
            self.emit(f"jmp {REG32[r]}")
        else:
            slot = self.mem(4, True)
            self.emit(f"mov {slot}, {target}")
            self.emit(f"jmp {slot}")
        first = len(self.lines)
        self.block(rng.randint(0, 3))  # dead code: its end state is thrown away
        if jump is not None:
            self.shortest(jump, target, first)
        self.emit_label(target)

    def gen_bt(self) -> None:
        rng = self.rng
        form = rng.choice(("reg_reg", "reg_imm", "mem_imm", "mem_reg"))
        if form == "reg_reg":
            text = f"bt {REG32[rng.randrange(8)]}, {REG32[rng.randrange(8)]}"
        elif form == "reg_imm":
            text = f"bt {REG32[rng.randrange(8)]}, {self.imm8():#x}"
        elif form == "mem_imm":
            text = f"bt {self.mem(4, False)}, {self.imm8():#x}"
        else:
            # BT m32, r32 addresses a bit string: the dword at ea + 4 * (offset >> 5).
            r = None
            for cand in self.usable_known(exclude=(ESP,)):
                if -256 <= signed32(self.st.known[cand]) < 256 and rng.random() < 0.7:
                    r = cand
                    break
            if r is None:
                r = self.dest32()
                offset = rng.randint(-200, 255)
                self.write(r, offset)
                self.emit(f"mov {REG32[r]}, {hexnum(offset)}")
            offset = signed32(self.use(r))
            text = f"bt {self.mem(4, False, bias=4 * (offset >> 5), keyword=self.maybe_keyword())}"
            text += f", {REG32[r]}"
        self.flags("oszapc", "oszap")
        self.emit(text)

    def gen_movx(self) -> None:
        rng = self.rng
        op = rng.choice(("movzx", "movsx"))
        size = rng.choice((1, 2))
        r = self.dest32()
        if rng.random() < 0.5:
            src = (REG8 if size == 1 else REG16)[rng.randrange(8)]
        else:
            src = self.mem(size, False)
        self.write(r)
        self.emit(f"{op} {REG32[r]}, {src}")

    def address_expression(self) -> tuple[str, int | None]:
        """An address expression over any registers (for LEA), and its value if known."""
        rng = self.rng
        st = self.st
        base = rng.choice((None, *range(8)))
        index = rng.choice((None, 0, 1, 2, 3, 5, 6, 7))
        scale = rng.choice((1, 2, 4, 8))
        disp = rng.choice((0, self.simm8(), signed32(self.value())))
        parts = []
        value = 0
        known = True
        for r, mul in ((base, 1), (index, scale)):
            if r is None:
                continue
            parts.append(REG32[r] + (f"*{mul}" if mul > 1 else ""))
            if r in st.known and self.propagate:
                value += self.use(r) * mul
            else:
                known = False
        return f"[{address_text(parts, disp)}]", ((value + disp) & MASK32) if known else None

    def gen_lea(self) -> None:
        r = self.dest32()
        expr, value = self.address_expression()
        self.write(r, value)
        self.emit(f"lea {REG32[r]}, {expr}")

    def gen_xchg(self) -> None:
        rng = self.rng
        size = rng.choice((1, 4, 4))
        form = rng.choice(("reg", "reg", "mem_reg", "reg_mem"))
        if size == 4:
            a = self.dest32()
            if form == "reg":
                b = EAX if rng.random() < 0.3 and self.writable(EAX) else self.dest32()
                if rng.random() < 0.5:
                    a, b = b, a
                va, vb = self.st.known.get(a), self.st.known.get(b)
                if not self.propagate:
                    va = vb = None
                self.write(a, vb)
                self.write(b, va)
                self.emit(f"xchg {REG32[a]}, {REG32[b]}")
                return
            m = self.mem(4, True, keyword=self.maybe_keyword())
            self.write(a)
            ra = REG32[a]
        else:
            a = self.dest8()
            if form == "reg":
                b = self.dest8()
                self.write8(a)
                self.write8(b)
                self.emit(f"xchg {REG8[a]}, {REG8[b]}")
                return
            m = self.mem(1, True, keyword=self.maybe_keyword())
            self.write8(a)
            ra = REG8[a]
        self.emit(f"xchg {m}, {ra}" if form == "mem_reg" else f"xchg {ra}, {m}")

    def gen_mov(self) -> None:
        rng = self.rng
        st = self.st
        form = rng.choice(("r_r", "r_imm", "r_imm", "rm_r", "r_rm", "m_imm", "moffs"))
        size = rng.choice((1, 4))
        names = REG8 if size == 1 else REG32
        if form == "r_r":
            if size == 4:
                d, s = self.dest32(), rng.randrange(8)
                value = st.known.get(s) if self.propagate else None
                self.write(d, value)
            else:
                d, s = self.dest8(), rng.randrange(8)
                self.write8(d)
            text = f"mov {names[d]}, {names[s]}"
        elif form == "r_imm":
            if size == 4:
                d = self.dest32()
                value = DATA + rng.randrange(DATA_SIZE) if rng.random() < 0.4 else self.value()
                self.write(d, value)
                text = f"mov {REG32[d]}, {value:#x}"
            else:
                d = self.dest8()
                self.write8(d)
                text = f"mov {REG8[d]}, {self.imm8():#x}"
        elif form == "rm_r":
            m = self.mem(size, True, keyword=self.maybe_keyword())
            text = f"mov {m}, {names[rng.randrange(8)]}"
        elif form == "r_rm":
            d = self.dest32() if size == 4 else self.dest8()
            m = self.mem(size, False, keyword=self.maybe_keyword())
            self.touch(size, d)
            text = f"mov {names[d]}, {m}"
        elif form == "m_imm":
            m = self.mem(size, True)
            imm = self.imm8() if size == 1 else self.value()
            text = f"mov {m}, {imm:#x}"
        else:  # AL/EAX with a direct address: the A0-A3 forms
            acc = "al" if size == 1 else "eax"
            if rng.random() < 0.5 and self.writable(EAX):
                m = self.mem(size, False, mode="abs", keyword=self.maybe_keyword())
                self.touch(size, EAX)
                text = f"mov {acc}, {m}"
            else:
                m = self.mem(size, True, mode="abs", keyword=self.maybe_keyword())
                text = f"mov {m}, {acc}"
        self.emit(text)

    # ---- stack -----------------------------------------------------------------------------
    def push(self, value: int | None, protect: bool = False) -> None:
        st = self.st
        if st.esp - 4 < STACK_LOW_WATER:
            raise Unavailable("stack full")
        st.esp -= 4
        st.slots[st.esp] = value
        if protect:
            st.protected.add(st.esp)

    def pop(self) -> int | None:
        st = self.st
        if st.esp + 4 > st.floor:
            raise Unavailable("nothing to pop")
        value = st.slots.get(st.esp) if self.propagate else None
        st.esp += 4
        return value

    def check_stack(self) -> None:
        if self.st.in_block or self.st.in_loop:
            raise Unavailable("ESP must not move here")

    def gen_stack(self) -> None:
        rng = self.rng
        st = self.st
        self.check_stack()
        form = rng.choice(("push_r", "push_r", "push_imm", "push_m", "pop_r", "pop_r", "pop_m"))
        if form == "push_r":
            r = rng.randrange(8)
            self.push(st.known.get(r))  # PUSH ESP pushes the value before the push
            self.emit(f"push {REG32[r]}")
        elif form == "push_imm":
            imm = self.simm8() if rng.random() < 0.5 else signed32(self.imm32())
            self.push(imm & MASK32)
            size = rng.choice(("", "", "dword ")) if -128 <= imm <= 127 else ""
            self.emit(f"push {size}{hexnum(imm)}")
        elif form == "push_m":
            m = self.mem(4, False)  # the address uses ESP before the push
            self.push(None)
            self.emit(f"push {m}")
        elif form == "pop_r":
            r = self.dest32()
            value = self.pop()
            self.write(r, value)
            self.emit(f"pop {REG32[r]}")
        else:
            self.pop()
            m = self.mem(4, True)  # the address uses ESP after the pop
            self.emit(f"pop {m}")

    def gen_pushad(self) -> None:
        rng = self.rng
        st = self.st
        self.check_stack()
        if (
            rng.random() < 0.5
            and st.esp + 32 <= st.floor
            and all(self.writable(r) for r in range(8) if r != ESP)
        ):
            values = [self.pop() for _ in range(8)]  # EDI ESI EBP (ESP) EBX EDX ECX EAX
            for r, value in zip((EDI, ESI, EBP, ESP, EBX, EDX, ECX, EAX), values, strict=True):
                if r != ESP:
                    self.write(r, value)
            self.emit("popad")
        else:
            esp = st.esp
            for r in range(8):
                self.push(esp if r == ESP else st.known.get(r))
            self.emit("pushad")

    def gen_pushf(self) -> None:
        rng = self.rng
        self.check_stack()
        if rng.random() < 0.5 and self.readable(ARITH) and self.st.df is not None:
            self.push(None)
            self.emit(rng.choice(("pushfd", "pushf")))
            return
        value = EFLAGS_FIXED
        for letter in ARITH:
            if rng.random() < 0.5:
                value |= FLAG_BITS[letter]
        df = self.st.df if self.st.df is not None and rng.random() < 0.7 else rng.randrange(2)
        value |= FLAG_BITS["d"] * df
        self.push(value)
        self.emit(f"push {value:#x}")
        self.pop()
        self.flags(ARITH)
        self.set_df(df)
        self.emit(rng.choice(("popfd", "popf")))

    def gen_convert(self) -> None:
        st = self.st
        if self.rng.random() < 0.5:
            if not self.writable(EDX):
                raise Unavailable
            eax = st.known.get(EAX) if self.propagate else None
            self.write(EDX, None if eax is None else (MASK32 if eax >> 31 else 0))
            self.emit("cdq")
        else:
            if not self.writable(EAX):
                raise Unavailable
            eax = st.known.get(EAX) if self.propagate else None
            if eax is not None:
                eax = (eax & 0xFFFF) | (0xFFFF0000 if eax & 0x8000 else 0)
            self.write(EAX, eax)
            self.emit("cwde")

    def gen_flagops(self) -> None:
        rng = self.rng
        op = rng.choice(("clc", "stc", "cmc", "cld", "std"))
        if op == "cmc" and not self.readable("c"):
            op = rng.choice(("clc", "stc"))
        if op in ("cld", "std"):
            self.set_df(int(op == "std"))
        else:
            self.flags("c")
        self.emit(op)

    def gen_string(self) -> None:
        rng = self.rng
        st = self.st
        op = rng.choice(("movs", "cmps", "stos", "lods", "scas"))
        suffix, size = rng.choice((("b", 1), ("d", 4)))
        compares = op in ("cmps", "scas")
        rep = (
            rng.choice(("", "rep", "rep"))
            if not compares
            else rng.choice(("", "repe", "repz", "repne", "repnz"))
        )
        uses_esi = op in ("movs", "cmps", "lods")
        uses_edi = op in ("movs", "cmps", "stos", "scas")
        needed = ([ESI] if uses_esi else []) + ([EDI] if uses_edi else []) + ([ECX] if rep else [])
        if op == "lods":
            needed.append(EAX)
        if not all(self.writable(r) for r in needed):
            raise Unavailable
        if st.df is None or rng.random() < 0.25:
            self.gen_flagops_direction()
        count = rng.choice((0, 1, 1, 2, 3, 4, 5, 8)) if rep else 1
        n = max(count, 1)
        step = -size if st.df else size
        span = n * size

        def pointer() -> int:
            lo = DATA + rng.randrange(DATA_SIZE - span + 1)
            return lo + (span - size if st.df else 0)

        if uses_esi:
            esi = pointer()
            self.write(ESI, esi)
            self.emit(f"mov esi, {esi:#x}")
        if uses_edi:
            edi = pointer()
            if uses_esi and rng.random() < 0.4:
                # Overlapping or equal source and destination: MOVS copies element by
                # element, so an overlap repeats a pattern; CMPS of a range with itself.
                edi = esi + rng.randint(-3, 3) * rng.choice((1, size))
                low = edi - (span - size if st.df else 0)
                if not (low >= DATA and low + span <= DATA + DATA_SIZE):
                    edi = esi
            self.write(EDI, edi)
            self.emit(f"mov edi, {edi:#x}")
        if rep:
            self.write(ECX, count)
            self.emit(f"mov ecx, {count}")
        exact = not compares or not rep or count == 0
        if uses_esi:
            self.write(ESI, (esi + step * count) if exact else None)
        if uses_edi:
            self.write(EDI, (edi + step * count) if exact else None)
        if rep:
            self.write(ECX, 0 if exact else None)
        if op == "lods":
            self.write(EAX, None if count else st.known.get(EAX))
        if compares and count:
            self.flags(ARITH)
        prefix = f"{rep} " if rep else ""
        self.emit(f"{prefix}{op}{suffix}")

    def gen_flagops_direction(self) -> None:
        df = self.rng.randrange(2)
        self.set_df(df)
        self.emit("std" if df else "cld")

    # ---- calls and loops -------------------------------------------------------------------
    def gen_call(self, frame: bool | None = None) -> None:
        rng = self.rng
        st = self.st
        self.check_stack()
        if st.depth >= 2:
            raise Unavailable
        name = self.label("sub")
        if frame is None:
            frame = rng.random() < 0.3
        nargs = rng.choice((0, 0, 1, 2, 3))
        for _ in range(nargs):
            if rng.random() < 0.5:
                r = rng.randrange(8)
                self.push(st.known.get(r))
                self.emit(f"push {REG32[r]}")
            else:
                imm = self.simm8()
                self.push(imm & MASK32)
                self.emit(f"push {hexnum(imm)}")
        kind = rng.choice(("rel", "rel", "reg", "mem"))
        if kind == "rel":
            call = f"call {name}"
        elif kind == "reg":
            r = self.dest32()
            self.write(r)  # holds a code address the model does not know
            self.emit(f"mov {REG32[r]}, {name}")
            call = f"call {REG32[r]}"
        else:
            slot = self.mem(4, True)
            self.emit(f"mov {slot}, {name}")
            call = f"call {slot}"
        self.emit(call)
        # The CALL runs: the return address is pushed, the subroutine's lines follow.
        caller_lines, caller_floor, caller_locked = self.lines, st.floor, set(st.locked)
        self.push(None, protect=True)
        ret_slot = st.esp
        self.lines = [Line(f"{name}:")]
        st.depth += 1
        st.floor = ret_slot
        saved_ebp = st.known.get(EBP)
        if frame:
            self.push(saved_ebp, protect=True)
            self.emit("push ebp")
            st.known[EBP] = st.esp  # EBP may be locked by an outer frame: set it directly
            st.locked.add(EBP)
            self.emit("mov ebp, esp")
            st.floor = st.esp
            local = 4 * rng.randint(0, 8)
            if local:
                st.esp -= local
                self.flags("oszapc")
                self.emit(f"sub esp, {local}")
        self.body(rng.randint(1, 6), context=None)
        if frame:
            st.esp = st.known[EBP]
            st.protected.discard(st.esp)
            st.esp += 4
            st.locked = caller_locked
            if saved_ebp is None:
                st.known.pop(EBP, None)
            else:
                st.known[EBP] = saved_ebp
            self.emit("leave")
        elif st.esp != ret_slot:
            extra = ret_slot - st.esp
            st.esp = ret_slot
            if rng.random() < 0.5:
                self.flags("oszapc")
                self.emit(f"add esp, {extra}")
            else:
                self.emit(f"lea esp, [esp+{extra}]")
        st.protected.discard(ret_slot)
        st.esp = ret_slot + 4 + 4 * nargs
        st.floor = caller_floor
        st.depth -= 1
        self.emit(f"ret {4 * nargs}" if nargs or rng.random() < 0.1 else "ret")
        self.subs.append(self.lines)
        self.lines = caller_lines

    def gen_leave(self) -> None:
        self.gen_call(frame=True)

    def gen_loop(self) -> None:
        rng = self.rng
        st = self.st
        if st.in_block or st.in_loop or not self.writable(ECX):
            raise Unavailable
        count = rng.randint(1, 4)
        self.write(ECX, count)
        self.emit(f"mov ecx, {count}")
        top = self.label("top")
        self.emit_label(top)
        locked = set(st.locked)
        st.in_loop = True
        st.locked.add(ECX)
        st.known.pop(ECX, None)  # the count changes from one iteration to the next
        st.body_used, st.body_written, st.body_flags = set(), set(), set()
        self.body(rng.randint(1, 3), context="loop")
        st.in_loop = False
        st.locked = locked
        self.write(ECX, 0)
        self.emit(f"loop {top}")


def generate(seed: int, family: str | None = None, length: int | None = None) -> Program:
    """The program of one seed."""
    return Generator(seed, family, length).program()
