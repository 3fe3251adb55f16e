"""Hardware-assisted virtualization, what KVM is: the unmodified kernel in VMX non-root mode.

Since VT-x (2005) the guest kernel runs at its real ring 0, in the CPU's non-root mode;
a control structure (vm.cpu.vmcs) says what exits, and each exit comes with a
qualification (the port, size and direction of an IN or OUT; the CR, the register and the
value of a MOV CRn; the address of an INVLPG, a #PF or a nested page fault; the
instruction's length), so this VMM needs no instruction decoder. POPF, PUSHF, CLI and STI
run in the guest at ring 0 and do what they mean: x86's POPF hole is closed. SGDT and
SIDT still do not exit (the red pill still works); CPUID always exits, and the VMM says
a hypervisor is there.

Two ways to virtualize the MMU (``paging``):

- ``"nested"`` (EPT, NPT: Nehalem, Barcelona, 2008): the guest's page tables are the ones
  the CPU walks, in guest-physical space, and the VMM's nested tables map guest-physical
  to host-physical; the core does the two-dimensional walk and caches the result in its
  TLB. CR3 loads, INVLPG and #PF stay in the guest: no exits for the MMU at all.
- ``"shadow"`` (first-generation VT-x, 2005-2008): the CPU walks shadow tables the VMM
  builds from the guest's (vm.hypervisor.shadow, the same pager trap-and-emulate uses),
  so CR3 loads and stores, CR0 writes, INVLPG and every #PF exit: Adams & Agesen's
  finding that this was slower than VMware's binary translation on MMU-heavy work.

Default: nested paging when the cost preset's processor has it (``CostModel.nested_paging``).

The console: ``console="emulated"`` (the default) makes every OUT to it a VM exit, as
KVM's emulated serial port does; ``console="assigned"`` gives the guest the console and
the exit device as bare metal has them (VT-x's I/O bitmap clears their ports: device
assignment), so only the interrupt controller and timer, which the VMM owns, exit.
Interrupts: the real timer exits (external-interrupt exiting), the tick waits in the
guest's virtual PIC, and the VMM injects it at VM entry when the guest's IF allows, or
asks for an interrupt-window exit when it does not.
"""

from __future__ import annotations

from vm.cpu.cost import DEFAULT, CostModel
from vm.cpu.exits import ExitReason
from vm.cpu.state import (
    CR0_PE,
    CR0_PG,
    CR0_WP,
    EPT_ENABLE,
    EVENT_DELIVER_ERROR,
    EVENT_EXTERNAL,
    EVENT_HARDWARE_EXCEPTION,
    EVENT_SOFTWARE_INTERRUPT,
    EVENT_TYPE_SHIFT,
    EVENT_VALID,
    EXIT_ON_CPUID,
    EXIT_ON_CR3_LOAD,
    EXIT_ON_CR3_STORE,
    EXIT_ON_HLT,
    EXIT_ON_INTERRUPT,
    EXIT_ON_INTERRUPT_WINDOW,
    EXIT_ON_INVLPG,
    EXIT_ON_IO,
    EXIT_ON_VMCALL,
    FLAG_IF,
    REG_NAMES,
)
from vm.cpu.system import CPUID_VENDOR
from vm.cpu.vmcs import VMCS, describe_event, describe_exit
from vm.hypervisor.devices import VirtualBoard
from vm.hypervisor.guest_memory import GuestMemory
from vm.hypervisor.shadow import HIDDEN, TABLE_WRITE, ShadowPager, TableWriteStep
from vm.hypervisor.vcpu import VCPU
from vm.hypervisor.vmm import ANY, VM, ExitRow, Outcome, VMStopped
from vm.hypervisor.vmm_area import VMM_AREA
from vm.machine import Machine

