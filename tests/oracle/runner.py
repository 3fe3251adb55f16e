"""Run a generated program on Unicorn and on vmlab's Machine, and compare what they did.

``Oracle`` holds one Unicorn engine and one Machine and reuses them for every program (a
fresh engine per program would cost more than running it). ``Oracle.check(program)``
returns ``None`` when both sides agree, else a report: the seed, what differs, the first
instruction where a single-step comparison diverges, and the listing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .generator import Line, Program, generate
from .layout import (
    BUDGET,
    CODE,
    CODE_LIMIT,
    DATA,
    DATA_SIZE,
    ESP,
    ESP0,
    FLAG_BITS,
    MEMORY_SIZE,
    REG32,
    STACK,
    STACK_SIZE,
    flags_mask,
    flags_text,
)

HALT_LABEL = "halt"


# ---- assembling ---------------------------------------------------------------------------------
def assemble(source: str, assembler: str | None = None) -> tuple[bytes, dict[str, int]]:
    """Bytes and symbol addresses of a program, by vmlab's assembler (or NASM when
    ``assembler="nasm"`` or $VMLAB_ORACLE_ASSEMBLER=nasm, for triage)."""
    assembler = assembler or os.environ.get("VMLAB_ORACLE_ASSEMBLER", "vm")
    if assembler == "nasm":
        return assemble_nasm(source)
    from vm.asm import assemble as vm_assemble

    program = vm_assemble(source)
    return bytes(program.code), {str(k): int(v) for k, v in dict(program.symbols).items()}


def assemble_nasm(source: str) -> tuple[bytes, dict[str, int]]:
    """Assemble with ``nasm -f bin``; symbols from its map file."""
    nasm = shutil.which("nasm")
    if nasm is None:
        raise RuntimeError("nasm is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        src, out, table = Path(tmp, "p.asm"), Path(tmp, "p.bin"), Path(tmp, "p.map")
        src.write_text(f"[map symbols {table}]\n{source}")
        done = subprocess.run([nasm, "-f", "bin", "-o", str(out), str(src)], capture_output=True)
        if done.returncode:
            raise RuntimeError(f"nasm failed:\n{done.stderr.decode()}\n{source}")
        symbols = {}
        for line in table.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and all(c in "0123456789ABCDEFabcdef" for c in parts[0]):
                symbols[parts[2]] = int(parts[1], 16)
        return out.read_bytes(), symbols


# ---- outcomes -----------------------------------------------------------------------------------
@dataclass
class Outcome:
    """Where one side stopped and the state it left."""

    end: str  # "halt", "fault", or what went wrong ("budget", "unicorn error ...", ...)
    eip: int  # at the HLT (halt) or the faulting instruction (fault)
    vector: int | None
    regs: tuple[int, ...]
    eflags: int
    data: bytes
    stack: bytes


def describe_end(o: Outcome) -> str:
    if o.end == "fault":
        return f"fault vector {o.vector} at {o.eip:#x}"
    return f"{o.end} at {o.eip:#x}"


class UnicornSide:
    """One Unicorn engine, reused for every program."""

    def __init__(self) -> None:
        from unicorn import x86_const as X

        self.reg_ids = [getattr(X, f"UC_X86_REG_{name.upper()}") for name in REG32]
        self.eip_id = X.UC_X86_REG_EIP
        self.eflags_id = X.UC_X86_REG_EFLAGS
        self.vector: int | None = None
        self.fresh()

    def fresh(self) -> None:
        """A new engine. After an exception stopped it, an engine remembers the exception
        being delivered and turns the next one into a double fault (#DF, vector 8)."""
        from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_32, Uc

        self.uc = Uc(UC_ARCH_X86, UC_MODE_32)
        self.uc.mem_map(0, MEMORY_SIZE)
        self.uc.hook_add(UC_HOOK_INTR, self._interrupt)
        self.code_length = 0

    def _interrupt(self, uc, vector, user_data) -> None:
        self.vector = vector
        uc.emu_stop()

    def setup(self, program: Program, code: bytes) -> None:
        if self.vector is not None:
            self.fresh()
        uc = self.uc
        length = max(len(code), self.code_length)
        uc.mem_write(CODE, code + bytes(length - len(code)))
        uc.ctl_remove_cache(CODE, CODE + length)  # drop code translated for the last program
        self.code_length = len(code)
        uc.mem_write(DATA, program.data)
        uc.mem_write(STACK, program.stack)
        for i, reg in enumerate(self.reg_ids):
            uc.reg_write(reg, ESP0 if i == ESP else 0)
        uc.reg_write(self.eflags_id, program.eflags)
        uc.reg_write(self.eip_id, CODE)
        self.vector = None

    def step(self, count: int = 1) -> str | None:
        """Run ``count`` instructions from the current EIP; an error text if Unicorn fails."""
        from unicorn import UcError

        try:
            self.uc.emu_start(self.eip, 0xFFFFFFFF, count=count)
        except UcError as error:
            return f"unicorn error {error}"
        return None

    @property
    def eip(self) -> int:
        return self.uc.reg_read(self.eip_id)

    def outcome(self, end: str) -> Outcome:
        uc = self.uc
        return Outcome(
            end,
            self.eip,
            self.vector,
            tuple(uc.reg_read(r) for r in self.reg_ids),
            uc.reg_read(self.eflags_id),
            bytes(uc.mem_read(DATA, DATA_SIZE)),
            bytes(uc.mem_read(STACK, STACK_SIZE)),
        )

    def run(self, program: Program, code: bytes, halt: int) -> Outcome:
        from unicorn import UcError

        self.setup(program, code)
        try:
            self.uc.emu_start(CODE, halt, count=BUDGET)
        except UcError as error:
            return self.outcome(f"unicorn error {error}")
        if self.vector is not None:
            return self.outcome("fault")
        return self.outcome("halt" if self.eip == halt else "budget")


class MachineSide:
    """One vmlab Machine, reset and reused for every program."""

    def __init__(self) -> None:
        from vm.machine import Machine

        self.machine = Machine(memory_size=MEMORY_SIZE)
        self.template = self.machine.state.copy()

    def setup(self, program: Program, code: bytes) -> None:
        m = self.machine
        m.state[:] = self.template
        m.memory[:] = 0
        m.load(CODE, code)
        m.load(DATA, program.data)
        m.load(STACK, program.stack)
        for i, name in enumerate(REG32):
            m.regs[name] = ESP0 if i == ESP else 0
        m.eflags = program.eflags
        m.eip = CODE

    def outcome(self, ex) -> Outcome:
        from vm.cpu.exits import ExitReason

        m = self.machine
        if ex.reason == ExitReason.HALT:
            end, eip = "halt", ex.eip - 1  # our EIP is past the HLT; Unicorn stops at it
        elif ex.reason == ExitReason.FAULT:
            end, eip = "fault", ex.eip
        else:
            end, eip = ex.reason.name.lower(), ex.eip
        return Outcome(
            end,
            eip,
            ex.vector if ex.reason == ExitReason.FAULT else None,
            tuple(m.regs[name] for name in REG32),
            m.eflags,
            m.read(DATA, DATA_SIZE),
            m.read(STACK, STACK_SIZE),
        )

    def run(self, program: Program, code: bytes) -> Outcome:
        self.setup(program, code)
        return self.outcome(self.machine.run(BUDGET))


# ---- comparing ----------------------------------------------------------------------------------
def compared_flags(defined: frozenset[str], df: int | None) -> str:
    return "".join(sorted(defined)) + ("d" if df is not None else "")


def differences(expected: Outcome, got: Outcome, flags: str) -> list[str]:
    """What differs between Unicorn's outcome (expected) and ours (got)."""
    out = []
    if (expected.end, expected.eip, expected.vector) != (got.end, got.eip, got.vector):
        out.append(f"end: unicorn {describe_end(expected)}, vmlab {describe_end(got)}")
    for i, name in enumerate(REG32):
        if expected.regs[i] != got.regs[i]:
            out.append(f"{name}: unicorn {expected.regs[i]:#010x}, vmlab {got.regs[i]:#010x}")
    mask = flags_mask(flags)
    if (expected.eflags ^ got.eflags) & mask:
        wrong = "".join(f for f in flags if (expected.eflags ^ got.eflags) & FLAG_BITS[f])
        out.append(
            f"flags {flags_text(expected.eflags ^ got.eflags, wrong).replace('=1', '')} differ:"
            f" unicorn {flags_text(expected.eflags, flags)}, vmlab {flags_text(got.eflags, flags)}"
        )
    for name, base, a, b in (
        ("data", DATA, expected.data, got.data),
        ("stack", STACK, expected.stack, got.stack),
    ):
        wrong = [i for i in range(len(a)) if a[i] != b[i]] if a != b else []
        for i in wrong[:4]:
            out.append(f"{name} byte {base + i:#x}: unicorn {a[i]:#04x}, vmlab {b[i]:#04x}")
        if len(wrong) > 4:
            out.append(f"... {len(wrong) - 4} more {name} bytes differ")
    return out


class Failure:
    """A program on which the two sides disagree. Printing it single-steps both sides to
    find the first instruction after which they differ (only then: it costs)."""

    def __init__(
        self, oracle: Oracle, program: Program, code: bytes, symbols: dict, diffs: list[str]
    ) -> None:
        self.oracle = oracle
        self.program = program
        self.code = code
        self.symbols = symbols
        self.diffs = diffs
        self._text: str | None = None

    def __str__(self) -> str:
        if self._text is None:
            p = self.program
            divergence, mark = self.oracle.first_divergence(p, self.code, self.symbols)
            family = f" --family {p.family}" if p.family else ""
            title = (
                f"seed {p.seed}{family}: vmlab differs from Unicorn"
                f" (reproduce: PYTHONPATH=tests python -m oracle --seed {p.seed}{family})"
                if p.seed >= 0
                else "vmlab differs from Unicorn"
            )
            self._text = "\n".join(
                [
                    title,
                    *("  " + d for d in self.diffs),
                    divergence,
                    "listing:",
                    p.listing(self.symbols, mark),
                ]
            )
        return self._text


def snippet(source: str, flags: str = "oszapcd", eflags: int = 0x2) -> Program:
    """A hand-written program (NASM lines, no HLT) as a Program the oracle can check,
    comparing the flags named in ``flags`` at its end; memory starts zeroed."""
    lines = [Line(text.strip(), f"i{n}") for n, text in enumerate(source.strip().splitlines())]
    lines = [line for line in lines if line.text and not line.text.startswith(";")]
    defined = frozenset(flags) - {"d"}
    df = (eflags >> 10) & 1 if "d" in flags else None
    for line in lines:
        if line.text.endswith(":"):
            line.label = None
        line.defined, line.df = defined, df
    lines.append(Line("hlt", HALT_LABEL, defined, df))
    data, stack = bytes(DATA_SIZE), bytes(STACK_SIZE)
    return Program(-1, None, lines, eflags, data, stack, defined, df, faults=False, effects=False)


class Oracle:
    """Unicorn and a Machine, side by side."""

    def __init__(self, assembler: str | None = None) -> None:
        self.assembler = assembler
        self.unicorn = UnicornSide()
        self.vm = MachineSide()

    def assemble(self, program: Program) -> tuple[bytes, dict[str, int]]:
        code, symbols = assemble(program.source(), self.assembler)
        if CODE + len(code) > CODE_LIMIT:
            raise AssertionError(f"seed {program.seed}: program too long ({len(code)} bytes)")
        return code, symbols

    def check(self, program: Program) -> Failure | None:
        """None if Unicorn and vmlab agree on the program, else a Failure."""
        code, symbols = self.assemble(program)
        halt = symbols[HALT_LABEL]
        expected = self.unicorn.run(program, code, halt)
        got = self.vm.run(program, code)
        diffs = differences(expected, got, compared_flags(program.defined, program.df))
        wanted = "fault" if program.faults else "halt"
        if expected.end != wanted and program.seed >= 0:
            diffs.insert(0, f"generator bug: Unicorn ended with {describe_end(expected)}")
        if not diffs:
            return None
        return Failure(self, program, code, symbols, diffs)

    def check_seed(self, seed: int, family: str | None = None) -> Failure | None:
        return self.check(generate(seed, family))

    def first_divergence(
        self, program: Program, code: bytes, symbols: dict[str, int]
    ) -> tuple[str, str | None]:
        """Single-step both sides and describe the first instruction after which they differ."""
        lines = {symbols[line.label]: line for line in program.lines if line.label in symbols}
        uc, vm = self.unicorn, self.vm
        uc.setup(program, code)
        vm.setup(program, code)
        halt = symbols[HALT_LABEL]
        # Which flags are defined, followed along the path this run takes.
        defined = set("oszapc")
        df: int | None = (program.eflags >> 10) & 1
        for _ in range(BUDGET):
            pc = uc.eip
            if pc != vm.machine.eip:
                return f"EIPs parted before {pc:#x} (vmlab at {vm.machine.eip:#x})", None
            if pc == halt:
                return "single-stepping found no divergence before the HLT", None
            line = lines.get(pc)
            text = line.text if line else "?"
            # Step each side past this instruction (REP string instructions may take
            # several steps on either side; their EIP stays put until they finish).
            error = None
            for _ in range(1000):
                error = uc.step()
                if error or uc.vector is not None or uc.eip != pc:
                    break
            for _ in range(1000):
                ex = vm.machine.step()
                if ex.reason.name != "BUDGET" or vm.machine.eip != pc:
                    break
            got = vm.outcome(ex)
            if error:
                return f"Unicorn failed at {pc:#x} {text}: {error}", line and line.label
            if uc.vector is not None:
                expected = uc.outcome("fault")
                expected.eip = pc
            else:
                expected = uc.outcome("budget")
            if line and program.effects:
                defined = (defined - line.undefines) | line.defines
                df = df if line.sets_df is None else line.sets_df
                flags = compared_flags(frozenset(defined), df)
            else:
                flags = compared_flags(line.defined, line.df) if line else ""
            diffs = differences(expected, got, flags)
            if diffs:
                return (
                    f"first divergence after {pc:#x} {text}:\n"
                    + "\n".join("    " + d for d in diffs),
                    line and line.label,
                )
            if expected.end == "fault":
                return "single-stepping found no divergence before the fault", None
        return "single-stepping ran out of budget", None
