"""Paravirtualization, the Xen way: a guest kernel that knows it is virtualized and asks.

The guest kernel (toyos built with ``%define PARAVIRT``) runs at ring 1 and never executes
a privileged instruction. It makes hypercalls instead: VMCALL (or INT 0x82, Xen's 32-bit
gate) with the number in EAX, arguments in EBX, ECX, EDX, ESI, EDI and the result in EAX
(0, or a negative error: -EPERM, -EFAULT, -EINVAL, -ENOSYS):

    nr  name            arguments                           what the VMM does
     0  set_trap_table  EBX = entries (vector, flags, cs,    bounces exceptions to these
                        handler), ended by handler 0         handlers; installs INT 0x80's
                                                             DPL-3 trap gate in the real IDT
                                                             (Xen's fast system call: no exit)
     1  mmu_update      EBX = (entry address, value) pairs,  checks and writes page-table
                        ECX = how many                       entries (below)
     3  stack_switch    EBX = SS, ECX = ESP                  the kernel stack ring 3 enters on
     4  set_callbacks   EBX = the event callback's address   where events are delivered
    13  multicall       EBX = entries (op, 5 arguments,      several hypercalls for one exit
                        result), ECX = how many
    15  set_timer_op    EBX = period in timer counts         a periodic event on channel 0
    17  xen_version     -                                    0x00040000 (a no-op: lets the
                                                             VMM deliver a pending event)
    18  console_io      EBX = 0 (write), ECX = count,        writes the guest's console
                        EDX = buffer
    24  vcpu_op         EBX = 10 (register_vcpu_info),       the vcpu_info page the VMM and
                        ECX = its address                    the guest share (below)
    26  mmuext_op       EBX = (command, argument) pairs,     0 pin L1, 1 pin L2, 4 unpin,
                        ECX = how many                       5 new base pointer (CR3),
                                                             6 flush the TLB, 7 INVLPG
    29  sched_op        EBX = 0 yield, 1 block (wait for an  HLT's replacement, and power off
                        event), 2 shutdown (ECX = status)

Page tables are the guest's own and the CPU walks them directly (no shadow), so the VMM
checks every change: a table is *pinned* (typed L1 or L2) only when no mapping of it is
writable, each entry of a pinned table may map only the guest's own frames, never a
pinned table writably; a directory's entries point only at pinned L1 tables, and its last
entry maps the VMM's own 4 MiB (the guest cannot change it); CR3 takes only a pinned
directory. Interrupts are events: the guest's vcpu_info holds a pending byte, a mask byte
(its virtual IF, inverted: CLI and STI are plain stores, no trap, so no POPF hole) and the
last page fault's address; the VMM delivers a pending event through the registered
callback, with the mask set, when the guest re-enters after an exit.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from vm.cpu.cost import DEFAULT, CostModel
from vm.cpu.exits import ExitReason
from vm.cpu.state import (
    CR0_PE,
    CR0_PG,
    EFLAGS_FIXED,
    EXIT_ON_CPUID,
    EXIT_ON_HLT,
    EXIT_ON_INTERRUPT,
    EXIT_ON_VMCALL,
    FLAG_IF,
)
from vm.cpu.system import CPUID_VENDOR
from vm.hypervisor.devices import Board
from vm.hypervisor.guest_memory import GuestFault, GuestMemory, GuestPageFault
from vm.hypervisor.reflection import Reflector
from vm.hypervisor.vmm import ANY, NO_ERROR_CODE, VM, ExitRow, Outcome, VMStopped
from vm.hypervisor.vmm_area import (
    IDT_LINEAR,
    IDT_OFFSET,
    PAGE,
    TSS_LINEAR,
    TSS_OFFSET,
    VMM_AREA,
    VMM_DIRECTORY,
    VMMArea,
)
from vm.machine import Machine, vector_name

HYPERCALL_GATE = 0x82  # INT 0x82: Xen's 32-bit paravirtual gate (VMCALL works too)
EVENT_VECTOR = 32  # events are delivered as this vector (the guest's timer)
GDT_PAGE = 0xE0  # the VMM's GDT at VMM_LINEAR + 0xE0000 (vm.hypervisor.vmm_area says why)
KERNEL_CODE, KERNEL_DATA, USER_CODE, USER_DATA, TSS_SELECTOR = 0x09, 0x11, 0x1B, 0x23, 0x28
# The real GDT: flat ring 1 and ring 3 segments, and the VMM's TSS (Xen's FLAT_RING1_*).
REAL_GDT = (
    0, 0,
    0x0000FFFF, 0x00CFBA00,  # 0x08 ring 1 code
    0x0000FFFF, 0x00CFB200,  # 0x10 ring 1 data
    0x0000FFFF, 0x00CFFA00,  # 0x18 ring 3 code
    0x0000FFFF, 0x00CFF200,  # 0x20 ring 3 data
)  # fmt: skip
EPERM, EFAULT, EINVAL, ENOSYS = -1, -14, -22, -38
P, RW, US, PSE = 1, 2, 4, 0x80
MAX_BATCH = 1024  # entries one mmu_update, mmuext_op or multicall may carry
MAX_CONSOLE = 4096  # bytes one console_io may write
MIN_TIMER_EXITS = 20  # the shortest timer period a guest gets: 20 exits' worth of cycles
# (like KVM's min_timer_period: a tick the VMM cannot serve before the next is due would
# leave the guest no time of its own)
VCPU_PENDING, VCPU_MASK, VCPU_EVENTS, VCPU_CR2 = 0, 1, 4, 8  # the vcpu_info's fields
VCPU_INFO_SIZE = 16
VMM_CPUID_SIGNATURE = (0x616C6D76, 0x6C6D7662, 0x56506261)  # "vmlabvmlabPV"

ERRORS = {0: "ok", EPERM: "-EPERM", EFAULT: "-EFAULT", EINVAL: "-EINVAL", ENOSYS: "-ENOSYS"}


class HypercallError(Exception):  # (how a hypercall says no: its errno goes to EAX)
    """A hypercall the VMM refuses; ``errno`` goes back to the guest in EAX."""

    def __init__(self, errno: int, why: str) -> None:
        super().__init__(why)
        self.errno = errno
        self.why = why


class ParavirtVCPU:
    """What the VMM keeps of a paravirtual guest's CPU: its page-table base, and the
    vcpu_info page it shares with the guest (the event mask is the guest's IF)."""

    def __init__(self, window: np.ndarray, ram_size: int) -> None:
        self.bytes = memoryview(window)
        self.ram_size = ram_size
        self.vcpu_info = -1  # its guest-physical address (-1: not registered yet)
        self.cr0 = CR0_PE  # (PG once the guest runs on its own tables: until then, 1:1)
        self.cr3 = 0
        self.idtr = (0, 0)  # (none: a trap table)
        self.gdtr = (0, 0)  # (the VMM's)
        self.tr = TSS_SELECTOR

    @property
    def paging(self) -> bool:
        return bool(self.cr0 & CR0_PG)

    @property
    def vif(self) -> bool:
        """The guest's interrupt flag: its events unmasked."""
        return self.vcpu_info >= 0 and not self.bytes[self.vcpu_info + VCPU_MASK]

    @vif.setter
    def vif(self, on: bool) -> None:
        if self.vcpu_info >= 0:
            self.bytes[self.vcpu_info + VCPU_MASK] = 0 if on else 1

    @property
    def pending(self) -> bool:
        return self.vcpu_info >= 0 and self.bytes[self.vcpu_info + VCPU_PENDING] != 0

    def raise_event(self, port: int) -> bool:
        """Mark event channel port pending; False when it already was (the event merges)."""
        at = self.vcpu_info
        events = int.from_bytes(self.bytes[at + VCPU_EVENTS : at + VCPU_EVENTS + 4], "little")
        self.bytes[at + VCPU_EVENTS : at + VCPU_EVENTS + 4] = (events | 1 << port).to_bytes(
            4, "little"
        )
        self.bytes[at + VCPU_PENDING] = 1
        return not events & 1 << port

    @property
    def cr2(self) -> int:
        if self.vcpu_info < 0:
            return 0
        return int.from_bytes(self.bytes[self.vcpu_info + VCPU_CR2 : self.vcpu_info + 12], "little")

    @cr2.setter
    def cr2(self, value: int) -> None:
        if self.vcpu_info >= 0:
            at = self.vcpu_info + VCPU_CR2
            self.bytes[at : at + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")

    def copy(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in ("vcpu_info", "cr0", "cr3")}

    def load(self, saved: dict[str, object]) -> None:
        for name, value in saved.items():
            setattr(self, name, value)


class FixedDescriptors:
    """The VMM's own GDT, which a paravirtual guest uses as it is: only its flat code
    segments are code (the checks reflection makes on a gate's selector)."""

    def code_segment_dpl(self, selector: int, error: int) -> int:
        if selector & 0xFFFC == 0x08:
            return 1
        if selector & 0xFFFC == 0x18:
            return 3
        raise GuestFault(13, error)


class ParavirtVM(VM):
    """A Xen-like VMM for a kernel that makes hypercalls (see the module's docstring)."""

    mode = "paravirt"
    ring_roles = ((0, "VMM"), (1, "guest kernel (paravirtual)"), (3, "guest user"))
    believed_cpl = (0, 1, 2, 3)  # (it knows: its kernel runs at ring 1)
    EXIT_TABLE = (
        ExitRow(ExitReason.HYPERCALL, ANY, "hypercall", "VMCALL: a hypercall (EAX = number)"),
        ExitRow(ExitReason.SOFTWARE_INTERRUPT, HYPERCALL_GATE, "hypercall", "INT 0x82: the same"),
        ExitRow(ExitReason.SOFTWARE_INTERRUPT, ANY, "bounce_software", "INT n: the trap table's"),
        ExitRow(ExitReason.FAULT, ANY, "bounce_exception", "an exception: bounced to the guest"),
        ExitRow(ExitReason.INTERRUPT, ANY, "timer_tick", "the real timer: an event for the guest"),
        ExitRow(ExitReason.CPUID, ANY, "cpuid", "CPUID: the VMM says it is there"),
    )

    def __init__(
        self,
        machine: Machine,
        ram_size: int,
        cost: CostModel = DEFAULT,
        name: str = "vm",
    ) -> None:
        if machine.memory_size < ram_size + VMM_AREA:
            raise ValueError("the machine needs VMM_AREA bytes above the guest's RAM")
        super().__init__(machine, cost, name, board=Board())
        self.ram_size = ram_size
        self.vcpu = ParavirtVCPU(machine.window, ram_size)
        self.memory = GuestMemory(machine.window, ram_size, self.vcpu)
        self.words = self.memory.words
        self.area = VMMArea(machine.window, ram_size, gdt_page=GDT_PAGE)
        self.descriptors = FixedDescriptors()
        self.reflector = Reflector(self, kernel_ring=1, compress=False)
        self.traps: dict[int, tuple[int, int, int]] = {}  # vector -> (flags, cs, handler)
        self.callback = -1  # where events are delivered (-1: nowhere yet)
        self.kernel_stack = (0, 0)  # (ESP, SS) from stack_switch
        self.pinned: dict[int, str] = {}  # guest frame -> "l1" or "l2"
        self.writable: Counter = Counter()  # frame -> writable mappings in pinned L1s
        self.l1_users: Counter = Counter()  # L1 frame -> pinned directories that use it
        self.events_waiting = False
        self.handlers = {
            0: ("set_trap_table", self.set_trap_table),
            1: ("mmu_update", self.mmu_update),
            3: ("stack_switch", self.stack_switch),
            4: ("set_callbacks", self.set_callbacks),
            13: ("multicall", self.multicall),
            15: ("set_timer_op", self.set_timer_op),
            17: ("xen_version", self.xen_version),
            18: ("console_io", self.console_io),
            24: ("vcpu_op", self.vcpu_op),
            26: ("mmuext_op", self.mmuext_op),
            29: ("sched_op", self.sched_op),
        }
        self._set_up_cpu()

    # ---- the real CPU ----------------------------------------------------------------------
    def _set_up_cpu(self) -> None:
        """Ring 1, the VMM's GDT, IDT and TSS, paging on a 1:1 boot map of the guest's RAM
        (the domain builder's tables, until the guest pins its own), and what exits."""
        cpu, area, words = self.cpu, self.area, self.words
        gdt = area.gdt >> 2
        words[gdt : gdt + len(REAL_GDT)] = REAL_GDT
        tss = area.start + TSS_OFFSET
        words[(gdt + 10) : (gdt + 12)] = _tss_descriptor(TSS_LINEAR, 0x67)
        words[tss >> 2 : (tss >> 2) + 26] = 0
        cpu.gdtr_base, cpu.gdtr_limit = self.area.gdt_linear, 6 * 8 - 1
        cpu.idtr_base, cpu.idtr_limit = IDT_LINEAR, 0x7FF
        cpu.tr, cpu.tss_base = TSS_SELECTOR, TSS_LINEAR
        cpu.cs, cpu.ss, cpu.ds, cpu.es, cpu.fs, cpu.gs = KERNEL_CODE, KERNEL_DATA, 0, 0, 0, 0
        cpu.eflags = EFLAGS_FIXED | FLAG_IF  # (the real IF: on; the guest masks events)
        pool, end = area.pool
        self.boot_directory, self.boot_tables = pool, pool + PAGE
        words[pool >> 2 : end >> 2] = 0
        frames = np.arange(0, self.ram_size, PAGE, dtype=np.uint32)
        start = self.boot_tables >> 2
        words[start : start + frames.size] = frames | P | RW
        for i in range(0, frames.size, 1024):
            words[(pool >> 2) + i // 1024] = (self.boot_tables + 4 * i) | P | RW
        words[(pool >> 2) + VMM_DIRECTORY] = area.directory_entry
        cpu.cr3 = self.boot_directory
        cpu.cr0 = CR0_PE | CR0_PG
        self.machine.flush_tlb()
        cpu.exc_exit_bitmap = 0xFFFFFFFF  # exceptions come to the VMM, which bounces them
        cpu.exit_controls = EXIT_ON_VMCALL | EXIT_ON_INTERRUPT | EXIT_ON_HLT | EXIT_ON_CPUID
        self.machine.set_soft_int_exits([v for v in range(256) if v != 0x80])
        cpu.pic_imr = 0xFF

    def _boot_entry(self, frame: int) -> int:
        """The boot map's entry for a guest frame (its word index)."""
        return (self.boot_tables >> 2) + (frame >> 12)

    # ---- what the guest believes -------------------------------------------------------------
    def virtual_if(self) -> bool:
        return self.vcpu.vif

    def virtual_eflags(self) -> int:
        return self.cpu.eflags & ~FLAG_IF | (FLAG_IF if self.vcpu.vif else 0)

    def believed_state(self, hardware: dict[str, object]) -> dict[str, object]:
        believed = dict(hardware)
        believed.update(interrupts=self.vcpu.vif, eflags=self.virtual_eflags(), cr2=self.vcpu.cr2)
        return believed

    @property
    def guest_ram(self) -> int:
        return self.ram_size

    # ---- delivering to the guest (vm.hypervisor.reflection asks these) ---------------------
    def gate(self, vector: int, error: int) -> tuple[int, int]:
        """A gate made from the trap table (or the event callback): (low, high) as an
        IDT's. #GP(error) for a vector the guest registered no handler for."""
        if vector == EVENT_VECTOR and self.callback >= 0:
            flags, cs, handler = 4, KERNEL_CODE, self.callback
        elif vector in self.traps:
            flags, cs, handler = self.traps[vector]
        else:
            raise GuestFault(13, error)
        kind = 0xE if flags & 4 else 0xF  # masking events: an interrupt gate
        return (cs << 16) | (handler & 0xFFFF), (handler & 0xFFFF0000) | 0x8000 | (
            flags & 3
        ) << 13 | kind << 8

    def inner_stack(self, cpl: int, ext: int) -> tuple[int, int]:
        """The kernel stack stack_switch gave (#TS when the guest gave none)."""
        esp, ss = self.kernel_stack
        if ss == 0:
            raise GuestFault(10, ext)
        return esp, ss

    def bounce(self, vector: int, error: int, eip: int, software: bool, length: int = 0) -> int:
        """Deliver vector to the guest's handler; its cost."""
        return self.reflector.deliver(vector, error, eip, software, length)

    def inject_pending(self) -> Outcome:
        """At VM entry: deliver a pending event when the guest's mask allows it."""
        vcpu = self.vcpu
        if not vcpu.pending:
            self.events_waiting = False
            return None
        if not vcpu.vif or self.callback < 0:
            return None
        cost = self.bounce(EVENT_VECTOR, NO_ERROR_CODE, self.cpu.eip, False)
        self.acct.injected += 1
        return "inject", "event", cost, "event channel 0 (the timer) to the guest's callback"

    # ---- exit handlers ---------------------------------------------------------------------
    def hypercall(self) -> Outcome:
        """A hypercall: EAX says which; the result goes back in EAX."""
        cpu = self.cpu
        if cpu.exit_reason == ExitReason.HYPERCALL:  # (VMCALL: EIP is at it; INT 0x82: past)
            cpu.eip = (cpu.eip + cpu.exit_instruction_length) & 0xFFFFFFFF
        number = cpu.eax
        args = (cpu.ebx, cpu.ecx, cpu.edx, cpu.esi, cpu.edi)
        name, result, items, detail = self.call(number, args)
        cpu.eax = result & 0xFFFFFFFF
        cost = self.cost.hypercall + items * self.cost.hypercall_item
        text = f"{name}{detail} -> {ERRORS.get(result, result)}"
        return name, "hypercall", cost, text

    def call(self, number: int, args: tuple[int, ...]) -> tuple[str, int, int, str]:
        """Run hypercall number: (its name, its result, items it handled, a description)."""
        name, handler = self.handlers.get(number, (f"hypercall {number}", None))
        if handler is None:
            return name, ENOSYS, 0, ""
        try:
            result, items, detail = handler(*args)
            return name, result, items, detail
        except HypercallError as refused:
            self.acct.emulated[f"{name} refused"] += 1
            return name, refused.errno, 0, f" ({refused.why})"
        except GuestPageFault as fault:
            return name, EFAULT, 0, f" (address {fault.linear:#x} not mapped)"

    def bounce_exception(self) -> Outcome:
        """An exception of the guest's: bounced to its trap-table handler (CR2 into its
        vcpu_info for a page fault)."""
        cpu = self.cpu
        vector = cpu.exit_vector
        if vector == 14:
            self.vcpu.cr2 = cpu.cr2
        cost = self.cost.vm_exit + self.bounce(vector, cpu.exit_error, cpu.eip, False)
        return None, "bounce", cost, f"{vector_name(vector)} to the guest's handler"

    def bounce_software(self) -> Outcome:
        """INT n that is not the hypercall gate (nor the fast system call): the trap
        table's handler, its DPL checked."""
        cpu = self.cpu
        vector = cpu.exit_vector
        cost = self.cost.vm_exit + self.bounce(
            vector, NO_ERROR_CODE, cpu.eip, True, cpu.exit_instruction_length
        )
        return None, "bounce", cost, f"{vector_name(vector, software=True)} to the guest"

    def timer_tick(self) -> Outcome:
        """The real timer ticked: event channel 0 is pending for the guest."""
        if self.vcpu.vcpu_info < 0 or not self.vcpu.raise_event(0):
            self.acct.lost_ticks += 1
        self.events_waiting = True
        return None, "event", self.cost.vm_exit, "timer: event channel 0 pending"

    def cpuid(self) -> Outcome:
        """CPUID answers as the core does, and says there is a hypervisor: leaf 1 sets ECX
        bit 31, leaf 0x40000000 gives its signature (how a pv_ops kernel finds out)."""
        cpu = self.cpu
        leaf = cpu.eax  # (the CPU exits after the instruction: EIP is past it)
        if leaf == 0:
            cpu.eax = 1
            cpu.ebx, cpu.edx, cpu.ecx = CPUID_VENDOR
        elif leaf == 1:
            cpu.eax, cpu.ebx, cpu.ecx, cpu.edx = 0x300, 0, 1 << 31, 0
        elif leaf == 0x40000000:
            cpu.eax = 0x40000000
            cpu.ebx, cpu.ecx, cpu.edx = VMM_CPUID_SIGNATURE
        else:
            cpu.eax = cpu.ebx = cpu.ecx = cpu.edx = 0
        return None, "emulate", self.cost.vm_exit, f"CPUID leaf {leaf:#x}"

    # ---- the hypercalls: each returns (its result, items handled, a description) or raises --
    def set_trap_table(self, table: int, *_: int) -> tuple[int, int, str]:
        traps: dict[int, tuple[int, int, int]] = {}
        for k in range(257):
            if k == 256:
                raise HypercallError(EINVAL, "no end to the table in 256 entries")
            first, handler = self.memory.read_dwords(table + 8 * k, 2)
            if handler == 0:
                break
            vector, flags, cs = first & 0xFF, (first >> 8) & 0xFF, first >> 16
            if cs & 0xFFFC != KERNEL_CODE & 0xFFFC:
                raise HypercallError(EINVAL, f"vector {vector:#x}: cs {cs:#x} is not the kernel's")
            traps[vector] = (flags, KERNEL_CODE, handler)
        self.traps = traps
        self._install_fast_system_call()
        return 0, len(traps), f"({len(traps)} handlers)"

    def _install_fast_system_call(self) -> None:
        """INT 0x80 with DPL 3 and no event mask goes straight to the guest kernel through
        a trap gate in the real IDT (Xen's fast system call); else it exits and bounces."""
        idt = (self.area.start + IDT_OFFSET) >> 2
        self.words[idt + 0x100 : idt + 0x102] = 0
        trap = self.traps.get(0x80)
        if trap is not None and trap[0] & 3 == 3 and not trap[0] & 4:
            low, high = self.gate(0x80, 0)
            self.words[idt + 0x100 : idt + 0x102] = (low, high)
            self.machine.set_soft_int_exits([v for v in range(256) if v != 0x80])
        else:
            self.machine.set_soft_int_exits("all")

    def stack_switch(self, ss: int, esp: int, *_: int) -> tuple[int, int, str]:
        if ss & 0xFFFF != KERNEL_DATA:
            raise HypercallError(EINVAL, f"ss {ss:#x} is not the kernel's data segment")
        self.kernel_stack = (esp, ss & 0xFFFF)
        tss = (self.area.start + TSS_OFFSET) >> 2
        self.words[tss + 3], self.words[tss + 4] = esp, ss & 0xFFFF  # ESP1, SS1 of the TSS
        return 0, 1, f"(ss {ss:#x}, esp {esp:#x})"

    def set_callbacks(self, address: int, *_: int) -> tuple[int, int, str]:
        self.callback = address
        return 0, 1, f"(event callback {address:#x})"

    def set_timer_op(self, counts: int, *_: int) -> tuple[int, int, str]:
        counts = max(1, min(counts, 0xFFFF))
        period = max(counts * max(1, self.cpu.timer_scale), MIN_TIMER_EXITS * self.cost.vm_exit)
        self.arm_timer = period
        return 0, 1, f"(a tick every {counts} counts: {period:,} cycles)"

    def xen_version(self, *_: int) -> tuple[int, int, str]:
        return 0x00040000, 0, ""

    def console_io(self, command: int, count: int, buffer: int, *_: int) -> tuple[int, int, str]:
        if command != 0:
            raise HypercallError(EINVAL, f"console command {command}")
        if count > MAX_CONSOLE:
            raise HypercallError(EINVAL, f"{count} bytes (at most {MAX_CONSOLE})")
        for byte in self.memory.read_bytes(buffer, count, strict=True):
            self.board.console.write(byte)
        return 0, 1, f"({count} byte{'' if count == 1 else 's'})"

    def vcpu_op(self, command: int, address: int, *_: int) -> tuple[int, int, str]:
        if command != 10:
            raise HypercallError(EINVAL, f"vcpu_op command {command}")
        physical = self.memory.translate(address, write=True)
        if physical & 3:
            raise HypercallError(EINVAL, f"vcpu_info at {address:#x} is not dword-aligned")
        if (physical & 0xFFF) > PAGE - VCPU_INFO_SIZE:
            raise HypercallError(EINVAL, f"vcpu_info at {address:#x} crosses a page")
        self.vcpu.vcpu_info = physical
        return 0, 1, f"(vcpu_info at {address:#x})"

    def sched_op(self, command: int, argument: int, *_: int) -> tuple[int, int, str]:
        if command == 0:
            return 0, 1, "(yield)"
        if command == 1:  # block: events on, and wait for one (HLT's replacement)
            self.vcpu.vif = True
            if not self.vcpu.pending:
                if self.cpu.timer_period <= 0:
                    raise VMStopped("halt", "the guest blocked with no timer running")
                self.idle_until = self.cpu.timer_next
            self.events_waiting = True
            return 0, 1, "(block)"
        if command == 2:
            self.board.exit_status = argument & 0xFF
            return 0, 1, f"(shutdown, status {argument & 0xFF})"
        raise HypercallError(EINVAL, f"sched_op command {command}")

    def multicall(self, entries: int, count: int, *_: int) -> tuple[int, int, str]:
        if count > MAX_BATCH:
            raise HypercallError(EINVAL, f"{count} calls (at most {MAX_BATCH})")
        names, items = [], 0
        for k in range(count):
            at = entries + 28 * k
            op, *args = self.memory.read_dwords(at, 6)
            if op == 13:  # (no multicall inside a multicall: that entry fails, the rest go)
                name, result, handled, detail = "multicall", EINVAL, 0, ""
            else:
                name, result, handled, detail = self.call(op, tuple(args))
            self.memory.write(at + 24, result)
            outcome = "" if result == 0 else f" = {ERRORS.get(result, result)}"
            names.append(f"{name}{detail}{outcome}")
            items += max(1, handled)
        return 0, items, f"({count}: {', '.join(names)})"

    # ---- page tables: pinned, and checked --------------------------------------------------
    def mmu_update(self, requests: int, count: int, *_: int) -> tuple[int, int, str]:
        if count > MAX_BATCH:
            raise HypercallError(EINVAL, f"{count} updates (at most {MAX_BATCH})")
        done = []
        for k in range(count):
            pointer, value = self.memory.read_dwords(requests + 8 * k, 2)
            self.update_entry(pointer, value)
            done.append(f"[{pointer:#x}] = {value:#x}")
        self.machine.flush_tlb()
        shown = done if count <= 3 else [*done[:2], f"... {count - 2} more"]
        return 0, count, f"({', '.join(shown)})"

    def update_entry(self, pointer: int, value: int) -> None:
        """One checked write of a pinned table's entry (guest-physical ``pointer``)."""
        frame, index = pointer & ~0xFFF, (pointer & 0xFFF) >> 2
        kind = self.pinned.get(frame)
        if kind is None or pointer & 3:
            raise HypercallError(EINVAL, f"{pointer:#x} is not an entry of a pinned table")
        old = int(self.words[pointer >> 2])
        if kind == "l1":
            self._check_pte(value, frame)
            self._count_pte(old, -1)
            self._count_pte(value, +1)
        else:
            if index == VMM_DIRECTORY:
                raise HypercallError(EPERM, "the directory's last entry is the VMM's")
            self._check_pde(value)
            self._count_pde(old, -1)
            self._count_pde(value, +1)
        self.words[pointer >> 2] = value

    def _check_pte(self, value: int, table: int) -> None:
        if not value & P:
            return
        target = value & ~0xFFF
        if target >= self.ram_size:
            raise HypercallError(EPERM, f"frame {target:#x} is not the guest's")
        if value & RW and (target in self.pinned or target == table):
            raise HypercallError(EPERM, f"a writable mapping of page table {target:#x}")

    def _check_pde(self, value: int) -> None:
        if not value & P:
            return
        if value & PSE:
            raise HypercallError(EINVAL, "large pages are not supported")
        target = value & ~0xFFF
        if self.pinned.get(target) != "l1":
            raise HypercallError(EINVAL, f"{target:#x} is not a pinned page table")

    def _count_pte(self, value: int, step: int) -> None:
        if value & P and value & RW:
            self.writable[value & ~0xFFF] += step

    def _count_pde(self, value: int, step: int) -> None:
        if value & P:
            self.l1_users[value & ~0xFFF] += step

    def mmuext_op(self, operations: int, count: int, *_: int) -> tuple[int, int, str]:
        if count > MAX_BATCH:
            raise HypercallError(EINVAL, f"{count} operations (at most {MAX_BATCH})")
        done = []
        for k in range(count):
            command, argument = self.memory.read_dwords(operations + 8 * k, 2)
            done.append(self.extended(command, argument))
        return 0, count, f"({', '.join(done)})"

    def extended(self, command: int, argument: int) -> str:
        """One mmuext operation; its description."""
        frame = argument & ~0xFFF
        if command in (0, 1, 4, 5) and (argument & 0xFFF or not 0 <= frame < self.ram_size):
            raise HypercallError(EINVAL, f"{argument:#x} is not one of the guest's frames")
        if command == 0:
            self.pin(frame, "l1")
            return f"pin L1 {frame:#x}"
        if command == 1:
            self.pin(frame, "l2")
            return f"pin L2 {frame:#x}"
        if command == 4:
            self.unpin(frame)
            return f"unpin {frame:#x}"
        if command == 5:
            if self.pinned.get(frame) != "l2":
                raise HypercallError(EINVAL, f"{frame:#x} is not a pinned page directory")
            self.cpu.cr3 = frame
            self.vcpu.cr3, self.vcpu.cr0 = frame, CR0_PE | CR0_PG
            self.memory.forget()
            self.machine.flush_tlb()
            return f"new base {frame:#x}"
        if command == 6:
            self.machine.flush_tlb()
            return "TLB flush"
        if command == 7:
            self.machine.flush_tlb()  # (the TLB is small: one page or all costs the same)
            self.memory.forget()
            return f"invlpg {argument:#x}"
        raise HypercallError(EINVAL, f"mmuext command {command}")

    def pin(self, frame: int, kind: str) -> None:
        """Type a frame as a page table, once every entry is checked and no mapping of it
        is writable; the boot map stops mapping it writable too."""
        if frame in self.pinned:
            raise HypercallError(EINVAL, f"{frame:#x} is pinned already")
        if self.writable[frame]:
            raise HypercallError(EPERM, f"{frame:#x} is mapped writable ({self.writable[frame]})")
        entries = [int(e) for e in self.words[frame >> 2 : (frame >> 2) + 1024]]
        if kind == "l1":
            for value in entries:
                self._check_pte(value, frame)
            for value in entries:
                self._count_pte(value, +1)
        else:
            for value in entries[:VMM_DIRECTORY]:
                self._check_pde(value)
            for value in entries[:VMM_DIRECTORY]:
                self._count_pde(value, +1)
            self.words[(frame >> 2) + VMM_DIRECTORY] = self.area.directory_entry
        self.pinned[frame] = kind
        self.words[self._boot_entry(frame)] &= 0xFFFFFFFF ^ RW
        self.machine.flush_tlb()

    def unpin(self, frame: int) -> None:
        kind = self.pinned.get(frame)
        if kind is None:
            raise HypercallError(EINVAL, f"{frame:#x} is not pinned")
        if kind == "l1" and self.l1_users[frame]:
            raise HypercallError(EPERM, f"{frame:#x} is used by {self.l1_users[frame]} directory")
        if kind == "l2" and frame == self.cpu.cr3:
            raise HypercallError(EPERM, f"{frame:#x} is the directory in use")
        entries = [int(e) for e in self.words[frame >> 2 : (frame >> 2) + 1024]]
        if kind == "l1":
            for value in entries:
                self._count_pte(value, -1)
        else:
            for value in entries[:VMM_DIRECTORY]:
                self._count_pde(value, -1)
            self.words[(frame >> 2) + VMM_DIRECTORY] = 0
        del self.pinned[frame]
        self.words[self._boot_entry(frame)] |= RW
        self.machine.flush_tlb()

    # ---- results and snapshots -------------------------------------------------------------
    def stats(self) -> dict[str, object]:
        out = super().stats()
        out["pinned_tables"] = len(self.pinned)
        return out

    def save_monitor(self) -> dict[str, object]:
        saved = super().save_monitor()
        saved["paravirt"] = (
            self.vcpu.copy(),
            dict(self.traps),
            self.callback,
            self.kernel_stack,
            dict(self.pinned),
            Counter(self.writable),
            Counter(self.l1_users),
            self.events_waiting,
        )
        return saved

    def load_monitor(self, saved: dict[str, object]) -> None:
        super().load_monitor(saved)
        vcpu, traps, callback, stack, pinned, writable, users, waiting = saved["paravirt"]
        self.vcpu.load(vcpu)
        self.traps, self.callback, self.kernel_stack = dict(traps), callback, stack
        self.pinned, self.writable, self.l1_users = dict(pinned), Counter(writable), Counter(users)
        self.events_waiting = waiting
        self.memory.forget()


def _tss_descriptor(base: int, limit: int) -> tuple[int, int]:
    """The GDT descriptor of an available 32-bit TSS."""
    low = (limit & 0xFFFF) | (base & 0xFFFF) << 16
    high = (base >> 16) & 0xFF | 0x8900 | (limit & 0xF0000) | (base & 0xFF000000)
    return low, high
