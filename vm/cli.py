"""`python -m vm`: run toyos in any mode, benchmark the core, or take a short tour.

python -m vm run [--workload NAME] [--mode MODE] [--no-patch] [--paging KIND]
                 [--console KIND] [--compare] [--trace N] [--json] [--log N] [--budget N]
                 [--preset PRESET]
                 [--containers N | --container WORKLOAD[:weight=W,memory=PAGES,hostname=H] ...]
python -m vm compare [--workload NAME ...] [--mode MODE ...] [--preset PRESET ...] [--json]
python -m vm consolidate [--guests N] [--mode MODE] [--workload NAME ...] [--preset PRESET]
                         [--cycles N] [--json]
python -m vm bench [--json] [--quick] [--lessons]
python -m vm golden [--check]
python -m vm demo
python -m vm lessons list | key LESSON [--seed S | --student ID] | release [-o DIR]
python -m vm grade SUBMISSIONS/ [-o grades.csv] [-j N] [--lesson LESSON]

(--cost is the old name of --preset, and still works.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from vm.asm import AsmError
from vm.hypervisor.modes import MODE_TABLE, MODES

MAX_BUDGET = (1 << 63) - 1


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m vm", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="boot toyos and run a workload")
    from vm.guest.toyos import WORKLOADS

    run.add_argument("--workload", default="all", choices=WORKLOADS)
    run.add_argument(
        "--mode",
        default="native",
        choices=MODES,
        help="; ".join(f"{m.name}: {m.summary}" for m in MODE_TABLE.values()),
    )
    run.add_argument(
        "--compare", action="store_true", help="run the workload in every mode, side by side"
    )
    from vm.hypervisor.modes import KERNELS

    run.add_argument(
        "--kernel",
        choices=KERNELS,
        help="the toyos build (default: the mode's own); pvops is one binary for every mode",
    )
    run.add_argument(
        "--no-batch",
        action="store_true",
        help="paravirt: one hypercall per page-table update, no multicalls (to compare)",
    )
    run.add_argument(
        "--containers",
        type=_ranged(1, 16),
        metavar="N",
        help="containers mode: N containers, each running --workload",
    )
    run.add_argument(
        "--container",
        action="append",
        metavar="SPEC",
        help="containers mode: one container, WORKLOAD[:weight=W,memory=PAGES,hostname=H] "
        "(repeat for several)",
    )
    run.add_argument(
        "--paging",
        choices=("nested", "shadow"),
        help="hw-assist: nested paging (EPT) or shadow paging (first-generation VT-x); "
        "default: what the preset's processor has",
    )
    run.add_argument(
        "--console",
        choices=("emulated", "assigned"),
        help="hw-assist: every console OUT exits (emulated, the default) or the console is "
        "the guest's own (assigned through the I/O bitmap)",
    )
    run.add_argument(
        "--no-patch",
        action="store_true",
        help="trap-emulate without patching POPF/PUSHF/IRET: shows x86's hole",
    )
    run.add_argument("--trace", type=_count, default=0, metavar="N", help="show the first N steps")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.add_argument(
        "--log", type=_count, default=0, metavar="N", help="show the last N events of the run"
    )
    run.add_argument("--budget", type=_positive, default=500_000_000)
    from vm.cpu.cost import PRESETS

    presets_help = "; ".join(f"{p.name}: {p.cpu}" for p in PRESETS.values())
    run.add_argument(
        "--preset",
        "--cost",
        dest="preset",
        default="pentium4",
        choices=PRESETS,
        help=f"the cost preset, a CPU generation ({presets_help})",
    )

    compare = commands.add_parser(
        "compare", help="every workload in every mode under every cost preset, side by side"
    )
    compare.add_argument(
        "--workload",
        action="append",
        choices=WORKLOADS,
        help="a workload to compare (repeat for several; default: every one)",
    )
    compare.add_argument(
        "--preset",
        "--cost",
        dest="preset",
        action="append",
        choices=PRESETS,
        help="a cost preset (repeat for several; default: every one)",
    )
    from vm.compare import COLUMNS

    compare.add_argument(
        "--mode",
        action="append",
        choices=COLUMNS,
        help="a mode (or hw-assist/nested, hw-assist/shadow) to show (repeat for several; "
        "default: every mode; native is always shown)",
    )
    compare.add_argument("--json", action="store_true", help="print one JSON object")

    from vm.consolidate import MAX_GUESTS

    consolidate = commands.add_parser(
        "consolidate", help="many guests (VMs or containers) on one host: its time and memory"
    )
    consolidate.add_argument(
        "--guests",
        type=_ranged(1, MAX_GUESTS),
        default=8,
        metavar="N",
        help=f"how many guests (tenants) share the host, 1 to {MAX_GUESTS} (default 8)",
    )
    consolidate.add_argument(
        "--mode", choices=MODES, help="one mode, guest by guest (default: every mode, a line each)"
    )
    consolidate.add_argument(
        "--workload",
        action="append",
        choices=WORKLOADS,
        help="the guests' workloads, given in turn (repeat for several; default: a mix)",
    )
    consolidate.add_argument(
        "--preset",
        "--cost",
        dest="preset",
        default="pentium4",
        choices=PRESETS,
        help="the cost preset, a CPU generation (default pentium4)",
    )
    consolidate.add_argument(
        "--cycles",
        type=_positive,
        metavar="N",
        help="stop once the guests have worked N cycles (default: run until each is done)",
    )
    consolidate.add_argument("--json", action="store_true", help="print one JSON object")

    bench = commands.add_parser("bench", help="measure guest MIPS, exits and start-up")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--quick", action="store_true", help="small sizes (for tests)")
    bench.add_argument(
        "--lessons",
        action="store_true",
        help="the lessons' figures instead: each run headless, its slowest check() and "
        "submissions graded a minute (with --quick: lesson 00, 10 submissions)",
    )

    golden = commands.add_parser(
        "golden", help="regenerate tests/golden.json (cycles, exits, consoles per mode)"
    )
    golden.add_argument(
        "--check", action="store_true", help="compare with the file instead of writing it"
    )

    commands.add_parser("demo", help="a short tour in the terminal")
    from vm.lessons.cli import add_commands

    add_commands(commands)
    args = parser.parse_args(argv)
    try:
        if args.command in ("lessons", "grade"):
            from vm.lessons import cli as lessons_cli

            return lessons_cli.run(args)
        if args.command == "run":
            return run_command(args)
        if args.command == "compare":
            return compare_all_command(args)
        if args.command == "consolidate":
            return consolidate_command(args)
        if args.command == "bench":
            if args.lessons:
                return lessons_bench_command(args.json, args.quick)
            from vm.bench import bench_command

            return bench_command(args.json, args.quick)
        if args.command == "golden":
            from vm.golden import golden_command

            return golden_command(args.check)
        from vm.demo import demo

        return demo()
    except (AsmError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # (the reader went away: `python -m vm run | head`)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (Python flushes it at exit)
        return 1


def _positive(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= MAX_BUDGET:
        raise argparse.ArgumentTypeError(f"must be from 1 to 2**63 - 1, not {value}")
    return value


def _ranged(low: int, high: int):
    """An argparse type: a whole number from low to high."""

    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, not {value}")
        return value

    return parse


def _count(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 10_000_000:
        raise argparse.ArgumentTypeError(f"must be from 0 to 10,000,000, not {value}")
    return value


def run_command(args: argparse.Namespace) -> int:
    """Boot toyos in a mode (or every mode), print its console and statistics."""
    import vm
    from vm.cpu.cost import preset

    cost = preset(args.preset)
    if args.compare and (args.trace or args.no_patch or args.log):
        raise ValueError("--compare runs every mode: --trace, --no-patch and --log take one --mode")
    if args.no_patch and args.mode != "trap-emulate":
        raise ValueError("--no-patch is for --mode trap-emulate")
    if args.no_batch and (args.compare or args.mode != "paravirt"):
        raise ValueError("--no-batch is for --mode paravirt (--compare shows both)")
    if (args.containers or args.container) and (args.compare or args.mode != "containers"):
        raise ValueError("--containers and --container are for --mode containers")
    if args.containers and args.container:
        raise ValueError("give --containers N or --container SPEC ..., not both")
    if args.paging and (args.compare or args.mode != "hw-assist"):
        raise ValueError("--paging is for --mode hw-assist (--compare shows both)")
    if args.console and (args.compare or args.mode != "hw-assist"):
        raise ValueError("--console is for --mode hw-assist")
    if args.compare:
        return compare_command(args, cost)
    options: dict[str, object] = {"patch": False} if args.no_patch else {}
    if args.paging:
        options["paging"] = args.paging
    if args.console:
        options["console"] = args.console
    if args.no_batch:
        options["batch"] = False
    if args.containers:
        options["containers"] = [args.workload] * args.containers
    elif args.container:
        options["containers"] = [container_option(text) for text in args.container]
    guest = vm.boot(args.workload, args.mode, cost=cost, kernel=args.kernel, **options)
    steps = trace(guest, args.trace) if args.trace else []
    if not args.json:
        for line in steps:
            print(line)
    result = guest.run(budget=args.budget)
    if args.json:
        out = {
            "mode": args.mode,
            "workload": args.workload,
            "status": result.status,
            "exit_code": result.exit_code,
            "message": result.message,
            "console": result.console,
            "stats": result.stats,
        }
        if args.trace:
            out["trace"] = steps
        if args.log:
            out["log"] = [event._asdict() for event in list(guest.events)[-args.log :]]
        if args.mode == "containers":
            out["containers"] = [c.__dict__ for c in guest.containers.list()]
            out["consoles"] = {str(k): v for k, v in guest.consoles.items()}
        print(json.dumps(out))
    else:
        print(result.console, end="" if result.console.endswith("\n") else "\n")
        print(stats_table(result.stats))
        if args.mode == "containers":
            print("\n" + containers_table(guest.containers.list()))
        if args.log:
            print(f"\nthe last {args.log} events (seq, cycle, EIP, ring, kind, action, cost):")
            print(guest.events.tail(args.log))
    if result.ok:
        return 0
    messages = {
        "panic": "the kernel panicked (see its console above)",
        "budget": f"the guest did not finish within {args.budget:,} instructions",
    }
    print(f"error: {messages.get(result.status, result.message or result.status)}", file=sys.stderr)
    return 1


def lessons_bench_command(as_json: bool, quick: bool) -> int:
    """The lessons' speed targets: headless run, warm check(), grading throughput."""
    from vm.lessons.measure import measure, text

    figures = measure(["00-machine"], submissions=10) if quick else measure()
    print(json.dumps(figures) if as_json else text(figures))
    return 0


