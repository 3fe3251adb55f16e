"""vmlab: a teaching virtual machine.

``vm.boot(workload, mode)`` gives a ``Guest`` (vm.interface) in any of ``vm.MODES``;
``vm.machine.Machine`` is the bare CPU; ``vm.asm.assemble`` the assembler. The names below
are imported on first use, so ``import vm`` stays quick and compiles nothing.
"""

from __future__ import annotations

__all__ = ["MODES", "WORKLOADS", "Guest", "GuestView", "boot"]


def __getattr__(name: str):
    if name in __all__:
        from vm import interface

        return getattr(interface, name)
    raise AttributeError(f"module 'vm' has no attribute {name!r}")
