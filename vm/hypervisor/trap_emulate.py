"""Full virtualization of the unmodified toyos kernel: trap-and-emulate, and its repairs.

The guest kernel runs at ring 1 (ring compression), its user code at ring 3. The VMM owns
the real IDT (every exception, interrupt and INT n exits to it), the real GDT (the guest's,
with ring 0 turned into ring 1), and the real page tables (shadow paging). Each exit has a
small handler below:

- #GP from the guest kernel: a privileged instruction. The VMM decodes it at the guest's
  EIP and carries it out on the vCPU (CLI, STI, HLT, IN/OUT, MOV CRn, LGDT, LIDT, LTR,
  INVLPG, MOV SS, and IRET back into the kernel).
- #PF: shadow paging decides: a hidden fault (fill the shadow), a write to a guest page
  table (let it through, update the shadow), or a true fault (reflect it to the guest).
- any other exception, and INT n: reflected into the guest kernel through its own IDT.
- INTERRUPT: the real timer ticked; the tick waits in the virtual PIC until the guest's
  virtual IF lets the VMM inject it.

x86 is not classically virtualizable: POPF, PUSHF and IRET at ring 1 neither trap nor do
what the guest meant with IF. ``patch=True`` (the default) replaces the kernel's PUSHF,
POPF and IRET with INT3, which traps, at load time; ``patch=False`` shows the failure (the
VMM watches the POPF sites only to say which one lost the guest's interrupts). The
binary-translation mode (VMware's approach, in miniature) rewrites every sensitive or
privileged instruction of the kernel into a callout to the VMM, charged as a translated
callout rather than a trap.
"""

from __future__ import annotations

import numpy as np

from vm.cpu import state as S
from vm.cpu.core import run as core_run
from vm.cpu.cost import DEFAULT, CostModel
from vm.cpu.exits import ExitReason
from vm.hypervisor.decoder import Instruction, decode, effective_address, instruction_length
from vm.hypervisor.shadow import HIDDEN, TABLE_WRITE, VMM_LINEAR, ShadowPager
from vm.hypervisor.vmm import NO_ERROR_CODE, VM, VMStopped
from vm.machine import Machine, vector_name

VMM_AREA = 1 << 20  # the VMM's memory above each guest's RAM: descriptor tables, shadows
GDT_OFFSET, TSS_OFFSET, IDT_OFFSET = 0, 0x700, 0x800  # in the VMM's page at VMM_LINEAR
RING1_CODE, RING1_DATA = 0x09, 0x11  # the reset GDT's flat segments, at ring 1
SAFE_FLAGS = 0x00254DD5  # what POPF and IRET may change (not IF, IOPL, VM)
FAULT_NAMES = [vector_name(v) for v in range(256)]  # exits by reason: '#GP', 'INT 0x80'
REFLECT_TEXT = [f"{name} to the guest kernel" for name in FAULT_NAMES]
HANG_TICKS = 5  # ticks a halted vCPU with IF clear is given before the VMM calls it a hang

# What each patching strategy rewrites in the guest kernel's text.
PATCHED = frozenset({"pushf", "popf", "iret"})  # sensitive and silent at ring 1
TRANSLATED = PATCHED | {
    "cli", "sti", "hlt", "in", "out", "mov_to_cr", "mov_from_cr", "lgdt", "lidt", "ltr",
    "invlpg", "mov_to_sreg", "sgdt", "sidt", "smsw", "str", "sldt",
}  # fmt: skip