def compare_command(args: argparse.Namespace, cost) -> int:
    """One workload in every mode: a table side by side, or one JSON object keyed by mode."""
    import vm

    # (a mode of containers shares its own kernel: another --kernel is not for it)
    shared = {
        m.name for m in MODE_TABLE.values() if m.tenants and args.kernel not in (None, m.kernel)
    }
    runs = [(mode, mode, {}) for mode in MODES if mode not in shared]
    if (args.kernel or "paravirt") == "paravirt":  # (batching's effect, shown beside it)
        runs.append(("paravirt unbatched", "paravirt", {"batch": False}))
    results = {
        label: vm.boot(args.workload, mode, cost=cost, kernel=args.kernel, **options).run(
            args.budget
        )
        for label, mode, options in runs
    }
    if args.json:
        out = {
            mode: {
                "status": r.status,
                "instructions": r.stats["instructions"],
                "cycles": r.stats["cycles"],
                "exits": r.stats["exits"],
                "exits_by_reason": r.stats["exits_by_reason"],
                "console": r.console,
            }
            for mode, r in results.items()
        }
        print(json.dumps(out))
    else:
        print(compare_table(args.workload, results))
    return 0 if all(r.ok for r in results.values()) else 1


def compare_table(workload: str, results: dict) -> str:
    """The modes side by side: cycles against native, exits by kind, the console."""
    native = results["native"]
    reasons = sorted({k for r in results.values() for k in r.stats["exits_by_reason"]})
    rows = [("workload " + workload, list(results))]
    rows.append(("status", [r.status for r in results.values()]))
    for key in ("instructions", "cycles"):
        rows.append((key, [f"{r.stats[key]:,}" for r in results.values()]))
    base = native.stats["cycles"] or 1
    rows.append(("cycles / native", [f"{r.stats['cycles'] / base:.3f}" for r in results.values()]))
    rows.append(("exits", [f"{r.stats['exits']:,}" for r in results.values()]))
    for reason in reasons:
        counts = [r.stats["exits_by_reason"].get(reason, 0) for r in results.values()]
        rows.append((f"  {reason}", [f"{n:,}" for n in counts]))
    for key in ("callouts", "injected", "lost_ticks"):
        rows.append((key.replace("_", " "), [f"{r.stats.get(key, 0):,}" for r in results.values()]))
    rows.append(
        (
            "console",
            ["same" if r.console == native.console else "DIFFERS" for r in results.values()],
        )
    )
    width = max(len(name) for name, _ in rows)
    cols = [max(len(row[1][i]) for row in rows) for i in range(len(results))]
    lines = [
        f"{name:<{width}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(values, cols, strict=True))
        for name, values in rows
    ]
    return "\n".join(lines) + "\n\n" + native.console.rstrip("\n")


