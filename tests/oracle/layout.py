"""Where generated programs live in guest memory, the same on both sides of the comparison."""

from __future__ import annotations

MEMORY_SIZE = 1 << 20  # mapped on both sides (Machine memory, Unicorn mapping)

CODE = 0x1000  # `org` of every generated program
CODE_LIMIT = 0x10000  # programs must end below this

DATA = 0x10000  # memory operands and string operations address this area
DATA_SIZE = 0x2000

STACK = 0x20000  # the stack area; ESP starts in its middle, so POPs below it read data
STACK_SIZE = 0x2000
STACK_END = STACK + STACK_SIZE
ESP0 = STACK + 0x1000

# Where the generator lets the stack go: room below for PUSHes, above for POPs.
STACK_LOW_WATER = STACK + 0x100
STACK_HIGH_WATER = STACK_END - 0x100

BUDGET = 20_000  # instructions; generated programs run a few hundred at most

REG32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
REG16 = ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di")
REG8 = ("al", "cl", "dl", "bl", "ah", "ch", "dh", "bh")
EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI = range(8)

# EFLAGS bits by letter (the letters vm.isa uses).
FLAG_BITS = {"c": 0x001, "p": 0x004, "a": 0x010, "z": 0x040, "s": 0x080, "d": 0x400, "o": 0x800}
ARITH = "oszapc"
EFLAGS_FIXED = 0x2


def flags_mask(letters: str | frozenset[str] | set[str]) -> int:
    """The EFLAGS bits of some flag letters."""
    mask = 0
    for letter in letters:
        mask |= FLAG_BITS[letter]
    return mask


def flags_text(value: int, letters: str = "oszapcd") -> str:
    """'CF=1 ZF=0 ...' for the named flags of an EFLAGS value."""
    parts = []
    for letter in sorted(letters, key="oszapcd".index):
        parts.append(f"{letter.upper()}F={int(bool(value & FLAG_BITS[letter]))}")
    return " ".join(parts)
