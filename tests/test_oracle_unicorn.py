"""vmlab's CPU against the Unicorn engine (QEMU's x86) on random user-level programs.

Each program (tests/oracle/generator.py) is assembled by vm.asm, run to its HLT on both, and
the eight registers, EIP, the data and stack areas and the *defined* flags (CF PF AF ZF SF OF
DF, minus those the manual leaves undefined at that point) must agree. A failure names the
seed, shows what differs, the first instruction after which single-stepping diverges, and
the listing; ``PYTHONPATH=tests python -m oracle --seed N`` reproduces it.

Seeds start at $VMLAB_ORACLE_SEED (default 0), so a run can explore new programs.
"""

from __future__ import annotations

import os

import pytest
from oracle import FAMILIES, Oracle, generate
from oracle.runner import assemble, snippet

from vm.isa import FORMS

pytestmark = pytest.mark.requires("unicorn")

SEED_BASE = int(os.environ.get("VMLAB_ORACLE_SEED", "0"))
SEQUENCES = 5_000  # in the default run
BATCH = 500
SLOW_SEQUENCES = 100_000
FAMILY_SEQUENCES = 60  # per family, biased towards it
SHOWN = 3  # failures printed in full per test


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    return Oracle()


def check_seeds(oracle: Oracle, seeds: range, family: str | None = None) -> None:
    failures = []
    for seed in seeds:
        failure = oracle.check_seed(seed, family)
        if failure is not None:
            failures.append(failure)
    if failures:
        shown = "\n\n".join(str(f) for f in failures[:SHOWN])
        seeds_list = ", ".join(str(f.program.seed) for f in failures[:50])
        pytest.fail(
            f"{len(failures)} of {len(seeds)} programs differ from Unicorn"
            f" (seeds {seeds_list}{', ...' if len(failures) > 50 else ''}):\n\n{shown}",
            pytrace=False,
        )