PAGE = 4096
PAGING = ("nested", "shadow")
CONSOLES = ("emulated", "assigned")
ASSIGNED_PORTS = frozenset({0xE9, 0x3F8, 0xF4})  # the console and the exit device
NESTED_LARGE = 0x80  # PS in a nested directory entry: a 4 MiB page
VECTOR_UD, VECTOR_DF, VECTOR_GP, VECTOR_PF = 6, 8, 13, 14
# CPUID leaf 0x40000000's signature, "vmlabvmlabHV" (a pv_ops kernel looks for "...PV").
HYPERVISOR_SIGNATURE = (0x616C6D76, 0x6C6D7662, 0x56486261)
HYPERVISOR_BIT = 1 << 31  # CPUID leaf 1, ECX bit 31: a hypervisor is present
# The CR0 bits the VMM owns under shadow paging: the CPU must keep PG on (it walks the
# shadow tables) and WP on (guest page tables stay write-protected at ring 0).
SHADOW_OWNED_CR0 = CR0_PE | CR0_PG | CR0_WP
BASE_CONTROLS = EXIT_ON_IO | EXIT_ON_HLT | EXIT_ON_CPUID | EXIT_ON_VMCALL | EXIT_ON_INTERRUPT
SHADOW_CONTROLS = EXIT_ON_CR3_LOAD | EXIT_ON_CR3_STORE | EXIT_ON_INVLPG
IO, HALT, CPUID, CR, INVLPG = (
    ExitReason.IO,
    ExitReason.HALT,
    ExitReason.CPUID,
    ExitReason.CR_ACCESS,
    ExitReason.INVLPG,
)
F, IRQ, WINDOW, NPF, VMCALL = (
    ExitReason.FAULT,
    ExitReason.INTERRUPT,
    ExitReason.INTERRUPT_WINDOW,
    ExitReason.NESTED_PAGE_FAULT,
    ExitReason.HYPERCALL,
)


def exception_event(vector: int, error: int = -1) -> tuple[int, int]:
    """(ENTRY_INTERRUPTION, ENTRY_ERROR) that inject a hardware exception."""
    info = EVENT_VALID | (EVENT_HARDWARE_EXCEPTION << EVENT_TYPE_SHIFT) | vector
    if error >= 0:
        info |= EVENT_DELIVER_ERROR
    return info, max(error, 0)


