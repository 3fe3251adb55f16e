"""The hostile-neighbour fuzzer: random and adversarial guest kernels run on one Host beside
two good toyos guests, under each VMM. Whatever a hostile kernel does (privileged
instructions, page-table writes across pages, descriptor tables at their limits, timer
storms, self-modifying code, wild port I/O), no Python exception leaves the host, each of
its slices returns within its budget, and the good guests' consoles, statistics and memory
are exactly what they are when they run alone.

The default run tries a few dozen kernels; `python -m pytest -m slow -k hostile_fuzz`
tries 100,000 (the seed of any failure is in its message).
"""

from __future__ import annotations

import functools
import random

import pytest

import vm
from vm.asm import AsmError, assemble
from vm.hypervisor.binary_translation import BinaryTranslationVM
from vm.hypervisor.host import Host
from vm.hypervisor.hw_assist import HardwareAssistVM
from vm.hypervisor.paravirt import ParavirtVM
from vm.hypervisor.trap_emulate import TrapEmulateVM
from vm.hypervisor.vmm_area import VMM_AREA
from vm.interface import GUEST_RAM
from vm.machine import Machine

SIZE = GUEST_RAM + VMM_AREA
GOOD = (("syscalls", "trap-emulate"), ("spawn", "binary-translation"), ("pagetable", "paravirt"))
SLICE = 10_000  # each guest's slice, in instructions and exits
ROUNDS = 2  # slices each guest gets per hostile kernel
HOSTILE_SLICE = 3_000
STATUSES = {"budget", "shutdown", "panic", "hang", "halt", "fault"}  # (never "vmm-error")

# Privileged and sensitive instructions (bytes), mixed into random bytes.
SENSITIVE = [
    "fa", "fb", "f4", "9c", "9d", "cf", "0f22d8", "0f22c0", "0f20c0", "0f0110", "0f0118",
    "0f00d8", "0f0138", "8ed0", "8ed8", "e621", "e460", "cd80", "cc", "cd03", "ee", "ec",
    "0f0108", "0f0100", "0f01f0", "0f01c1", "0f0b", "e640", "e643", "0fa2", "8cc8",
]  # fmt: skip


def _attack(rng: random.Random) -> str:
    """One adversarial snippet, as assembly (the generator's own menu of attacks)."""
    page = rng.choice([0x400000, 0x401000, 0x402000, 0x10000, 0x11000, 0x3FF000])
    value = rng.choice([0, 0x7, 0x11007, 0x12003, 0xFFFFFFFF, rng.getrandbits(32)])
    base = rng.choice([0, 0x20000, GUEST_RAM - 8, GUEST_RAM, 0xFFC00000, rng.getrandbits(32)])
    limit = rng.choice([0, 7, 0x17, 0x7FF, 0xFFFF, rng.getrandbits(16)])
    selector = rng.choice([0, 8, 0x10, 0x1B, 0x23, 0x28, 0xFFF8, rng.getrandbits(16)])
    vector = rng.randrange(256)
    return rng.choice(
        [
            # page tables: remap, then write across a page boundary
            f"mov dword [0x10004], 0x12003\nmov dword [0x12000], 0x10003\n"
            f"mov dword [0x12004], 0x{rng.choice([0x11003, 0x12003]):x}\n"
            f"mov eax, [0x400000]\nmov dword [{page + 0xFFE:#x}], {value:#x}",
            f"mov dword [{rng.choice([0x10000, 0x11000]) + 4 * rng.randrange(1024):#x}], "
            f"{value:#x}\nmov eax, [{page:#x}]",
            f"mov edi, {page:#x}\nmov ecx, {rng.randrange(1, 3000)}\nmov eax, {value:#x}\n"
            f"rep stosd",
            # descriptor tables at their limits
            f"mov dword [0x7000], {limit | (base & 0xFFFF) << 16:#x}\n"
            f"mov dword [0x7004], {base >> 16:#x}\nlgdt [0x7000]",
            f"mov dword [0x7000], {limit | (base & 0xFFFF) << 16:#x}\n"
            f"mov dword [0x7004], {base >> 16:#x}\nlidt [0x7000]",
            f"mov eax, {selector:#x}\nmov ss, ax",
            f"mov eax, {selector:#x}\nmov ds, ax",
            f"mov eax, {selector:#x}\nltr ax",
            f"push dword {value:#x}\npush dword {selector:#x}\npush dword 0x1000\niret",
            # interrupts
            f"int {vector:#x}",
            "int3",
            f"mov al, 0x34\nout 0x43, al\nmov al, {rng.randrange(1, 4)}\nout 0x40, al\n"
            f"mov al, 0\nout 0x40, al\nmov al, 0xfe\nout 0x21, al\nsti\nhlt",
            # control registers and paging
            f"mov eax, {value:#x}\nmov cr3, eax",
            f"mov eax, cr0\nor eax, 0x80000000\nmov cr0, eax\nmov eax, [{page:#x}]",
            f"invlpg [{page:#x}]",
            # port I/O anywhere
            f"mov edx, {rng.randrange(0x10000):#x}\nmov eax, {value:#x}\nout dx, eax\nin al, dx",
            # hypercalls with arguments meant to hurt (the paravirtual VMM's; #UD elsewhere)
            f"mov eax, {rng.choice([0, 1, 3, 4, 13, 15, 18, 24, 26, 29, 99, value]):#x}\n"
            f"mov ebx, {rng.choice([0, 1, 2, 0x1000, 0x10000, base, value]):#x}\n"
            f"mov ecx, {rng.choice([0, 1, 2, 8, 1024, 1025, limit, value]):#x}\n"
            f"mov edx, {rng.choice([0, 0x1000, base, value]):#x}\n"
            f"{rng.choice(['vmcall', 'int 0x82'])}",
            # self-modifying code over the kernel's own (patched) text
            f"mov byte [{0x1000 + rng.randrange(64):#x}], {rng.choice([0xCC, 0x90, 0x9D]):#x}",
        ]
    )


