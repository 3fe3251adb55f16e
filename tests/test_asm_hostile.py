"""Hostile source: the assembler ends every input in bytes or an AsmError at a line, soon.

Regression tests for the assembler findings of the adversarial review (deep expressions,
`times`, macros that expand without end, malformed operands, big sources) and for the
limits in vm.asm.limits. Where NASM has an answer, the bytes are NASM's.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time

import pytest
from conftest import require_tool

import vm.asm.assembler as assembler
from vm.asm import AsmError, assemble, limits


@contextlib.contextmanager
def within(seconds: float):
    """Fail the test (instead of hanging the run) if the block takes longer than seconds."""

    def alarm(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def code(source: str, seconds: float = 10) -> bytes:
    with within(seconds):
        return assemble("bits 32\n" + source, filename="t.asm").code


def error(source: str, seconds: float = 10) -> AsmError:
    """The AsmError that source (after a first line 'bits 32') ends in."""
    with within(seconds), pytest.raises(AsmError) as caught:
        assemble("bits 32\n" + source, filename="t.asm")
    e = caught.value
    assert e.filename == "t.asm" and e.line >= 1
    return e


def nasm(source: str, tmp_path) -> bytes:
    require_tool("nasm")
    path = tmp_path / "t.asm"
    path.write_text("bits 32\n" + source)
    out = tmp_path / "t.bin"
    run = subprocess.run(["nasm", "-f", "bin", "-o", str(out), str(path)], capture_output=True)
    assert run.returncode == 0, run.stderr.decode()
    return out.read_bytes()


MOV_EAX_1 = bytes.fromhex("b801000000")  # mov eax, 1


# ---- finding 11: expressions of any depth --------------------------------------------------
@pytest.mark.parametrize("depth", [89, 90, 1000, 20_000])
def test_deep_parentheses_assemble_as_nasm_does(depth):
    assert code("mov eax, " + "(" * depth + "1" + ")" * depth) == MOV_EAX_1


@pytest.mark.parametrize(
    ("prefix", "value"),
    [("-" * 1000, 1), ("-" * 1001, -1), ("~" * 999, ~1), ("+-" * 5000, 1)],
    ids=["1000 minus", "1001 minus", "999 not", "10000 signs"],
)
def test_long_runs_of_unary_operators(prefix, value):
    assert code(f"mov eax, {prefix}1") == b"\xb8" + (value & 0xFFFFFFFF).to_bytes(4, "little")


def test_deep_parentheses_in_if():
    source = "%if " + "(" * 3000 + "1" + ")" * 3000 + "\nmov eax, 1\n%else\nnop\n%endif"
    assert code(source) == MOV_EAX_1


def test_unbalanced_deep_parentheses_are_an_asm_error():
    e = error("mov eax, " + "(" * 5000 + "1")
    assert (e.line, e.column) == (2, 5011) and "')' expected" in e.message
    e = error("%if " + "(" * 5000)
    assert e.line == 2 and "expression expected" in e.message


def test_values_are_64_bit_as_in_nasm(tmp_path):
    source = (
        "dd 0xFFFFFFFFFFFFFFFF\n"  # -1 in 64 bits
        "dd 0x100000000 * 0x100000000 + 5\n"  # wraps to 5
        "%if 0xFFFFFFFFFFFFFFFF > 0\ndb 1\n%else\ndb 2\n%endif\n"  # signed: -1 > 0 is false
        "dd (1 << 63) >> 63\n"
    )
    expected = bytes.fromhex("ffffffff 05000000 02 01000000")
    assert code(source) == expected
    with contextlib.suppress(pytest.skip.Exception):
        assert nasm(source, tmp_path) == expected


def test_squaring_a_value_again_and_again_stays_64_bit():
    source = "%assign x 3\n" + "%assign x x*x\n" * 64 + "dd x & 0xffffffff"
    assert code(source, seconds=5) == (pow(3, 1 << 64, 1 << 64) & 0xFFFFFFFF).to_bytes(4, "little")


def test_a_divisor_that_wraps_to_zero_is_a_division_by_zero():
    assert "division by zero" in error("dd 5 % 0x10000000000000000").message


# ---- finding 12: times costs what it emits ------------------------------------------------------
@pytest.mark.parametrize(
    "source",
    [
        "times 100000 align 1",
        "times 1000 times 100 times 0 nop",
        "times 67108864 align 1",
        "times 67108864 times 67108864 align 1",
        "times 50000000 db ''",
    ],
)
def test_times_of_a_statement_that_emits_nothing_ends_at_once(source):
    assert code(source, seconds=2) == b""


def test_times_repeats_the_bytes_of_a_statement_that_cannot_change():
    # (nested times multiply; NASM keeps only the inner count, a quirk vmlab does not copy)
    assert code("times 4000000 nop", seconds=5) == b"\x90" * 4_000_000
    assert (
        code("times 3 times 1000 dd 0x12345678\nx:", seconds=2) == bytes.fromhex("78563412") * 3000
    )


def test_times_beyond_the_output_limit_is_an_asm_error():
    e = error("nop\ntimes 67108864 times 67108864 nop", seconds=2)
    assert e.line == 3 and "larger than 64 MiB" in e.message
    e = error("db 1\nalign 1 << 40", seconds=2)
    assert e.line == 3 and "larger than 64 MiB" in e.message


def test_times_of_address_dependent_statements_matches_nasm(tmp_path):
    source = """org 0x100
