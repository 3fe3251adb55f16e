"""Exit reasons: why one call of the core's run() returned to Python."""

from __future__ import annotations

from enum import IntEnum

EXIT_NONE = 0
EXIT_HALT = 1
EXIT_BUDGET = 2
EXIT_BREAKPOINT = 3
EXIT_IO = 4
EXIT_FAULT = 5
EXIT_HYPERCALL = 6
EXIT_CPUID = 7
EXIT_CR_ACCESS = 8
EXIT_NESTED_PAGE_FAULT = 9
EXIT_SHUTDOWN = 10
EXIT_INTERRUPT = 11  # an external interrupt arrived (EXIT_ON_INTERRUPT): the VMM takes it
EXIT_SOFTWARE_INTERRUPT = 12  # INT n or INT3 whose vector exits (SOFT_INT_EXITS): EIP after it
EXIT_INVLPG = 13  # INVLPG in VMX non-root mode (EXIT_ON_INVLPG): EIP after it
EXIT_INTERRUPT_WINDOW = 14  # the guest can take an interrupt now (EXIT_ON_INTERRUPT_WINDOW)


class ExitReason(IntEnum):
    """The exit reasons as an enum, for Python code and notebooks."""

    NONE = EXIT_NONE
    HALT = EXIT_HALT
    BUDGET = EXIT_BUDGET
    BREAKPOINT = EXIT_BREAKPOINT
    IO = EXIT_IO
    FAULT = EXIT_FAULT
    HYPERCALL = EXIT_HYPERCALL
    CPUID = EXIT_CPUID
    CR_ACCESS = EXIT_CR_ACCESS
    NESTED_PAGE_FAULT = EXIT_NESTED_PAGE_FAULT
    SHUTDOWN = EXIT_SHUTDOWN
    INTERRUPT = EXIT_INTERRUPT
    SOFTWARE_INTERRUPT = EXIT_SOFTWARE_INTERRUPT
    INVLPG = EXIT_INVLPG
    INTERRUPT_WINDOW = EXIT_INTERRUPT_WINDOW
