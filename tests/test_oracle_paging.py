"""Paging against Unicorn: the same page tables and accesses give the same registers, memory,
and Accessed/Dirty bits (Unicorn runs QEMU's MMU, which sets them as real CPUs do)."""

from __future__ import annotations

import random
import struct

import pytest
from conftest import require_tool

from vm.asm import assemble
from vm.cpu import state as S
from vm.cpu.exits import ExitReason
from vm.machine import Machine

MEMORY = 1 << 22
DIRECTORY, TABLE, USER_TABLE = 0x20000, 0x21000, 0x22000
CODE = 0x3000
VIRTUAL = 0x400000  # 16 pages here, mapped by USER_TABLE to random frames
FRAMES = [0x40000 + 0x1000 * i for i in range(12)]  # fewer frames than pages: aliasing
REGISTERS = ("eax", "ebx", "ecx", "edx", "esi", "edi")


def page_tables(rng: random.Random) -> bytearray:
    mem = bytearray(MEMORY)
    struct.pack_into("<I", mem, DIRECTORY, TABLE | 3)
    struct.pack_into("<I", mem, DIRECTORY + 4, USER_TABLE | 3)
    for i in range(1024):
        struct.pack_into("<I", mem, TABLE + 4 * i, (i << 12) | 3)
    for i in range(16):
        flags = rng.choice([1, 3, 3, 3, 5, 7])  # read-only or writable, user or not
        struct.pack_into("<I", mem, USER_TABLE + 4 * i, rng.choice(FRAMES) | flags)
    for frame in FRAMES:
        mem[frame : frame + 4096] = rng.randbytes(4096)
    return mem


def program(rng: random.Random, n: int = 24) -> str:
    lines = ["bits 32", f"org {CODE:#x}"]
    for _ in range(n):
        page = rng.randrange(16)
        offset = rng.randrange(0, 4096 - 4) & ~3
        address = VIRTUAL + page * 4096 + offset
        reg = rng.choice(REGISTERS)
        kind = rng.randrange(5)
        if kind == 0:
            lines.append(f"mov {reg}, [{address:#x}]")
        elif kind == 1:
            lines.append(f"mov dword [{address:#x}], {rng.randrange(1 << 32):#x}")
        elif kind == 2:
            lines.append(f"add [{address:#x}], {reg}")
        elif kind == 3:
            lines.append(f"movzx {reg}, byte [{address + rng.randrange(4):#x}]")
        else:
            lines.append(f"xor {reg}, [{address:#x}]")
    lines.append("hlt")
    return "\n".join(lines)


def run_unicorn(mem: bytearray, code: bytes) -> tuple[dict[str, int], bytes]:
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
    from unicorn import x86_const as X

    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, MEMORY)
    uc.mem_write(0, bytes(mem))
    uc.mem_write(CODE, code)
    uc.reg_write(X.UC_X86_REG_CR3, DIRECTORY)
    uc.reg_write(X.UC_X86_REG_CR0, uc.reg_read(X.UC_X86_REG_CR0) | 0x80000001)
    uc.emu_start(CODE, CODE + len(code) - 1)
    regs = {r: uc.reg_read(getattr(X, f"UC_X86_REG_{r.upper()}")) for r in REGISTERS}
    return regs, bytes(uc.mem_read(0, MEMORY))


def run_vmlab(mem: bytearray, code: bytes) -> tuple[dict[str, int], bytes]:
    m = Machine(memory_size=MEMORY)
    m.load(0, bytes(mem))
    m.load(CODE, code)
    m.state[S.CR3] = DIRECTORY
    m.state[S.CR0] |= S.CR0_PG
    m.eip = CODE
    ex = m.run(budget=1000)
    assert ex.reason == ExitReason.HALT, ex
    return {r: m.regs[r] for r in REGISTERS}, m.read(0, MEMORY)


@pytest.mark.parametrize("seed", range(200))
def test_paged_accesses_and_accessed_dirty_bits_agree_with_unicorn(seed):
    require_tool("unicorn")
    rng = random.Random(seed)
    mem = page_tables(rng)
    source = program(rng)
    code = assemble(source).code
    uc_regs, uc_mem = run_unicorn(mem, code)
    vm_regs, vm_mem = run_vmlab(mem, code)
    assert vm_regs == uc_regs, source
    tables = slice(DIRECTORY, USER_TABLE + 4096)
    assert vm_mem[tables] == uc_mem[tables], "page-table entries (A/D bits) differ\n" + source
    assert vm_mem == uc_mem, source
