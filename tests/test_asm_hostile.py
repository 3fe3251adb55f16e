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

from vm.asm import AsmError, assemble


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
    assert (e.line, e.column) == (42, 4) and "expand more than" in e.message


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