class HardwareAssistVM(VM):
    """A VMM on VT-x-like hardware: the guest runs in non-root mode; a few things exit."""

    mode = "hw-assist"
    # (the VMM runs at ring 0 of root mode, the guest kernel at ring 0 of non-root mode)
    ring_roles = ((0, "guest kernel in non-root mode; VMM in root mode"), (3, "guest user"))
    EXIT_TABLE = (
        ExitRow(IO, ANY, "port_io", "IN/OUT: port, size and direction are in the qualification"),
        ExitRow(HALT, ANY, "halt", "HLT: the vCPU idles until its next virtual interrupt"),
        ExitRow(CPUID, ANY, "cpuid", "CPUID always exits: the VMM says it is there"),
        ExitRow(CR, ANY, "cr_access", "MOV CR3 / CR0 writes (shadow paging): the qualification"),
        ExitRow(INVLPG, ANY, "invlpg", "INVLPG (shadow paging): drop that page's shadow entry"),
        ExitRow(F, VECTOR_PF, "page_fault", "#PF (shadow paging): hidden, table write, or true"),
        ExitRow(F, ANY, "exception", "an exception the bitmap names: back into the guest"),
        ExitRow(IRQ, ANY, "external_interrupt", "the real timer: the tick waits in the vPIC"),
        ExitRow(WINDOW, ANY, "interrupt_window", "the guest can take an interrupt: inject it"),
        ExitRow(NPF, ANY, "nested_page_fault", "nested #PF: outside the guest's RAM"),
        ExitRow(VMCALL, ANY, "vmcall", "VMCALL: this VMM has no hypercalls (#UD)"),
    )

    def __init__(
        self,
        machine: Machine,
        ram_size: int,
        cost: CostModel = DEFAULT,
        name: str = "vm",
        paging: str | None = None,
        console: str = "emulated",
    ) -> None:
        if paging is None:
            paging = "nested" if cost.nested_paging else "shadow"
        if paging not in PAGING:
            raise ValueError(f"paging is 'nested' or 'shadow', not {paging!r}")
        if console not in CONSOLES:
            raise ValueError(f"console is 'emulated' or 'assigned', not {console!r}")
        if ram_size % (4 << 20) or machine.memory_size < ram_size + VMM_AREA:
            raise ValueError("the machine needs VMM_AREA bytes above RAM of whole 4 MiB")
        super().__init__(machine, cost, name, board=VirtualBoard(machine.cpu.timer_scale))
        self.ram_size = ram_size
        self.paging = paging
        self.assigned = ASSIGNED_PORTS if console == "assigned" else frozenset()
        self.exit_cycles = cost.vm_exit  # one exit and the entry back
        self.vcpu = VCPU()  # (shadow paging: the CR0 and CR3 the guest believes it loaded)
        self.memory = GuestMemory(machine.window, ram_size, self.vcpu)
        self.shadow: ShadowPager | None = None
        cpu = self.cpu
        cpu.non_root = 1
        cpu.exit_controls = BASE_CONTROLS
        machine.set_soft_int_exits(())  # INT n goes straight to the guest's IDT
        cpu.pic_imr = 0xFF  # (the real timer starts when the guest programs its own)
        cpu.entry_interruption = 0
        words = machine.window.view("<u4")
        area = ram_size
        if paging == "nested":
            self.nested_root = area
            self._build_nested_tables(words, area)
            cpu.ept_pointer = area | EPT_ENABLE
            cpu.exc_exit_bitmap = 0  # the guest's #PF is its own
            cpu.cr0_guest_host_mask = 0  # and so is CR0
        else:
            self.nested_root = -1
            self.shadow = ShadowPager(machine, self.memory, 0, (area, area + VMM_AREA))
            self.memory.on_table_write = self.shadow.table_written
            cpu.exc_exit_bitmap = 1 << VECTOR_PF
            cpu.exit_controls = BASE_CONTROLS | SHADOW_CONTROLS
            cpu.cr0_guest_host_mask = SHADOW_OWNED_CR0
            cpu.cr0_read_shadow = self.vcpu.cr0
            cpu.cr0 = SHADOW_OWNED_CR0
            self.shadow.switch(-1)
        self.note("vmcs", "vmlaunch", self.launch_text())

    def _build_nested_tables(self, words, at: int) -> None:
        """Guest-physical [0, ram_size) to host-physical, one to one, at ``at``: a nested
        directory of 4 MiB pages (PS), as KVM backs a guest with huge pages. Nothing else
        is mapped (the VMM's area never)."""
        words[at // 4 : at // 4 + 1024] = 0
        for t in range(self.ram_size // (4 << 20)):
            words[at // 4 + t] = (t << 22) | NESTED_LARGE | 7  # present, writable, user

    def launch_text(self) -> str:
        """One line saying how the VMCS is set (the event at launch)."""
        v = self.control_structure()
        exits = [
            name.removesuffix("_exiting")
            for name, on in vars(v).items()
            if on is True and name.endswith("_exiting")  # (not non_root, nested_paging)
        ]
        vectors = ", ".join(f"#{n}" for n in v.exceptions_exiting()) or "none"
        io = "; I/O bitmap: console and exit device assigned" if self.assigned else ""
        return (
            f"VMCS: {self.paging} paging; exits on {', '.join(exits)}; exception bitmap "
            f"{vectors}; CR0 guest/host mask {v.cr0_guest_host_mask:#x}{io}"
        )

    # ---- what the guest believes -----------------------------------------------------------------
    def control_structure(self) -> VMCS:
        return VMCS.read(self.state)

    def believed_state(self, hardware: dict[str, object]) -> dict[str, object]:
        if self.shadow is None:
            return hardware  # nested paging: the guest's CR0 and CR3 are the real ones
        believed = dict(hardware)
        believed.update(cr0=self.vcpu.cr0, cr3=self.vcpu.cr3)
        return believed

    def hardware_walks_other_tables(self) -> bool:
        return self.shadow is not None

    @property
    def guest_ram(self) -> int:
        return self.ram_size

    # ---- entry: inject what waits ----------------------------------------------------------------
    def charge(self, action: str, text: str, extra: int = 0) -> Outcome:
        """An exit handled: its qualification in the text, the exit and entry's cost."""
        reason = int(self.cpu.exit_reason)
        detail = describe_exit(reason, self.state)
        return None, action, self.exit_cycles + extra, f"{detail}: {text}" if text else detail

    def inject(self, vector: int, error: int = -1) -> None:
        """Have the CPU deliver an exception through the guest's IDT at the next entry."""
        self.cpu.entry_interruption, self.cpu.entry_error = exception_event(vector, error)

    def inject_pending(self) -> Outcome:
        """At VM entry: inject the virtual interrupt that waits when the guest's IF allows
        it, else ask for an exit when it does (interrupt-window exiting)."""
        cpu = self.cpu
        if cpu.entry_interruption & EVENT_VALID:
            return None  # (one event per entry: an exception goes first)
        if self.board.deliverable() < 0:
            self.events_waiting = self.board.waiting
            cpu.exit_controls &= ~EXIT_ON_INTERRUPT_WINDOW
            return None
        if not cpu.eflags & FLAG_IF:
            cpu.exit_controls |= EXIT_ON_INTERRUPT_WINDOW
            return None
        cpu.exit_controls &= ~EXIT_ON_INTERRUPT_WINDOW
        vector = self.board.acknowledge()
        self.events_waiting = self.board.waiting
        cpu.entry_interruption = (
            EVENT_VALID | (EVENT_EXTERNAL << EVENT_TYPE_SHIFT) | (vector & 0xFF)
        )
        self.acct.injected += 1
        text = f"virtual IRQ {vector - self.board.vector_base} as vector {vector:#x} (VM entry)"
        return "inject", "inject", 0, text

    # ---- exit handlers (see EXIT_TABLE) ----------------------------------------------------------
    def port_io(self) -> Outcome:
        """IN/OUT: the qualification has the port, size and direction; the board answers."""
        cpu = self.cpu
        port, size = cpu.exit_port, cpu.exit_size
        if cpu.exit_is_in:
            value = self.board.port_in(port, size)
            mask = 0xFF if size == 1 else 0xFFFFFFFF
            cpu.eax = (cpu.eax & ~mask & 0xFFFFFFFF) | (value & mask)
            if port in self.assigned:
                return None  # (an assigned device: no VM exit, as on bare metal)
            return self.charge("emulate", f"{value & mask:#x}")
        if port in self.assigned:
            self.board.port_out(port, cpu.exit_value, size)
            return None
        period = self.board.port_out(port, cpu.exit_value, size)
        if period:  # the guest programmed its timer: the real one starts at VM entry
            self.arm_timer = period
        return self.charge("emulate", "")

    def halt(self) -> Outcome:
        """HLT: idle to the next tick, or wake at once for an interrupt that waits."""
        cpu = self.cpu
        eip = (cpu.eip - 1) & 0xFFFFFFFF
        if not cpu.eflags & FLAG_IF:
            raise VMStopped("halt", f"HLT at {eip:#x} with interrupts off: nothing can wake it")
        if self.board.deliverable() < 0:
            if cpu.timer_period <= 0:
                raise VMStopped("halt", f"HLT at {eip:#x} with no timer running")
            self.idle_until = cpu.timer_next  # (idle from VM entry to the next tick)
        self.events_waiting = True
        return self.charge("idle", "the vCPU waits for its next interrupt")

    def cpuid(self) -> Outcome:
        """CPUID as the core answers it, and a hypervisor: leaf 1's ECX bit 31, leaf
        0x40000000's signature "vmlabvmlabHV"."""
        cpu = self.cpu
        leaf = cpu.eax
        if leaf == 0:
            cpu.eax = 1
            cpu.ebx, cpu.edx, cpu.ecx = CPUID_VENDOR
        elif leaf == 0x40000000:
            cpu.eax = 0x40000000
            cpu.ebx, cpu.ecx, cpu.edx = HYPERVISOR_SIGNATURE
        else:
            cpu.eax, cpu.ebx, cpu.ecx, cpu.edx = 0x300, 0, HYPERVISOR_BIT, 0
        return self.charge("emulate", "the VMM says a hypervisor is here")

    def cr_access(self) -> Outcome:
        """MOV CR0 / CR3 under shadow paging, read from the qualification: CR3 loads pick
        the shadow tables, CR3 reads give the guest's own, CR0 writes go to the read
        shadow (the CPU keeps PG and WP on)."""
        cpu, v = self.cpu, self.vcpu
        q = cpu.exit_qualification
        cr, kind, register = q & 0xF, (q >> 4) & 3, (q >> 8) & 0xF
        if kind == 1:  # MOV r32, CR3 (CR3-store exiting)
            setattr(cpu, REG_NAMES[register & 7], v.cr3 if cr == 3 else cpu.cr0_read_shadow)
            return self.charge("emulate", "the guest's own CR3")
        value = cpu.exit_value & 0xFFFFFFFF
        self.memory.forget()
        if cr == 3:
            v.cr3 = value
            self.acct.shadow["cr3 switches"] += 1
            if v.paging and self.shadow is not None:
                self.shadow.switch(value)
            return self.charge("emulate", "shadow tables switched" if v.paging else "")
        if cr == 0:
            v.cr0 = value | CR0_PE
            owned = cpu.cr0_guest_host_mask
            cpu.cr0_read_shadow = v.cr0
            cpu.cr0 = (v.cr0 & ~owned & 0xFFFFFFFF) | (cpu.cr0 & owned)
            if self.shadow is not None:
                self.shadow.switch(v.cr3 if v.paging else -1)
            self.machine.flush_tlb()
            return self.charge("emulate", "CR0 read shadow updated")
        if cr == 4:  # (no mask on it)
            cpu.cr4 = value
        return self.charge("emulate", "")

    def invlpg(self) -> Outcome:
        """INVLPG: the qualification is the address; its shadow entry goes."""
        if self.shadow is not None:
            self.shadow.invlpg(self.cpu.exit_qualification & 0xFFFFFFFF)
        self.memory.forget()
        return self.charge("emulate", "shadow entry dropped")

    def page_fault(self) -> Outcome:
        """A #PF under shadow paging: hidden (fill the shadow), a write to a guest page
        table (single-stepped), or the guest's own (injected at entry)."""
        cpu, v = self.cpu, self.vcpu
        if self.shadow is None:
            return self.exception()
        linear = cpu.exit_qualification & 0xFFFFFFFF
        kind, detail = self.shadow.page_fault(linear, cpu.exit_error, v.paging, v.cr3)
        if kind == HIDDEN:
            self.acct.shadow["hidden faults"] += 1
            if self.step_guard is not None:
                self.step_guard.renew()
            return self.charge("shadow fill", "shadow entry filled", self.cost.emulation)
        if kind == TABLE_WRITE:
            self.acct.shadow["table writes"] += 1
            if self.step_guard is None:
                self.step_guard = TableWriteStep(cpu.pic_imr)
                cpu.pic_imr = 0xFF  # no tick in the middle of the step
                cpu.exit_controls &= ~EXIT_ON_INTERRUPT_WINDOW  # nor a window exit
            self.step_guard.open(self.shadow, linear, detail)
            text = "guest page-table write: single-stepped, then resynced"
            _, action, _, line = self.charge("shadow write", text)
            return None, action, self.cost.shadow_update, line
        self.acct.shadow["true faults"] += 1
        cpu.cr2 = linear
        self.inject(VECTOR_PF, detail)
        return self.charge("inject", f"the guest's own #PF (error {detail:#x})")

    def exception(self) -> Outcome:
        """An exception the bitmap made exit that the VMM does not handle: the guest's."""
        cpu = self.cpu
        error = cpu.exit_error if cpu.exit_vector in (8, 10, 11, 12, 13, 14, 17) else -1
        self.inject(cpu.exit_vector & 0xFF, error)
        return self.charge("inject", "back into the guest")

    def external_interrupt(self) -> Outcome:
        """The real timer ticked: the tick waits in the virtual PIC for VM entry."""
        irq = self.cpu.exit_vector - self.cpu.pic_vector_base
        if not self.board.request(irq):
            self.acct.lost_ticks += 1
        self.events_waiting = True
        return self.charge("tick", f"virtual IRQ {irq} pending")

    def interrupt_window(self) -> Outcome:
        """The guest turned its interrupts on: inject the one that waits (at entry)."""
        self.cpu.exit_controls &= ~EXIT_ON_INTERRUPT_WINDOW
        self.events_waiting = True
        return self.charge("window", "the guest's IF is 1")

    def nested_page_fault(self) -> Outcome:
        """A guest-physical address the nested tables do not map: outside the guest's RAM
        (they map all of it). The guest gets what the machine gives an access outside its
        memory: #GP(0); one while delivering an event makes a #DF, as the CPU's own
        would, and one while delivering a #DF shuts the guest down."""
        cpu = self.cpu
        vectoring = cpu.exit_vectoring
        if vectoring & EVENT_VALID:
            kind = (vectoring >> EVENT_TYPE_SHIFT) & 7
            if kind == EVENT_SOFTWARE_INTERRUPT:
                self.inject(VECTOR_GP, 0)  # (the INT instruction faults instead)
            elif vectoring & 0xFF == VECTOR_DF:
                raise VMStopped("fault", "triple fault: the CPU shut down")
            else:
                self.inject(VECTOR_DF, 0)
            event = describe_event(vectoring, cpu.exit_vectoring_error)
            return self.charge("inject", f"{event} could not be delivered")
        self.inject(VECTOR_GP, 0)
        return self.charge("inject", "#GP(0) to the guest")

    def vmcall(self) -> Outcome:
        """VMCALL: there are no hypercalls under full virtualization: #UD, as bare metal."""
        self.inject(VECTOR_UD)
        return self.charge("inject", "#UD: no hypercalls here")

    # ---- results and snapshots -------------------------------------------------------------------
    def stats(self) -> dict[str, object]:
        out = super().stats()
        if self.shadow is not None:
            out["shadow"] = dict(sorted((self.acct.shadow + self.shadow.counts).items()))
        out["paging"] = self.paging
        return out

    def save_monitor(self) -> dict[str, object]:
        saved = super().save_monitor()
        saved["vcpu"] = self.vcpu.copy()
        if self.shadow is not None:
            saved["shadow"] = self.shadow.books()
        return saved

    def load_monitor(self, saved: dict[str, object]) -> None:
        super().load_monitor(saved)
        self.vcpu.load(saved["vcpu"])
        if self.shadow is not None:
            self.shadow.set_books(saved["shadow"])
        self.memory.forget()
