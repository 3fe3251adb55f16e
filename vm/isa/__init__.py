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
    handler: str = ""  # the core's branch that runs it (HANDLER_FAMILIES); "": its name's
    access: str = ""  # what the core's operand stage does first (words of ACCESS_WORDS)

    @property
    def family(self) -> str:
        """The core's branch that runs this form (one of HANDLER_FAMILIES)."""
        return self.handler or self.name

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


# Form.handler: the branches of the core's run loop (vm.cpu.core), one per family of forms
# that it executes the same way. "ud" raises #UD: no valid encoding reaches it.
HANDLER_FAMILIES = (
    "ud", "mov_store", "mov_load", "alu", "jcc", "inc_dec_reg", "push_reg", "pop_reg",
    "alu_imm", "call_rel", "ret", "ret_imm", "jmp_rel8", "jmp_rel32", "mov_r8_imm",
    "mov_r32_imm", "test_rm", "test_acc", "lea", "mov_rm_imm", "shift", "group3", "group5",
    "push_imm32", "push_imm8", "pop_rm", "nop", "xchg_eax", "xchg_rm", "setcc", "movzx",
    "movsx", "imul", "bt", "loop", "leave", "pushad", "popad", "pushf", "popf", "cwde", "cdq",
    "mov_moffs", "string", "clc", "stc", "cmc", "cld", "std", "int3", "int", "hlt", "cli_sti",
    "io", "iret", "sgdt_sidt", "lgdt_lidt", "smsw", "lmsw", "invlpg", "sldt_str", "ltr",
    "mov_from_cr", "mov_to_cr", "mov_from_sreg", "mov_to_sreg", "cpuid", "ud2", "vmcall",
)  # fmt: skip

# Form.access: what the core's operand stage does before the branch runs, so that every
# address is checked before anything changes. Forms that address memory otherwise (LEA,
# LGDT, POP r/m, BT r/m, r32, string forms...) leave it empty and check their own.
ACCESS_WORDS = {
    "read": "read the r/m operand (its size from its kind)",
    "write": "the r/m operand is written back (its address is checked first)",
    "word": "the r/m operand is a word whatever its kind (a selector: MOV Sreg, r/m32)",
    "push": "a dword is pushed (the stack slot is checked first)",
    "pop": "a dword is popped before the branch runs",
}

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
        to_rm = "read" if name == "cmp" else "read write"  # CMP only compares
        alu = dict(kw, handler="alu")
        imm = dict(kw, handler="alu_imm", access=to_rm)
        forms += [
            Form(name, ("al", "imm8"), bytes([base + 4]), **alu),
            Form(name, ("eax", "imm32"), bytes([base + 5]), **alu),
            Form(name, ("rm8", "r8"), bytes([base]), "r", access=to_rm, **alu),
            Form(name, ("rm32", "r32"), bytes([base + 1]), "r", access=to_rm, **alu),
            Form(name, ("r8", "rm8"), bytes([base + 2]), "r", access="read", **alu),
            Form(name, ("r32", "rm32"), bytes([base + 3]), "r", access="read", **alu),
            Form(name, ("rm8", "imm8"), b"\x80", str(n), **imm),
            Form(name, ("rm32", "simm8"), b"\x83", str(n), **imm),
            Form(name, ("rm32", "imm32"), b"\x81", str(n), **imm),
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
        kw.update(handler="shift", access="read write")
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
                Form("j" + alias, ("rel8",), bytes([0x70 + cc]), handler="jcc"),
                Form("j" + alias, ("rel32",), bytes([0x0F, 0x80 + cc]), handler="jcc"),
                Form("set" + alias, ("rm8",), bytes([0x0F, 0x90 + cc]), "0", handler="setcc",
                     access="write"),
            ]  # fmt: skip
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
        kw = dict(writes=writes, cost=2, handler="string")
        for suffix, add in (("b", 0), ("d", 1)):
            forms.append(Form(name + suffix, (), bytes([op + add]), **kw))
            reps = ["rep"] if not writes else ["repe", "repz", "repne", "repnz"]
            for rep in reps:
                prefix = b"\xf2" if rep.startswith("repn") else b"\xf3"
                forms.append(
                    Form(f"{rep} {name}{suffix}", (), bytes([op + add]), prefix=prefix, **kw)
                )
    return forms


# Keyword sets for rows that share them.
_CPL0 = dict(user=False, privileged=PRIV_CPL0)
_IOPL = dict(user=False, privileged=PRIV_IOPL)
_SENSITIVE = dict(user=False, sensitive=True)
_TEST = dict(writes=ARITH, undefined="a")
_MUL = dict(writes=ARITH, undefined="szap", cost=3)
_DIV = dict(writes=ARITH, undefined=ARITH, cost=20)
_G3 = dict(handler="group3")  # F6, F7: TEST NOT NEG MUL IMUL DIV IDIV r/m
_G5 = dict(handler="group5")  # FE, FF: INC DEC r/m, CALL JMP PUSH r/m32
_RW = dict(access="read write")
_R = dict(access="read")

