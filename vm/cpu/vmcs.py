"""The control structure of VMX non-root mode, VMCS-like, as a readable, printable view.

The core keeps everything in its state array (vm.cpu.state): whether it runs in non-root
mode (NON_ROOT), the execution controls (EXIT_CONTROLS' bits), the exception bitmap, the
CR0 guest/host mask and read shadow, the nested-paging pointer (EPT_POINTER), the event to
inject at the next entry (ENTRY_INTERRUPTION) and what the last exit was about (its
reason, qualification, guest addresses, instruction length and IDT-vectoring
information). ``VMCS.read(state)`` gathers them into one dataclass, grouped the way
Intel's VMCS is (guest state, execution controls, entry controls, exit information), and
``str()`` prints it for a notebook; ``describe_exit`` turns an exit's qualification into a
line a student reads, so the VMM needs no instruction decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from vm.cpu import state as S
from vm.cpu.exits import ExitReason

IO_SIZE_MASK = 0x7
IO_IN = 0x8
IO_IMMEDIATE = 0x40
CR_ACCESS_TYPES = ("MOV to CR", "MOV from CR", "CLTS", "LMSW")
EVENT_TYPES = {
    S.EVENT_EXTERNAL: "external interrupt",
    S.EVENT_HARDWARE_EXCEPTION: "hardware exception",
    S.EVENT_SOFTWARE_INTERRUPT: "software interrupt",
}
# The execution controls by name, with their bits in EXIT_CONTROLS (VT-x's names).
CONTROLS = (
    ("external_interrupt_exiting", S.EXIT_ON_INTERRUPT),
    ("hlt_exiting", S.EXIT_ON_HLT),
    ("unconditional_io_exiting", S.EXIT_ON_IO),
    ("cpuid_exiting", S.EXIT_ON_CPUID),
    ("cr3_load_exiting", S.EXIT_ON_CR3_LOAD),
    ("cr3_store_exiting", S.EXIT_ON_CR3_STORE),
    ("invlpg_exiting", S.EXIT_ON_INVLPG),
    ("vmcall_exiting", S.EXIT_ON_VMCALL),
    ("interrupt_window_exiting", S.EXIT_ON_INTERRUPT_WINDOW),
)


def describe_event(info: int, error: int) -> str:
    """An interruption-information field (entry injection, IDT vectoring) in words."""
    if not info & S.EVENT_VALID:
        return "none"
    kind = EVENT_TYPES.get((info >> S.EVENT_TYPE_SHIFT) & 7, "event")
    code = f" (error {error:#x})" if info & S.EVENT_DELIVER_ERROR else ""
    return f"{kind} vector {info & 0xFF:#x}{code}"


def describe_exit(reason: int, state: np.ndarray) -> str:
    """What the exit was about, from its qualification and the exit fields (no decoding
    of the guest's instruction)."""
    q = int(state[S.EXIT_QUALIFICATION])
    length = int(state[S.EXIT_INSTRUCTION_LENGTH])
    if reason == ExitReason.IO:
        size = (q & IO_SIZE_MASK) + 1
        port = (q >> 16) & 0xFFFF
        how = "imm8" if q & IO_IMMEDIATE else "DX"
        if q & IO_IN:
            what = f"IN from port {port:#x}"
        else:
            what = f"OUT {int(state[S.EXIT_VALUE]):#x} to port {port:#x}"
        return f"{what}, {size} byte{'s' if size > 1 else ''} (port in {how}; {length} bytes)"
    if reason == ExitReason.CR_ACCESS:
        cr, kind, gpr = q & 0xF, (q >> 4) & 3, (q >> 8) & 0xF
        register = S.REG_NAMES[gpr] if gpr < 8 else f"r{gpr}"
        if kind == 0:
            return f"MOV CR{cr}, {register} = {int(state[S.EXIT_VALUE]):#x}"
        if kind == 1:
            return f"MOV {register}, CR{cr}"
        return f"LMSW {(q >> 16) & 0xFFFF:#x} (CR0 would be {int(state[S.EXIT_VALUE]):#x})"
    if reason == ExitReason.INVLPG:
        return f"INVLPG {q:#x}"
    if reason == ExitReason.NESTED_PAGE_FAULT:
        access = "write" if q & S.NPF_WRITE else "read"
        where = "the page" if q & S.NPF_FINAL else "a guest page-table entry"
        entry = "present, read-only" if q & S.NPF_ENTRY_PRESENT else "not present"
        if q & S.NPF_MISCONFIGURED:
            entry = "pointing outside the VM's memory"
        gpa, linear = int(state[S.EXIT_GUEST_PHYSICAL]), int(state[S.EXIT_GUEST_LINEAR])
        text = (
            f"{access} of guest-physical {gpa:#x} (linear {linear:#x}, {where}): "
            f"nested entry {entry}"
        )
        vectoring = int(state[S.EXIT_VECTORING])
        if vectoring & S.EVENT_VALID:
            event = describe_event(vectoring, int(state[S.EXIT_VECTORING_ERROR]))
            text += f"; while delivering {event}"
        return text
    if reason == ExitReason.FAULT and int(state[S.EXIT_VECTOR]) == 14:
        return f"#PF at {q:#x} (error {int(state[S.EXIT_ERROR]):#x})"
    if reason == ExitReason.CPUID:
        return f"CPUID leaf {int(state[S.EAX]):#x}"
    if reason == ExitReason.INTERRUPT:
        return f"external interrupt, vector {int(state[S.EXIT_VECTOR]):#x}"
    return ExitReason(reason).name


@dataclass(frozen=True)
class VMCS:
    """The non-root mode's control structure at one moment (read-only; see the module)."""

    # guest state (what the CPU loads at entry and saves at exit)
    non_root: bool
    guest_eip: int
    guest_esp: int
    guest_eflags: int
    guest_cr0: int
    guest_cr3: int
    guest_cs: int
    # execution controls
    external_interrupt_exiting: bool
    hlt_exiting: bool
    unconditional_io_exiting: bool
    cpuid_exiting: bool
    cr3_load_exiting: bool
    cr3_store_exiting: bool
    invlpg_exiting: bool
    vmcall_exiting: bool
    interrupt_window_exiting: bool
    exception_bitmap: int
    cr0_guest_host_mask: int
    cr0_read_shadow: int
    nested_paging: bool
    nested_root: int  # the nested page directory, host-physical (offset in the VM's window)
    # entry controls
    entry_interruption: str
    # exit information (of the last exit)
    exit_reason: str
    exit_qualification: int
    exit_instruction_length: int
    guest_linear: int
    guest_physical: int
    idt_vectoring: str

    @classmethod
    def read(cls, state: np.ndarray) -> VMCS:
        """The fields as the state array holds them now."""
        st = [int(v) for v in state[: S.BREAKPOINTS]]
        controls = st[S.EXIT_CONTROLS]
        flags = {name: bool(controls & bit) for name, bit in CONTROLS}
        reason = st[S.EXIT_REASON]
        return cls(
            non_root=bool(st[S.NON_ROOT]),
            guest_eip=st[S.EIP],
            guest_esp=st[S.ESP],
            guest_eflags=st[S.EFLAGS],
            guest_cr0=st[S.CR0],
            guest_cr3=st[S.CR3],
            guest_cs=st[S.CS],
            **flags,
            exception_bitmap=st[S.EXC_EXIT_BITMAP] & 0xFFFFFFFF,
            cr0_guest_host_mask=st[S.CR0_GUEST_HOST_MASK] & 0xFFFFFFFF,
            cr0_read_shadow=st[S.CR0_READ_SHADOW] & 0xFFFFFFFF,
            nested_paging=bool(st[S.EPT_POINTER] & S.EPT_ENABLE),
            nested_root=st[S.EPT_POINTER] & 0xFFFFF000,
            entry_interruption=describe_event(st[S.ENTRY_INTERRUPTION], st[S.ENTRY_ERROR]),
            exit_reason=ExitReason(reason).name if reason in ExitReason._value2member_map_ else "?",
            exit_qualification=st[S.EXIT_QUALIFICATION] & 0xFFFFFFFF,
            exit_instruction_length=st[S.EXIT_INSTRUCTION_LENGTH],
            guest_linear=st[S.EXIT_GUEST_LINEAR] & 0xFFFFFFFF,
            guest_physical=st[S.EXIT_GUEST_PHYSICAL] & 0xFFFFFFFF,
            idt_vectoring=describe_event(st[S.EXIT_VECTORING], st[S.EXIT_VECTORING_ERROR]),
        )

    def exceptions_exiting(self) -> list[int]:
        """The vectors the exception bitmap makes exit."""
        return [v for v in range(32) if self.exception_bitmap >> v & 1]

    def __str__(self) -> str:
        sections = (
            ("guest state", "non_root", "guest_cs"),
            ("execution controls", "external_interrupt_exiting", "nested_root"),
            ("entry controls", "entry_interruption", "entry_interruption"),
            ("exit information", "exit_reason", "idt_vectoring"),
        )
        names = [f.name for f in fields(self)]
        lines = []
        for title, first, last in sections:
            lines.append(f"{title}:")
            for name in names[names.index(first) : names.index(last) + 1]:
                value = getattr(self, name)
                if isinstance(value, bool):
                    text = "yes" if value else "no"
                elif isinstance(value, int):
                    text = f"{value:#010x}" if name != "exit_instruction_length" else str(value)
                else:
                    text = value
                if name == "exception_bitmap":
                    text += f"  (vectors {self.exceptions_exiting() or 'none'})"
                lines.append(f"  {name.replace('_', ' '):<28} {text}")
        return "\n".join(lines)