def compare_all_command(args: argparse.Namespace) -> int:
    """Every workload (or those named) in every mode under every preset (or those named):
    a table per preset of cycles relative to native and exits, or one JSON object."""
    from vm.compare import compare

    table = compare(args.workload, modes=args.mode, presets=args.preset)
    print(json.dumps(table.as_dict()) if args.json else table.text())
    if not table.ok:
        failed = [" ".join(key) for key, run in table.runs.items() if not run.ok]
        print(f"error: these runs did not shut down cleanly: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def consolidate_command(args: argparse.Namespace) -> int:
    """N guests on one host, in one mode (a line per guest) or every mode (a line each)."""
    from vm.consolidate import MIX, consolidate, summary

    modes = [args.mode] if args.mode else list(MODES)
    runs = [
        consolidate(args.guests, mode, args.workload, args.preset, host_cycles=args.cycles)
        for mode in modes
    ]
    if args.json:
        out = runs[0].as_dict() if args.mode else {run.mode: run.as_dict() for run in runs}
        print(json.dumps(out))
    elif args.mode:
        print(runs[0].text())
    else:
        mix = ", ".join(args.workload or MIX)
        print(
            f"{args.guests} tenants on one host in each mode ({args.preset} preset; "
            f"workloads in turn: {mix})\n"
        )
        print(summary(runs))
    return 0


def container_option(text: str) -> dict[str, object]:
    """--container's WORKLOAD[:weight=W,memory=PAGES,hostname=H] as vm.boot takes it."""
    workload, _, rest = text.partition(":")
    spec: dict[str, object] = {"workload": workload}
    names = {"weight": "weight", "memory": "memory_limit", "hostname": "hostname"}
    for item in filter(None, rest.split(",")):
        key, equals, value = item.partition("=")
        if key not in names or not equals:
            raise ValueError(
                f"--container {text!r}: {item!r} is not weight=W, memory=PAGES or hostname=H"
            )
        if key == "hostname":
            spec["hostname"] = value
            continue
        try:
            spec[names[key]] = int(value, 0)
        except ValueError:
            raise ValueError(f"--container {text!r}: {key} must be a number") from None
    return spec


def containers_table(containers: list) -> str:
    """A line per container: its id, host name, state, exit code, limits and use."""
    rows = [["id", "hostname", "state", "exit", "weight", "ticks", "memory limit", "refused"]]
    for c in containers:
        limit = f"{c.memory_limit:,} pages" if c.memory_limit else "none"
        rows.append(
            [
                str(c.id), c.hostname, c.state, str(c.exit_code), str(c.weight), f"{c.ticks:,}",
                limit, f"{c.refused:,}",
            ]
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)


def trace(guest, steps: int) -> list[str]:
    """Step the guest, one line per step: EIP, the ring the guest believes it is in (and the
    hardware's where that differs), the instruction, and what the VMM did on the way."""
    lines: list[str] = []
    seen: list = []
    stop_watching = guest.on_event(seen.append)
    try:
        for _ in range(steps):
            view = guest.view()
            found = view.disassemble(before=0, after=0)
            text = found[0].text if found else "(outside memory)"
            ring = f"ring {view.guest.cpl}"
            if view.hardware.cpl != view.guest.cpl:
                ring += f" (hardware ring {view.hardware.cpl})"
            lines.append(f"{view.eip:08x}  {ring}  {text}")
            seen.clear()
            result = guest.step()
            lines += [f"          -> {e.kind} {e.action}: {e.text}" for e in seen]
            if result.status not in ("stopped", "budget", "breakpoint"):
                lines.append(f"          the guest stopped: {result.status}")
                break
    finally:
        stop_watching()
    return lines


def _counts(counts: dict) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in counts.items()) or "none"


