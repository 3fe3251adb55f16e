"""The golden file: every workload's simulated cycles, exits and console in every mode.

They are deterministic, so tests/golden.json pins them: a change to the core, a cost or a
VMM that moves any of them fails tests/test_golden.py until it is made on purpose, by
``python -m vm golden`` (which rewrites the file) and read in the diff.
"""

from __future__ import annotations

import json
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden.json"


# Runs besides each mode with its own kernel: "mode/kernel" (another toyos build),
# "mode/unbatched" (the paravirtual kernel making one hypercall per update) or
# "hw-assist/nested" and "hw-assist/shadow" (each kind of paging, whatever the preset has).
VARIANTS = (
    "native/pvops",
    "paravirt/pvops",
    "paravirt/unbatched",
    "hw-assist/nested",
    "hw-assist/shadow",
)
PAGINGS = ("nested", "shadow")


def measure(workload: str, mode: str) -> dict[str, object]:
    """What one workload does in one mode (or VARIANTS): its status, counts and console."""
    import vm

    mode, _, variant = mode.partition("/")
    if variant == "unbatched":
        guest = vm.boot(workload, mode, batch=False)
    elif variant in PAGINGS:
        guest = vm.boot(workload, mode, paging=variant)
    else:
        guest = vm.boot(workload, mode, kernel=variant or None)
    result = guest.run()
    stats = result.stats
    return {
        "status": result.status,
        "exit_code": result.exit_code,
        "instructions": stats["instructions"],
        "cycles": stats["cycles"],
        "vmm_cycles": stats["vmm_cycles"],
        "exits": stats["exits"],
        "exits_by_reason": stats["exits_by_reason"],
        "callouts": stats["callouts"],
        "console": result.console.splitlines(),  # (a line per line: readable in a diff)
    }


def golden_table() -> dict[str, dict[str, dict[str, object]]]:
    """Every workload in every mode; each console kept once, with its native run."""
    from vm.guest.toyos import WORKLOADS
    from vm.hypervisor.modes import MODES

    table: dict[str, dict[str, dict[str, object]]] = {}
    for workload in WORKLOADS:
        rows = {mode: measure(workload, mode) for mode in (*MODES, *VARIANTS)}
        native = rows["native"]["console"]
        for mode, row in rows.items():
            if mode != "native" and row["console"] == native:
                row["console"] = "(the same as native)"
        table[workload] = rows
    return table


def golden_command(check: bool) -> int:
    """Write tests/golden.json (or, with ``check``, say whether it is still true)."""
    table = golden_table()
    text = json.dumps(table, indent=1, sort_keys=True) + "\n"
    if check:
        same = GOLDEN.exists() and GOLDEN.read_text() == text
        print(f"{GOLDEN}: {'up to date' if same else 'DIFFERS (python -m vm golden rewrites it)'}")
        return 0 if same else 1
    GOLDEN.write_text(text)
    print(f"wrote {GOLDEN}: {len(table)} workloads in every mode, and {', '.join(VARIANTS)}")
    return 0