@pytest.mark.parametrize("batch", range(SEQUENCES // BATCH))
def test_random_programs_agree_with_unicorn(oracle, batch):
    start = SEED_BASE + batch * BATCH
    check_seeds(oracle, range(start, start + BATCH))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_instruction_family_agrees_with_unicorn(oracle, family):
    start = SEED_BASE + 10_000_000 + sorted(FAMILIES).index(family) * 100_000
    check_seeds(oracle, range(start, start + FAMILY_SEQUENCES), family)


@pytest.mark.slow
def test_100k_random_programs_agree_with_unicorn(oracle):
    start = SEED_BASE + 1_000_000
    check_seeds(oracle, range(start, start + SLOW_SEQUENCES))


# ---- edge cases, one named test each ------------------------------------------------------------
# (name, NASM lines, flags compared at the end). Memory starts zeroed; DATA is 0x10000.
EDGE_CASES = [
    ("mul_sets_of_with_cf", "mov eax, 0x10000\nmov ecx, 0x10000\nmul ecx", "oc"),
    ("mul8_sets_of_with_cf", "mov eax, 0x80\nmov cl, 2\nmul cl", "oc"),
    ("imul_one_operand_sets_of", "mov eax, 0x40000000\nmov ecx, 2\nimul ecx", "oc"),
    ("imul_two_operand_sets_of", "mov eax, 0x7fffffff\nimul eax, eax", "oc"),
    ("imul_three_operand_sets_of", "mov ecx, 0x40000000\nimul eax, ecx, 4", "oc"),
    ("imul_no_overflow_clears_of", "stc\nmov eax, -3\nimul eax, eax, 5", "oc"),
    ("shl_by_1_sets_of", "mov eax, 0x40000000\nshl eax, 1", "oszpc"),
    ("shr_by_1_of_is_old_msb", "mov eax, 0x80000000\nshr eax, 1", "oszpc"),
    ("sar_by_1_clears_of", "mov eax, 0x80000001\nstc\nsar eax, 1", "oszpc"),
    ("shl8_by_cl_1_sets_of", "mov eax, 0x40\nmov ecx, 0x21\nshl al, cl", "oszpc"),
    ("shift_by_0_keeps_flags", "mov eax, 1\nstc\nmov ecx, 0x20\nshl eax, cl", "oszapc"),
    ("shr8_by_9_gives_0", "mov eax, 0xff\nshr al, 9", "szp"),
    ("sar8_by_12_fills_sign", "mov eax, 0x80\nsar al, 12", "szpc"),
    ("rol8_by_8_sets_cf_from_lsb", "mov eax, 0x81\nclc\nrol al, 8", "c"),
    ("ror_by_1_sets_of", "mov eax, 1\nror eax, 1", "oc"),
    ("rcl8_by_9_keeps_cf", "mov eax, 0x81\nstc\nrcl al, 9", "c"),
    ("rcr_by_1_of_from_old_msb", "mov eax, 0x80000000\nclc\nrcr eax, 1", "oc"),
    ("rcl_by_31", "mov eax, 0x12345678\nstc\nrcl eax, 31", "c"),
    ("neg_zero_clears_cf", "stc\nmov eax, 0\nneg eax", "oszapc"),
    ("neg_min_int_overflows", "mov eax, 0x80000000\nneg eax", "oszapc"),
    ("inc_keeps_cf", "stc\nmov eax, 0x7fffffff\ninc eax", "oszapc"),
    ("dec8_sets_af", "clc\nmov eax, 0x10\ndec al", "oszapc"),
    ("adc_carry_in_overflows", "mov eax, 0x7fffffff\nstc\nadc eax, 0", "oszapc"),
    ("sbb_borrow_in", "mov eax, 0\nstc\nsbb eax, 0", "oszapc"),
    ("sbb8_borrow_wraps", "mov eax, 0x80\nstc\nsbb al, 0x7f", "oszapc"),
    ("add8_half_carry", "mov eax, 0x0f\nadd al, 1", "oszapc"),
    ("cmp_sets_borrow", "mov eax, 1\ncmp eax, 2", "oszapc"),
    ("test_clears_of_cf", "stc\nmov eax, 0x80\ntest al, 0x80", "oszpc"),
    ("xor_self_zeroes", "stc\nmov eax, 5\nxor eax, eax", "oszpc"),
    ("div_by_zero_faults", "mov eax, 1\nxor ecx, ecx\nxor edx, edx\ndiv ecx", ""),
    ("idiv_min_by_minus_one_faults", "mov eax, 0x80000000\ncdq\nmov ecx, -1\nidiv ecx", ""),
    ("div_quotient_too_big_faults", "mov edx, 2\nmov eax, 0\nmov ecx, 2\ndiv ecx", ""),
    ("idiv8_negative", "mov eax, 0xff85\nmov cl, 7\nidiv cl", ""),
    ("idiv_rounds_to_zero", "mov eax, -7\ncdq\nmov ecx, 2\nidiv ecx", ""),
    (
        "bt_memory_negative_offset",
        "mov ebx, 0x10010\nmov byte [ebx-1], 0x80\nmov ecx, -1\nbt [ebx], ecx",
        "c",
    ),
    (
        "bt_memory_far_offset",
        "mov ebx, 0x10000\nmov byte [ebx+12], 8\nmov ecx, 99\nbt [ebx], ecx",
        "c",
    ),
    ("bt_immediate_wraps_at_32", "mov eax, 1\nbt eax, 32", "c"),
    ("pop_memory_addresses_after_pop", "push 0x1234\npush 0x5678\npop dword [esp]", ""),
    ("push_esp_pushes_old_value", "push esp\npop eax", ""),
    ("push_memory_through_esp", "push 7\npush dword [esp]", ""),
    ("pushad_popad", "mov eax, 1\nmov ebp, 2\npushad\nmov eax, 3\npopad", ""),
    ("pushfd_pushes_flags", "stc\nmov eax, 0x7f\nadd al, 1\npushfd", "oszapc"),
    ("popfd_sets_flags_and_df", "push 0x8d5\npopfd", "oszapcd"),
    ("cwde_cdq_sign_extend", "mov eax, 0x8000\ncwde\ncdq", ""),
    ("movsx_movzx_word", "mov eax, 0x12348765\nmovsx ebx, ax\nmovzx ecx, ax\nmovsx edx, ah", ""),
    ("xchg_memory", "mov dword [0x10000], 5\nmov eax, 9\nxchg [0x10000], eax", ""),
    ("xchg_byte_halves", "mov eax, 0x1234\nxchg al, ah", ""),
    ("lea_wraps_around", "mov eax, 0xfffffff0\nlea ebx, [eax+eax*8+0x100]", ""),
    (
        "rep_movsb_ecx_0_does_nothing",
        "mov esi, 0x10000\nmov edi, 0x10100\nxor ecx, ecx\nrep movsb",
        "",
    ),
    (
        "rep_stosd_backwards",
        "std\nmov eax, 0x11223344\nmov edi, 0x10100\nmov ecx, 3\nrep stosd",
        "d",
    ),
    (
        "repe_cmpsb_stops_at_difference",
        "mov byte [0x10003], 1\nmov esi, 0x10000\nmov edi, 0x10100\nmov ecx, 8\nrepe cmpsb",
        "oszapc",
    ),
    (
        "repne_scasb_finds_byte",
        "mov byte [0x10005], 7\nmov edi, 0x10000\nmov eax, 7\nmov ecx, 8\nrepne scasb",
        "oszapc",
    ),
    (
        "repe_cmpsd_ecx_0_keeps_flags",
        "stc\nmov esi, 0x10000\nmov edi, 0x10100\nxor ecx, ecx\nstc\nrepe cmpsd",
        "c",
    ),
    ("lodsd_backwards", "std\nmov dword [0x10008], 0xdeadbeef\nmov esi, 0x10008\nlodsd", "d"),
    ("call_ret_imm16", "push 1\npush 2\ncall routine\njmp done\nroutine:\nret 8\ndone:", ""),
    (
        "leave_restores_frame",
        "mov ebp, 0x1234\ncall routine\njmp done\nroutine:\npush ebp\n"
        "mov ebp, esp\nsub esp, 16\nmov dword [ebp-4], 9\nleave\nret\ndone:",
        "",
    ),
    ("loop_counts_down", "xor eax, eax\nmov ecx, 5\ntop:\nadd eax, ecx\nloop top", "oszapc"),
    ("jmp_through_register", "mov eax, there\njmp eax\nmov ebx, 1\nthere:", ""),
    (
        "setcc_all_conditions",
        "mov eax, 0x7f\nadd al, 1\nseto [0x10000]\nsetc [0x10001]\n"
        "setz [0x10002]\nsetbe [0x10003]\nsets [0x10004]\nsetp [0x10005]\nsetl [0x10006]\n"
        "setle [0x10007]\nsetno [0x10008]\nsetnc [0x10009]\nsetnz [0x1000a]\nseta [0x1000b]\n"
        "setns [0x1000c]\nsetnp [0x1000d]\nsetge [0x1000e]\nsetg [0x1000f]",
        "oszapc",
    ),
    ("cmc_flips_cf", "clc\ncmc", "c"),
    (
        "mov_moffs_forms",
        "mov eax, 0x11223344\nmov [0x10010], eax\nmov [0x10020], al\n"
        "mov al, [0x10013]\nmov ebx, [0x10011]",
        "",
    ),
    (
        "address_with_esp_base_and_index",
        "mov ecx, 2\nmov dword [esp+ecx*4-16], 0x55\nmov eax, [esp+ecx*4-16]",
        "",
    ),
    ("ebp_base_without_displacement", "mov ebp, 0x10020\nmov dword [ebp], 3\nadd [ebp], ebp", ""),
]


@pytest.mark.parametrize(
    ("source", "flags"), [c[1:] for c in EDGE_CASES], ids=[c[0] for c in EDGE_CASES]
)
def test_edge_case_agrees_with_unicorn(oracle, source, flags):
    failure = oracle.check(snippet(source, flags))
    assert failure is None, str(failure)


# ---- the generator itself ---------------------------------------------------------------------
# Software interrupts leave the user-level comparison: vmlab exits to its host, Unicorn calls
# an interrupt hook. The CPU unit tests cover them.
NOT_GENERATED = {"int3", "int"}


def encoding_key(form) -> tuple:
    return (form.prefix, form.opcode, form.modrm if form.modrm not in (None, "r") else None)


def instruction_keys(code: bytes) -> set[tuple]:
    """The (prefix, opcode, ModRM digit) keys of the instructions in code, by capstone."""
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    plus_reg = {f.opcode for f in FORMS if f.plus_reg}
    digit_opcodes = {f.opcode for f in FORMS if f.modrm not in (None, "r")}
    keys = set()
    for insn in md.disasm(code, 0):
        b = bytes(insn.bytes)
        prefix = b[:1] if b[0] in (0xF2, 0xF3) else b""
        b = b[len(prefix) :]
        opcode = b[:2] if b[0] == 0x0F else b[:1]
        base = opcode[:-1] + bytes([opcode[-1] & ~7])
        if base in plus_reg and opcode not in digit_opcodes:
            opcode = base
        digit = str((b[len(opcode)] >> 3) & 7) if opcode in digit_opcodes else None
        keys.add((prefix, opcode, digit))
    return keys


@pytest.mark.requires("capstone")
def test_generator_writes_every_user_form():
    """Every user-level form of the instruction table shows up in 600 generated programs,
    as bytes (opcode, ModRM digit, prefix) and as a mnemonic in the source (aliases)."""
    forms = [f for f in FORMS if f.user and f.mnemonic not in NOT_GENERATED]
    seen_keys: set[tuple] = set()
    seen_words: set[str] = set()
    for seed in range(SEED_BASE, SEED_BASE + 600):
        program = generate(seed)
        code, _ = assemble(program.source())
        seen_keys |= instruction_keys(code)
        for line in program.lines:
            if line.is_instruction:
                words = line.text.split()
                seen_words.add(words[0])
                seen_words.add(" ".join(words[:2]))
    missing_bytes = sorted(
        {f"{f.mnemonic} {', '.join(f.operands)}" for f in forms if encoding_key(f) not in seen_keys}
    )
    missing_words = sorted({f.mnemonic for f in forms if f.mnemonic not in seen_words})
    assert not missing_bytes, f"forms never generated: {missing_bytes}"
    assert not missing_words, f"mnemonics never generated: {missing_words}"