def stats_table(stats: dict) -> str:
    """The statistics as aligned lines (a VM's: exits, emulation, shadow paging)."""
    rows = [
        ("instructions", f"{stats['instructions']:,}"),
        ("cycles", f"{stats['cycles']:,}"),
        ("idle cycles", f"{stats['idle_cycles']:,}"),
        ("system calls", f"{stats['syscalls']:,}"),
    ]
    if "pv_ops" in stats:
        rows.append(("pv_ops path", stats["pv_ops"]))
    if stats.get("mode", "native") in ("native", "containers"):  # (no VMM: no exits)
        if stats.get("mode") == "containers":
            rows.append(("exits", "0 (containers share the kernel on bare metal: no VMM)"))
        rows += [
            ("interrupts", f"{stats['interrupts']:,}"),
            ("page walks", f"{stats['page_walks']:,}"),
            ("TLB flushes", f"{stats['tlb_flushes']:,}"),
            ("faults", _counts(stats["faults"])),
        ]
    else:
        rows += [
            ("VMM cycles", f"{stats['vmm_cycles']:,}"),
            ("exits", f"{stats['exits']:,}  ({_counts(stats['exits_by_reason'])})"),
            ("emulated", _counts(stats["emulated"])),
            ("injected", f"{stats['injected']:,}"),
            ("reflected", f"{stats['reflected']:,}"),
            ("callouts", f"{stats['callouts']:,}"),
            ("lost ticks", f"{stats['lost_ticks']:,}"),
            ("shadow paging", _counts(stats["shadow"])),
        ]
        if "patched_sites" in stats:  # (the VMMs that rewrite the kernel's sensitive sites)
            rows.append(("patched sites", f"{stats['patched_sites']:,}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
