"""Kernel patching: find the guest kernel's sensitive instructions at load time and rewrite
them into traps (or, unpatched, watch them).

x86 is not classically virtualizable: at ring 1, POPF, PUSHF and IRET neither trap nor do
what the guest kernel meant with IF. A VMM that knows where the kernel's code is can scan
it when the guest is loaded and replace each such instruction with INT3 (CC), which traps;
the trap's handler then emulates the instruction that was there. Binary translation
(VMware's approach, in miniature) rewrites every sensitive or privileged instruction this
way, into a callout.

The scan decodes with the CPU's own decoder, so it walks the code exactly as the CPU
would; it stops at bytes the CPU cannot decode (nothing after them can be told apart).
"""

from __future__ import annotations

import numpy as np

from vm.cpu.decode import MAX_INSTRUCTION, Decoded, decode_form, instruction_length
from vm.cpu.state import MAX_BREAKPOINTS
from vm.machine import Machine

INT3 = 0xCC


def scan(window: np.ndarray, start: int, end: int, wanted: frozenset[str]) -> tuple[dict, int]:
    """The instructions in [start, end) of guest memory whose name is wanted, by address,
    and where the scan stopped (``end``, or the first bytes the CPU cannot decode)."""
    found: dict[int, Decoded] = {}
    start, end = max(0, start), min(end, window.size)
    code = window[start : min(end + MAX_INSTRUCTION, window.size)].tobytes()
    at = start
    while at < end:
        chunk = code[at - start : at - start + MAX_INSTRUCTION]
        length = instruction_length(chunk)
        if length == 0:  # the CPU raises #UD here: nothing after it can be told apart
            return found, at
        ins = decode_form(chunk)
        if ins is not None and ins.name in wanted and ins.length == length:
            found[at] = ins
        at += length
    return found, end


def rewrite(window: np.ndarray, sites: dict[int, Decoded]) -> None:
    """Replace every byte of each site with INT3 (a trap wherever the CPU lands in it)."""
    for address, ins in sites.items():
        window[address : address + ins.length] = INT3


def watch(machine: Machine, addresses: list[int]) -> list[int]:
    """Stop at each address with a core breakpoint, as many as there are free slots;
    returns the addresses watched."""
    free = max(0, MAX_BREAKPOINTS - len(machine.breakpoints))
    watched = sorted(addresses)[:free]
    for address in watched:
        machine.add_breakpoint(address)
    return watched
