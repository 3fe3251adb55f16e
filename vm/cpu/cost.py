"""The cost model: simulated cycles for instructions and for events.

Instructions cost their form's base cycles (vm.isa). Events cost what a CostModel says:
exception or interrupt delivery, a page walk (TLB miss), port I/O handled in the core, and
for the hypervisors a VM exit and entry, a hypercall, a shadow page-table update, an
emulated instruction and a binary-translation callout. Lessons compare modes in these
simulated cycles, which are deterministic; wall-clock time is reported beside them.

Presets carry the figures published for real processors where there is a source, and
say where there is none (those are vmlab's illustrative choices, of the right order).
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


@dataclass(frozen=True)
class CostModel:
    """Cycles per event, with where each figure comes from."""

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

    def apply(self, state: np.ndarray) -> None:
        """Set the core's event costs in a state array."""
        state[S.COST_EXCEPTION] = self.exception
        state[S.COST_PAGE_WALK] = self.page_walk
        state[S.COST_IO] = self.io

    def with_(self, **changes: int) -> CostModel:
        """A copy with some figures changed (for 'what if' questions in lessons)."""
        return replace(self, name=f"{self.name} (modified)", **changes)


_BASE_SOURCES = (
    ("exception", ILLUSTRATIVE),
    ("page_walk", ILLUSTRATIVE),
    ("io", ILLUSTRATIVE),
    ("emulation", ILLUSTRATIVE),
    ("hypercall_item", ILLUSTRATIVE),
)


def _adams_agesen(name: str, entry: int, cpu: str) -> CostModel:
    """A preset with Adams & Agesen's measurements for one processor."""
    return CostModel(
        name,
        vm_exit=entry,
        hypercall=entry,
        shadow_update=12733,
        bt_callout=391,
        sources=(
            *_BASE_SOURCES,
            ("vm_exit", f"{ADAMS_AGESEN}: VM entry, {entry:,} cycles ({cpu})"),
            ("shadow_update", f"{ADAMS_AGESEN}: ptemod on first-generation VT-x, 12,733"),
            ("bt_callout", f"{ADAMS_AGESEN}: ptemod under binary translation, 391 cycles"),
        ),
    )


def _bugnion(name: str, exit_latency: int, cpu: str) -> CostModel:
    """A preset with the VM exit latency Bugnion, Nieh and Tsafrir give for a generation."""
    sources = (*_BASE_SOURCES, ("vm_exit", f"{BUGNION_NIEH_TSAFRIR}: {cpu}, {exit_latency:,}"))
    return CostModel(name, vm_exit=exit_latency, hypercall=exit_latency, sources=sources)


PRESETS: dict[str, CostModel] = {
    "pentium4": _adams_agesen("pentium4", 2409, "Pentium 4"),
    "core2": _adams_agesen("core2", 937, "Core 2"),
    "prescott": _bugnion("prescott", 1926, "Prescott"),
    "haswell": _bugnion("haswell", 512, "Haswell"),
}
DEFAULT = PRESETS["pentium4"]


def preset(name: str) -> CostModel:
    """A named preset; a clear error names the ones there are."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"no cost model {name!r}; presets: {', '.join(PRESETS)}") from None
