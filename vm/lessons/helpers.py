"""Small helpers lessons share: run a few lines of assembly on a bare machine and say
what the CPU did, in the words a student reads."""

from __future__ import annotations

from vm.asm import AsmError, assemble
from vm.machine import Exit, ExitReason, Machine


class GuestCodeError(Exception):
    """The student's assembly did not assemble: the message says where and why."""


def run_asm(source: str, budget: int = 10_000, setup: dict[str, int] | None = None) -> Machine:
    """Assemble ``source``, run it on a fresh bare machine (ring 0, flat memory) until it
    halts, faults or uses ``budget`` instructions; the machine's ``exit`` says which."""
    machine = Machine()
    try:
        machine.load_asm(source)
    except AsmError as error:
        raise GuestCodeError(f"your assembly does not assemble: {error}") from None
    for name, value in (setup or {}).items():
        machine.regs[name] = value
    machine.exit = machine.run(budget)
    return machine


def outcome(machine: Machine) -> str:
    """How a run ended: 'HALT', '#GP', '#UD', 'BUDGET', ..."""
    exit: Exit = machine.exit
    if exit.reason == ExitReason.FAULT:
        return str(exit).split()[1].split("(")[0]
    return exit.reason.name


def assembles(source: str) -> bytes:
    """The bytes of ``source`` (NASM syntax), or GuestCodeError."""
    try:
        return assemble(source).code
    except AsmError as error:
        raise GuestCodeError(f"your assembly does not assemble: {error}") from None