FORMS: list[Form] = [
    # --- data movement -------------------------------------------------------------
    Form("mov", ("al", "moffs8"), b"\xa0", handler="mov_moffs"),
    Form("mov", ("eax", "moffs32"), b"\xa1", handler="mov_moffs"),
    Form("mov", ("moffs8", "al"), b"\xa2", handler="mov_moffs"),
    Form("mov", ("moffs32", "eax"), b"\xa3", handler="mov_moffs"),
    Form("mov", ("rm8", "r8"), b"\x88", "r", handler="mov_store", access="write"),
    Form("mov", ("rm32", "r32"), b"\x89", "r", handler="mov_store", access="write"),
    Form("mov", ("r8", "rm8"), b"\x8a", "r", handler="mov_load", **_R),
    Form("mov", ("r32", "rm32"), b"\x8b", "r", handler="mov_load", **_R),
    Form("mov", ("r8", "imm8"), b"\xb0", plus_reg=True, handler="mov_r8_imm"),
    Form("mov", ("r32", "imm32"), b"\xb8", plus_reg=True, handler="mov_r32_imm"),
    Form("mov", ("rm8", "imm8"), b"\xc6", "0", handler="mov_rm_imm", access="write"),
    Form("mov", ("rm32", "imm32"), b"\xc7", "0", handler="mov_rm_imm", access="write"),
    Form("movzx", ("r32", "rm8"), b"\x0f\xb6", "r", **_R),
    Form("movzx", ("r32", "rm16"), b"\x0f\xb7", "r", **_R),
    Form("movsx", ("r32", "rm8"), b"\x0f\xbe", "r", **_R),
    Form("movsx", ("r32", "rm16"), b"\x0f\xbf", "r", **_R),
    Form("lea", ("r32", "m"), b"\x8d", "r"),
    Form("xchg", ("eax", "r32"), b"\x90", plus_reg=True, handler="xchg_eax"),
    Form("xchg", ("r32", "eax"), b"\x90", plus_reg=True, handler="xchg_eax"),
    # (NASM's choice for xchg reg, reg is the first of each pair)
    Form("xchg", ("r8", "rm8"), b"\x86", "r", cost=2, handler="xchg_rm", **_RW),
    Form("xchg", ("rm8", "r8"), b"\x86", "r", cost=2, handler="xchg_rm", **_RW),
    Form("xchg", ("r32", "rm32"), b"\x87", "r", cost=2, handler="xchg_rm", **_RW),
    Form("xchg", ("rm32", "r32"), b"\x87", "r", cost=2, handler="xchg_rm", **_RW),
    Form("push", ("r32",), b"\x50", plus_reg=True, handler="push_reg", access="push"),
    Form("push", ("simm8",), b"\x6a", handler="push_imm8", access="push"),
    Form("push", ("imm32",), b"\x68", handler="push_imm32", access="push"),
    Form("push", ("rm32",), b"\xff", "6", access="read push", **_G5),
    Form("pop", ("r32",), b"\x58", plus_reg=True, handler="pop_reg", access="pop"),
    Form("pop", ("rm32",), b"\x8f", "0", handler="pop_rm"),  # (addressed after the pop)
    Form("pushad", (), b"\x60", cost=4),
    Form("popad", (), b"\x61", cost=4),
    Form("pushfd", (), b"\x9c", operation="pushf", sensitive=True, access="push"),
    Form("pushf", (), b"\x9c", sensitive=True, access="push"),
    Form("popfd", (), b"\x9d", writes="oszapcd", cost=4, operation="popf", sensitive=True,
         access="pop"),
    Form("popf", (), b"\x9d", writes="oszapcd", cost=4, sensitive=True, access="pop"),
    Form("cdq", (), b"\x99"),
    Form("cwde", (), b"\x98"),
    Form("nop", (), b"\x90"),
    # --- arithmetic and logic ------------------------------------------------------
    *_alu_forms(),
    Form("inc", ("r32",), b"\x40", plus_reg=True, writes="oszap", handler="inc_dec_reg"),
    Form("inc", ("rm8",), b"\xfe", "0", writes="oszap", **_G5, **_RW),
    Form("inc", ("rm32",), b"\xff", "0", writes="oszap", **_G5, **_RW),
    Form("dec", ("r32",), b"\x48", plus_reg=True, writes="oszap", handler="inc_dec_reg"),
    Form("dec", ("rm8",), b"\xfe", "1", writes="oszap", **_G5, **_RW),
    Form("dec", ("rm32",), b"\xff", "1", writes="oszap", **_G5, **_RW),
    Form("test", ("al", "imm8"), b"\xa8", handler="test_acc", **_TEST),
    Form("test", ("eax", "imm32"), b"\xa9", handler="test_acc", **_TEST),
    Form("test", ("rm8", "r8"), b"\x84", "r", handler="test_rm", **_TEST, **_R),
    Form("test", ("rm32", "r32"), b"\x85", "r", handler="test_rm", **_TEST, **_R),
    Form("test", ("r8", "rm8"), b"\x84", "r", handler="test_rm", **_TEST, **_R),
    Form("test", ("r32", "rm32"), b"\x85", "r", handler="test_rm", **_TEST, **_R),
    Form("test", ("rm8", "imm8"), b"\xf6", "0", **_G3, **_TEST, **_R),
    Form("test", ("rm32", "imm32"), b"\xf7", "0", **_G3, **_TEST, **_R),
    Form("not", ("rm8",), b"\xf6", "2", **_G3, **_RW),
    Form("not", ("rm32",), b"\xf7", "2", **_G3, **_RW),
    Form("neg", ("rm8",), b"\xf6", "3", writes=ARITH, **_G3, **_RW),
    Form("neg", ("rm32",), b"\xf7", "3", writes=ARITH, **_G3, **_RW),
    Form("mul", ("rm8",), b"\xf6", "4", **_MUL, **_G3, **_R),
    Form("mul", ("rm32",), b"\xf7", "4", **_MUL, **_G3, **_R),
    Form("imul", ("rm8",), b"\xf6", "5", **_MUL, **_G3, **_R),
    Form("imul", ("rm32",), b"\xf7", "5", **_MUL, **_G3, **_R),
    Form("imul", ("r32", "rm32"), b"\x0f\xaf", "r", **_MUL, **_R),
    Form("imul", ("r32", "rm32", "simm8"), b"\x6b", "r", **_MUL, **_R),
    Form("imul", ("r32", "rm32", "imm32"), b"\x69", "r", **_MUL, **_R),
    Form("div", ("rm8",), b"\xf6", "6", **_DIV, **_G3, **_R),
    Form("div", ("rm32",), b"\xf7", "6", **_DIV, **_G3, **_R),
    Form("idiv", ("rm8",), b"\xf6", "7", **_DIV, **_G3, **_R),
    Form("idiv", ("rm32",), b"\xf7", "7", **_DIV, **_G3, **_R),
    *_shift_forms(),
    *_cond_forms(),
    # BT r/m32, r32 addresses a bit string: its branch reads the dword the offset names.
    Form("bt", ("rm32", "r32"), b"\x0f\xa3", "r", writes="oszapc", undefined="oszap"),
    Form("bt", ("rm32", "imm8"), b"\x0f\xba", "4", writes="oszapc", undefined="oszap", **_R),
    Form("clc", (), b"\xf8", writes="c"),
    Form("stc", (), b"\xf9", writes="c"),
    Form("cmc", (), b"\xf5", writes="c"),
    Form("cld", (), b"\xfc", writes="d"),
    Form("std", (), b"\xfd", writes="d"),
    # --- control transfer ----------------------------------------------------------
    Form("jmp", ("rel8",), b"\xeb", handler="jmp_rel8"),
    Form("jmp", ("rel32",), b"\xe9", handler="jmp_rel32"),
    Form("jmp", ("rm32",), b"\xff", "4", **_G5, **_R),
    Form("call", ("rel32",), b"\xe8", cost=2, handler="call_rel", access="push"),
    Form("call", ("rm32",), b"\xff", "2", cost=2, access="read push", **_G5),
    Form("ret", (), b"\xc3", cost=2, access="pop"),
    Form("ret", ("imm16",), b"\xc2", cost=2, handler="ret_imm", access="pop"),
    Form("loop", ("rel8",), b"\xe2"),
    Form("leave", (), b"\xc9"),
    Form("int3", (), b"\xcc", cost=10),
    Form("int", ("imm8",), b"\xcd", cost=10),
    *_string_forms(),
    # --- system (privileged or sensitive; not compared with Unicorn in user mode) -----
    Form("hlt", (), b"\xf4", **_CPL0),
    Form("cli", (), b"\xfa", handler="cli_sti", **_IOPL),
    Form("sti", (), b"\xfb", handler="cli_sti", **_IOPL),
    Form("in", ("al", "imm8"), b"\xe4", cost=10, handler="io", **_IOPL),
    Form("in", ("eax", "imm8"), b"\xe5", cost=10, handler="io", **_IOPL),
    Form("out", ("imm8", "al"), b"\xe6", cost=10, handler="io", **_IOPL),
    Form("out", ("imm8", "eax"), b"\xe7", cost=10, handler="io", **_IOPL),
    Form("in", ("al", "dx"), b"\xec", cost=10, handler="io", **_IOPL),
    Form("in", ("eax", "dx"), b"\xed", cost=10, handler="io", **_IOPL),
    Form("out", ("dx", "al"), b"\xee", cost=10, handler="io", **_IOPL),
    Form("out", ("dx", "eax"), b"\xef", cost=10, handler="io", **_IOPL),
    Form("cpuid", (), b"\x0f\xa2", cost=20, **_SENSITIVE),
    Form("iret", (), b"\xcf", cost=10, **_SENSITIVE),
    Form("iretd", (), b"\xcf", cost=10, operation="iret", **_SENSITIVE),
    Form("lgdt", ("m",), b"\x0f\x01", "2", cost=10, handler="lgdt_lidt", **_CPL0),
    Form("lidt", ("m",), b"\x0f\x01", "3", cost=10, handler="lgdt_lidt", **_CPL0),
    Form("sgdt", ("m",), b"\x0f\x01", "0", handler="sgdt_sidt", **_SENSITIVE),
    Form("sidt", ("m",), b"\x0f\x01", "1", handler="sgdt_sidt", **_SENSITIVE),
    # (SMSW, SLDT, STR and MOV r/m, Sreg store a word to memory, a dword to a register)
    Form("smsw", ("rm32",), b"\x0f\x01", "4", **_SENSITIVE),
    Form("lmsw", ("rm16",), b"\x0f\x01", "6", cost=5, **_R, **_CPL0),  # CR0's PE MP EM TS
    Form("invlpg", ("m",), b"\x0f\x01", "7", cost=10, **_CPL0),
    Form("sldt", ("rm32",), b"\x0f\x00", "0", handler="sldt_str", **_SENSITIVE),
    Form("str", ("rm32",), b"\x0f\x00", "1", handler="sldt_str", **_SENSITIVE),
    Form("ltr", ("rm16",), b"\x0f\x00", "3", cost=10, **_R, **_CPL0),
    Form("mov", ("r32rm", "cr"), b"\x0f\x20", "r", cost=5, operation="mov_from_cr", **_CPL0),
    Form("mov", ("cr", "r32rm"), b"\x0f\x22", "r", cost=5, operation="mov_to_cr", **_CPL0),
    Form("mov", ("rm32", "sreg"), b"\x8c", "r", operation="mov_from_sreg", **_SENSITIVE),
    Form("mov", ("sreg", "rm16"), b"\x8e", "r", user=False, cost=3, operation="mov_to_sreg",
         access="read word"),
    Form("mov", ("sreg", "rm32"), b"\x8e", "r", user=False, cost=3, operation="mov_to_sreg",
         access="read word"),
    Form("ud2", (), b"\x0f\x0b", user=False),
    # VMCALL is 0F 01 with the ModRM byte C1 (mod 3, reg 0, rm 1), its third opcode byte.
    # #UD on bare metal; with EXIT_ON_VMCALL it exits as HYPERCALL (as under VT-x).
    Form("vmcall", (), b"\x0f\x01\xc1", user=False),
]  # fmt: skip

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
    NOP, not XCHG EAX, EAX). The forms of one slot agree on everything the CPU's tables
    hold (family, operand access, privilege, cost)."""
    slots: dict[tuple[int, bool], Form] = {}
    for form in sorted(FORMS, key=lambda f: f.plus_reg):  # (a stable sort: table order)
        if form.prefix:
            continue
        base = opcode_index(form)
        for r in range(8) if form.plus_reg else range(1):
            for digit in form_digits(form):
                for memory in form_sides(form):
                    slots.setdefault(((base + r) * 8 + digit, memory), form)
    for form in FORMS:  # the REP forms run in the slot of their plain form
        if form.prefix:
            plain = slots[opcode_index(form) * 8, False]
            assert _cpu_view(form) == _cpu_view(plain), (form, plain)
    for (slot, memory), form in slots.items():
        other = slots.get((slot, not memory))
        assert other is None or _cpu_view(other) == _cpu_view(form), (form, other)
    return slots


def _cpu_view(form: Form) -> tuple:
    """What the CPU's tables hold of a form (its operand size aside)."""
    return form.family, form.access, form.privileged, form.cost


def opcode_cost_table() -> np.ndarray:
    """Base cycles per form slot (``opcode index * 8 + ModRM.reg``, see form_slots): what
    the core charges when an instruction of that form retires; 0 where no form is."""
    table = np.zeros(FORM_SLOTS, dtype=np.int64)
    for (slot, _), form in form_slots().items():
        table[slot] = form.cost
    return table


DEFAULT_COST_TABLE = opcode_cost_table()
