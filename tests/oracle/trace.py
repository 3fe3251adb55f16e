"""Single-step traces of generated programs on vmlab's Machine.

``python -m oracle.trace`` reads a JSON list of {"seed", "family", "code"} from stdin and
prints their traces as JSON; tests/test_nojit.py runs it with NUMBA_DISABLE_JIT=1 and
compares with the traces the jitted core gives in the test process.
"""

from __future__ import annotations

import hashlib
import json
import sys

from .generator import generate
from .layout import BUDGET, REG32
from .runner import MachineSide

Step = list  # [exit reason, eip, vector, eax..edi, eflags, instructions, cycles, state digest]


def trace(side: MachineSide, seed: int, family: str | None, code: bytes) -> list[Step]:
    """Step the program of ``seed`` one instruction at a time until it halts or faults;
    one entry per step, then a digest of the memory it ends with."""
    program = generate(seed, family)
    side.setup(program, code)
    m = side.machine
    steps: list[Step] = []
    for _ in range(BUDGET):
        ex = m.step()
        regs = [m.regs[name] for name in REG32]
        digest = hashlib.sha256(m.state.tobytes()).hexdigest()[:16]
        steps.append(
            [int(ex.reason), ex.eip, ex.vector, *regs, m.eflags, m.instructions, m.cycles, digest]
        )
        if ex.reason.name != "BUDGET":
            break
    steps.append(["memory", hashlib.sha256(m.memory.tobytes()).hexdigest()])
    return steps


def main() -> None:
    jobs = json.load(sys.stdin)
    side = MachineSide()
    out = [trace(side, job["seed"], job["family"], bytes.fromhex(job["code"])) for job in jobs]
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
