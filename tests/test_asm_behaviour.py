"""The assembler's language: labels, directives, expressions, the preprocessor, listings,
and errors that say what and where."""

from __future__ import annotations

import contextlib
import random

import pytest

from vm.asm import AsmError, assemble, assemble_file, disassemble


def code(source: str, **kw) -> bytes:
    return assemble("bits 32\n" + source, **kw).code


def test_local_labels_belong_to_the_last_global_label():
    program = assemble("bits 32\norg 0x100\nf:\n.loop: dec eax\n jnz .loop\ng:\n.loop: jmp .loop\n")
    assert program.symbols["f.loop"] == 0x100
    assert program.symbols["g.loop"] == 0x103
    assert program.code == bytes.fromhex("48 75 fd eb fe")


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 / 2", 3),
        ("-7 // 2", -3 & 0xFFFFFFFF),  # // is signed, toward zero
        ("-7 %% 2", -1 & 0xFFFFFFFF),
        ("7 % 4", 3),
        ("1 << 4 | 1", 17),
        ("0xF0 & 0x3C ^ 0x01", 0x31),
        ("~0", 0xFFFFFFFF),
        ("'AB'", 0x4241),
        ("1Fh + 0b101 + 101b + 17q + 0o17 + 1_000", 31 + 5 + 5 + 15 + 15 + 1000),
        ("$1F", 31),
    ],
)
def test_expressions(expression, value):
    assert code(f"dd {expression}") == value.to_bytes(4, "little")


def test_data_times_align_equ_and_dollars():
    source = """org 0x200
start:
    db 'hi', 10, 0
    dw 0x1234, -1
    dd end - start
    times 3 db 0xAA
    align 4
    SIZE equ end - start
    dd SIZE, $ - $$
end:
"""
    out = code(source)
    assert out[:4] == b"hi\n\x00"
    assert out[4:8] == bytes.fromhex("3412ffff")
    assert out[12:15] == b"\xaa" * 3 and out[15:16] == b"\x90"
    assert int.from_bytes(out[16:20], "little") == len(out)
    assert int.from_bytes(out[20:24], "little") == 16  # $ is where the line starts (NASM)


def test_backquoted_strings_take_escapes():
    assert code("db `a\\tb\\n\\x41`") == b"a\tb\nA"


def test_defines_conditionals_and_macros():
    source = """%define ANSWER 42
%define TWICE(x) ((x) * 2)
%ifdef ANSWER
    mov eax, TWICE(ANSWER)
%else
    mov eax, 0
%endif
%ifndef MISSING
  %if ANSWER > 40
    mov ebx, 1
  %elif ANSWER > 30
    mov ebx, 2
  %endif
%endif
%macro store 2
    mov dword [%1], %2
%%again:
    jmp %%again
%endmacro
    store 0x100, 7
    store 0x104, 8
"""
    out = code(source)
    assert out[:10] == bytes.fromhex("b854000000bb01000000")
    assert out.count(b"\xeb\xfe") == 2  # each expansion has its own %%again


def test_defines_from_the_caller_and_includes(tmp_path):
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "lib.asm").write_text("helper: ret\n")
    (tmp_path / "main.asm").write_text(
        'bits 32\n%include "lib.asm"\n%ifdef FAST\nnop\n%endif\ncall helper\n'
    )
    program = assemble_file(tmp_path / "main.asm", include_paths=[tmp_path / "inc"])
    assert program.code == bytes.fromhex("c3 e8 fa ff ff ff")
    fast = assemble_file(
        tmp_path / "main.asm", include_paths=[tmp_path / "inc"], defines={"FAST": 1}
    )
    assert fast.code == bytes.fromhex("c3 90 e8 f9 ff ff ff")


def test_listing_and_symbols():
    program = assemble("bits 32\norg 0x1000\nstart: mov eax, 1\n ret\n")
    assert program.symbols == {"start": 0x1000}
    text = program.listing_text()
    assert "00001000 B801000000" in text and "mov eax, 1" in text


def test_disassembly_round_trip():
    out = code("mov eax, [ebx+ecx*4+8]\npush 5\nret")
    assert [t for _, _, t in disassemble(out)] == [
        "mov eax, dword ptr [ebx + ecx*4 + 8]",
        "push 5",
        "ret",
    ]


@pytest.mark.parametrize(
    ("source", "line", "column", "message"),
    [
        ("mvo eax, 1", 2, 1, "unknown mnemonic 'mvo'"),
        ("mov eax, bl", 2, 1, "does not take"),
        ("inc [eax]", 2, 5, "operation size not specified"),
        ("jmp nowhere", 2, 5, "undefined symbol 'nowhere'"),
        ("mov al, 300", 2, 9, "does not fit"),
        ("db 'abc", 2, 4, "unterminated string"),
        ("mov eax, dword ptr [ebx]", 2, 16, "MASM"),
        ("dd 1 / 0", 2, 6, "division by zero"),
        ("mov eax, 1 # 2", 2, 12, "unexpected"),
        ("loop far\ntimes 200 nop\nfar:", 2, 1, "out of range"),
        ('%error "stop here"', 2, 1, "stop here"),
        ("%macro m 1\nnop", 2, 1, "no %endmacro"),
        ("%if 1\nnop", 3, 1, "without %endif"),
        ('%include "missing.asm"', 2, 11, "not found"),
        ("mov eax, [eax*3+esp*3]", 2, 10, ""),
        ("x: nop\nx: nop", 3, 1, "defined twice"),
    ],
)
def test_errors_say_what_and_where(source, line, column, message):
    with pytest.raises(AsmError) as caught:
        assemble("bits 32\n" + source, filename="t.asm")
    error = caught.value
    assert (error.filename, error.line) == ("t.asm", line)
    assert error.column == column or message == ""
    assert message in error.message
    text = str(error)
    assert text.startswith(f"t.asm:{line}:")
    assert text.splitlines()[-1].strip() == "^"


def test_self_inclusion_is_an_error(tmp_path):
    (tmp_path / "a.asm").write_text('%include "a.asm"\n')
    with pytest.raises(AsmError, match="includes itself"):
        assemble_file(tmp_path / "a.asm")


def test_garbage_never_escapes_as_another_exception():
    rng = random.Random(5)
    valid = ["mov eax, [ebx+4]", "db 'x', 1", "jmp $", "%define A 1", "add al, 3", "l: ret"]
    alphabet = "abcdefxyz0123456789 ,[]+-*/%$:;'\"`()~|&^<>=.\\#@?!\t"
    for _ in range(500):
        if rng.random() < 0.5:
            line = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 30)))
        else:
            line = list(rng.choice(valid))
            for _ in range(rng.randrange(1, 4)):
                line.insert(rng.randrange(len(line) + 1), rng.choice(alphabet))
            line = "".join(line)
        with contextlib.suppress(AsmError):
            assemble("bits 32\n" + line)
