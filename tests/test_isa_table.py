"""The instruction table (vm.isa) and what is derived from it: names, privilege, the decoder
that names forms (vm.cpu.decode.decode_form)."""

from __future__ import annotations

import numpy as np
import pytest

from vm.cpu import state as S
from vm.cpu.decode import decode_form, decoded_address
from vm.isa import (
    CPL0_NAMES,
    FORMS,
    IOPL_NAMES,
    PRIV_CPL0,
    PRIV_IOPL,
    PRIVILEGED_NAMES,
    SENSITIVE_NAMES,
)

# (bytes, their assembly, the form's name)
SYSTEM_ENCODINGS = [
    ("0f 22 d8", "mov cr3, eax", "mov_to_cr"),
    ("0f 20 c1", "mov ecx, cr0", "mov_from_cr"),
    ("8e d8", "mov ds, eax", "mov_to_sreg"),
    ("8e 15 00 20 00 00", "mov ss, [0x2000]", "mov_to_sreg"),
    ("8c c8", "mov eax, cs", "mov_from_sreg"),
    ("9c", "pushfd", "pushf"),
    ("9d", "popfd", "popf"),
    ("cf", "iretd", "iret"),
    ("fa", "cli", "cli"),
    ("fb", "sti", "sti"),
    ("f4", "hlt", "hlt"),
    ("e4 60", "in al, 0x60", "in"),
    ("ed", "in eax, dx", "in"),
    ("e6 e9", "out 0xe9, al", "out"),
    ("ef", "out dx, eax", "out"),
    ("0f 01 10", "lgdt [eax]", "lgdt"),
    ("0f 01 1b", "lidt [ebx]", "lidt"),
    ("0f 01 00", "sgdt [eax]", "sgdt"),
    ("0f 01 09", "sidt [ecx]", "sidt"),
    ("0f 01 e0", "smsw eax", "smsw"),
    ("0f 01 38", "invlpg [eax]", "invlpg"),
    ("0f 00 c0", "sldt eax", "sldt"),
    ("0f 00 c8", "str eax", "str"),
    ("0f 00 d8", "ltr ax", "ltr"),
    ("0f a2", "cpuid", "cpuid"),
    ("0f 01 c1", "vmcall", "vmcall"),
    ("cd 80", "int 0x80", "int"),
    ("cc", "int3", "int3"),
]


@pytest.mark.parametrize(("hexcode", "name"), [(c[0], c[2]) for c in SYSTEM_ENCODINGS],
                         ids=[c[1] for c in SYSTEM_ENCODINGS])  # fmt: skip
def test_decode_form_names_the_system_forms(hexcode, name):
    code = bytes.fromhex(hexcode)
    decoded = decode_form(code + b"\x90" * 4)
    assert decoded is not None and decoded.name == name
    assert decoded.length == len(code) and decoded.code == code


def test_privileged_and_sensitive_names():
    assert {
        "hlt", "lgdt", "lidt", "lmsw", "ltr", "invlpg", "mov_to_cr", "mov_from_cr",
    } == CPL0_NAMES  # fmt: skip
    assert {"cli", "sti", "in", "out"} == IOPL_NAMES
    assert PRIVILEGED_NAMES == CPL0_NAMES | IOPL_NAMES
    assert {
        "pushf", "popf", "iret", "sgdt", "sidt", "sldt", "str", "smsw", "cpuid", "mov_from_sreg",
    } == SENSITIVE_NAMES  # fmt: skip
    assert not PRIVILEGED_NAMES & SENSITIVE_NAMES


def test_every_form_of_a_name_has_the_same_privilege():
    by_name: dict[str, set] = {}
    for form in FORMS:
        by_name.setdefault(form.name, set()).add((form.privileged, form.sensitive))
    assert all(len(v) == 1 for v in by_name.values()), by_name
    assert {f.privileged for f in FORMS} == {"", PRIV_CPL0, PRIV_IOPL}


def test_system_names_are_unique_per_operation():
    """Two forms share a name only when they are the same operation (aliases, or the
    same operation on other operand kinds)."""
    names = {f.name for f in FORMS if not f.user}
    assert {"mov_to_cr", "mov_from_cr", "mov_to_sreg", "mov_from_sreg"} <= names
    assert "mov" not in names


def test_decode_form_is_none_where_the_cpu_raises_ud():
    for hexcode in ("0f 20 c8", "8e c8", "8d c0", "0f 01 c8", "0f 01 28", "0f ff", "d6"):
        assert decode_form(bytes.fromhex(hexcode) + bytes(8)) is None, hexcode


def test_decode_form_rep_prefixes():
    assert decode_form(b"\xf3\xa4").name == "rep movsb"
    assert decode_form(b"\xf2\xae").name == "repne scasb"
    assert decode_form(b"\xa5").name == "movsd"


def test_decode_form_of_truncated_bytes_is_none():
    assert decode_form(b"\x0f\x01") is None
    assert decode_form(b"\xb8\x01\x02") is None


def test_decoded_address_uses_the_state_registers():
    state = S.new_state()
    state[S.EBX] = 0x1000
    state[S.ESI] = 0x20
    decoded = decode_form(bytes.fromhex("0f 01 54 b3 08"))  # lgdt [ebx+esi*4+8]
    assert decoded.is_memory and decoded.mod == 1 and decoded.reg == 2
    assert decoded_address(decoded, state) == 0x1000 + 0x80 + 8
    moffs = decode_form(bytes.fromhex("a1 78 56 34 12"))  # mov eax, [0x12345678]
    assert moffs.is_memory and decoded_address(moffs, state) == 0x12345678
    register = decode_form(bytes.fromhex("0f 01 e0"))  # smsw eax
    assert not register.is_memory
    with pytest.raises(ValueError):
        decoded_address(register, np.zeros(S.STATE_SIZE, np.int64))
