"""`python -m vm demo`: a short tour of the machine in the terminal."""

from __future__ import annotations

import vm
from vm.asm import disassemble_one
from vm.machine import Machine

PROGRAM = """
    mov ecx, 10          ; add 10 + 9 + ... + 1
again:
    add eax, ecx
    loop again
    xor edx, edx
    div edx              ; divide by zero: the CPU raises #DE
    hlt
"""


def demo() -> int:
    """Run the tour; returns 0."""
    print("== 1. assemble a program and run it")
    m = Machine()
    program = m.load_asm(PROGRAM)
    print(program.listing_text())
    exit_ = m.run()
    print(f"\nrun() returned: {exit_!r}")
    print(f"registers: {m.regs}")
    print(f"the sum is in EAX: {m.regs.eax}; {m.instructions} instructions, {m.cycles} cycles")

    print("\n== 2. step it again from the start, one instruction at a time")
    m = Machine()
    m.load_asm(PROGRAM)
    for _ in range(5):
        text = disassemble_one(m.read(m.eip, 15), m.eip)
        m.step()
        print(f"  {text:<20} -> eax={m.regs.eax:<3} ecx={m.regs.ecx}")

    print("\n== 3. boot toyos and run every workload")
    result = vm.boot("all").run()
    print(result.console)
    print(f"status: {result.status}; {result.stats['instructions']:,} instructions")

    print("\n== 4. the same guest, unmodified, in every mode")
    from vm.cli import compare_table

    results = {mode: vm.boot("syscalls", mode).run() for mode in vm.MODES}
    print(compare_table("syscalls", results))

    print("\n== 5. what the VMM did: trap-and-emulate's exit table, and its first events")
    guest = vm.boot("syscalls", "trap-emulate")
    print(guest.exit_table())
    guest.run_until("INT 0x80")
    print(guest.events.tail(6))

    print("\n== 6. and without patching POPF: x86's hole")
    hung = vm.boot("sleeper", "trap-emulate", patch=False).run()
    print(f"status: {hung.status}\n{hung.message}")
    print("\nnext: python -m vm run --compare --workload spawn   |   python -m vm bench")
    return 0
