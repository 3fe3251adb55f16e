"""`python -m vm`: run toyos, benchmark the core, or take a short tour.

python -m vm run [--workload NAME] [--trace N] [--json] [--budget N] [--cost PRESET]
python -m vm bench [--json] [--quick]
python -m vm demo
"""

from __future__ import annotations

import argparse
import json
import sys

from vm.asm import AsmError

MODES = ("native",)  # the hypervisor issues add trap-emulate, binary-translation, ...


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m vm", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="boot toyos and run a workload")
    from vm.guest.toyos import WORKLOADS

    run.add_argument("--workload", default="all", choices=WORKLOADS)
    run.add_argument("--mode", default="native", choices=MODES)
    run.add_argument("--trace", type=int, default=0, metavar="N", help="show the first N steps")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.add_argument("--budget", type=_positive, default=500_000_000)
    from vm.cpu.cost import PRESETS

    run.add_argument("--cost", default="pentium4", choices=sorted(PRESETS))

    bench = commands.add_parser("bench", help="measure guest MIPS, exits and start-up")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--quick", action="store_true", help="small sizes (for tests)")

    commands.add_parser("demo", help="a short tour in the terminal")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return run_command(args)
        if args.command == "bench":
            from vm.bench import bench_command

            return bench_command(args.json, args.quick)
        from vm.demo import demo

        return demo()
    except (AsmError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _positive(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def run_command(args: argparse.Namespace) -> int:
    """Boot toyos natively, print its console and statistics."""
    from vm.cpu.cost import preset
    from vm.guest.toyos import ToyOS

    toyos = ToyOS(args.workload, cost=preset(args.cost))
    if args.trace:
        trace(toyos, args.trace)
    result = toyos.run(budget=args.budget)
    if args.json:
        out = {
            "mode": args.mode,
            "workload": args.workload,
            "status": result.status,
            "exit_code": result.exit_code,
            "console": result.console,
            "stats": result.stats,
        }
        print(json.dumps(out))
    else:
        print(result.console, end="" if result.console.endswith("\n") else "\n")
        print(stats_table(result.stats))
    if result.ok:
        return 0
    messages = {
        "panic": "the kernel panicked (see its console above)",
        "budget": f"the guest did not finish within {args.budget:,} instructions",
        "fault": f"the machine stopped: {result.exit}",
        "halt": f"the machine halted without shutting down: {result.exit}",
    }
    print(f"error: {messages.get(result.status, result.status)}", file=sys.stderr)
    return 1


def trace(toyos, steps: int) -> None:
    """Single-step the first instructions, printing each with its disassembly."""
    from vm.asm import disassemble_one
    from vm.cpu.exits import ExitReason

    m = toyos.machine
    for _ in range(steps):
        eip = m.eip
        text = "(outside memory)"
        if eip + 1 <= m.memory_size:
            text = disassemble_one(m.read(eip, min(15, m.memory_size - eip)), eip)
        print(f"{eip:08x}  ring {m.cpl}  {text}")
        ex = m.step()
        if ex.reason == ExitReason.IO and not ex.is_in and ex.port in (0xE9, 0x3F8):
            toyos.console.write(ex.value)
        elif ex.reason == ExitReason.IO and ex.is_in:
            m.complete_in(0xFF)
        elif ex.reason not in (ExitReason.BUDGET, ExitReason.IO):
            break


def stats_table(stats: dict) -> str:
    """The statistics as aligned lines."""
    rows = [
        ("instructions", f"{stats['instructions']:,}"),
        ("cycles", f"{stats['cycles']:,}"),
        ("interrupts", f"{stats['interrupts']:,}"),
        ("system calls", f"{stats['syscalls']:,}"),
        ("page walks", f"{stats['page_walks']:,}"),
        ("TLB flushes", f"{stats['tlb_flushes']:,}"),
    ]
    faults = ", ".join(f"{name} {n}" for name, n in stats["faults"].items()) or "none"
    rows.append(("faults", faults))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
