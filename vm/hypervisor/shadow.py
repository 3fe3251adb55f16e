"""Shadow paging: the page tables the real CPU walks, built by the VMM from the guest's.

The guest keeps its own page tables (guest virtual -> guest physical) and believes the CPU
walks them. The CPU really walks shadow tables (guest virtual -> host physical) that the
VMM fills lazily: a page fault on an address the guest maps is a *hidden* fault (the VMM
copies the translation and the guest never knows); one the guest does not map is a *true*
fault, reflected into the guest. The VMM write-protects every guest page that a shadow
was built from, so a guest write to its own page tables traps; the VMM lets the write
happen (one single-stepped instruction with the page briefly writable), then drops the
shadow entries it made stale. A guest page table written many times in a row without
being used ("write flooding", as KVM calls it) stops being shadowed.

Every physical address here is a guest-physical one (an index into the VM's window).
The shadow tables themselves live in the VMM's area above the guest's RAM
(vm.hypervisor.vmm_area), where the guest's own mappings can never point.
"""

from __future__ import annotations

import copy
from collections import Counter, defaultdict

import numpy as np

from vm.hypervisor.guest_memory import ACCESSED, DIRTY, PAGE, RW, US, GuestMemory, P
from vm.hypervisor.vmm import StepGuard, VMStopped
from vm.hypervisor.vmm_area import VMM_DIRECTORY
from vm.machine import Machine

FLOOD_LIMIT = 8  # emulated writes in a row to one guest table before it is unshadowed

HIDDEN, TRUE, TABLE_WRITE = "hidden", "true", "table write"


class PoolEmpty(Exception):
    """The VMM's area has no free frame for another shadow table."""


