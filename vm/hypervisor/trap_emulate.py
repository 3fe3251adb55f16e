"""Full virtualization of the unmodified toyos kernel by trap-and-emulate.

The guest kernel runs at ring 1 (ring compression), its user code at ring 3; the VMM owns
the real IDT (every exception, INT n and timer tick exits to it) and the real page tables
(shadow paging). This file is what is particular to trap-and-emulate: the real CPU's
set-up, the exit table, and its handlers. The work is done by the shared services:

    guest_memory     the guest's memory through its own page tables
    ring_compression the real GDT and selectors for a kernel at ring 1
    descriptors      the guest's GDT, with the CPU's checks on selectors
    reflection       exceptions, system calls and interrupts into the guest kernel
    emulator         one small emulator per privileged or sensitive instruction
    patching         the kernel's sensitive sites rewritten to INT3 at load time
    shadow           shadow paging, and the single-stepped page-table write

x86 is not classically virtualizable: POPF, PUSHF and IRET at ring 1 neither trap nor do
what the guest meant with IF. ``patch=True`` (the default) rewrites the kernel's PUSHF,
POPF and IRET into INT3 at load time; ``patch=False`` shows the failure (the VMM watches
the POPF sites only to say which one lost the guest's interrupts).
"""

from __future__ import annotations

from vm.cpu.cost import DEFAULT, CostModel
from vm.cpu.decode import Decoded
from vm.cpu.exits import ExitReason
from vm.cpu.state import (
    CR0_PE,
    CR0_PG,
    CR0_WP,
    EFLAGS_FIXED,
    EXIT_ON_HLT,
    EXIT_ON_INTERRUPT,
    FLAG_IF,
)
from vm.hypervisor import patching
from vm.hypervisor.descriptors import GuestDescriptors
from vm.hypervisor.devices import VirtualBoard
from vm.hypervisor.emulator import HANG_TICKS, Emulator, flags_from_guest
from vm.hypervisor.guest_memory import GuestFault, GuestMemory, GuestPageFault
from vm.hypervisor.reflection import Reflector
from vm.hypervisor.ring_compression import RingCompression
from vm.hypervisor.shadow import HIDDEN, TABLE_WRITE, ShadowPager, TableWriteStep
from vm.hypervisor.vcpu import VCPU
from vm.hypervisor.vmm import ANY, NO_ERROR_CODE, VM, ExitRow, Outcome, VMStopped
from vm.hypervisor.vmm_area import VMM_AREA, VMMArea
from vm.machine import Machine, vector_name

F, SI, IRQ, BP = (
    ExitReason.FAULT,
    ExitReason.SOFTWARE_INTERRUPT,
    ExitReason.INTERRUPT,
    ExitReason.BREAKPOINT,
)
VECTOR_BP, VECTOR_TS, VECTOR_GP, VECTOR_PF = 3, 10, 13, 14
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17})  # exceptions that push one
REFLECT_TEXT = [f"{vector_name(v)} to the guest kernel" for v in range(256)]
SYSCALL_TEXT = [f"{vector_name(v, software=True)} to the guest kernel" for v in range(256)]
PATCHED = frozenset({"pushf", "popf", "iret"})  # sensitive and silent at ring 1