# Half the kernels first load a GDT and an IDT whose exception gates print the vector and
# stop, and whose other gates (INT n, IRQs) return: their attacks go further.
TABLES = (
    """
    lgdt [gdt_pointer]
    lidt [idt_pointer]
    jmp attacks
exception:
    mov al, 'F'
    out 0xe9, al
    mov al, 1
    out 0xf4, al
back:
    iret
gdt_pointer:
    dw 0x17
    dd gdt
gdt:
    dd 0, 0
    dd 0x0000ffff, 0x00cf9a00
    dd 0x0000ffff, 0x00cf9200
idt_pointer:
    dw 0x7ff
    dd idt
idt:
"""
    + "".join(
        "    dw exception, 0x08, 0x8e00, 0\n" if v < 32 else "    dw back, 0x08, 0xee00, 0\n"
        for v in range(256)
    )
    + "attacks:\n"
)


def hostile_kernel(seed: int) -> bytes:
    """A random kernel: a few attacks and a spray of privileged instructions and bytes."""
    rng = random.Random(seed)
    parts = ["bits 32", "org 0x1000", "mov esp, 0x9000"]
    if rng.random() < 0.5:
        parts.append(TABLES)
    for _ in range(rng.randrange(1, 6)):
        parts.append(_attack(rng))
    code = assemble("\n".join(parts) + "\n").code
    spray = b""
    while len(spray) < rng.randrange(8, 96):
        if rng.random() < 0.4:
            spray += bytes.fromhex(rng.choice(SENSITIVE))
        else:
            spray += bytes([rng.randrange(256)])
    return code + spray


@functools.cache
def alone(workload: str, mode: str) -> list[tuple[str, dict, bytes]]:
    """A good guest alone: (console, stats, its RAM) after each of its slices."""
    guest = vm.boot(workload, mode)
    out = []
    for _ in range(ROUNDS):
        result = guest.run(SLICE)
        out.append((result.console, result.stats, guest.vm.machine.window.tobytes()))
    return out


class Neighbourhood:
    """One host: a window for the hostile kernel, two good guests, reused kernel after
    kernel (the good guests go back to their first state each time)."""

    def __init__(self) -> None:
        self.host = Host((len(GOOD) + 1) * SIZE)
        self.hostile_machine = self.host.new_machine(SIZE)
        self.good = [vm.boot(w, m, host=self.host) for w, m in GOOD]
        self.starts = [g.snapshot() for g in self.good]

    def try_kernel(self, seed: int) -> str:
        rng = random.Random(seed)
        try:
            code = hostile_kernel(seed)
        except AsmError:  # (a generated snippet the assembler refuses: fine, next)
            return "skipped"
        base = self.hostile_machine.cpu.mem_base
        self.host.memory[base : base + SIZE] = 0
        machine = Machine(SIZE, host_memory=self.host.memory, base=base)
        machine.load(0x1000, code)
        machine.eip = 0x1000
        for name in ("eax", "ecx", "edx", "ebx", "esi", "edi"):
            setattr(machine.regs, name, rng.choice([0, 0x1000, 0x10000, rng.getrandbits(32)]))
        kind = rng.choice([TrapEmulateVM, BinaryTranslationVM, ParavirtVM, HardwareAssistVM])
        if kind is ParavirtVM:
            hostile = ParavirtVM(machine, GUEST_RAM)
        elif kind is HardwareAssistVM:  # (VMX non-root mode, nested or shadow paging)
            hostile = HardwareAssistVM(machine, GUEST_RAM, paging=rng.choice(["nested", "shadow"]))
        else:
            hostile = kind(machine, GUEST_RAM, kernel_text=(0x1000, 0x1000 + len(code)))
        for guest, start in zip(self.good, self.starts, strict=True):
            guest.restore(start)
        status = "budget"
        for round_ in range(ROUNDS):
            before = hostile.stats()["instructions"] + hostile.acct.core_exits
            result = hostile.run(HOSTILE_SLICE)  # (any Python exception fails the test)
            used = result.stats["instructions"] + hostile.acct.core_exits - before
            assert result.status in STATUSES, (seed, result.status, result.message)
            assert used <= HOSTILE_SLICE + 1, (seed, used)  # (+1: its last instruction's exit)
            status = result.status
            for guest, (workload, mode) in zip(self.good, GOOD, strict=True):
                good = guest.run(SLICE)
                console, stats, memory = alone(workload, mode)[round_]
                assert (good.console, good.stats) == (console, stats), (seed, workload)
                assert guest.vm.machine.window.tobytes() == memory, (seed, workload)
        return status  # (after the windows: only the core's fetch scratch, no guest's memory)


def fuzz(cases: int, first_seed: int) -> dict[str, int]:
    place = Neighbourhood()
    statuses: dict[str, int] = {}
    for seed in range(first_seed, first_seed + cases):
        status = place.try_kernel(seed)
        statuses[status] = statuses.get(status, 0) + 1
    return statuses


def test_hostile_kernels_beside_good_neighbours():
    statuses = fuzz(40, first_seed=0)
    assert sum(statuses.values()) == 40 and statuses.get("skipped", 0) < 10
    assert len(set(statuses) - {"skipped"}) >= 3  # (the kernels do different things)


@pytest.mark.slow
def test_hostile_kernels_beside_good_neighbours_long():
    statuses = fuzz(100_000, first_seed=1_000_000)
    print(f"100,000 hostile kernels: {statuses}")
