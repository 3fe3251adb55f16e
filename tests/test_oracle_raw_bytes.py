"""vmlab's CPU against Unicorn (QEMU's x86) on random raw bytes at ring 0, one instruction
each (tests/oracle/raw.py): what x86 calls invalid is #UD in vmlab, and where both run,
EIP, registers, defined flags and memory agree; the 0F 01 group encoding by encoding.

The expected differences, and why, are oracle.raw.EXPECTED_DIFFERENCES (system state and
model-specific values: CPUID, control and segment registers, descriptor tables, ports,
HLT), RET imm16 >= 0x8000 (Unicorn sign-extends it), INT 6 (Unicorn reports every vector 6
as an invalid instruction) and LOCK BT* with a register operand (Unicorn aborts; x86 #UD).
Bytes vmlab raises #UD on while Unicorn runs them are outside vmlab's subset (66, 67 and
LOCK prefixes, BCD, far transfers, SSE...), which the README lists.

Slow run: ``python -m pytest -m slow tests/test_oracle_raw_bytes.py`` (100,000 cases), or
``cd tests && PYTHONPATH=..:. python -m oracle.raw --cases 100000``.
"""

from __future__ import annotations

import os

import pytest
from oracle.raw import (
    CODE,
    DATA,
    MEMORY_SIZE,
    REG32,
    Case,
    MachineSide,
    RawOracle,
    Result,
    generate,
    unicorn_aborts,
)

from vm.cpu import state as S
from vm.cpu.decode import decode_form

pytestmark = pytest.mark.requires("unicorn")

SEED_BASE = int(os.environ.get("VMLAB_ORACLE_SEED", "0"))
CASES = 5_000
SLOW_CASES = 100_000
SHOWN = 10


@pytest.fixture(scope="module")
def oracle() -> RawOracle:
    return RawOracle()


def check_report(report) -> None:
    shown = "\n".join(d for d in report.disagreements[:SHOWN] if d)
    assert not report.disagreements, f"{report.summary()}\n{shown}"


def test_random_bytes_agree_with_unicorn_at_ring_0(oracle):
    report = oracle.run(range(SEED_BASE, SEED_BASE + CASES))
    check_report(report)
    # the generator reaches every kind of outcome, mostly instructions that run
    assert report.outcomes["ran"] > CASES // 2
    for outcome in ("invalid", "outside", "memory", "fault"):
        assert report.outcomes[outcome] > 0, report.summary()


@pytest.mark.slow
def test_100k_random_bytes_agree_with_unicorn_at_ring_0(oracle):
    report = oracle.run(range(SEED_BASE + 1_000_000, SEED_BASE + 1_000_000 + SLOW_CASES))
    print(report.summary())
    check_report(report)


@pytest.mark.parametrize("what", ["register", "flag", "memory"])
def test_the_harness_reports_what_vmlab_gets_wrong(oracle, what):
    """A vmlab side that gets EAX, CF or a stored byte wrong is caught."""

    class Wrong(MachineSide):
        def run(self, case: Case) -> Result:
            result = super().run(case)
            if what == "register":
                result.regs = (result.regs[0] ^ 1, *result.regs[1:])
            elif what == "flag":
                result.eflags ^= 1
            else:
                result.written = {a: v ^ 1 for a, v in result.written.items()}
            return result

    wrong = RawOracle()
    wrong.vm = Wrong(wrong.image)
    regs = (DATA, 2, 3, 4, 0x41000, 6, 7, 8)
    case = Case(0, bytes.fromhex("01 18") + bytes(13), regs, 0x2)  # add [eax], ebx
    assert wrong.check(case)[1] and oracle.check(case) == ("ran", [])


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        ("0f 01 28", "invalid"),  # 0F 01 /5 with memory: no instruction on x86
        ("0f 01 c1", "invalid"),  # vmcall: #UD outside VMX
        ("0f 0b", "invalid"),  # ud2
        ("f0 0f ba e2 00", "invalid"),  # lock bt edx, 0 (not sent to Unicorn: it aborts)
        ("66 01 c0", "outside"),  # add ax, ax: 16-bit operands are not in vmlab's subset
        ("27", "outside"),  # daa
        ("cd 06", "fault"),  # int 6: a software interrupt, not #UD
        ("f7 f1", "fault"),  # div ecx with ECX = 0: #DE on both
        ("a1 00 00 10 00", "memory"),  # mov eax, [0x100000]: past the 1 MiB both have
    ],
)
def test_known_bytes_have_the_expected_outcome(oracle, code, outcome):
    raw = bytes.fromhex(code) + bytes(12)
    case = Case(0, raw[:15], (DATA, 0, 0, DATA, 0x41000, DATA, DATA, DATA), 0x2)
    got, diffs = oracle.check(case)
    assert (got, diffs) == (outcome, [])


def test_unicorn_aborts_is_only_lock_bit_tests_on_registers():
    assert unicorn_aborts(bytes.fromhex("f0 0f a3 c0"))
    assert unicorn_aborts(bytes.fromhex("2e f0 0f ba f8 01"))
    assert not unicorn_aborts(bytes.fromhex("f0 0f a3 00"))  # memory operand: Unicorn runs
    assert not unicorn_aborts(bytes.fromhex("0f a3 c0"))
    assert sum(unicorn_aborts(generate(seed).code) for seed in range(20_000)) < 50


