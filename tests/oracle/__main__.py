"""Show or check generated programs: ``PYTHONPATH=tests python -m oracle --seed 12``."""

from __future__ import annotations

import argparse
import sys

from .generator import FAMILIES, generate
from .runner import Oracle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oracle", description=__doc__)
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--count", type=int, default=1, help="how many seeds from --seed")
    parser.add_argument("--family", choices=sorted(FAMILIES), help="bias towards one family")
    parser.add_argument("--show", action="store_true", help="print the source, do not run it")
    parser.add_argument("--nasm", action="store_true", help="assemble with NASM (triage)")
    args = parser.parse_args(argv)
    if args.show:
        for seed in range(args.seed, args.seed + args.count):
            print(f"; seed {seed}")
            print(generate(seed, args.family).source())
        return 0
    oracle = Oracle("nasm" if args.nasm else None)
    failures = 0
    for seed in range(args.seed, args.seed + args.count):
        failure = oracle.check_seed(seed, args.family)
        if failure is not None:
            failures += 1
            print(failure, end="\n\n")
    print(f"{args.count - failures} of {args.count} programs agree")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