class ShadowPager:
    """The shadow page tables of one VM, and what the VMM knows about the guest's."""

    def __init__(
        self, machine: Machine, memory: GuestMemory, vmm_pde: int, pool: tuple[int, int]
    ) -> None:
        """``vmm_pde``: what every shadow directory maps at VMM_DIRECTORY (the VMM's own
        pages); ``pool``: [start, end) of the frames shadow tables are made of."""
        self.machine = machine
        self.cpu = machine.cpu
        self.memory = memory
        self.words = memory.words  # the VM's memory as dwords (page tables)
        self.ram_size = memory.ram_size
        self.vmm_pde = vmm_pde
        self.first_free = pool[0]
        self.pool_frames = (pool[1] - pool[0]) // PAGE  # frames for shadow tables
        self.counts: Counter = Counter()
        self.protected_frames = memory.protected  # guest tables that shadows mirror
        self.reset()

    # ---- bookkeeping --------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every shadow (the pool ran dry): they are rebuilt lazily."""
        end = self.first_free + self.pool_frames * PAGE
        self.free = list(range(end - PAGE, self.first_free - 1, -PAGE))
        self.spaces: dict[int, int] = {}  # guest CR3 (-1: paging off) -> shadow directory
        self.tables: dict[tuple[int, int], int] = {}  # (guest table or -1-dir, PDE bits) -> shadow
        self.space_of_directory: dict[int, set[int]] = defaultdict(set)  # guest PD -> shadows
        self.tables_of_guest: dict[int, set[int]] = defaultdict(set)  # guest PT -> shadows
        self.users: dict[int, set[tuple[int, int]]] = defaultdict(set)  # shadow PT -> PDEs
        self.writable: dict[int, set[tuple[int, int]]] = defaultdict(set)  # frame -> RW PTEs
        self.flood: Counter = Counter()
        self.protected_frames.clear()  # write-protected: guest tables that shadows mirror
        self.current = -1
        self.current_key = -2

    BOOKS = (
        "free", "spaces", "tables", "space_of_directory", "tables_of_guest", "users",
        "writable", "flood", "current", "current_key", "counts",
    )  # fmt: skip

    def books(self) -> dict[str, object]:
        """A copy of the bookkeeping (for snapshots): what shadows exist and what they came
        from (the shadow tables themselves are in the VM's memory)."""
        out = {name: getattr(self, name) for name in self.BOOKS}
        out["protected_frames"] = self.protected_frames
        return copy.deepcopy(out)

    def set_books(self, books: dict[str, object]) -> None:
        """Put back a copy of what books() returned."""
        books = copy.deepcopy(books)
        for name in self.BOOKS:
            setattr(self, name, books[name])
        self.protected_frames.clear()  # (the same set object: guest memory holds it)
        self.protected_frames.update(books["protected_frames"])

    def protected(self, frame: int) -> bool:
        """Is this guest frame one of the guest's page tables that a shadow was built from?"""
        return frame in self.protected_frames

    def _alloc(self) -> int:
        """A zeroed frame of the VMM's area for a shadow table (PoolEmpty when none is left)."""
        if not self.free:
            raise PoolEmpty
        frame = self.free.pop()
        self.words[frame // 4 : frame // 4 + 1024] = 0
        return frame

    def _start_over(self) -> None:
        """The pool ran dry: forget every shadow and rebuild the current space's, lazily."""
        self.counts["resets"] += 1
        key = self.current_key
        self.reset()
        self.switch(key)

    def _protect(self, frame: int) -> None:
        """Make every writable shadow mapping of a guest frame read-only."""
        self.protected_frames.add(frame)
        for table, index in self.writable.pop(frame, ()):
            self.words[table // 4 + index] &= 0xFFFFFFFF ^ RW
        self.flush_tlb()

    def flush_tlb(self) -> None:
        """The real translations changed: flush the real TLB (counted, like a CR3 load)."""
        self.machine.flush_tlb()

    # ---- address spaces ---------------------------------------------------------------------
    def switch(self, guest_cr3: int) -> None:
        """Run on the shadow of the guest directory at guest_cr3 (-1: the guest's paging is off)."""
        key = guest_cr3 & ~0xFFF if guest_cr3 >= 0 else -1
        directory = self.spaces.get(key)
        if directory is None:
            if not self.free:
                self.counts["resets"] += 1
                self.reset()
            directory = self._alloc()
            self.words[directory // 4 + VMM_DIRECTORY] = self.vmm_pde
            self.spaces[key] = directory
            if key >= 0:
                self.space_of_directory[key].add(directory)
                self._protect(key)
            self.counts["spaces built"] += 1
        self.current, self.current_key = directory, key
        self.cpu.cr3 = directory
        self.flush_tlb()

    def _table_for(self, key: tuple[int, int]) -> int:
        table = self.tables.get(key)
        if table is None:
            table = self._alloc()
            self.tables[key] = table
            if key[0] >= 0:
                self.tables_of_guest[key[0]].add(table)
                self._protect(key[0])
            self.counts["tables built"] += 1
        return table

    # ---- page faults --------------------------------------------------------------------------
    def page_fault(self, linear: int, error: int, paging: bool, cr3: int) -> tuple[str, int]:
        """Handle a real #PF -> (HIDDEN, 0), (TABLE_WRITE, guest frame) or (TRUE, guest error)."""
        try:
            return self._page_fault(linear, error, paging, cr3)
        except PoolEmpty:
            self._start_over()
            return self._page_fault(linear, error, paging, cr3)

    def _page_fault(self, linear: int, error: int, paging: bool, cr3: int) -> tuple[str, int]:
        write, user = bool(error & 2), bool(error & 4)
        directory_index, index = linear >> 22, (linear >> 12) & 0x3FF
        if directory_index == VMM_DIRECTORY:  # the VMM's range: never the guest's
            return TRUE, error & 6
        if not paging:
            frame, rights, key = linear & ~0xFFF, RW | US, (-1 - directory_index, 0)
            if frame >= self.ram_size:
                return TRUE, error & 6
            dirty = True
        else:
            pde_at, pde, pte_at, pte = self.memory.walk(linear, cr3)
            if pde < 0 or pte < 0 or not pde & P or not pte & P:
                return TRUE, error & 6
            rights = pde & pte & (RW | US)
            if (user and not rights & US) or (write and not rights & RW):
                return TRUE, (error & 6) | P  # (the guest's CR0.WP is taken as set)
            frame = pte & ~0xFFF
            if frame >= self.ram_size or (pde & ~0xFFF) >= self.ram_size:
                return TRUE, (error & 6) | P  # outside its RAM: refused
            self.words[pde_at >> 2] = pde | ACCESSED
            pte |= ACCESSED | (DIRTY if write else 0)
            self.words[pte_at >> 2] = pte
            dirty = bool(pte & DIRTY)
            key = (pde & ~0xFFF, pde & (RW | US))
            self.flood[pde & ~0xFFF] = 0
            self.flood[cr3 & ~0xFFF] = 0
        table = self._table_for(key)
        slot = self.current // 4 + directory_index
        if self.words[slot] != table | P | RW | US:
            self.words[slot] = table | P | RW | US
            self.users[table].add((self.current, directory_index))
        protected = self.protected(frame)
        writable = rights & RW and dirty and not protected
        self.words[table // 4 + index] = frame | P | (rights & US) | (RW if writable else 0)
        if writable:
            self.writable[frame].add((table, index))
        self.flush_tlb()
        if write and protected:  # (the read-only entry is in place for the VMM to open)
            return TABLE_WRITE, frame
        return HIDDEN, 0

    def shadow_entry(self, linear: int) -> int:
        """The address of linear's PTE in the current shadow, or -1."""
        pde = int(self.words[self.current // 4 + (linear >> 22)])
        if not pde & P or linear >> 22 == VMM_DIRECTORY:
            return -1
        return (pde & ~0xFFF) + 4 * ((linear >> 12) & 0x3FF)

    # ---- the guest changed its tables --------------------------------------------------------
    def table_written(self, frame: int, before: np.ndarray) -> int:
        """The guest wrote its table at frame (was ``before``): drop stale shadow entries."""
        after = self.words[frame // 4 : frame // 4 + 1024]
        changed = np.flatnonzero(before != after)
        for directory in self.space_of_directory.get(frame, ()):
            for i in changed:
                if i != VMM_DIRECTORY:
                    self._unlink(directory, int(i))
        for table in self.tables_of_guest.get(frame, ()):
            for i in changed:
                self._clear(table, int(i))
        self.flood[frame] += 1
        if self.flood[frame] >= FLOOD_LIMIT and frame != self.current_key:
            self.unshadow(frame)
        self.flush_tlb()
        return len(changed)

    def _unlink(self, directory: int, i: int) -> None:
        slot = directory // 4 + i
        entry = int(self.words[slot])
        if entry & P:
            self.users[entry & ~0xFFF].discard((directory, i))
            self.words[slot] = 0

    def _clear(self, table: int, i: int) -> None:
        slot = table // 4 + i
        entry = int(self.words[slot])
        if entry & RW:
            self.writable[entry & ~0xFFF].discard((table, i))
        self.words[slot] = 0

    def unshadow(self, frame: int) -> None:
        """Stop shadowing a guest table (it is being reused as something else)."""
        self.counts["unshadowed"] += 1
        for directory in self.space_of_directory.pop(frame, ()):
            self.spaces.pop(frame, None)
            for i in range(VMM_DIRECTORY):
                self._unlink(directory, i)
            self.free.append(directory)
        for table in self.tables_of_guest.pop(frame, ()):
            for key in [k for k, v in self.tables.items() if v == table]:
                del self.tables[key]
            for directory, i in list(self.users.pop(table, ())):
                self._unlink(directory, i)
            for i in range(1024):
                self._clear(table, i)
            self.free.append(table)
        self.flood.pop(frame, None)
        self.protected_frames.discard(frame)

    def invlpg(self, linear: int) -> None:
        """INVLPG: forget the shadow entry of one page."""
        entry = self.shadow_entry(linear)
        if entry >= 0:
            self._clear(entry & ~0xFFF, (entry & 0xFFF) // 4)
        self.flush_tlb()
        self.counts["invlpg"] += 1

    # ---- checking ------------------------------------------------------------------------------
    def mismatches(self, paging: bool, cr3: int) -> list[str]:
        """Shadow entries of the current space that the guest's own tables do not imply."""
        problems = []
        words = self.words
        for d in range(VMM_DIRECTORY):
            pde = int(words[self.current // 4 + d])
            if not pde & P:
                continue
            table = pde & ~0xFFF
            for i in np.flatnonzero(words[table // 4 : table // 4 + 1024] & P):
                linear = (d << 22) | (int(i) << 12)
                entry = int(words[table // 4 + i])
                frame = entry & ~0xFFF
                if not paging:
                    want, rights = linear, RW | US
                else:
                    _, gpde, _, gpte = self.memory.walk(linear, cr3)
                    if gpde < 0 or gpte < 0 or not gpde & P or not gpte & P:
                        problems.append(f"{linear:#x}: shadowed but not mapped by the guest")
                        continue
                    want, rights = gpte & ~0xFFF, gpde & gpte & (RW | US)
                if frame != want:
                    problems.append(f"{linear:#x}: shadow frame {frame:#x}, guest's {want:#x}")
                if entry & US != rights & US or (entry & RW and not rights & RW):
                    problems.append(f"{linear:#x}: shadow rights {entry & 7:#x} exceed {rights:#x}")
                if entry & RW and self.protected(frame):
                    problems.append(f"{linear:#x}: maps a guest page table writable")
                if frame >= self.ram_size:
                    problems.append(f"{linear:#x}: maps {frame:#x}, outside the guest's RAM")
        return problems


class TableWriteStep(StepGuard):
    """Let one guest instruction write the guest page tables it touches (shadowed, so
    write-protected): their shadow entries are made writable for that one instruction,
    the real interrupt controller masked so no tick lands in the middle, and afterwards
    the shadow entries the write made stale are dropped. A store that straddles two
    tables opens both (the second fault renews the step); ``MAX_TRIES`` bounds the
    faults one instruction may take before the VMM gives up on it."""

    MAX_TRIES = 8

    def __init__(self, saved_imr: int) -> None:
        self.saved_imr = saved_imr
        self.opened: dict[int, int] = {}  # shadow PTE address -> guest frame
        self.before: dict[int, np.ndarray] = {}  # guest frame -> its words before the write
        self.tries = 0

    def open(self, shadow: ShadowPager, linear: int, frame: int) -> None:
        """Make linear's shadow entry writable for the step (frame: the guest table)."""
        self.renew()
        if frame not in self.before:
            self.before[frame] = shadow.words[frame >> 2 : (frame >> 2) + 1024].copy()
        entry = shadow.shadow_entry(linear)
        if entry >= 0:
            shadow.words[entry >> 2] |= RW
            self.opened[entry] = frame
        shadow.flush_tlb()

    def renew(self) -> None:
        """The step's instruction faulted and the fault was handled: try it again."""
        self.tries += 1
        if self.tries > self.MAX_TRIES:
            raise VMStopped(
                "fault",
                f"the VMM could not complete one instruction's page-table write in "
                f"{self.MAX_TRIES} tries",
            )
        self.renewed = True

    def close(self, vm, completed: bool) -> None:
        changed = self.finish(vm.shadow)
        vm.acct.shadow["entries resynced"] += changed

    def finish(self, shadow: ShadowPager) -> int:
        """Close the entries, unmask, drop what is stale; how many entries changed."""
        for entry in self.opened:
            shadow.words[entry >> 2] &= 0xFFFFFFFF ^ RW
        shadow.cpu.pic_imr = self.saved_imr
        changed = sum(shadow.table_written(frame, before) for frame, before in self.before.items())
        shadow.memory.forget()
        return changed
