"""The VMM's own memory: an area above each guest's RAM that the guest can never map.

A deprivileging VMM needs real descriptor tables and page tables of its own. They live in
the VM's window after the guest's RAM (the guest's page tables are refused anything at or
beyond its RAM size), and the VMM maps its tables at the top 4 MiB of every address space
(linear 0xFFC00000 up, page-directory entry 1023), read-only and supervisor-only, whatever
the guest puts there:

    page  0..15   the real GDT (up to 8,192 descriptors: x86's largest, 64 KiB)
    page  16      the real TSS (at +0x000) and the real IDT (at +0x800: SIDT's red pill)
    page  17      the page table that maps them at VMM_LINEAR: the GDT's pages at its start
                  (or at a page a mode chooses), the TSS and IDT page at VMM_LINEAR +
                  0xFE000. (The CPU reads these pages on every event it delivers itself, and
                  vmlab's TLB is direct-mapped by page number: slots 0xE0 up are ones a
                  guest's usual pages rarely need, where slot 0 is its first user page's.)
    page  18 ...  the pool of frames for shadow page tables
"""

from __future__ import annotations

import numpy as np

PAGE = 4096
VMM_AREA = 1 << 20  # bytes of VMM area above each guest's RAM
VMM_DIRECTORY = 1023  # the page-directory entry of the VMM's 4 MiB
VMM_LINEAR = VMM_DIRECTORY << 22  # 0xFFC00000
GDT_PAGES = 16
GDT_OFFSET = 0
TSS_OFFSET = GDT_PAGES * PAGE
IDT_OFFSET = GDT_PAGES * PAGE + 0x800
TABLES_PAGE = 0xFE  # the linear page (from VMM_LINEAR) the TSS and IDT page is mapped at
TSS_LINEAR = VMM_LINEAR + TABLES_PAGE * PAGE
IDT_LINEAR = TSS_LINEAR + 0x800
MAP_TABLE_OFFSET = (GDT_PAGES + 1) * PAGE
POOL_OFFSET = MAP_TABLE_OFFSET + PAGE


class VMMArea:
    """Where each of the VMM's things is, in guest-physical (window) addresses."""

    def __init__(
        self, window: np.ndarray, start: int, size: int = VMM_AREA, gdt_page: int = 0
    ) -> None:
        """``gdt_page``: the linear page (from VMM_LINEAR) the GDT's first page is mapped at."""
        if start % PAGE or start + size > window.size or size < POOL_OFFSET + 4 * PAGE:
            raise ValueError("the VMM's area does not fit after the guest's RAM")
        self.window = window
        self.start = start
        self.gdt = start + GDT_OFFSET
        self.gdt_linear = VMM_LINEAR + gdt_page * PAGE
        self.tss = start + TSS_OFFSET
        self.idt = start + IDT_OFFSET
        self.map_table = start + MAP_TABLE_OFFSET
        self.pool = (start + POOL_OFFSET, start + size)
        words = window.view(np.uint32)
        table = self.map_table >> 2
        words[table : table + 1024] = 0
        for page in range(GDT_PAGES):  # present, read-only, supervisor-only
            words[table + gdt_page + page] = (start + page * PAGE) | 1
        words[table + TABLES_PAGE] = (start + TSS_OFFSET) | 1
        self.directory_entry = self.map_table | 1  # what PDE 1023 holds in every space

    @staticmethod
    def linear(offset: int) -> int:
        """The linear address the VMM (and a curious guest) sees its area's offset at."""
        return VMM_LINEAR + offset
