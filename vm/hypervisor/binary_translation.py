"""Binary translation, VMware's approach in miniature: the same deprivileged kernel as
trap-and-emulate, but every sensitive or privileged instruction of its text is translated
into a callout into the VMM before it ever runs.

A callout is a call, not a trap: no world switch, so it is charged as Adams & Agesen
measured a translated callout (391 cycles on a Pentium 4) instead of an exit and an
emulation. The translator also turns a guest write to a shadowed page table into a
callout, and it translates SIDT and SGDT, so the kernel no longer sees the VMM's tables
(user code still does: the red pill works there). What is translated and what it costs
is all that differs from vm.hypervisor.trap_emulate.
"""

from __future__ import annotations

from vm.hypervisor.trap_emulate import PATCHED, TrapEmulateVM
from vm.hypervisor.vmm import CALLOUT
from vm.isa import PRIVILEGED_NAMES, SENSITIVE_NAMES

# What the translator rewrites: every privileged or sensitive instruction of the table
# (vm.isa's Form.privileged and Form.sensitive), and MOV to a segment register (a ring-0
# selector faults at ring 1: ring compression's cost). CPUID is sensitive too but left to
# run: these VMMs have nothing to hide behind it.
TRANSLATED = (PRIVILEGED_NAMES | SENSITIVE_NAMES | PATCHED | {"mov_to_sreg"}) - {"cpuid"}


class BinaryTranslationVM(TrapEmulateVM):
    """Trap-and-emulate's VMM with the kernel's sensitive instructions translated."""

    mode = "binary-translation"
    rewritten = TRANSLATED
    site_kind = "translated"

    def __init__(self, *args, **kwargs) -> None:
        kwargs["patch"] = True  # (translation is the point of this mode)
        super().__init__(*args, **kwargs)

    def charge_callouts(self) -> tuple[str | None, int]:
        """A translated site calls the VMM: no exit."""
        return CALLOUT, self.cost.bt_callout

    def table_write_cost(self) -> int:
        return self.cost.bt_callout  # the translator turns the faulting write into a callout
