"""vmlab's assembler: NASM's syntax over the instruction table in vm.isa, flat binary out.

>>> from vm.asm import assemble
>>> assemble("bits 32\\nmov eax, ebx\\nret").code.hex()
'89d8c3'
"""

from vm.asm.assembler import ListingLine, Program, assemble, assemble_file
from vm.asm.disasm import disassemble, disassemble_one
from vm.asm.errors import AsmError

__all__ = [
    "AsmError",
    "ListingLine",
    "Program",
    "assemble",
    "assemble_file",
    "disassemble",
    "disassemble_one",
]
