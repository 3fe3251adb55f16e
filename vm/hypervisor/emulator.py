"""The VMM's instruction emulator: carry out a privileged or sensitive guest instruction on
the vCPU, checking what the CPU checks.

When the guest kernel (deprivileged to ring 1) executes CLI, MOV CR3 or LGDT, the CPU
raises #GP and the VMM must do what the guest meant, on the registers the guest believes
it has (the vCPU), not the real ones. It decodes with the CPU's own decoder (vm.cpu.decode,
built from the instruction table in vm.isa, so the VMM and the CPU never disagree on a
length or an operand) and runs one small function per instruction below.

Each emulator faults where the CPU would (a selector beyond the GDT, LTR of something that
is not a TSS, IRET to a data segment, a memory operand the guest does not map): it raises
``GuestFault`` and the VMM reflects that exception to the guest at the instruction, so
the guest sees the machine bare metal gives it. What is particular to a mode (what a CR3
load does to shadow paging, how the real GDT is made) the emulator asks the VM for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from vm.cpu.decode import MAX_INSTRUCTION, Decoded, decode_form, decoded_address
from vm.cpu.state import CR0_PE, FLAG_IF
from vm.hypervisor.guest_memory import GuestFault
from vm.isa import POPF_WRITABLE, REG32_NAMES

if TYPE_CHECKING:
    from vm.hypervisor.trap_emulate import TrapEmulateVM

VECTOR_UD, VECTOR_GP = 6, 13
DECODE_CACHE_LIMIT = 1024  # decoded instructions kept (by their bytes) before starting over
HANG_TICKS = 5  # ticks a halted vCPU with IF clear is given before the VMM calls it a hang
SREG_SLOTS = ("es", "cs", "ss", "ds", "fs", "gs")  # ModRM.reg order


# ---- emulation ---------------------------------------------------------------------------------
class Emulator:
    """Emulates the guest kernel's privileged and sensitive instructions for one VM."""

    def __init__(self, vm: TrapEmulateVM) -> None:
        self.vm = vm
        self.decoded: dict[bytes, Decoded | None] = {}
        self.handlers: dict[str, Callable[[Decoded, int], None]] = {
            name[len("emulate_") :]: getattr(self, name)
            for name in dir(self)
            if name.startswith("emulate_")
        }

    @property
    def names(self) -> frozenset[str]:
        """The instructions this emulator knows."""
        return frozenset(self.handlers)

    def fetch(self, eip: int) -> Decoded | None:
        """The instruction at the guest's EIP (None: #UD, or bytes the guest does not map).

        Decodes are kept by their bytes, a bounded number of them: a guest that makes every
        trapping instruction's bytes new cannot grow the VMM's memory."""
        code = self.vm.memory.read_bytes(eip, MAX_INSTRUCTION)
        ins = self.decoded.get(code, False)
        if ins is False:
            if len(self.decoded) >= DECODE_CACHE_LIMIT:
                self.decoded.clear()
            ins = self.decoded[code] = decode_form(code)
        return ins

    def emulate(self, ins: Decoded, eip: int) -> None:
        """Carry out ins on the vCPU, EIP past it (IRET and jumps set it themselves).

        Raises GuestFault with EIP back on the instruction when the CPU would fault."""
        handler = self.handlers.get(ins.name)
        if handler is None:
            raise GuestFault(VECTOR_UD)
        cpu = self.vm.cpu
        cpu.eip = (eip + ins.length) & 0xFFFFFFFF
        try:
            handler(ins, eip)
        except GuestFault:
            cpu.eip = eip
            raise

    # ---- operands ------------------------------------------------------------------------------
    def address(self, ins: Decoded) -> int:
        return decoded_address(ins, self.vm.state)

    def register(self, number: int) -> int:
        """General register ``number`` (ModRM order: EAX ECX EDX EBX ESP EBP ESI EDI)."""
        return getattr(self.vm.cpu, REG32_NAMES[number])

    def set_register(self, number: int, value: int) -> None:
        setattr(self.vm.cpu, REG32_NAMES[number], value & 0xFFFFFFFF)

    def operand16(self, ins: Decoded) -> int:
        """The r/m16 operand: a register, or a word of guest memory."""
        if ins.is_memory:
            return self.vm.memory.read(self.address(ins), 2)
        return self.register(ins.rm) & 0xFFFF

    def store16(self, ins: Decoded, value: int) -> None:
        """A word to memory, or a dword to a register (SMSW, STR, SLDT, MOV r/m, Sreg)."""
        if ins.is_memory:
            self.vm.memory.write(self.address(ins), value, 2)
        else:
            self.set_register(ins.rm, value)

    def port(self, ins: Decoded) -> tuple[int, int]:
        """(port, size) of IN or OUT: the imm8 port or DX, AL or EAX."""
        operands = ins.form.operands
        port = ins.imm if "imm8" in operands else self.vm.cpu.edx & 0xFFFF
        return port, 1 if "al" in operands else 4

    # One small emulator per instruction: (the instruction, its EIP); EIP is already past it.
    def emulate_cli(self, ins: Decoded, eip: int) -> None:
        """FA  CLI: the guest's IF, not the real one."""
        self.vm.vcpu.vif = False
        self.vm.last_cli = eip

    def emulate_sti(self, ins: Decoded, eip: int) -> None:
        """FB  STI."""
        self.vm.vcpu.vif = True

    def emulate_pushf(self, ins: Decoded, eip: int) -> None:
        """9C  PUSHFD: the flags, with the guest's IF."""
        cpu = self.vm.cpu
        cpu.esp = self.vm.memory.push(cpu.esp, [self.vm.virtual_eflags() & 0x00FCFFFF])

    def emulate_popf(self, ins: Decoded, eip: int) -> None:
        """9D  POPFD: IF goes to the vCPU (the guest's kernel runs at ring 0: IF may change)."""
        cpu = self.vm.cpu
        self.vm.set_flags_from_guest(self.vm.memory.read(cpu.esp))
        cpu.esp = (cpu.esp + 4) & 0xFFFFFFFF

    def emulate_iret(self, ins: Decoded, eip: int) -> None:
        """CF  IRETD: back to the guest kernel or to user mode, with the CPU's checks."""
        vm, cpu = self.vm, self.vm.cpu
        esp = cpu.esp
        if (esp & 0xFFF) <= 4096 - 20:  # (the outer ring's ESP and SS too, in one read)
            new_eip, cs, flags, outer_esp, outer_ss = vm.memory.read_dwords(esp, 5)
        else:
            new_eip, cs, flags = vm.memory.read_dwords(esp, 3)
            outer_esp = outer_ss = -1
        cs &= 0xFFFF
        cpl, rpl = vm.believed_cpl[cpu.cs & 3], cs & 3
        if rpl < cpl:
            raise GuestFault(VECTOR_GP, cs & 0xFFFC)
        if vm.descriptors.code_segment_dpl(cs, cs & 0xFFFC) != rpl:
            raise GuestFault(VECTOR_GP, cs & 0xFFFC)
        if rpl > cpl:  # back to an outer ring: its stack comes off this one
            if outer_ss < 0:
                outer_esp, outer_ss = vm.memory.read_dwords(esp + 12, 2)
            cpu.esp, cpu.ss = outer_esp, vm.real_selector(outer_ss & 0xFFFF)
        else:
            cpu.esp = (esp + 12) & 0xFFFFFFFF
        cpu.cs = cs if rpl else cs | 1  # (ring compression: the guest's ring 0 is ring 1)
        cpu.eip = new_eip
        vm.vcpu.vif = bool(flags & FLAG_IF)  # (set_flags_from_guest, written out)
        cpu.eflags = (cpu.eflags & ~POPF_WRITABLE) | (flags & POPF_WRITABLE) | FLAG_IF | 2

    def emulate_in(self, ins: Decoded, eip: int) -> None:
        """E4/E5 ib  IN AL/EAX, imm8;  EC/ED  IN AL/EAX, DX: the VM's devices answer."""
        port, size = self.port(ins)
        mask = 0xFF if size == 1 else 0xFFFFFFFF
        cpu = self.vm.cpu
        cpu.eax = (cpu.eax & ~mask & 0xFFFFFFFF) | (self.vm.board.port_in(port, size) & mask)

    def emulate_out(self, ins: Decoded, eip: int) -> None:
        """E6/E7 ib  OUT imm8, AL/EAX;  EE/EF  OUT DX, AL/EAX."""
        port, size = self.port(ins)
        value = self.vm.cpu.eax & (0xFF if size == 1 else 0xFFFFFFFF)
        period = self.vm.board.port_out(port, value, size)
        if period:  # the guest programmed its timer: the real one starts at VM entry
            self.vm.arm_timer = period

    def emulate_mov_to_cr(self, ins: Decoded, eip: int) -> None:
        """0F 22 /r  MOV CRn, r32."""
        if ins.reg not in (0, 2, 3, 4):
            raise GuestFault(VECTOR_UD)
        self.vm.write_cr(ins.reg, self.register(ins.rm))

    def emulate_mov_from_cr(self, ins: Decoded, eip: int) -> None:
        """0F 20 /r  MOV r32, CRn: the guest's own control registers."""
        if ins.reg not in (0, 2, 3, 4):
            raise GuestFault(VECTOR_UD)
        v = self.vm.vcpu
        self.set_register(ins.rm, {0: v.cr0, 2: v.cr2, 3: v.cr3, 4: v.cr4}[ins.reg])

    def emulate_lmsw(self, ins: Decoded, eip: int) -> None:
        """0F 01 /6  LMSW r/m16: CR0's PE MP EM TS (PE can be set, not cleared)."""
        v = self.vm.vcpu
        self.vm.write_cr(0, (v.cr0 & ~0xE) | (self.operand16(ins) & 0xF) | (v.cr0 & CR0_PE))

    def emulate_smsw(self, ins: Decoded, eip: int) -> None:
        """0F 01 /4  SMSW r/m16 (translated): the guest's CR0."""
        self.store16(ins, self.vm.vcpu.cr0)

    def emulate_lgdt(self, ins: Decoded, eip: int) -> None:
        """0F 01 /2  LGDT m16&32."""
        at = self.address(ins)
        limit, base = self.vm.memory.read(at, 2), self.vm.memory.read(at + 2)
        self.vm.load_gdt(base, limit)

    def emulate_lidt(self, ins: Decoded, eip: int) -> None:
        """0F 01 /3  LIDT m16&32: the guest's IDT (the real one stays the VMM's)."""
        at = self.address(ins)
        self.vm.vcpu.idtr = (self.vm.memory.read(at + 2), self.vm.memory.read(at, 2))

    def emulate_sgdt(self, ins: Decoded, eip: int) -> None:
        """0F 01 /0  SGDT m (translated): the guest's own GDTR, not the real one."""
        self._store_table_register(ins, self.vm.vcpu.gdtr)

    def emulate_sidt(self, ins: Decoded, eip: int) -> None:
        """0F 01 /1  SIDT m (translated): the guest's own IDTR: no red pill."""
        self._store_table_register(ins, self.vm.vcpu.idtr)

    def _store_table_register(self, ins: Decoded, value: tuple[int, int]) -> None:
        base, limit = value
        at = self.address(ins)
        memory = self.vm.memory
        memory.translate(at + 5, write=True)  # (the CPU checks all six bytes first)
        memory.write(at, limit, 2)
        memory.write(at + 2, base)

    def emulate_ltr(self, ins: Decoded, eip: int) -> None:
        """0F 00 /3  LTR r/m16: an available TSS of the guest's GDT (marked busy there)."""
        vm = self.vm
        selector = self.operand16(ins)
        base, high = vm.descriptors.task_state_segment(selector)
        vm.descriptors.mark_busy(selector, high)
        vm.vcpu.tr, vm.vcpu.tss_base = selector, base
        vm.cpu.tr = selector

    def emulate_str(self, ins: Decoded, eip: int) -> None:
        """0F 00 /1  STR r/m16 (translated)."""
        self.store16(ins, self.vm.vcpu.tr)

    def emulate_sldt(self, ins: Decoded, eip: int) -> None:
        """0F 00 /0  SLDT r/m16 (translated): there is never an LDT."""
        self.store16(ins, 0)

    def emulate_invlpg(self, ins: Decoded, eip: int) -> None:
        """0F 01 /7  INVLPG m."""
        self.vm.invalidate_page(self.address(ins))

    def emulate_mov_to_sreg(self, ins: Decoded, eip: int) -> None:
        """8E /r  MOV Sreg, r/m16: the CPU's checks at the guest's CPL, then a ring 0
        selector is loaded at ring 1."""
        if ins.reg in (1, 6, 7):  # CS cannot be loaded so; there are six segment registers
            raise GuestFault(VECTOR_UD)
        vm = self.vm
        selector = self.operand16(ins)
        vm.descriptors.check_data_selector(selector, ins.reg == 2, vm.virtual_cpl())
        setattr(vm.cpu, SREG_SLOTS[ins.reg], vm.real_selector(selector))

    def emulate_mov_from_sreg(self, ins: Decoded, eip: int) -> None:
        """8C /r  MOV r/m, Sreg (translated): the selector as the guest loaded it."""
        if ins.reg > 5:
            raise GuestFault(VECTOR_UD)
        vm = self.vm
        self.store16(ins, vm.guest_selector(getattr(vm.cpu, SREG_SLOTS[ins.reg])))

    def emulate_hlt(self, ins: Decoded, eip: int) -> None:
        """F4  HLT: wait for the next virtual interrupt, or report a vCPU that never wakes."""
        self.vm.halt(eip)


def flags_from_guest(real: int, value: int) -> int:
    """The real EFLAGS after the guest's POPF or IRET of ``value``: the flags POPF may change
    at any CPL, the real IF kept on (the guest's IF goes to the vCPU)."""
    return (real & ~POPF_WRITABLE) | (value & POPF_WRITABLE) | FLAG_IF | 2
