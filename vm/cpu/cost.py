"""The cost model: simulated cycles for instructions and for events.

Instructions cost their form's base cycles (vm.isa). Events cost what a CostModel says:
exception or interrupt delivery, a page walk (TLB miss), port I/O handled in the core, and
for the hypervisors a VM exit and entry, a hypercall, a shadow page-table update, an
emulated instruction and a binary-translation callout. Lessons compare modes in these
simulated cycles, which are deterministic; wall-clock time is reported beside them.

Presets are CPU generations (``PRESETS``: pentium4, prescott, core2, haswell). Each carries
the figures published for its processor where there is a source and says where each one
comes from (``CostModel.source``); a figure no paper gives is marked as vmlab's own
(illustrative, or an estimate derived as its source says). Instruction costs and the
core's event costs are the same in every preset, so bare metal costs the same under each
and presets differ only in what virtualization costs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from vm.cpu import state as S

ADAMS_AGESEN = (
    "K. Adams and O. Agesen, 'A Comparison of Software and Hardware Techniques for x86 "
    "Virtualization', ASPLOS 2006"
)
BUGNION_NIEH_TSAFRIR = (
    "E. Bugnion, J. Nieh and D. Tsafrir, 'Hardware and Software Support for "
    "Virtualization', Morgan & Claypool 2017 (VM exit latency by processor generation)"
)
ILLUSTRATIVE = "vmlab's illustrative figure (no published measurement used)"
ESTIMATE = "vmlab's estimate (no published measurement for this generation)"


@dataclass(frozen=True)
class CostModel:
    """Cycles per event, with where each figure comes from (a preset is one CPU generation)."""

    name: str
    exception: int = 100  # deliver an exception or interrupt through the IDT
    page_walk: int = 30  # a TLB miss: walk the two-level page table
    io: int = 200  # an IN or OUT to a device in the core
    vm_exit: int = 2409  # a VM exit and the entry back (round trip)
    hypercall: int = 2409  # a hypercall (an exit of its own kind)
    shadow_update: int = 12733  # emulate a guest page-table write (hardware VMM, ptemod)
    emulation: int = 500  # decode and emulate one instruction in the VMM
    bt_callout: int = 391  # a binary-translated callout instead of a trap (ptemod, BT)
    hypercall_item: int = 150  # the VMM's work per request of a batched hypercall
    sources: tuple[tuple[str, str], ...] = ()
    cpu: str = ""  # the processor generation the figures describe
    nested_paging: bool = False  # the generation has EPT/NPT (hardware walks guest tables)

    def apply(self, state: np.ndarray) -> None:
        """Set the core's event costs in a state array."""
        state[S.COST_EXCEPTION] = self.exception
        state[S.COST_PAGE_WALK] = self.page_walk
        state[S.COST_IO] = self.io

    def with_(self, **changes: int) -> CostModel:
        """A copy with some figures changed (for 'what if' questions in lessons)."""
        return replace(self, name=f"{self.name} (modified)", **changes)

    def source(self, figure: str) -> str:
        """Where a figure comes from (a paper and its table, or vmlab's own estimate)."""
        return dict(self.sources).get(figure, "not given")

    def figures(self) -> dict[str, int]:
        """Every event cost, by name."""
        return {name: getattr(self, name) for name in COST_FIGURES}


# The event costs a preset sets (every one has a source in each preset).
COST_FIGURES = (
    "exception",
    "page_walk",
    "io",
    "vm_exit",
    "hypercall",
    "shadow_update",
    "emulation",
    "bt_callout",
    "hypercall_item",
)

# Figures no paper gives by generation. They are the same in every preset, so a program's
# cycles on bare metal are the same under each, and presets differ only in what
# virtualization costs.
_BASE_SOURCES = (
    ("exception", ILLUSTRATIVE),
    ("page_walk", ILLUSTRATIVE),
    ("io", ILLUSTRATIVE),
    ("emulation", ILLUSTRATIVE),
    ("hypercall_item", ILLUSTRATIVE),
)
# Adams & Agesen measured ptemod (a guest page-table write) on their Pentium 4 672 (a
# Prescott core): 391 cycles under binary translation, 12,733 under the hardware VMM.
_PTEMOD_P4 = (
    ("shadow_update", f"{ADAMS_AGESEN}, Figure 4 (ptemod, hardware VMM, Pentium 4): 12,733"),
    ("bt_callout", f"{ADAMS_AGESEN}, Figure 4 (ptemod, binary translation, Pentium 4): 391"),
)
_PTEMOD_P4_REUSED = (
    (
        "shadow_update",
        f"{ADAMS_AGESEN}, Figure 4: ptemod's 12,733 measured on a Pentium 4, reused here "
        "(vmlab's assumption: no measurement for this processor)",
    ),
    (
        "bt_callout",
        f"{ADAMS_AGESEN}, Figure 4: ptemod's 391 under binary translation measured on a "
        "Pentium 4, reused here (vmlab's assumption)",
    ),
)