class TrapEmulateVM(VM):
    """A VMM that deprivileges the guest kernel and emulates what traps."""

    mode = "trap-emulate"
    believed_cpl = (0, 0, 2, 3)  # ring compression: the kernel's ring 1 is its ring 0
    ring_roles = ((0, "VMM"), (1, "guest kernel"), (3, "guest user"))
    rewritten = PATCHED  # what prepare_kernel rewrites into INT3
    site_kind = "patched"
    EXIT_TABLE = (
        ExitRow(F, VECTOR_GP, "privileged_instruction", "#GP in the guest kernel: emulate it"),
        ExitRow(F, VECTOR_PF, "page_fault", "shadow paging: hidden, page-table write, or true"),
        ExitRow(F, ANY, "reflect_exception", "any other exception: the guest kernel's"),
        ExitRow(SI, VECTOR_BP, "int3", "INT3: a rewritten site's callout, or the guest's own"),
        ExitRow(SI, ANY, "software_interrupt", "INT n (a system call): through the guest's IDT"),
        ExitRow(IRQ, ANY, "timer_tick", "the real timer ticked: the tick waits in the vPIC"),
        ExitRow(BP, ANY, "watched_popf", "unpatched: a POPF is about to run; does it lose IF?"),
    )

    def __init__(
        self,
        machine: Machine,
        ram_size: int,
        cost: CostModel = DEFAULT,
        name: str = "vm",
        kernel_text: tuple[int, int] | None = None,
        patch: bool = True,
    ) -> None:
        if machine.memory_size < ram_size + VMM_AREA:
            raise ValueError("the machine needs VMM_AREA bytes above the guest's RAM")
        super().__init__(machine, cost, name, board=VirtualBoard(machine.cpu.timer_scale))
        self.ram_size = ram_size
        self.patch = patch
        self.trap_cycles = cost.vm_exit  # one trip guest -> VMM -> guest (a trap, the return)
        self.vcpu = VCPU()
        self.memory = GuestMemory(machine.window, ram_size, self.vcpu)
        self.area = VMMArea(machine.window, ram_size)
        self.descriptors = GuestDescriptors(self.memory, self.vcpu)
        self.rings = RingCompression(machine, self.area, self.memory)
        self.shadow = ShadowPager(machine, self.memory, self.area.directory_entry, self.area.pool)
        self.memory.on_table_write = self.shadow.table_written
        self.reflector = Reflector(self)
        self.emulator = Emulator(self)
        self.sites: dict[int, Decoded] = {}  # rewritten kernel sites, by address
        self.watched: set[int] = set()  # unpatched POPF sites, watched with breakpoints
        self.last_cli = -1
        self.lost_enable = -1
        self.site_text = {name: f"{name} at a {self.site_kind} site" for name in self.rewritten}
        self.callout_kind, self.callout_cost = self.charge_callouts()
        # The real CPU: ring 1, paging on (shadow tables), every event exits to the VMM.
        cpu = self.cpu
        self.rings.reset()
        cpu.cr0 = CR0_PE | CR0_PG | CR0_WP
        cpu.eflags = EFLAGS_FIXED | FLAG_IF
        cpu.exc_exit_bitmap = 0xFFFFFFFF
        cpu.exit_controls = EXIT_ON_INTERRUPT | EXIT_ON_HLT
        machine.set_soft_int_exits("all")
        cpu.pic_imr = 0xFF
        self.shadow.switch(-1)
        if kernel_text is not None:
            self.prepare_kernel(*kernel_text)

    # ---- load time ---------------------------------------------------------------------------
    def prepare_kernel(self, start: int, end: int) -> None:
        """Rewrite the sensitive sites of the kernel's text (or, unpatched, watch its POPFs)."""
        window = self.machine.window[: self.ram_size]
        if not self.patch:
            popfs, _ = patching.scan(window, start, end, frozenset({"popf"}))
            self.watched = set(patching.watch(self.machine, list(popfs)))
            text = f"watching {len(self.watched)} of {len(popfs)} POPF sites (unpatched)"
            self.note("patch", "watch", text, eip=start)
            return
        self.sites, stopped = patching.scan(window, start, end, self.rewritten)
        if stopped < end:
            self.note("patch", "scan stopped", f"bytes the CPU cannot decode at {stopped:#x}")
        patching.rewrite(window, self.sites)
        text = f"{len(self.sites)} sites rewritten to INT3 in {start:#x}..{end:#x}"
        self.note("patch", "rewrite", text, eip=start)

    # ---- what the guest believes -----------------------------------------------------------------
    def virtual_if(self) -> bool:
        return self.vcpu.vif

    def virtual_eflags(self) -> int:
        """EFLAGS as the guest believes them: the real ones, with its virtual IF."""
        flags = self.cpu.eflags & ~FLAG_IF
        return flags | (FLAG_IF if self.vcpu.vif else 0)

    def set_flags_from_guest(self, value: int) -> None:
        """POPF/IRET as the guest meant them: IF goes to the vCPU, the real IF stays on."""
        self.vcpu.vif = bool(value & FLAG_IF)
        self.cpu.eflags = flags_from_guest(self.cpu.eflags, value)

    def believed_state(self, hardware: dict[str, object]) -> dict[str, object]:
        v, sel = self.vcpu, self.rings.guest_selector
        believed = dict(hardware)
        believed.update(
            cpl=self.virtual_cpl(),
            interrupts=v.vif,
            eflags=self.virtual_eflags(),
            cr0=v.cr0,
            cr2=v.cr2,
            cr3=v.cr3,
            cr4=v.cr4,
            gdtr=v.gdtr,
            idtr=v.idtr,
            tr=v.tr,
        )
        for name in ("cs", "ss", "ds", "es", "fs", "gs"):
            believed[name] = sel(hardware[name])
        return believed

    def hardware_walks_other_tables(self) -> bool:
        return True  # the shadow tables

    @property
    def guest_ram(self) -> int:
        return self.ram_size

    def watched_addresses(self) -> set[int]:
        return self.watched

    guest_selector = staticmethod(RingCompression.guest_selector)
    real_selector = staticmethod(RingCompression.real_selector)

    # ---- what emulated instructions do to the vCPU --------------------------------------------
    def load_gdt(self, base: int, limit: int) -> None:
        """LGDT: the guest's GDT, and the real one made from it."""
        self.vcpu.gdtr = (base, limit)
        self.rings.load_gdt(base, limit)

    def write_cr(self, cr: int, value: int) -> None:
        """MOV CRn: the vCPU's control register; CR0.PG and CR3 pick the shadow tables."""
        v = self.vcpu
        self.memory.forget()
        if cr == 0:
            v.cr0 = value | CR0_PE
            self.shadow.switch(v.cr3 if v.paging else -1)
        elif cr == 3:
            v.cr3 = value
            self.acct.shadow["cr3 switches"] += 1
            if v.paging:
                self.shadow.switch(value)
        elif cr == 2:
            v.cr2 = value
        elif cr == 4:
            v.cr4 = value

    def invalidate_page(self, linear: int) -> None:
        """INVLPG: the shadow entry of one page goes."""
        self.shadow.invlpg(linear)
        self.memory.forget()

    def halt(self, eip: int) -> None:
        """HLT: wait for the next virtual interrupt, or report a vCPU that can never wake."""
        cpu = self.cpu
        period = cpu.timer_period
        if self.vcpu.vif:
            if self.board.deliverable() < 0:
                if period <= 0:
                    raise VMStopped("halt", f"HLT at {eip:#x} with no timer running")
                self.idle_until = cpu.timer_next  # (idle from VM entry to the next tick)
            return
        lost = HANG_TICKS if period > 0 else 0
        self.acct.lost_ticks += lost
        cpu.cycles += lost * period
        message = (
            f"the guest halted at {eip:#x} with its interrupts disabled (virtual IF = 0): "
            f"nothing can wake it; {self.acct.lost_ticks} timer ticks were lost."
        )
        if self.last_cli >= 0:
            message += f" Virtual IF was cleared by CLI at {self.last_cli:#x}."
        if self.lost_enable >= 0:
            message += (
                f" The POPF at {self.lost_enable:#x} popped IF = 1 to turn interrupts back on,"
                " but at ring 1 POPF silently keeps IF: it neither trapped nor did what the guest"
                " meant (x86's sensitive-but-unprivileged hole). Patch the kernel (the default)"
                " or use binary translation."
            )
        self.note("hang", "hang", f"HLT with virtual IF = 0 at {eip:#x}", eip=eip)
        raise VMStopped("hang", message)

    # ---- delivering to the guest ---------------------------------------------------------------
    def gate(self, vector: int, error: int) -> tuple[int, int]:
        """The guest's IDT gate for vector (#GP(error) beyond its IDT's limit)."""
        base, limit = self.vcpu.idtr
        if vector * 8 + 7 > limit:
            raise GuestFault(VECTOR_GP, error)
        low, high = self.memory.read_dwords(base + 8 * vector, 2)
        return low, high

    def inner_stack(self, cpl: int, ext: int) -> tuple[int, int]:
        """(ESP, SS) of ring cpl, from the guest's TSS (#TS(ext) when it loaded none)."""
        v = self.vcpu
        if v.tr == 0:
            raise GuestFault(VECTOR_TS, ext)
        esp, ss = self.memory.read_dwords(v.tss_base + 4 + 8 * cpl, 2)
        return esp, ss

    def reflect(
        self, vector: int, error: int, return_eip: int, software: bool = False, length: int = 0
    ) -> int:
        """Deliver an exception or interrupt through the guest's IDT; its cost."""
        return self.reflector.deliver(vector, error, return_eip, software, length)

    def reflect_fault(self, fault: GuestFault, eip: int) -> int:
        """An emulated instruction at eip faults, as the CPU would have: deliver that."""
        if isinstance(fault, GuestPageFault):
            self.vcpu.cr2 = fault.linear
        error = fault.error if fault.vector in ERROR_CODE_VECTORS else NO_ERROR_CODE
        return self.reflect(fault.vector, error, eip)

    def inject_pending(self) -> Outcome:
        """At VM entry: inject the waiting virtual interrupt when the guest's IF allows it."""
        if not (self.vcpu.vif or self.cpu.cs & 3 == 3):
            return None
        vector = self.board.acknowledge()
        self.events_waiting = self.board.waiting  # (more requested: still waiting)
        if vector < 0:
            return None
        self.acct.injected += 1
        cost = self.reflect(vector, NO_ERROR_CODE, self.cpu.eip)
        text = f"virtual IRQ {vector - self.board.vector_base} as vector {vector:#x}"
        return "inject", "inject", cost, text

    def from_user(self) -> None:
        """An exit from guest user mode: user code runs with interrupts on (it cannot
        clear IF), so the guest's IF is 1 whatever the VMM last saw."""
        if self.cpu.cs & 3 == 3:
            self.vcpu.vif = True

    # ---- exit handlers (see EXIT_TABLE) ----------------------------------------------------------
    def privileged_instruction(self) -> Outcome:
        """#GP: in the guest kernel, an instruction the VMM emulates; else the guest's."""
        cpu = self.cpu
        if cpu.cs & 3 == 1:
            ins = self.emulator.fetch(cpu.eip)
            if ins is not None and ins.name in self.emulator.handlers:
                return self.emulate_trapped(ins, cpu.eip)
        return self.reflect_exception()

    def emulate_trapped(self, ins: Decoded, eip: int) -> Outcome:
        self.acct.emulated[ins.name] += 1
        cost = self.trap_cycles + self.cost.emulation
        try:
            self.emulator.emulate(ins, eip)
        except GuestFault as fault:
            cost += self.reflect_fault(fault, eip)
        return None, "emulate", cost, f"{ins.name} trapped (#GP) and emulated"

    def reflect_exception(self) -> Outcome:
        """An exception for the guest kernel: reflected through its IDT."""
        self.from_user()
        cpu = self.cpu
        vector = cpu.exit_vector
        cost = self.trap_cycles + self.reflect(vector, cpu.exit_error, cpu.eip)
        return None, "reflect", cost, REFLECT_TEXT[vector & 0xFF]

    def software_interrupt(self) -> Outcome:
        """INT n: delivered through the guest's gate, its DPL checked at the guest's CPL."""
        cpu = self.cpu
        if cpu.cs & 3 == 3:  # (from_user, written out: every system call comes this way)
            self.vcpu.vif = True
        vector, length = cpu.exit_vector, cpu.exit_instruction_length
        cost = self.reflector.deliver(vector, NO_ERROR_CODE, cpu.eip, True, length)
        return None, "reflect", self.trap_cycles + cost, SYSCALL_TEXT[vector & 0xFF]

    def int3(self) -> Outcome:
        """INT3: the one-byte CC at a rewritten kernel site is a callout; any other
        (INT 3 written as CD 03, user code, a site moved elsewhere) is the guest's."""
        cpu = self.cpu
        site = (cpu.eip - 1) & 0xFFFFFFFF
        if cpu.cs & 3 == 1 and cpu.exit_instruction_length == 1 and site in self.sites:
            return self.callout(site)
        return self.software_interrupt()

    def callout(self, site: int) -> Outcome:
        """A rewritten site ran: do what its original instruction meant."""
        ins = self.sites[site]
        self.acct.emulated[ins.name] += 1
        kind, cost = self.callout_kind, self.callout_cost
        try:
            self.emulator.emulate(ins, site)
        except GuestFault as fault:
            cost += self.reflect_fault(fault, site)
        return kind, "emulate", cost, self.site_text[ins.name]

    def charge_callouts(self) -> tuple[str | None, int]:
        """What a rewritten site's INT3 is (None: an exit, named by the table) and costs:
        patched sites trap, an exit and an emulation."""
        return None, self.trap_cycles + self.cost.emulation

    def timer_tick(self) -> Outcome:
        """The real timer ticked: the tick waits in the virtual PIC for inject_pending."""
        irq = self.cpu.exit_vector - self.cpu.pic_vector_base
        if not self.board.request(irq):
            self.acct.lost_ticks += 1
        self.events_waiting = True
        return None, "tick", self.trap_cycles, f"timer tick (virtual IRQ {irq} pending)"

    def watched_popf(self) -> Outcome:
        """Unpatched: a watched POPF is about to run; see whether it loses IF. Any other
        breakpoint (one a lesson or test set) stops the run there."""
        cpu = self.cpu
        if cpu.eip not in self.watched:
            return self.breakpoint()
        try:
            popped = self.memory.read(cpu.esp)
        except GuestFault:
            popped = 0  # (the POPF itself will fault)
        if popped & FLAG_IF and not self.vcpu.vif:
            self.lost_enable = cpu.eip
            text = "POPF at ring 1 pops IF=1: the CPU keeps IF, virtual IF stays 0"
            self.note("hole", "hole", text)
        cpu.skip_breakpoint = 1  # (run on past it)
        return None

    def page_fault(self) -> Outcome:
        """A real #PF: shadow paging says whether the guest would have had one."""
        self.from_user()
        cpu, v = self.cpu, self.vcpu
        linear, eip = cpu.cr2, cpu.eip
        kind, detail = self.shadow.page_fault(linear, cpu.exit_error, v.paging, v.cr3)
        if kind == HIDDEN:
            self.acct.shadow["hidden faults"] += 1
            if self.step_guard is not None:
                self.step_guard.renew()  # (a page the guarded step needs, filled in)
            text = f"hidden fault at {linear:#x}: shadow entry filled"
            return None, "shadow fill", self.trap_cycles + self.cost.emulation, text
        if kind == TABLE_WRITE:
            self.acct.shadow["table writes"] += 1
            if self.step_guard is None:
                self.step_guard = TableWriteStep(self.cpu.pic_imr)
                self.cpu.pic_imr = 0xFF  # no tick in the middle of the step
            self.step_guard.open(self.shadow, linear, detail)
            text = f"guest page-table write at {linear:#x}: single-stepped, then resynced"
            return None, "shadow write", self.table_write_cost(), text
        self.acct.shadow["true faults"] += 1
        v.cr2 = linear
        cost = self.trap_cycles + self.reflect(VECTOR_PF, detail, eip)
        return None, "reflect", cost, f"#PF at {linear:#x} (error {detail:#x}) to the guest"

    def table_write_cost(self) -> int:
        return self.cost.shadow_update

    @property
    def check_shadow(self) -> bool:
        """Tests: compare the shadow tables with the guest's after every exit."""
        return self.after_exit is not None

    @check_shadow.setter
    def check_shadow(self, on: bool) -> None:
        self.after_exit = self.assert_shadow_consistent if on else None

    def assert_shadow_consistent(self) -> None:
        problems = self.shadow.mismatches(self.vcpu.paging, self.vcpu.cr3)
        if problems:
            raise AssertionError(
                "shadow page tables disagree with the guest's: " + "; ".join(problems[:5])
            )

    # ---- results and snapshots -------------------------------------------------------------------
    def stats(self) -> dict[str, object]:
        out = super().stats()
        out["shadow"] = dict(sorted((self.acct.shadow + self.shadow.counts).items()))
        out["patched_sites"] = len(self.sites)
        return out

    def save_monitor(self) -> dict[str, object]:
        saved = super().save_monitor()
        saved["vcpu"] = self.vcpu.copy()
        saved["shadow"] = self.shadow.books()
        saved["holes"] = (self.last_cli, self.lost_enable)
        return saved

    def load_monitor(self, saved: dict[str, object]) -> None:
        super().load_monitor(saved)
        self.vcpu.load(saved["vcpu"])
        self.shadow.set_books(saved["shadow"])
        self.memory.forget()
        self.rings.forget()
        self.last_cli, self.lost_enable = saved["holes"]
