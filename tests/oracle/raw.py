"""Random raw bytes, one instruction each, on Unicorn (QEMU's x86) and on vmlab at ring 0.

Each case is up to 15 bytes at CODE, biased towards the table's opcodes, ModRM/SIB forms and
prefixes, with registers that point into a data area (or anywhere). Both sides run one
instruction from the same registers, flags and memory, and:

- bytes x86 calls invalid (Unicorn: UC_ERR_INSN_INVALID) must raise #UD in vmlab;
- bytes vmlab raises #UD on while Unicorn runs them are outside vmlab's subset (16-bit
  operands, LOCK, BCD, SSE...): counted, and vmlab's decoder must have no form for them;
- where both run, EIP, the eight registers, the defined flags and every byte of memory
  either side wrote must agree; an exception must be the same vector on both; an access
  outside the 1 MiB both have is Unicorn's unmapped-memory error and vmlab's #GP(0)
  (README, Differences: no open bus).

EXPECTED_DIFFERENCES lists the forms whose results are the model's own and are not
compared (with the reason); they still must not be #UD where x86 runs them.
Reproduce a case: ``PYTHONPATH=tests python -m oracle.raw --seed N --cases 1 -v``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from vm.cpu.decode import Decoded, decode_form
from vm.isa import FLAG_BITS, FORMS

MEMORY_SIZE = 1 << 20
CODE = 0x1000
DATA = 0x10000  # registers point here; random bytes
DATA_SIZE = 0x20000
STACK = 0x40000  # ESP starts in its middle
STACK_SIZE = 0x2000
EFLAGS_FIXED = 0x2
FLAG_IF = 0x200
MAX_STEPS = 300  # REP string forms: one iteration per step on vmlab

# Forms whose results are the model's own, by Form.name, with why they are not compared.
EXPECTED_DIFFERENCES = {
    "cpuid": "CPUID answers vmlab's own vendor and family",
    "mov_from_cr": "control registers hold the model's values (CR0 = PE only, no ET)",
    "mov_to_cr": "control registers hold the model's values; CR0.PE cannot be cleared",
    "smsw": "reads CR0 (the model's value)",
    "lmsw": "writes CR0 (the model's value)",
    "mov_from_sreg": "segment selectors are the model's (Unicorn starts with 0 in each)",
    "mov_to_sreg": "loads a selector from the model's GDT (Unicorn has none set up)",
    "lgdt": "system state: descriptor-table registers",
    "lidt": "system state: descriptor-table registers",
    "sgdt": "system state: descriptor-table registers (the model's values)",
    "sidt": "system state: descriptor-table registers (the model's values)",
    "sldt": "system state: vmlab has no LDT",
    "str": "system state: the task register (the model's value)",
    "ltr": "system state: loads a TSS descriptor from the model's GDT",
    "invlpg": "system state: the TLB",
    "iret": "system state: pops a selector checked against the model's GDT",
    "hlt": "vmlab exits to its host (HALT); Unicorn stops",
    "in": "ports: vmlab exits to its host (IO); Unicorn reads 0",
    "out": "ports: vmlab exits to its host (IO)",
    "vmcall": "#UD on both (no VMX), compared as invalid bytes",
}
# RET imm16: Unicorn sign-extends the immediate (ESP + 0xfff0 goes down); x86 zero-extends.
RET_IMM_SIGN = "ret_imm with imm16 >= 0x8000: Unicorn sign-extends it, x86 does not"

# Bytes that make Unicorn 2.1.4 abort the process (QEMU's translator asserts): LOCK before
# BT, BTS, BTR, BTC with a register operand. x86 raises #UD on them (LOCK needs a lockable
# instruction with a memory destination), so they count as invalid without asking Unicorn.
BIT_TESTS = (0xA3, 0xAB, 0xB3, 0xBB, 0xBA)


def unicorn_aborts(code: bytes) -> bool:
    """Would these bytes abort Unicorn (see BIT_TESTS)?"""
    at = 0
    while at < len(code) and code[at] in PREFIXES:
        at += 1
    rest = code[at:]
    return (
        0xF0 in code[:at]
        and len(rest) >= 3
        and rest[0] == 0x0F
        and rest[1] in BIT_TESTS
        and rest[2] >> 6 == 3
    )


PREFIXES = [0xF2, 0xF3, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0]
TABLE_OPCODES = sorted({f.opcode[:2] if f.opcode[0] == 0x0F else f.opcode[:1] for f in FORMS})
REG32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")


@dataclass
class Case:
    """One random instruction and the machine state it starts from."""

    seed: int
    code: bytes
    regs: tuple[int, ...]
    eflags: int

    def describe(self) -> str:
        regs = " ".join(f"{n}={v:#x}" for n, v in zip(REG32, self.regs, strict=True))
        return f"seed {self.seed}: {self.code.hex(' ')} | {regs} eflags={self.eflags:#x}"


def generate(seed: int) -> Case:
    """A random case: bytes biased towards the table's encodings, registers into DATA."""
    rng = random.Random(seed)
    code = bytearray()
    while rng.random() < 0.2 and len(code) < 5:
        code.append(rng.choice(PREFIXES))
    pick = rng.random()
    if pick < 0.75:
        code += rng.choice(TABLE_OPCODES)
    elif pick < 0.85:
        code += bytes([0x0F, rng.randrange(256)])
    else:
        code.append(rng.randrange(256))
    # a ModRM byte (whether or not one follows): mod 3 often, then SIB and displacements
    mod = rng.choice([0, 0, 1, 2, 3, 3])
    modrm = mod << 6 | rng.randrange(8) << 3 | rng.randrange(8)
    code.append(modrm)
    if mod != 3 and modrm & 7 == 4:
        code.append(rng.randrange(256))  # SIB
    if mod == 1:
        code.append(rng.randrange(256))
    else:
        near = DATA + rng.randrange(DATA_SIZE - 64)
        disp = near if rng.random() < 0.6 else rng.randrange(1 << 32)
        if mod == 2 and rng.random() < 0.5:
            disp = rng.randrange(-0x100, 0x100) & 0xFFFFFFFF
        code += disp.to_bytes(4, "little")
    code += rng.randbytes(15)
    code = bytes(code[:15])
    regs = []
    for r in range(8):
        if r == 4:
            regs.append(STACK + STACK_SIZE // 2 + rng.randrange(-0x200, 0x200, 4))
            continue
        pick = rng.random()
        if pick < 0.5:
            regs.append(DATA + rng.randrange(DATA_SIZE // 2))
        elif pick < 0.8:
            regs.append(rng.choice([0, 1, 2, 7, 8, 31, 32, 33, 0x7F, 0x80, 0xFF, 0x100]))
        else:
            regs.append(rng.randrange(1 << 32))
    if any(b in (0xF2, 0xF3) for b in code[:5]) or rng.random() < 0.3:
        regs[1] = rng.randrange(0, 40)  # ECX: REP counts, shift counts
    eflags = EFLAGS_FIXED | rng.choice([0, FLAG_IF]) | (rng.randrange(1 << 12) & 0xCD5)
    return Case(seed, code, tuple(regs), eflags)


# ---- the two sides ------------------------------------------------------------------------------
@dataclass
class Result:
    """What one side did: how it ended, and where."""

    end: str  # "ok", "ud", "fault", "memory" (outside RAM), "exit", "error ..."
    eip: int
    vector: int = -1
    regs: tuple[int, ...] = ()
    eflags: int = 0
    written: dict[int, int] = field(default_factory=dict)  # address -> byte


class UnicornSide:
    """One Unicorn engine at ring 0 over the 1 MiB image; rebuilt after an exception."""

    def __init__(self, image: bytes) -> None:
        from unicorn import x86_const as X

        self.image = image
        self.reg_ids = [getattr(X, f"UC_X86_REG_{n.upper()}") for n in REG32]
        self.eip_id, self.eflags_id = X.UC_X86_REG_EIP, X.UC_X86_REG_EFLAGS
        self.fresh()

    def fresh(self) -> None:
        from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_HOOK_MEM_WRITE, UC_MODE_32, Uc

        self.uc = Uc(UC_ARCH_X86, UC_MODE_32)
        self.uc.mem_map(0, MEMORY_SIZE)
        self.uc.mem_write(0, self.image)
        self.uc.hook_add(UC_HOOK_INTR, self._interrupt)
        self.uc.hook_add(UC_HOOK_MEM_WRITE, self._write)
        self.vector = -1
        self.writes: list[tuple[int, int]] = []
        # Every case starts from this CPU context: an instruction that is not compared
        # (MOV SS, IRET...) may leave segment state behind (a 16-bit stack, say).
        self.context = self.uc.context_save()

    def _interrupt(self, uc, vector, user_data) -> None:
        self.vector = vector
        uc.emu_stop()

    def _write(self, uc, access, address, size, value, user_data) -> None:
        self.writes.append((address, size))

    def run(self, case: Case) -> Result:
        from unicorn import UcError
        from unicorn.unicorn_const import UC_ERR_FETCH_UNMAPPED, UC_ERR_INSN_INVALID

        uc = self.uc
        uc.context_restore(self.context)
        uc.mem_write(CODE, case.code)
        uc.ctl_remove_cache(CODE, CODE + 16)
        for reg, value in zip(self.reg_ids, case.regs, strict=True):
            uc.reg_write(reg, value)
        uc.reg_write(self.eflags_id, case.eflags)
        uc.reg_write(self.eip_id, CODE)
        self.vector, self.writes = -1, []
        end = "ok"
        for _ in range(MAX_STEPS):
            try:
                uc.emu_start(uc.reg_read(self.eip_id), 0xFFFFFFFF, count=1)
            except UcError as error:
                if error.errno == UC_ERR_INSN_INVALID:
                    end = "ud"
                elif error.errno == UC_ERR_FETCH_UNMAPPED and uc.reg_read(self.eip_id) != CODE:
                    end = "ok"  # it ran, and jumped outside memory: the next fetch failed
                elif "UNMAPPED" in str(error) or "unmapped" in str(error):
                    end = "memory"
                else:
                    end = f"error {error}"
                break
            if self.vector >= 0:
                end = "fault"
                break
            if uc.reg_read(self.eip_id) != CODE:
                break
        result = Result(
            end,
            uc.reg_read(self.eip_id),
            self.vector,
            tuple(uc.reg_read(r) for r in self.reg_ids),
            uc.reg_read(self.eflags_id),
        )
        for address, size in self.writes:
            for a in range(address, min(address + size, MEMORY_SIZE)):
                result.written[a] = 0
        if result.written:
            for a in result.written:
                result.written[a] = uc.mem_read(a, 1)[0]
            for a in result.written:  # put the image back
                uc.mem_write(a, self.image[a : a + 1])
        if end in ("fault", "memory") or end.startswith("error"):
            self.fresh()  # (an engine stopped in an exception turns the next into #DF)
        return result

    def read(self, address: int) -> int:
        return self.uc.mem_read(address, 1)[0]


class MachineSide:
    """A vmlab Machine at ring 0 whose exceptions all exit (FAULT), over the same image."""

    def __init__(self, image: bytes) -> None:
        from vm.machine import Machine

        self.machine = Machine(memory_size=MEMORY_SIZE)
        self.image = np.frombuffer(image, dtype=np.uint8).copy()
        self.machine.window[:] = self.image
        self.template = self.machine.state.copy()

    def run(self, case: Case) -> Result:
        from vm.cpu.exits import ExitReason

        m = self.machine
        m.state[:] = self.template
        m.load(CODE, case.code)
        self.image[CODE : CODE + len(case.code)] = np.frombuffer(case.code, np.uint8)
        for name, value in zip(REG32, case.regs, strict=True):
            m.regs[name] = value
        m.eflags = case.eflags
        m.eip = CODE
        for _ in range(MAX_STEPS):
            ex = m.step()
            if ex.reason != ExitReason.BUDGET or m.eip != CODE:
                break
        if ex.reason == ExitReason.FAULT:
            end = "ud" if ex.vector == 6 else "fault"
            if ex.vector == 13 and ex.error_code == 0 and self._outside_ram(case):
                end = "memory"
        elif ex.reason == ExitReason.SOFTWARE_INTERRUPT:
            end = "fault"  # (INT n, INT3: Unicorn reports them the same way)
        elif ex.reason == ExitReason.BUDGET:
            end = "ok"
        else:
            end = "exit"
        window = m.window
        changed = np.flatnonzero(window != self.image)
        result = Result(
            end,
            m.eip,
            ex.vector if end == "fault" else -1,
            tuple(m.regs[n] for n in REG32),
            m.eflags,
            {int(a): int(window[a]) for a in changed},
        )
        window[changed] = self.image[changed]
        self.image[CODE : CODE + 16] = 0
        window[CODE : CODE + 16] = 0
        return result

    def _outside_ram(self, case: Case) -> bool:
        """Was vmlab's #GP(0) an access outside RAM? (Its other #GP(0)s are privilege.)"""
        decoded = decode_form(case.code)
        return decoded is None or not decoded.form.privileged


# ---- comparing ----------------------------------------------------------------------------------
def compared_flags(decoded: Decoded) -> int:
    """The EFLAGS bits a form leaves defined: all of OSZAPC and DF but its undefined ones."""
    mask = 0
    for letter, bit in FLAG_BITS.items():
        if letter not in decoded.form.undefined:
            mask |= bit
    if decoded.name in ("cli", "sti", "popf"):
        mask |= FLAG_IF
    return mask


def excluded(decoded: Decoded | None) -> str | None:
    """Why a case's results are not compared (EXPECTED_DIFFERENCES), or None."""
    if decoded is None:
        return None
    if decoded.name in EXPECTED_DIFFERENCES:
        return decoded.name
    if decoded.form.family == "ret_imm" and decoded.imm >= 0x8000:
        return "ret_imm16_sign"
    return None


@dataclass
class Report:
    """Counts of outcomes over many cases, and the disagreements."""

    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    disagreements: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in self.outcomes.most_common())
        return (
            f"{self.cases} cases in {self.seconds:.1f} s: {parts}; "
            f"{len(self.disagreements)} disagreements"
        )


class RawOracle:
    """Unicorn and a Machine side by side over one random memory image."""

    def __init__(self, seed: int = 0) -> None:
        rng = random.Random(seed)
        image = bytearray(MEMORY_SIZE)
        image[DATA : DATA + DATA_SIZE] = rng.randbytes(DATA_SIZE)
        image[STACK : STACK + STACK_SIZE] = rng.randbytes(STACK_SIZE)
        self.image = bytes(image)
        self.unicorn = UnicornSide(self.image)
        self.vm = MachineSide(self.image)

    def check(self, case: Case) -> tuple[str, list[str]]:
        """(outcome, what differs) for one case."""
        got = self.vm.run(case)
        if unicorn_aborts(case.code):
            expected = Result("ud", CODE)
        else:
            expected = self.unicorn.run(case)
        decoded = decode_form(case.code)
        int6 = decoded is not None and decoded.name == "int" and decoded.imm == 6
        if expected.end == "ud" and int6 and (got.end, got.vector) == ("fault", 6):
            return "fault", []  # INT 6 is INT n; Unicorn reports any vector 6 as invalid
        if expected.end == "ud":
            if got.end != "ud":
                return "invalid", [f"x86 says invalid, vmlab {got.end} (eip {got.eip:#x})"]
            return "invalid", []
        if got.end == "ud":
            if decoded is not None and decoded.name not in ("ud2", "vmcall"):
                return "outside", [f"vmlab #UD on its own form {decoded.name}"]
            return "outside", []
        if expected.end.startswith("error"):
            return "unicorn_error", [f"Unicorn: {expected.end}; vmlab {got.end}"]
        why = excluded(decoded)
        if why is not None:
            return f"excluded:{why}", []
        diffs = []
        if (expected.end, expected.vector) != (got.end, got.vector):
            diffs.append(
                f"end: unicorn {expected.end} {expected.vector}, vmlab {got.end} {got.vector}"
            )
        if expected.end == "memory" and got.end == "memory":
            return "memory", diffs
        if expected.eip != got.eip and expected.end != "fault":
            diffs.append(f"eip: unicorn {expected.eip:#x}, vmlab {got.eip:#x}")
        for name, a, b in zip(REG32, expected.regs, got.regs, strict=True):
            if a != b:
                diffs.append(f"{name}: unicorn {a:#x}, vmlab {b:#x}")
        mask = compared_flags(decoded) if decoded else 0
        if (expected.eflags ^ got.eflags) & mask:
            diffs.append(f"eflags: unicorn {expected.eflags:#x}, vmlab {got.eflags:#x}")

        def before(address: int) -> int:  # the byte both started with
            if CODE <= address < CODE + len(case.code):
                return case.code[address - CODE]
            return self.image[address]

        for address in sorted(set(expected.written) | set(got.written)):
            a = expected.written.get(address, before(address))
            b = got.written.get(address, before(address))
            if a != b:
                diffs.append(f"byte {address:#x}: unicorn {a:#04x}, vmlab {b:#04x}")
                break
        return ("fault" if expected.end == "fault" else "ran"), diffs

    def run(self, seeds: range, limit: int = 50) -> Report:
        report = Report()
        start = time.perf_counter()
        for seed in seeds:
            case = generate(seed)
            outcome, diffs = self.check(case)
            report.cases += 1
            report.outcomes[outcome.split(":")[0]] += 1
            if diffs and len(report.disagreements) < limit:
                decoded = decode_form(case.code)
                name = decoded.name if decoded else "(no form)"
                report.disagreements.append(
                    f"{case.describe()}\n    {name}: " + "; ".join(diffs[:6])
                )
            elif diffs:
                report.disagreements.append("")
        report.seconds = time.perf_counter() - start
        return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oracle.raw", description=__doc__)
    parser.add_argument("--seed", type=int, default=0, help="first case")
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("-v", action="store_true", help="show each disagreement")
    args = parser.parse_args(argv)
    report = RawOracle().run(range(args.seed, args.seed + args.cases))
    for text in report.disagreements if args.v else report.disagreements[:20]:
        if text:
            print(text)
    print(report.summary())
    return 1 if report.disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