start: times 3 jmp start
times 2 dd $
x: times 2 call x
times 3 dw $-$$, 7
times 130 jmp start
align 8, db 0xcc
times 2 mov eax, [x+4]
times 2 rep movsb
times 3 push dword $
align 16, dd 0x11223344
times 5 inc eax
align 4
y: times 4 jmp y
times 3 dd $
times 3 jmp $
times 2 mov eax, [$+1]
"""
    ours = code(source)
    assert len(ours) > 600
    assert ours == nasm(source, tmp_path)


def test_times_repeating_a_statement_at_each_address_is_bounded():
    e = error("nop\ntimes 10000000 jmp $", seconds=5)
    assert (e.line, e.column) == (3, 1) and "more work than its size allows" in e.message


def test_align_pads_with_all_of_its_statement_as_nasm_does(tmp_path):
    source = "db 1\nalign 4, db 7, 8\nalign 16, nop"
    assert code(source) == nasm(source, tmp_path)


# ---- finding 13: macros expand as in NASM, and within bounds ------------------------------------
def test_a_define_is_not_expanded_inside_its_own_expansion(tmp_path):
    source = "%define X X*2\nmov eax, X\n%undef X\nX equ 3"
    assert code(source) == bytes.fromhex("b806000000") == nasm(source, tmp_path)


DEFINE_CASES = [
    ("%define A 1\n%define B A+A\ndb B", "02"),
    ("%define G(x) x*2\n%define F(x) G(x)+1\ndb F(G(3))", "0d"),
    ("%define F G\n%define G(x) x+1\ndb F(1)", "02"),
    ("%define F(x) x(1)\n%define G(y) y+1\ndb F(G)", "02"),
    ("%define X 5\n%define F(x) x+X\ndb F(X)", "0a"),
    ("%define foo 3\n%define F(foo) foo+foo\ndb F(1)", "02"),
    ("%define G(x) (x*2)\ndb G(1)+G(2)", "06"),
    ("%define F(x, y) x-y\n%define G(x) x+1\ndb F(7, G(2))", "06"),  # calls in arguments
    ("%define F(x) x\ndb F (4)", "04"),
    ("%define A B+1\n%define B 2\ndb A, B", "0302"),
]


@pytest.mark.parametrize(("source", "expected"), DEFINE_CASES)
def test_defines_expand_as_nasm_expands_them(source, expected, tmp_path):
    assert code(source).hex() == expected


@pytest.mark.parametrize(("source", "expected"), DEFINE_CASES)
def test_nasm_agrees_on_the_define_cases(source, expected, tmp_path):
    assert nasm(source, tmp_path).hex() == expected


@pytest.mark.parametrize(
    "source",
    [
        "%define X X X\nmov eax, X",
        "%define F(x) x x\ndd " + "F(" * 25 + "1" + ")" * 25,
        "%define F(x) x\ndb F(F(2))",  # NASM: F is not expanded in its own arguments
        "%define A B\n%define B A\ndb A",
    ],
)
def test_self_referring_defines_end_at_once(source):
    assert "undefined symbol" in error(source, seconds=2).message


def test_an_exponential_define_chain_is_bounded():
    chain = "".join(f"%define A{i} A{i - 1} A{i - 1}\n" for i in range(1, 41))
    e = error(chain.replace("A0 A0", "1, 1") + "db A40", seconds=3)
    assert (e.line, e.column) == (42, 4)
    assert e.message.startswith(("assembling this source takes more work", "single-line macros"))


def test_a_define_as_long_as_a_line_may_grow():
    source = "%define A " + "x" * 100_000 + "\n%define B A A A A A A A A A A A A\ndb B"
    e = error(source, seconds=3)
    assert e.line == 4 and "characters to this line" in e.message


def test_a_macro_is_not_expanded_inside_its_own_expansion():
    source = "%macro m 1\n%if %1 > 0\nm %1-1\nm %1-1\n%endif\n%endmacro\nm 30"
    e = error(source, seconds=2)
    assert e.line == 8 and e.message == "unknown mnemonic 'm'"  # NASM: instruction expected


def test_a_macro_named_like_an_instruction_uses_the_instruction(tmp_path):
    source = "%macro push 1\ndb 0x90\npush %1\n%endmacro\npush eax"
    assert code(source) == bytes.fromhex("9050") == nasm(source, tmp_path)


def test_an_rmacro_may_call_itself_as_in_nasm(tmp_path):
    source = "%rmacro fill 1\n%if %1 > 0\ndb %1\nfill %1-1\n%endif\n%endmacro\nfill 3"
    assert code(source) == b"\x03\x02\x01" == nasm(source, tmp_path)
    e = error(source.replace("fill 3", "fill 1000"), seconds=5)
    assert e.line == 8 and "nest deeper than" in e.message


def test_rep_repeats_nests_exits_and_builds_tables_as_in_nasm(tmp_path):
    source = (
        "%assign j 0\n%rep 10\n%rep 3\ndb j\n%endrep\n%assign j j+1\n"
        "%if j == 4\n%exitrep\n%endif\n%endrep\n%rep 0\ndb 0xff\n%endrep\n"
        "%macro twice 1\n%%here:\n%rep 2\ndd %%here, %1\n%endrep\n%endmacro\ntwice 7\n"
    )
    ours = code(source)
    assert ours == nasm(source, tmp_path)
    assert ours[:12] == bytes([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]) and len(ours) == 12 + 16


@pytest.mark.parametrize(
    "source, line, message",
    [
        ("%rep -1\n%endrep", 2, "%rep count -1 is negative"),
        ("%rep 2000000\n%endrep", 2, "%rep count 2,000,000 is over 1,000,000"),
        ("%rep\n%endrep", 2, "%rep needs a count"),
        ("nop\n%rep 3\ndb 1", 3, "%rep has no %endrep"),
        ("%endrep", 2, "%endrep without %rep"),
        ("%exitrep", 2, "%exitrep outside %rep"),
        ("%rep 1000000\n%rep 1000000\n%endrep\n%endrep", 3, "takes more work than"),
        ("%rep 2\n" * 120 + "nop\n" + "%endrep\n" * 120, 102, "nest deeper than 100"),
    ],
)
def test_a_hostile_rep_ends_in_an_error_at_its_line(source, line, message):
    e = error(source, seconds=5)
    assert e.line == line and message in e.message, (e.line, e.message)


def test_mutually_recursive_macros_stop():
    source = "%macro a 1\nb %1\n%endmacro\n%macro b 1\na %1\n%endmacro\na 3"
    assert error(source, seconds=2).message == "unknown mnemonic 'a'"


@pytest.mark.parametrize("body", ["nop", "%%a: jmp %%a", "%assign x 1", "%if 0\nnop\n%endif"])
def test_an_exponential_macro_chain_is_bounded(body):
    source = f"%macro m0 0\n{body}\n%endmacro\n"
    source += "".join(f"%macro m{i} 0\nm{i - 1}\nm{i - 1}\n%endmacro\n" for i in range(1, 31))
    started = time.perf_counter()
    e = error(source + "m30", seconds=10)
    assert e.message.startswith(("assembling this source takes more work", "more than 100,000"))
    assert time.perf_counter() - started < 5


def test_macro_parameters_out_of_range_are_empty():
    assert "without values" in error("%macro m 0\ndb %00\n%endmacro\nm").message
    assert code("%macro m 1\ndb 1 %" + "9" * 5000 + "\n%endmacro\nm 2") == b"\x01"


# ---- finding 14: malformed operands, big sources ------------------------------------------------
@pytest.mark.parametrize(
    ("source", "line", "column", "message"),
    [
        ("align", 2, 1, "align needs a boundary"),
        ("times 3 align", 2, 9, "align needs a boundary"),
        ("mov eax, [ebx-]", 2, 15, "expression syntax error"),
        ("x: mov eax, [x+]", 2, 16, "expression syntax error"),
        ("mov [x+], al\nx:", 2, 8, "expression syntax error"),
        ("mov eax, [ebx+]", 2, 15, "expression syntax error"),  # was assembled as [ebx]
        ("mov eax, [ebx+ecx+]", 2, 19, "expression syntax error"),
        ("mov eax, \u0663", 2, 10, "unexpected character"),  # a digit, but not an ASCII one
        ('db "\ud800"', 2, 4, "not valid Unicode"),
        ("%define F(x) x\ndb F(\\1)", 3, 4, "unexpected character"),
        ("x: add eax, [ebx + 300 - 40*(y - x)]\ny:", 3, 1, "do not settle"),
        ("times 3", 2, 1, "times needs"),
        ("dd", 2, 1, "without values"),
    ],
)
def test_malformed_source_is_an_asm_error_at_its_place(source, line, column, message):
    e = error(source)
    assert (e.line, e.column) == (line, column)
    assert message in e.message


def test_a_line_whose_bytes_cannot_change_is_encoded_once(monkeypatch):
    calls = []
    real = assembler.encode
    monkeypatch.setattr(assembler, "encode", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    # a forward jump makes three passes; 3,000 lines of three kinds never change
    source = "jmp end\n" + "add eax, 1\nmov [ebx+4], ecx\npush 7\n" * 1000 + "end: ret"
    program = assemble(source)
    assert len(program.code) == 5 + 8_000 + 1
    assert calls.count("add") == calls.count("push") == calls.count("ret") == 1
    assert calls.count("jmp") <= 3


def test_the_listing_of_a_big_program_is_made_when_read():
    program = assemble("bits 32\norg 0x100\n" + "nop\n" * 100_000 + "x: ret")
    assert len(program.listing) == 100_003
    last = program.listing[-1]
    assert (last.address, last.data, last.line, last.text) == (
        0x100 + 100_000,
        b"\xc3",
        100_003,
        "x: ret",
    )
    assert program.listing[2].data == b"\x90"


# ---- the budget ----------------------------------------------------------------------------
def test_the_time_limit_ends_in_an_asm_error_at_a_line():
    source = "x: dd x\n" * 400_000
    with within(10), pytest.raises(AsmError) as caught:
        assemble(source, time_limit=0.05)
    assert caught.value.line > 1 and "time limit" in caught.value.message


def test_the_source_size_is_limited(monkeypatch, tmp_path):
    monkeypatch.setattr(limits, "MAX_SOURCE", 1000)
    e = error("nop\n" * 300)
    assert e.line == 1 and "larger than" in e.message
    (tmp_path / "big.asm").write_text("nop\n" * 300)
    (tmp_path / "main.asm").write_text('nop\n%include "big.asm"\n')
    with pytest.raises(AsmError) as caught:
        assembler.assemble_file(tmp_path / "main.asm")
    assert (caught.value.line, caught.value.column) == (2, 11)


def test_a_source_may_include_a_file_many_times_within_the_source_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_SOURCE", 10_000)
    (tmp_path / "part.asm").write_text("nop\n" * 100)
    (tmp_path / "main.asm").write_text('%include "part.asm"\n' * 100)
    with pytest.raises(AsmError, match="larger than"):
        assembler.assemble_file(tmp_path / "main.asm")


def test_big_sources_get_work_in_proportion():
    # 30,000 macro calls: more than a small source may make, fine in a source this big
    source = "%macro two 1\npush %1\npop %1\n%endmacro\n" + "two eax ; " + "x" * 40 + "\n"
    program = assemble("bits 32\n" + source * 30_000)
    assert program.code == bytes.fromhex("5058") * 30_000