class TrapEmulateVM(VM):
    """A VMM that deprivileges the guest kernel and emulates what traps."""

    mode = "trap-emulate"

    def __init__(
        self,
        machine: Machine,
        ram_size: int,
        cost: CostModel = DEFAULT,
        name: str = "vm",
        kernel_text: tuple[int, int] | None = None,
        patch: bool = True,
    ) -> None:
        super().__init__(machine, cost, name)
        if machine.memory_size < ram_size + VMM_AREA:
            raise ValueError("the machine needs VMM_AREA bytes above the guest's RAM")
        self.ram_size = ram_size
        self.patch = patch
        self.trap_cycles = cost.vm_exit  # one trip guest -> VMM -> guest (a trap, the return)
        st = self.sv
        self.shadow = ShadowPager(machine.window, self.state, ram_size, ram_size, VMM_AREA)
        self.words = self.shadow.words
        self.wv = memoryview(self.words)  # the same, as Python ints (fast to index)
        self.bv = memoryview(machine.window)  # and as bytes
        self.protected = self.shadow.protected_frames  # guest frames that are shadowed tables
        self.window = machine.window
        # The real CPU: ring 1, paging on (shadow tables), every event exits to the VMM.
        self.gdt = np.zeros(256 * 2, dtype=np.uint32)
        self.gdt[2:6] = (0x0000FFFF, 0x00CFBA00, 0x0000FFFF, 0x00CFB200)  # ring 1 code, data
        self._install_gdt(0x17)
        st[S.IDTR_BASE] = VMM_LINEAR + IDT_OFFSET
        st[S.IDTR_LIMIT] = 0x7FF
        st[S.TSS_BASE] = VMM_LINEAR + TSS_OFFSET
        st[S.CS] = RING1_CODE
        for slot in (S.SS, S.DS, S.ES, S.FS, S.GS):
            st[slot] = RING1_DATA
        st[S.CR0] = S.CR0_PE | S.CR0_PG | S.CR0_WP
        st[S.EFLAGS] = S.EFLAGS_FIXED | S.FLAG_IF
        st[S.EXC_EXIT_BITMAP] = 0xFFFFFFFF
        st[S.EXIT_CONTROLS] = S.EXIT_ON_SOFT_INT | S.EXIT_ON_INTERRUPT | S.EXIT_ON_HLT
        st[S.PIC_IMR] = 0xFF
        self.shadow.switch(-1)
        self.sites: dict[int, Instruction] = {}
        self.watched: set[int] = set()  # unpatched POPF sites, watched with breakpoints
        self.last_cli = -1
        self.lost_enable = -1
        self.check_shadow = False  # tests: compare the shadow with the guest's tables each exit
        self.decoded: dict[bytes, Instruction | None] = {}
        self.guest_tlb: dict[int, int] = {}  # guest linear page -> guest frame
        self.site_text = {name: f"{name} at a {self.site_kind} site" for name in TRANSLATED}
        self.emulators = {
            name: getattr(self, f"emulate_{name}") for name in TRANSLATED
        }  # mnemonic -> its emulator (emulate_cli, ...)
        if kernel_text is not None:
            self.prepare_kernel(*kernel_text)

    # ---- load time: patching -------------------------------------------------------------
    def scan(self, start: int, end: int, wanted: frozenset[str]) -> dict[int, Instruction]:
        """The instructions in [start, end) of guest memory whose mnemonic is wanted."""
        found = {}
        at = start
        code = self.window[start : end + 16].tobytes()
        while at < end:
            chunk = code[at - start : at - start + 16]
            length = instruction_length(chunk)
            if length == 0:  # the CPU raises #UD here: nothing after it can be told apart
                self.record("patch", f"the scan stops at {at:#x}: bytes the CPU cannot decode")
                break
            ins = decode(chunk)
            if ins is not None and ins.mnemonic in wanted and ins.length == length:
                found[at] = ins
            at += length
        return found

    def prepare_kernel(self, start: int, end: int) -> None:
        """Rewrite the sensitive sites of the kernel's text (or, unpatched, watch its POPFs)."""
        if not self.patch:
            self.watched = set(self.scan(start, end, frozenset({"popf"})))
            for address in self.watched:
                self.machine.add_breakpoint(address)
            return
        self.sites = self.scan(start, end, self.rewritten)
        for address, ins in self.sites.items():
            self.window[address : address + ins.length] = 0xCC  # INT3: it traps
        self.record("patch", f"{len(self.sites)} sites rewritten to INT3 in {start:#x}..{end:#x}")

    rewritten = PATCHED  # what prepare_kernel rewrites into INT3
    site_kind = "patched"
    snapshot_fields = (*VM.snapshot_fields, "last_cli", "lost_enable", "shadow_books")

    @property
    def shadow_books(self) -> dict[str, object]:
        """Shadow paging's bookkeeping (the shadow tables themselves are in memory)."""
        return self.shadow.books()

    def _restore_field(self, name: str, value: object) -> None:
        if name == "shadow_books":
            self.shadow.set_books(value)
            self.guest_tlb.clear()
        else:
            super()._restore_field(name, value)

    @property
    def virtual_cpl(self) -> int:
        """The privilege level the guest believes it runs at (its kernel's ring 1 is 0)."""
        ring = self.sv[S.CS] & 3
        return 0 if ring == 1 else ring

    # ---- guest memory, as the guest sees it ----------------------------------------------------
    def translate(self, linear: int) -> int:
        """The guest-physical address of a guest linear address (-1: the guest maps none).

        Like a CPU, the VMM caches translations (a dict by page) and forgets them when
        the guest reloads CR3, executes INVLPG, or writes a page table it shadows.
        """
        frame = self.guest_tlb.get(linear >> 12)
        if frame is None:
            frame = self._walk(linear)
            if frame >= 0:
                self.guest_tlb[linear >> 12] = frame
        return frame | (linear & 0xFFF) if frame >= 0 else -1

    def _walk(self, linear: int) -> int:
        v = self.vcpu
        if not v.paging:
            frame = linear & ~0xFFF
        else:
            _, pde, _, pte = self.shadow.guest_walk(linear, v.cr3)
            if pde < 0 or pte < 0 or not pde & pte & 1:
                return -1
            frame = pte & ~0xFFF
        return frame if 0 <= frame < self.ram_size else -1

    def read_linear(self, linear: int, size: int = 4) -> int:
        """A little-endian value of guest memory at a guest linear address."""
        frame = self.guest_tlb.get(linear >> 12)
        if frame is not None and (linear & 0xFFF) <= 4096 - size:
            physical = frame | (linear & 0xFFF)
            if size == 4 and not physical & 3:
                return self.wv[physical >> 2]
            return int.from_bytes(self.bv[physical : physical + size], "little")
        data = self.read_bytes(linear, size)
        if len(data) < size:
            raise VMStopped("fault", f"the VMM cannot read guest address {linear:#x}")
        return int.from_bytes(data, "little")

    def read_stack(self, esp: int, count: int) -> list[int]:
        """count dwords of guest memory from esp up (a stack frame, an IDT gate)."""
        frame = self.guest_tlb.get(esp >> 12)
        if frame is not None and not esp & 3 and (esp & 0xFFF) <= 4096 - 4 * count:
            i = (frame | (esp & 0xFFF)) >> 2
            return self.wv[i : i + count].tolist()
        return [self.read_linear(esp + 4 * k) for k in range(count)]

    def read_bytes(self, linear: int, size: int) -> bytes:
        """Up to size bytes of guest memory (fewer where the guest maps no more)."""
        frame = self.guest_tlb.get(linear >> 12)
        if frame is not None and (linear & 0xFFF) <= 4096 - size:
            physical = frame | (linear & 0xFFF)
            return self.bv[physical : physical + size].tobytes()
        out = b""
        while len(out) < size:
            at = linear + len(out)
            physical = self.translate(at)
            if physical < 0:
                break
            n = min(size - len(out), 4096 - (physical & 0xFFF))
            out += self.bv[physical : physical + n].tobytes()
        return out

    def write_linear(self, linear: int, value: int, size: int = 4) -> None:
        """Store a value into guest memory (as the guest would: page tables stay in sync)."""
        frame = self.guest_tlb.get(linear >> 12)
        if frame is not None and size == 4 and not linear & 3 and frame not in self.protected:
            self.wv[(frame | (linear & 0xFFF)) >> 2] = value & 0xFFFFFFFF
            return
        data = (value & 0xFFFFFFFF).to_bytes(4, "little")[:size]
        for k in range(size):
            physical = self.translate(linear + k)
            if physical < 0:
                raise VMStopped("fault", f"the VMM cannot write guest address {linear:#x}")
            frame = physical & ~0xFFF
            if self.shadow.protected(frame):
                before = self.words[frame // 4 : frame // 4 + 1024].copy()
                self.bv[physical] = data[k]
                self.shadow.table_written(frame, before)
                self.guest_tlb.clear()
            else:
                self.bv[physical] = data[k]

    def push_stack(self, esp: int, values: list[int]) -> int:
        """Push values (first pushed first) onto the guest stack at esp; the new ESP."""
        top = esp - 4 * len(values)
        frame = self.guest_tlb.get(top >> 12)
        one_page = top >= 0 and top >> 12 == (esp - 1) >> 12 and not esp & 3
        if frame is not None and one_page and frame not in self.protected:
            i = (frame | (esp & 0xFFF)) >> 2 if esp & 0xFFF else (frame + 4096) >> 2
            wv = self.wv
            for value in values:  # (a plain loop beats building an array for a few words)
                i -= 1
                wv[i] = value & 0xFFFFFFFF
            return top
        for value in values:
            esp = (esp - 4) & 0xFFFFFFFF
            self.write_linear(esp, value)
        return esp

    # ---- the vCPU's view of the real registers ----------------------------------------------
    def virtual_eflags(self) -> int:
        flags = self.sv[S.EFLAGS] & ~S.FLAG_IF
        return flags | (S.FLAG_IF if self.vcpu.vif else 0)

    def set_flags_from_guest(self, value: int) -> None:
        """POPF/IRET as the guest meant them: IF goes to the vCPU, the real IF stays on."""
        self.vcpu.vif = bool(value & S.FLAG_IF)
        real = self.sv[S.EFLAGS]
        self.sv[S.EFLAGS] = (real & ~SAFE_FLAGS) | (value & SAFE_FLAGS) | S.FLAG_IF | 2

    @staticmethod
    def guest_selector(real: int) -> int:
        """A selector as the guest sees it: its kernel's ring 1 shows as ring 0."""
        return real & ~3 if real & 3 == 1 else real

    # ---- descriptor tables ---------------------------------------------------------------------
    def _install_gdt(self, limit: int) -> None:
        page = self.shadow.vmm_page
        raw = self.gdt.view(np.uint8)
        self.window[page + GDT_OFFSET : page + GDT_OFFSET + raw.size] = raw
        self.sv[S.GDTR_BASE] = VMM_LINEAR + GDT_OFFSET
        self.sv[S.GDTR_LIMIT] = min(limit, raw.size - 1)

    def load_gdt(self, base: int, limit: int) -> None:
        """LGDT: the real GDT becomes the guest's, its ring 0 segments moved to ring 1."""
        self.vcpu.gdtr = (base, limit)
        count = min((limit + 1) // 8, 256)
        self.gdt[:] = 0
        for i in range(1, count):
            low, high = self.read_linear(base + 8 * i), self.read_linear(base + 8 * i + 4)
            if high & 0x1000 and (high >> 13) & 3 == 0:  # a code or data segment at ring 0
                high |= 1 << 13
            self.gdt[2 * i : 2 * i + 2] = (low, high)
        self._install_gdt(limit)

    # ---- entering the guest --------------------------------------------------------------------
    def inject_interrupt(self) -> None:
        """Inject the waiting virtual interrupt when the guest's IF allows it."""
        if self.vcpu.vif or self.sv[S.CS] & 3 == 3:
            vector = self.pic.deliverable()
            if vector >= 0:
                self.pic.acknowledge(vector)
                self.acct.injected += 1
                self.record(
                    "inject", f"virtual IRQ {vector - self.pic.vector_base} as vector {vector:#x}"
                )
                self.reflect(vector, NO_ERROR_CODE, self.sv[S.EIP])

    def reflect(self, vector: int, error: int, return_eip: int, software: bool = False) -> None:
        """Deliver an exception or interrupt to the guest kernel through its own IDT."""
        st, v = self.sv, self.vcpu
        base, limit = v.idtr
        if vector * 8 + 7 > limit:
            raise VMStopped("fault", f"the guest's IDT has no gate for {vector_name(vector)}")
        low, high = self.read_stack(base + 8 * vector, 2)
        cpl = st[S.CS] & 3
        if not high & 0x8000:
            raise VMStopped("fault", f"the guest's gate for {vector_name(vector)} is not present")
        if software and (high >> 13) & 3 < cpl:  # INT n the gate's DPL forbids: #GP at it
            size = 1 if self.read_bytes(return_eip - 1, 1) == b"\xcc" else 2  # INT3 or INT n
            return self.reflect(13, vector * 8 + 2, return_eip - size)
        frame = [self.virtual_eflags(), self.guest_selector(st[S.CS]), return_eip]
        esp = st[S.ESP]
        if cpl == 3:  # from guest user mode: onto the guest kernel's stack, from its TSS
            frame = [st[S.SS], esp, *frame]
            esp0_ss0 = int.from_bytes(self.read_bytes(v.tss_base + 4, 8), "little")
            esp = esp0_ss0 & 0xFFFFFFFF
            st[S.SS] = (esp0_ss0 >> 32) & 0xFFFC | 1
        if error >= 0:
            frame.append(error)
        st[S.ESP] = self.push_stack(esp, frame)
        st[S.CS] = ((low >> 16) & 0xFFFC) | 1
        st[S.EIP] = (low & 0xFFFF) | (high & 0xFFFF0000)
        st[S.EFLAGS] = st[S.EFLAGS] & ~(S.FLAG_TF | 0x4000) | S.FLAG_IF
        if (high >> 8) & 0xF == 0xE:  # an interrupt gate clears IF
            v.vif = False
        self.acct.reflected += 1
        self.charge(self.cost.emulation)

    # ---- exit handlers ---------------------------------------------------------------------

    def handle_fault(self) -> None:
        """An exception or INT n: a rewritten site, a privileged instruction the VMM
        emulates, shadow paging's business, or something for the guest kernel."""
        st = self.sv
        vector, error, eip, cpl = st[S.EXIT_VECTOR], st[S.EXIT_ERROR], st[S.EIP], st[S.CS] & 3
        if cpl == 3:
            self.vcpu.vif = True  # user code runs with interrupts on (it cannot clear IF)
        if vector == 3 and cpl == 1 and eip - 1 in self.sites:
            self.callout(eip - 1)
        else:
            self.acct.exits[FAULT_NAMES[vector & 0xFF]] += 1
            if vector == 14:
                self.page_fault(st[S.CR2], error, eip)  # (charged by what it turns out to be)
            elif not (vector == 13 and cpl == 1 and self.emulate_privileged(eip)):
                self.charge(self.trap_cycles)  # for the guest kernel: reflect it
                software = vector >= 32 or vector == 3
                self.record("reflect", REFLECT_TEXT[vector & 0xFF])
                self.reflect(vector, NO_ERROR_CODE if software else error, eip, software)
        if self.check_shadow:
            self.assert_shadow_consistent()

    def handle_interrupt(self) -> None:
        """The real timer ticked: the tick waits in the virtual PIC for inject_interrupt."""
        self.acct.exits["INTERRUPT"] += 1
        self.charge(self.trap_cycles)
        if not self.pic.request(0):
            self.acct.lost_ticks += 1
        self.record("exit", "timer tick (virtual IRQ 0 pending)")

    def handle_breakpoint(self) -> None:
        """Unpatched mode: a watched POPF is about to run; see whether it loses IF.
        Any other breakpoint (one a lesson or test set) stops the run there."""
        st = self.sv
        if st[S.EIP] not in self.watched:
            raise VMStopped("breakpoint", f"breakpoint at {st[S.EIP]:#x}")
        popped = self.read_linear(st[S.ESP])
        if popped & S.FLAG_IF and not self.vcpu.vif:
            self.lost_enable = st[S.EIP]
            self.record("hole", "POPF at ring 1 pops IF=1: the CPU keeps IF, virtual IF stays 0")
        st[S.SKIP_BREAKPOINT] = 1

    # ---- emulation ---------------------------------------------------------------------------
    def fetch(self, eip: int) -> Instruction | None:
        """The instruction at the guest's EIP, if it is one the VMM emulates (cached)."""
        code = self.read_bytes(eip, 15)
        ins = self.decoded.get(code, False)
        if ins is False:
            ins = self.decoded[code] = decode(code)
        return ins

    def emulate_privileged(self, eip: int) -> bool:
        """#GP in the guest kernel: carry out the instruction at EIP if it is privileged."""
        ins = self.fetch(eip)
        if ins is None or ins.mnemonic not in self.emulators:
            return False
        self.acct.emulated[ins.mnemonic] += 1
        self.charge(self.trap_cycles + self.cost.emulation)
        self.record("emulate", f"{ins.mnemonic} trapped (#GP) and emulated", eip)
        if not self.emulate(ins, eip):
            self.reflect(6, NO_ERROR_CODE, eip)  # no such instruction (MOV CS): #UD
        return True

    def callout(self, site: int) -> None:
        """A rewritten site ran: do what its original instruction meant."""
        ins = self.sites[site]
        self.sv[S.EIP] = site
        self.acct.emulated[ins.mnemonic] += 1
        self.charge_callout()
        self.record("emulate", self.site_text[ins.mnemonic], site)
        if not self.emulate(ins, site):
            self.reflect(6, NO_ERROR_CODE, site)  # no such instruction (MOV CS): #UD

    def charge_callout(self) -> None:
        """Patched sites trap (INT3): an exit and an emulation."""
        self.acct.exits["#BP"] += 1
        self.charge(self.trap_cycles + self.cost.emulation)

    def emulate(self, ins: Instruction, eip: int) -> bool:
        """Carry out ins on the vCPU; False when it is not one the VMM emulates.

        EIP moves past the instruction first; IRET and HLT set it themselves.
        """
        emulator = self.emulators.get(ins.mnemonic)
        if emulator is None:
            return False
        st = self.sv
        st[S.EIP] = (eip + ins.length) & 0xFFFFFFFF
        if emulator(ins, eip) is False:
            st[S.EIP] = eip
            return False
        return True

    # One small emulator per instruction: (the instruction, its EIP); EIP is already past it.
    def emulate_cli(self, ins: Instruction, eip: int) -> None:
        """FA  CLI: the guest's IF, not the real one."""
        self.vcpu.vif = False
        self.last_cli = eip

    def emulate_sti(self, ins: Instruction, eip: int) -> None:
        """FB  STI."""
        self.vcpu.vif = True

    def emulate_pushf(self, ins: Instruction, eip: int) -> None:
        """9C  PUSHFD: push the flags with the guest's IF."""
        self.sv[S.ESP] = self.push_stack(self.sv[S.ESP], [self.virtual_eflags()])

    def emulate_popf(self, ins: Instruction, eip: int) -> None:
        """9D  POPFD: IF goes to the vCPU."""
        self.set_flags_from_guest(self.read_linear(self.sv[S.ESP]))
        self.sv[S.ESP] = (self.sv[S.ESP] + 4) & 0xFFFFFFFF

    def emulate_iret(self, ins: Instruction, eip: int) -> None:
        """CF  IRETD: back to the guest kernel (at ring 1) or to user mode."""
        st = self.sv
        esp = self.sv[S.ESP]
        new_eip, cs, flags = self.read_stack(esp, 3)
        cs &= 0xFFFF
        if cs & 3 == 3:
            user_esp, user_ss = self.read_stack(esp + 12, 2)
            st[S.ESP] = user_esp
            st[S.SS] = user_ss & 0xFFFF
            st[S.CS] = cs
        else:
            st[S.ESP] = (esp + 12) & 0xFFFFFFFF
            st[S.CS] = (cs & ~3) | 1
        st[S.EIP] = new_eip
        self.set_flags_from_guest(flags)

    def emulate_in(self, ins: Instruction, eip: int) -> None:
        """E4/E5 ib  IN AL/EAX, imm8;  EC/ED  IN AL/EAX, DX: the VM's devices answer."""
        port = ins.port if ins.port >= 0 else self.sv[S.EDX] & 0xFFFF
        mask = 0xFF if ins.size == 1 else 0xFFFFFFFF
        value = self.port_in(port, ins.size) & mask
        self.sv[S.EAX] = (self.sv[S.EAX] & ~mask & 0xFFFFFFFF) | value

    def emulate_out(self, ins: Instruction, eip: int) -> None:
        """E6/E7 ib  OUT imm8, AL/EAX;  EE/EF  OUT DX, AL/EAX."""
        port = ins.port if ins.port >= 0 else self.sv[S.EDX] & 0xFFFF
        mask = 0xFF if ins.size == 1 else 0xFFFFFFFF
        self.port_out(port, self.sv[S.EAX] & mask, ins.size)

    def emulate_mov_to_cr(self, ins: Instruction, eip: int) -> None:
        """0F 22 /r  MOV CRn, r32."""
        self.write_cr(ins.reg, self.sv[ins.rm])

    def emulate_mov_from_cr(self, ins: Instruction, eip: int) -> None:
        """0F 20 /r  MOV r32, CRn: the guest's own control registers."""
        v = self.vcpu
        self.sv[ins.rm] = (v.cr0, 0, v.cr2, v.cr3, v.cr4, 0, 0, 0)[ins.reg]

    def emulate_lgdt(self, ins: Instruction, eip: int) -> None:
        """0F 01 /2  LGDT m16&32."""
        at = effective_address(ins, self.state)
        self.load_gdt(self.read_linear(at + 2), self.read_linear(at, 2))

    def emulate_lidt(self, ins: Instruction, eip: int) -> None:
        """0F 01 /3  LIDT m16&32: the guest's IDT (the real one stays the VMM's)."""
        at = effective_address(ins, self.state)
        self.vcpu.idtr = (self.read_linear(at + 2), self.read_linear(at, 2))

    def emulate_sgdt(self, ins: Instruction, eip: int) -> None:
        """0F 01 /0  SGDT m (translated): the guest's own GDTR, not the real one."""
        self._store_table_register(ins, self.vcpu.gdtr)

    def emulate_sidt(self, ins: Instruction, eip: int) -> None:
        """0F 01 /1  SIDT m (translated): the guest's own IDTR: no red pill."""
        self._store_table_register(ins, self.vcpu.idtr)

    def _store_table_register(self, ins: Instruction, value) -> None:
        base, limit = value
        at = effective_address(ins, self.state)
        self.write_linear(at, limit, 2)
        self.write_linear(at + 2, base)

    def emulate_ltr(self, ins: Instruction, eip: int) -> None:
        """0F 00 /3  LTR r/m16: remember the guest's TSS (its ESP0 and SS0)."""
        v = self.vcpu
        selector = self.operand16(ins)
        low, high = self.read_stack(v.gdtr[0] + (selector & ~7), 2)
        v.tr = selector
        v.tss_base = ((low >> 16) & 0xFFFF) | ((high & 0xFF) << 16) | (high & 0xFF000000)
        self.sv[S.TR] = selector

    def emulate_str(self, ins: Instruction, eip: int) -> None:
        """0F 00 /1  STR r/m16 (translated)."""
        self._store16(ins, self.vcpu.tr)

    def emulate_sldt(self, ins: Instruction, eip: int) -> None:
        """0F 00 /0  SLDT r/m16 (translated): there is never an LDT."""
        self._store16(ins, 0)

    def emulate_smsw(self, ins: Instruction, eip: int) -> None:
        """0F 01 /4  SMSW r/m16 (translated): the guest's CR0."""
        self._store16(ins, self.vcpu.cr0 & 0xFFFF)

    def _store16(self, ins: Instruction, value: int) -> None:
        if ins.is_memory:
            self.write_linear(effective_address(ins, self.state), value, 2)
        else:
            self.sv[ins.rm] = value

    def emulate_invlpg(self, ins: Instruction, eip: int) -> None:
        """0F 01 /7  INVLPG m."""
        self.shadow.invlpg(effective_address(ins, self.state))
        self.guest_tlb.clear()

    def emulate_mov_to_sreg(self, ins: Instruction, eip: int) -> bool | None:
        """8E /r  MOV Sreg, r/m16: a ring 0 selector is loaded at ring 1."""
        if ins.reg in (1, 6, 7):  # CS cannot be loaded so; there are six segment registers
            return False
        selector = self.operand16(ins)
        if selector & 3 == 0 and selector:
            selector |= 1
        self.sv[(S.ES, S.CS, S.SS, S.DS, S.FS, S.GS)[ins.reg]] = selector
        return None

    def operand16(self, ins: Instruction) -> int:
        """The r/m16 operand of ins: a register, or a word of guest memory."""
        if ins.is_memory:
            return self.read_linear(effective_address(ins, self.state), 2)
        return self.sv[ins.rm] & 0xFFFF

    def emulate_hlt(self, ins: Instruction, eip: int) -> None:
        """HLT: wait for the next virtual interrupt, or report a vCPU that can never wake."""
        st = self.sv
        period = st[S.TIMER_PERIOD]
        if self.vcpu.vif:
            if self.pic.deliverable() < 0:
                if period <= 0:
                    raise VMStopped("halt", f"HLT at {eip:#x} with no timer running")
                st[S.CYCLES] = max(st[S.CYCLES], st[S.TIMER_NEXT])  # idle
            return
        lost = HANG_TICKS if period > 0 else 0
        self.acct.lost_ticks += lost
        st[S.CYCLES] += lost * period
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
        self.record("hang", f"HLT with virtual IF = 0 at {eip:#x}", eip)
        raise VMStopped("hang", message)

    def write_cr(self, cr: int, value: int) -> None:
        """MOV CRn: the vCPU's control register; CR0.PG and CR3 pick the shadow tables."""
        v = self.vcpu
        self.guest_tlb.clear()
        if cr == 0:
            v.cr0 = value | S.CR0_PE
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

    # ---- shadow paging -----------------------------------------------------------------------
    def page_fault(self, linear: int, error: int, eip: int) -> None:
        v = self.vcpu
        kind, detail = self.shadow.page_fault(linear, error, v.paging, v.cr3)
        if kind == HIDDEN:
            self.acct.shadow["hidden faults"] += 1
            self.charge(self.trap_cycles + self.cost.emulation)
            self.record("shadow", f"hidden fault at {linear:#x}: shadow entry filled")
        elif kind == TABLE_WRITE:
            self.table_write(linear, detail)
        else:
            self.acct.shadow["true faults"] += 1
            self.charge(self.trap_cycles)
            v.cr2 = linear
            self.record("reflect", f"#PF at {linear:#x} (error {detail:#x}) to the guest")
            self.reflect(14, detail, eip)

    def table_write(self, linear: int, frame: int) -> None:
        """The guest writes one of its page tables: single-step the write, then resync."""
        st, shadow = self.sv, self.shadow
        entry = shadow.shadow_entry(linear)
        before = self.words[frame // 4 : frame // 4 + 1024].copy()
        if entry >= 0:
            self.wv[entry // 4] |= 2  # briefly writable
        shadow.flush_tlb()
        mask, executed = st[S.PIC_IMR], st[S.INSTRUCTIONS]
        st[S.PIC_IMR] = 0xFF  # no tick in the middle of the step
        reason = ExitReason(core_run(self.state, self.memory, 1))  # the write, one step
        st[S.PIC_IMR] = mask
        if entry >= 0:
            self.wv[entry // 4] &= 0xFFFFFFFD
        changed = shadow.table_written(frame, before)
        self.guest_tlb.clear()
        self.acct.shadow["table writes"] += 1
        self.charge(self.table_write_cost())
        self.record("shadow", f"guest page-table write at {linear:#x}: {changed} entries resynced")
        if st[S.INSTRUCTIONS] == executed and reason != ExitReason.BUDGET:
            self._handlers[reason]()  # the write itself faulted: handle that exit

    def table_write_cost(self) -> int:
        return self.cost.shadow_update

    def assert_shadow_consistent(self) -> None:
        problems = self.shadow.mismatches(self.vcpu.paging, self.vcpu.cr3)
        if problems:
            raise AssertionError(
                "shadow page tables disagree with the guest's: " + "; ".join(problems[:5])
            )

    def stats(self) -> dict[str, object]:
        out = super().stats()
        out["shadow"] = dict(sorted((self.acct.shadow + self.shadow.counts).items()))
        out["patched_sites"] = len(self.sites)
        return out


class BinaryTranslationVM(TrapEmulateVM):
    """VMware's approach in miniature: every sensitive or privileged kernel site becomes a
    callout into the VMM, charged as a translated callout (Adams & Agesen), not a trap."""

    mode = "binary-translation"
    rewritten = frozenset(TRANSLATED)
    site_kind = "translated"

    def __init__(self, *args, **kwargs) -> None:
        kwargs["patch"] = True
        super().__init__(*args, **kwargs)

    def charge_callout(self) -> None:
        self.acct.callouts += 1
        self.charge(self.cost.bt_callout)

    def table_write_cost(self) -> int:
        return self.cost.bt_callout  # the translator turns the faulting write into a callout