# ---- the 0F 01 group, ModRM byte by ModRM byte ---------------------------------------------------
def group_0f01(modrm: int) -> bytes:
    """0F 01 with this ModRM byte, a SIB of [eax] and displacements into DATA."""
    code = bytes([0x0F, 0x01, modrm])
    mod, rm = modrm >> 6, modrm & 7
    if mod != 3 and rm == 4:
        code += b"\x20"  # SIB: [eax]
    if mod == 1:
        code += b"\x10"
    elif mod == 2 or (mod == 0 and rm == 5):
        code += DATA.to_bytes(4, "little")
    return code


def vmlab_runs_0f01(modrm: int) -> bool:
    """The 0F 01 encodings in vmlab's table: SGDT SIDT LGDT LIDT INVLPG (memory), SMSW LMSW
    (either), VMCALL (C1, which raises #UD outside a VM)."""
    digit, memory = (modrm >> 3) & 7, modrm >> 6 != 3
    return (memory and digit in (0, 1, 2, 3, 4, 6, 7)) or digit in (4, 6)


def test_0f01_group_matches_unicorn_encoding_by_encoding(oracle):
    """For each ModRM byte after 0F 01 at ring 0: invalid on x86 is #UD in vmlab, vmlab's
    forms run on both with the same length, and SGDT SIDT LGDT LIDT SMSW LMSW do the same
    with the same system registers on both sides."""
    from unicorn import x86_const as X

    uc_side, vm_side = oracle.unicorn, oracle.vm
    wrong = []
    for modrm in range(256):
        code = group_0f01(modrm)
        regs = (DATA + 0x100, 0xE, 0, DATA + 0x200, 0x41000, DATA + 0x300, DATA, DATA)
        case = Case(modrm, code + bytes(15 - len(code)), regs, 0x2)
        outcome, diffs = oracle.check(case)
        decoded = decode_form(case.code)
        runs = vmlab_runs_0f01(modrm)
        if diffs:
            wrong.append(f"{code.hex(' ')}: {diffs}")
        if (decoded is not None and decoded.name != "vmcall") != runs:
            wrong.append(f"{code.hex(' ')}: vmlab's table disagrees with x86's group")
        if runs and outcome in ("invalid", "outside"):
            wrong.append(f"{code.hex(' ')}: {decoded.name} is {outcome}")
        if not runs and modrm != 0xC1 and outcome != "invalid" and outcome != "outside":
            wrong.append(f"{code.hex(' ')}: not vmlab's, yet {outcome}")
        if not runs:
            continue
        # the same system registers on both sides, then compare what the form did
        uc, m = uc_side.uc, vm_side.machine
        uc.context_restore(uc_side.context)
        uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x500, 0x3F, 0))
        uc.reg_write(X.UC_X86_REG_IDTR, (0, 0x800, 0x7FF, 0))
        uc.reg_write(X.UC_X86_REG_CR0, 0x11)
        uc.mem_write(CODE, case.code)
        uc.ctl_remove_cache(CODE, CODE + 16)
        for reg, value in zip(uc_side.reg_ids, regs, strict=True):
            uc.reg_write(reg, value)
        uc.reg_write(uc_side.eip_id, CODE)
        uc.emu_start(CODE, 0xFFFFFFFF, count=1)
        m.state[:] = vm_side.template
        m.state[S.GDTR_BASE], m.state[S.GDTR_LIMIT] = 0x500, 0x3F
        m.state[S.IDTR_BASE], m.state[S.IDTR_LIMIT] = 0x800, 0x7FF
        m.state[S.CR0] = 0x11
        m.load(CODE, case.code)
        for name, value in zip(REG32, regs, strict=True):
            m.regs[name] = value
        m.eip = CODE
        m.step()
        ours = (
            m.eip,
            *(m.regs[n] for n in ("eax", "ebx")),
            int(m.state[S.CR0]),
            int(m.state[S.GDTR_BASE]),
            int(m.state[S.GDTR_LIMIT]),
            int(m.state[S.IDTR_BASE]),
            int(m.state[S.IDTR_LIMIT]),
            m.read(DATA, 0x400),
        )
        gdtr, idtr = uc.reg_read(X.UC_X86_REG_GDTR), uc.reg_read(X.UC_X86_REG_IDTR)
        theirs = (
            uc.reg_read(uc_side.eip_id),
            uc.reg_read(X.UC_X86_REG_EAX),
            uc.reg_read(X.UC_X86_REG_EBX),
            uc.reg_read(X.UC_X86_REG_CR0),
            gdtr[1],
            gdtr[2],
            idtr[1],
            idtr[2],
            bytes(uc.mem_read(DATA, 0x400)),
        )
        if decoded.name == "smsw" and modrm >> 6 == 3:
            # SMSW r32: Intel leaves the upper 16 bits undefined (vmlab stores all of CR0,
            # Unicorn keeps the register's)
            reg = 1 + (modrm & 7 == 3)  # (the test's forms use EAX or EBX)
            if modrm & 7 in (0, 3):
                ours = (*ours[:reg], ours[reg] & 0xFFFF, *ours[reg + 1 :])
                theirs = (*theirs[:reg], theirs[reg] & 0xFFFF, *theirs[reg + 1 :])
        if ours != theirs:
            names = ("eip", "eax", "ebx", "cr0", "gdt base", "gdt limit", "idt base", "idt limit")
            differ = [n for n, a, b in zip(names, ours, theirs, strict=False) if a != b]
            if ours[-1] != theirs[-1]:
                differ.append("memory")
            wrong.append(f"{code.hex(' ')} {decoded.name}: {differ}")
        # put both back as the oracle expects them
        m.window[:] = vm_side.image
        uc.mem_write(0, oracle.image[:MEMORY_SIZE])
    assert not wrong, "\n".join(wrong[:20])
