"""The instruction table: the one source of truth for what vmlab's CPU speaks.

Every instruction form the assembler can write and the CPU can run is one ``Form`` below:
its mnemonic, operand kinds, opcode bytes, ModRM use, the flags it writes (and which of
those the Intel manual leaves undefined) and its base cost in simulated cycles. The
assembler encodes from this table; the decoder's length tables, the cost table the core
charges per instruction, and the oracle tests (NASM, capstone, Unicorn) are derived from it.

Operand kinds
-------------
``r8`` ``r32``        a general register (ModRM.reg, or the low 3 opcode bits for ``+r``)
``rm8`` ``rm32``      a register or memory operand (ModRM.rm)
``rm16``              a 16-bit register or memory source (MOVZX/MOVSX only)
``m``                 a memory operand whose address is used (LEA)
``imm8`` ``imm16`` ``imm32``  an immediate of that width
``simm8``             an imm8 that the CPU sign-extends to 32 bits
``rel8`` ``rel32``    a branch target, encoded relative to the next instruction
``moffs8`` ``moffs32`` a direct memory address with no ModRM (MOV AL/EAX forms)
``al`` ``eax`` ``cl`` ``dx`` ``1``  that exact operand
``cr``                a control register CR0, CR2, CR3 or CR4 (ModRM.reg)
``r32rm``             a general register in ModRM.rm (MOV to and from CRn: mod is 3)
``sreg``              a segment register ES CS SS DS FS GS (ModRM.reg)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "COND_CODES",
    "CPL0_NAMES",
    "CR_NAMES",
    "DEFAULT_COST_TABLE",
    "FLAG_BITS",
    "FORMS",
    "FORMS_BY_MNEMONIC",
    "IMM_SIZES",
    "IOPL_NAMES",
    "POPF_WRITABLE",
    "PRIVILEGED_NAMES",
    "PRIV_CPL0",
    "PRIV_IOPL",
    "REG8_NAMES",
    "REG32_NAMES",
    "SENSITIVE_NAMES",
    "SREG_NAMES",
    "Form",
    "opcode_cost_table",
]

# Register names in x86 encoding order (ModRM.reg and .rm, the +r of opcodes): the one list
# the assembler, the CPU's state layout, the Python API and the VMM use.
REG32_NAMES = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
REG8_NAMES = ("al", "cl", "dl", "bl", "ah", "ch", "dh", "bh")
SREG_NAMES = ("es", "cs", "ss", "ds", "fs", "gs")  # ModRM.reg of MOV to and from Sreg
CR_NAMES = ("cr0", "cr1", "cr2", "cr3", "cr4", "cr5", "cr6", "cr7")  # (only 0, 2, 3, 4 exist)

# EFLAGS bits by the letter the table uses for them.
FLAG_BITS = {"c": 0x001, "p": 0x004, "a": 0x010, "z": 0x040, "s": 0x080, "d": 0x400, "o": 0x800}

# What POPF and IRET may change at any CPL: CF PF AF ZF SF DF OF, NT (0x4000), AC (0x40000)
# and ID (0x200000). IF also needs CPL <= IOPL, IOPL needs CPL 0; other CPLs keep them
# silently, as on real x86. TF is not writable: vmlab does not model single-step traps
# (README, Differences), so no POPF or IRET, native or emulated by a VMM, may set it.
POPF_WRITABLE = 0x001 | 0x004 | 0x010 | 0x040 | 0x080 | 0x400 | 0x800 | 0x4000 | 0x40000 | 0x200000

# Condition codes in encoding order (Jcc/SETcc low nibble). Each entry lists every alias.
COND_CODES = [
    ("o",),
    ("no",),
    ("b", "c", "nae"),
    ("ae", "nb", "nc"),
    ("e", "z"),
    ("ne", "nz"),
    ("be", "na"),
    ("a", "nbe"),
    ("s",),
    ("ns",),
    ("p", "pe"),
    ("np", "po"),
    ("l", "nge"),
    ("ge", "nl"),
    ("le", "ng"),
    ("g", "nle"),
]


@dataclass(frozen=True)
class Form:
    """One encoding of one instruction."""

    mnemonic: str
    operands: tuple[str, ...]
    opcode: bytes
    modrm: str | None = None  # "r" for /r, "0".."7" for /digit, None for no ModRM
    plus_reg: bool = False  # register number added to the last opcode byte (+r)
    prefix: bytes = b""  # mandatory prefix (F3 for REP forms)
    writes: str = ""  # flags written, as letters of FLAG_BITS
    undefined: str = ""  # flags the manual leaves undefined after it
    cost: int = 1  # base simulated cycles
    user: bool = True  # runs at CPL 3 and can be compared with Unicorn in user mode
    operation: str = ""  # the operation's name when the mnemonic does not say it (see name)
    privileged: str = ""  # PRIV_CPL0 or PRIV_IOPL: when it raises #GP(0); "" for never
    sensitive: bool = False  # unprivileged, but reads or changes state a VMM must own

    @property
    def modrm_byte(self) -> int | None:
        """The whole ModRM byte an encoding fixes (VMCALL, 0F 01 C1: mod 3, reg 0, rm 1):
        the third byte of a 0F xx yy opcode; None for the others."""
        return self.opcode[2] if len(self.opcode) == 3 else None

    @property
    def name(self) -> str:
        """The operation, one name per distinct one: "mov_to_cr", "pushf" (PUSHF and
        PUSHFD), "iret" (IRET and IRETD)...; the mnemonic for the others."""
        return self.operation or self.mnemonic


# Form.privileged: which check raises #GP(0) before the instruction does anything.
PRIV_CPL0 = "cpl0"  # unless CPL = 0 (HLT, LGDT, MOV to CRn...)
PRIV_IOPL = "iopl"  # unless CPL <= EFLAGS.IOPL (CLI, STI, IN, OUT)

IMM_SIZES = {"imm8": 1, "simm8": 1, "imm16": 2, "imm32": 4, "rel8": 1, "rel32": 4}
IMM_SIZES.update({"moffs8": 4, "moffs32": 4})

ARITH = "oszapc"
_ALU_NAMES = ["add", "or", "adc", "sbb", "and", "sub", "xor", "cmp"]
_SHIFT_NAMES = ["rol", "ror", "rcl", "rcr", "shl", "shr", "sal", "sar"]


def _alu_forms() -> list[Form]:
    forms = []
    for n, name in enumerate(_ALU_NAMES):
        undef = "a" if name in ("and", "or", "xor") else ""
        base = n * 8
        kw = dict(writes=ARITH, undefined=undef)
        forms += [
            Form(name, ("al", "imm8"), bytes([base + 4]), **kw),
            Form(name, ("eax", "imm32"), bytes([base + 5]), **kw),
            Form(name, ("rm8", "r8"), bytes([base]), "r", **kw),
            Form(name, ("rm32", "r32"), bytes([base + 1]), "r", **kw),
            Form(name, ("r8", "rm8"), bytes([base + 2]), "r", **kw),
            Form(name, ("r32", "rm32"), bytes([base + 3]), "r", **kw),
            Form(name, ("rm8", "imm8"), b"\x80", str(n), **kw),
            Form(name, ("rm32", "simm8"), b"\x83", str(n), **kw),
            Form(name, ("rm32", "imm32"), b"\x81", str(n), **kw),
        ]
    return forms


def _shift_forms() -> list[Form]:
    forms = []
    for n, name in enumerate(_SHIFT_NAMES):
        digit = "4" if name == "sal" else str(n)
        if name in ("rol", "ror", "rcl", "rcr"):
            kw = dict(writes="oc", undefined="o")
        else:
            kw = dict(writes=ARITH, undefined="oa")
        forms += [
            Form(name, ("rm8", "1"), b"\xd0", digit, **kw),
            Form(name, ("rm32", "1"), b"\xd1", digit, **kw),
            Form(name, ("rm8", "cl"), b"\xd2", digit, **kw),
            Form(name, ("rm32", "cl"), b"\xd3", digit, **kw),
            Form(name, ("rm8", "imm8"), b"\xc0", digit, **kw),
            Form(name, ("rm32", "imm8"), b"\xc1", digit, **kw),
        ]
    return forms


def _cond_forms() -> list[Form]:
    forms = []
    for cc, names in enumerate(COND_CODES):
        for alias in names:
            forms += [
                Form("j" + alias, ("rel8",), bytes([0x70 + cc])),
                Form("j" + alias, ("rel32",), bytes([0x0F, 0x80 + cc])),
                Form("set" + alias, ("rm8",), bytes([0x0F, 0x90 + cc]), "0"),
            ]
    return forms


def _string_forms() -> list[Form]:
    forms = []
    for name, op, writes in [
        ("movs", 0xA4, ""),
        ("cmps", 0xA6, ARITH),
        ("stos", 0xAA, ""),
        ("lods", 0xAC, ""),
        ("scas", 0xAE, ARITH),
    ]:
        for suffix, add in (("b", 0), ("d", 1)):
            forms.append(Form(name + suffix, (), bytes([op + add]), writes=writes, cost=2))
            reps = ["rep"] if not writes else ["repe", "repz", "repne", "repnz"]
            for rep in reps:
                prefix = b"\xf2" if rep.startswith("repn") else b"\xf3"
                forms.append(
                    Form(
                        f"{rep} {name}{suffix}",
                        (),
                        bytes([op + add]),
                        prefix=prefix,
                        writes=writes,
                        cost=2,
                    )
                )
    return forms


# Keyword sets for the system rows.
_CPL0 = dict(user=False, privileged=PRIV_CPL0)
_IOPL = dict(user=False, privileged=PRIV_IOPL)
_SENSITIVE = dict(user=False, sensitive=True)

FORMS: list[Form] = [
    # --- data movement -------------------------------------------------------------
    Form("mov", ("al", "moffs8"), b"\xa0"),
    Form("mov", ("eax", "moffs32"), b"\xa1"),
    Form("mov", ("moffs8", "al"), b"\xa2"),
    Form("mov", ("moffs32", "eax"), b"\xa3"),
    Form("mov", ("rm8", "r8"), b"\x88", "r"),
    Form("mov", ("rm32", "r32"), b"\x89", "r"),
    Form("mov", ("r8", "rm8"), b"\x8a", "r"),
    Form("mov", ("r32", "rm32"), b"\x8b", "r"),
    Form("mov", ("r8", "imm8"), b"\xb0", plus_reg=True),
    Form("mov", ("r32", "imm32"), b"\xb8", plus_reg=True),
    Form("mov", ("rm8", "imm8"), b"\xc6", "0"),
    Form("mov", ("rm32", "imm32"), b"\xc7", "0"),
    Form("movzx", ("r32", "rm8"), b"\x0f\xb6", "r"),
    Form("movzx", ("r32", "rm16"), b"\x0f\xb7", "r"),
    Form("movsx", ("r32", "rm8"), b"\x0f\xbe", "r"),
    Form("movsx", ("r32", "rm16"), b"\x0f\xbf", "r"),
    Form("lea", ("r32", "m"), b"\x8d", "r"),
    Form("xchg", ("eax", "r32"), b"\x90", plus_reg=True),
    Form("xchg", ("r32", "eax"), b"\x90", plus_reg=True),
    Form("xchg", ("r8", "rm8"), b"\x86", "r", cost=2),  # NASM's choice for reg, reg
    Form("xchg", ("rm8", "r8"), b"\x86", "r", cost=2),
    Form("xchg", ("r32", "rm32"), b"\x87", "r", cost=2),
    Form("xchg", ("rm32", "r32"), b"\x87", "r", cost=2),
    Form("push", ("r32",), b"\x50", plus_reg=True),
    Form("push", ("simm8",), b"\x6a"),
    Form("push", ("imm32",), b"\x68"),
    Form("push", ("rm32",), b"\xff", "6"),
    Form("pop", ("r32",), b"\x58", plus_reg=True),
    Form("pop", ("rm32",), b"\x8f", "0"),
    Form("pushad", (), b"\x60", cost=4),
    Form("popad", (), b"\x61", cost=4),
    Form("pushfd", (), b"\x9c", operation="pushf", sensitive=True),
    Form("pushf", (), b"\x9c", sensitive=True),
    Form("popfd", (), b"\x9d", writes="oszapcd", cost=4, operation="popf", sensitive=True),
    Form("popf", (), b"\x9d", writes="oszapcd", cost=4, sensitive=True),
    Form("cdq", (), b"\x99"),
    Form("cwde", (), b"\x98"),
    Form("nop", (), b"\x90"),
    # --- arithmetic and logic ------------------------------------------------------
    *_alu_forms(),
    Form("inc", ("r32",), b"\x40", plus_reg=True, writes="oszap"),
    Form("inc", ("rm8",), b"\xfe", "0", writes="oszap"),
    Form("inc", ("rm32",), b"\xff", "0", writes="oszap"),
    Form("dec", ("r32",), b"\x48", plus_reg=True, writes="oszap"),
    Form("dec", ("rm8",), b"\xfe", "1", writes="oszap"),
    Form("dec", ("rm32",), b"\xff", "1", writes="oszap"),
    Form("test", ("al", "imm8"), b"\xa8", writes=ARITH, undefined="a"),
    Form("test", ("eax", "imm32"), b"\xa9", writes=ARITH, undefined="a"),
    Form("test", ("rm8", "r8"), b"\x84", "r", writes=ARITH, undefined="a"),
    Form("test", ("rm32", "r32"), b"\x85", "r", writes=ARITH, undefined="a"),
    Form("test", ("r8", "rm8"), b"\x84", "r", writes=ARITH, undefined="a"),
    Form("test", ("r32", "rm32"), b"\x85", "r", writes=ARITH, undefined="a"),
    Form("test", ("rm8", "imm8"), b"\xf6", "0", writes=ARITH, undefined="a"),
    Form("test", ("rm32", "imm32"), b"\xf7", "0", writes=ARITH, undefined="a"),
    Form("not", ("rm8",), b"\xf6", "2"),
    Form("not", ("rm32",), b"\xf7", "2"),
    Form("neg", ("rm8",), b"\xf6", "3", writes=ARITH),
    Form("neg", ("rm32",), b"\xf7", "3", writes=ARITH),
    Form("mul", ("rm8",), b"\xf6", "4", writes=ARITH, undefined="szap", cost=3),
    Form("mul", ("rm32",), b"\xf7", "4", writes=ARITH, undefined="szap", cost=3),
    Form("imul", ("rm8",), b"\xf6", "5", writes=ARITH, undefined="szap", cost=3),
    Form("imul", ("rm32",), b"\xf7", "5", writes=ARITH, undefined="szap", cost=3),
    Form("imul", ("r32", "rm32"), b"\x0f\xaf", "r", writes=ARITH, undefined="szap", cost=3),
    Form("imul", ("r32", "rm32", "simm8"), b"\x6b", "r", writes=ARITH, undefined="szap", cost=3),
    Form("imul", ("r32", "rm32", "imm32"), b"\x69", "r", writes=ARITH, undefined="szap", cost=3),
    Form("div", ("rm8",), b"\xf6", "6", writes=ARITH, undefined=ARITH, cost=20),
    Form("div", ("rm32",), b"\xf7", "6", writes=ARITH, undefined=ARITH, cost=20),
    Form("idiv", ("rm8",), b"\xf6", "7", writes=ARITH, undefined=ARITH, cost=20),
    Form("idiv", ("rm32",), b"\xf7", "7", writes=ARITH, undefined=ARITH, cost=20),
    *_shift_forms(),
    *_cond_forms(),
    Form("bt", ("rm32", "r32"), b"\x0f\xa3", "r", writes="oszapc", undefined="oszap"),
    Form("bt", ("rm32", "imm8"), b"\x0f\xba", "4", writes="oszapc", undefined="oszap"),
    Form("clc", (), b"\xf8", writes="c"),
    Form("stc", (), b"\xf9", writes="c"),
    Form("cmc", (), b"\xf5", writes="c"),
    Form("cld", (), b"\xfc", writes="d"),
    Form("std", (), b"\xfd", writes="d"),
    # --- control transfer ----------------------------------------------------------
    Form("jmp", ("rel8",), b"\xeb"),
    Form("jmp", ("rel32",), b"\xe9"),
    Form("jmp", ("rm32",), b"\xff", "4"),
    Form("call", ("rel32",), b"\xe8", cost=2),
    Form("call", ("rm32",), b"\xff", "2", cost=2),
    Form("ret", (), b"\xc3", cost=2),
    Form("ret", ("imm16",), b"\xc2", cost=2),
    Form("loop", ("rel8",), b"\xe2"),
    Form("leave", (), b"\xc9"),
    Form("int3", (), b"\xcc", cost=10),
    Form("int", ("imm8",), b"\xcd", cost=10),
    *_string_forms(),
    # --- system (privileged or sensitive; not compared with Unicorn in user mode) -----
    Form("hlt", (), b"\xf4", **_CPL0),
    Form("cli", (), b"\xfa", **_IOPL),
    Form("sti", (), b"\xfb", **_IOPL),
    Form("in", ("al", "imm8"), b"\xe4", cost=10, **_IOPL),
    Form("in", ("eax", "imm8"), b"\xe5", cost=10, **_IOPL),
    Form("out", ("imm8", "al"), b"\xe6", cost=10, **_IOPL),
    Form("out", ("imm8", "eax"), b"\xe7", cost=10, **_IOPL),
    Form("in", ("al", "dx"), b"\xec", cost=10, **_IOPL),
    Form("in", ("eax", "dx"), b"\xed", cost=10, **_IOPL),
    Form("out", ("dx", "al"), b"\xee", cost=10, **_IOPL),
    Form("out", ("dx", "eax"), b"\xef", cost=10, **_IOPL),
    Form("cpuid", (), b"\x0f\xa2", cost=20, **_SENSITIVE),
    Form("iret", (), b"\xcf", cost=10, **_SENSITIVE),
    Form("iretd", (), b"\xcf", cost=10, operation="iret", **_SENSITIVE),
    Form("lgdt", ("m",), b"\x0f\x01", "2", cost=10, **_CPL0),
    Form("lidt", ("m",), b"\x0f\x01", "3", cost=10, **_CPL0),
    Form("sgdt", ("m",), b"\x0f\x01", "0", **_SENSITIVE),
    Form("sidt", ("m",), b"\x0f\x01", "1", **_SENSITIVE),
    Form("smsw", ("rm32",), b"\x0f\x01", "4", **_SENSITIVE),
    Form("lmsw", ("rm16",), b"\x0f\x01", "6", cost=5, **_CPL0),  # CR0's PE MP EM TS
    Form("invlpg", ("m",), b"\x0f\x01", "7", cost=10, **_CPL0),
    Form("sldt", ("rm32",), b"\x0f\x00", "0", **_SENSITIVE),
    Form("str", ("rm32",), b"\x0f\x00", "1", **_SENSITIVE),
    Form("ltr", ("rm16",), b"\x0f\x00", "3", cost=10, **_CPL0),
    Form("mov", ("r32rm", "cr"), b"\x0f\x20", "r", cost=5, operation="mov_from_cr", **_CPL0),
    Form("mov", ("cr", "r32rm"), b"\x0f\x22", "r", cost=5, operation="mov_to_cr", **_CPL0),
    Form("mov", ("rm32", "sreg"), b"\x8c", "r", operation="mov_from_sreg", **_SENSITIVE),
    Form("mov", ("sreg", "rm16"), b"\x8e", "r", user=False, cost=3, operation="mov_to_sreg"),
    Form("mov", ("sreg", "rm32"), b"\x8e", "r", user=False, cost=3, operation="mov_to_sreg"),
    Form("ud2", (), b"\x0f\x0b", user=False),
    Form("vmcall", (), b"\x0f\x01\xc1", user=False),
]

# The forms of each mnemonic, in the table's order of preference (the assembler's index).
FORMS_BY_MNEMONIC: dict[str, list[Form]] = {}
for _form in FORMS:
    FORMS_BY_MNEMONIC.setdefault(_form.mnemonic, []).append(_form)

# Operation names by what a VMM must do about them (from the rows' flags).
PRIVILEGED_NAMES = frozenset(f.name for f in FORMS if f.privileged)  # #GP(0) when not allowed
CPL0_NAMES = frozenset(f.name for f in FORMS if f.privileged == PRIV_CPL0)  # only at CPL 0
IOPL_NAMES = frozenset(f.name for f in FORMS if f.privileged == PRIV_IOPL)  # CPL <= IOPL
SENSITIVE_NAMES = frozenset(f.name for f in FORMS if f.sensitive)  # sensitive, unprivileged


# ---- where each form sits in the CPU's tables ----------------------------------------------
# An opcode index is the opcode byte, 256 + the byte after 0F, or 512 + k for the k-th
# encoding that a whole ModRM byte names (EXACT_MODRM_FORMS: VMCALL is 0F 01 with ModRM C1).
# A form slot is opcode index * 8 + ModRM.reg (the /digit; 0 for a form without ModRM): the
# CPU's handler, operand-access and cost tables are indexed by it.
EXACT_MODRM_FORMS: tuple[Form, ...] = tuple(f for f in FORMS if f.modrm_byte is not None)
EXACT_MODRM_INDEX = 512
MAX_EXACT_MODRM = 8
OPCODE_INDEXES = EXACT_MODRM_INDEX + MAX_EXACT_MODRM
FORM_SLOTS = OPCODE_INDEXES * 8
assert len(EXACT_MODRM_FORMS) <= MAX_EXACT_MODRM


def opcode_index(form: Form) -> int:
    """The opcode index of a form (for a +r form, of its register 0)."""
    if form.modrm_byte is not None:
        return EXACT_MODRM_INDEX + EXACT_MODRM_FORMS.index(form)
    op = form.opcode
    return 256 + op[1] if op[0] == 0x0F else op[0]


def form_digits(form: Form) -> tuple[int, ...]:
    """The ModRM.reg values a form is encoded with (0 alone for a form without ModRM)."""
    if form.modrm is None:
        return (form.modrm_byte >> 3 & 7,) if form.modrm_byte is not None else (0,)
    if form.modrm != "r":
        return (int(form.modrm),)
    if "cr" in form.operands:  # CR0 CR2 CR3 CR4
        return tuple(n for n, name in enumerate(CR_NAMES) if name in ("cr0", "cr2", "cr3", "cr4"))
    if form.operands[:1] == ("sreg",):  # MOV Sreg, r/m: ES SS DS FS GS (CS cannot be loaded)
        return (0, 2, 3, 4, 5)
    if "sreg" in form.operands:
        return tuple(range(len(SREG_NAMES)))
    return tuple(range(8))


def form_sides(form: Form) -> tuple[bool, ...]:
    """Which r/m operands a form takes: (False,) register, (True,) memory, or both. A form
    without ModRM counts as a register form."""
    if form.modrm is None or "r32rm" in form.operands:
        return (False,)
    if "m" in form.operands:
        return (True,)
    return (False, True)


def form_slots() -> dict[tuple[int, bool], Form]:
    """The form the CPU runs for each (form slot, r/m operand in memory), without a
    mandatory prefix: the first in table order; an exact opcode before a +r form's (90 is
    NOP, not XCHG EAX, EAX)."""
    slots: dict[tuple[int, bool], Form] = {}
    for form in sorted(FORMS, key=lambda f: f.plus_reg):  # (a stable sort: table order)
        if form.prefix:
            continue
        base = opcode_index(form)
        for r in range(8) if form.plus_reg else range(1):
            for digit in form_digits(form):
                for memory in form_sides(form):
                    slots.setdefault(((base + r) * 8 + digit, memory), form)
    return slots


def opcode_cost_table() -> np.ndarray:
    """Base cycles per form, indexed by ``opcode_index * 8 + modrm_digit``.

    ``opcode_index`` is the first opcode byte, or 256 + the second byte after 0F; the
    ModRM digit separates the forms of a group opcode (F7 /4 MUL from F7 /6 DIV); forms
    with no digit fill all eight slots.
    """
    table = np.ones(512 * 8, dtype=np.int64)
    for form in FORMS:
        op = form.opcode
        index = 256 + op[1] if op[0] == 0x0F else op[0]
        regs = range(8) if form.plus_reg else range(1)
        digits = [int(form.modrm)] if form.modrm not in (None, "r") else range(8)
        for r in regs:
            for d in digits:
                table[(index + r) * 8 + d] = form.cost
    return table


DEFAULT_COST_TABLE = opcode_cost_table()
