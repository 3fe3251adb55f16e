"""Hostile source: the assembler ends every input in bytes or an AsmError at a line, soon.

Regression tests for the assembler findings of the adversarial review (deep expressions,
`times`, macros that expand without end, malformed operands, big sources) and for the
limits in vm.asm.limits. Where NASM has an answer, the bytes are NASM's.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess

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