def _exits(entry: int, where: str) -> tuple[tuple[str, str], ...]:
    """The sources of vm_exit and hypercall (a hypercall is a VM exit: VMCALL)."""
    return (
        ("vm_exit", f"{where}: {entry:,}"),
        (
            "hypercall",
            f"{where}: {entry:,} (vmlab's assumption: a hypercall, VMCALL or INT 0x82, costs "
            "what an exit and entry cost)",
        ),
    )


_HASWELL_EXIT = 512
_HASWELL_SHADOW = round(12733 * _HASWELL_EXIT / 2409)  # 2,706

PRESETS: dict[str, CostModel] = {
    # Pentium 4: Adams & Agesen's test machine (ASPLOS 2006).
    "pentium4": CostModel(
        "pentium4",
        vm_exit=2409,  # Adams & Agesen, Table 1: VM entry, Prescott (used as the round trip)
        hypercall=2409,  # the same: VMCALL is an exit
        shadow_update=12733,  # Adams & Agesen, Figure 4: ptemod on the hardware VMM
        bt_callout=391,  # Adams & Agesen, Figure 4: ptemod under binary translation
        cpu="Intel Pentium 4 672 (Prescott, NetBurst), first-generation VT-x, no EPT",
        sources=(
            *_BASE_SOURCES,
            *_exits(2409, f"{ADAMS_AGESEN}, Table 1 (VM entry, Prescott; used as the round trip)"),
            *_PTEMOD_P4,
        ),
    ),
    # Prescott in Bugnion, Nieh and Tsafrir's table of exit latency by generation.
    "prescott": CostModel(
        "prescott",
        vm_exit=1926,  # Bugnion, Nieh & Tsafrir: VM exit and entry, Prescott
        hypercall=1926,
        shadow_update=12733,  # Adams & Agesen's Pentium 4 (a Prescott core) measured these
        bt_callout=391,
        cpu="Intel Pentium 4 (Prescott, NetBurst), first-generation VT-x, no EPT",
        sources=(
            *_BASE_SOURCES,
            *_exits(1926, f"{BUGNION_NIEH_TSAFRIR}: Prescott"),
            *_PTEMOD_P4,
        ),
    ),
    # Core 2: the next generation Adams & Agesen measured, still without EPT.
    "core2": CostModel(
        "core2",
        vm_exit=937,  # Adams & Agesen, Table 1: VM entry, Merom (used as the round trip)
        hypercall=937,
        shadow_update=12733,  # the Pentium 4's ptemod, reused (no Core 2 measurement)
        bt_callout=391,  # the Pentium 4's, reused
        cpu="Intel Core 2 (Merom), VT-x without EPT",
        sources=(
            *_BASE_SOURCES,
            *_exits(937, f"{ADAMS_AGESEN}, Table 1 (VM entry, Merom; used as the round trip)"),
            *_PTEMOD_P4_REUSED,
        ),
    ),
    # Haswell: exits cost a fifth of the Pentium 4's; EPT, so hardware assist can leave the
    # guest's page tables to the hardware.
    "haswell": CostModel(
        "haswell",
        vm_exit=_HASWELL_EXIT,  # Bugnion, Nieh & Tsafrir: VM exit and entry, Haswell
        hypercall=_HASWELL_EXIT,  # VMCALL is an exit
        shadow_update=_HASWELL_SHADOW,  # estimate: the Pentium 4's ptemod x 512 / 2,409
        bt_callout=391,  # estimate: the Pentium 4's (a callout is software; not remeasured)
        cpu="Intel Haswell, VT-x with EPT",
        nested_paging=True,
        sources=(
            *_BASE_SOURCES,
            *_exits(_HASWELL_EXIT, f"{BUGNION_NIEH_TSAFRIR}: Haswell"),
            (
                "shadow_update",
                f"{ESTIMATE}: Adams & Agesen's 12,733 (ptemod, Pentium 4) scaled by the exit "
                f"latency, x 512 / 2,409 = {_HASWELL_SHADOW:,}",
            ),
            (
                "bt_callout",
                f"{ESTIMATE}: Adams & Agesen's 391 (ptemod under binary translation, Pentium "
                "4) kept: a callout runs VMM code, no exit",
            ),
        ),
    ),
}
DEFAULT = PRESETS["pentium4"]


def preset(name: str) -> CostModel:
    """A named preset; a clear error names the ones there are."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"no cost model {name!r}; presets: {', '.join(PRESETS)}") from None
