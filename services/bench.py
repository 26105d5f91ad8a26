"""`platewatch bench [recognition|correlator|matching|retro]`: dispatch to each benchmark's main."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Final

TARGETS: Final = {
    "recognition": "services.edge.bench",
    "correlator": "services.correlator.bench",
    "matching": "services.correlator.bench_matching",
    "retro": "services.correlator.bench_retro",
}


def main(argv: list[str]) -> int:
    if argv and argv[0] in TARGETS:
        target, rest = argv[0], argv[1:]
    elif not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        target, rest = "recognition", argv
    else:
        parser = argparse.ArgumentParser(
            prog="platewatch bench",
            description="Benchmarks; each prints a table and writes JSON. "
            "`platewatch bench TARGET --help` for its options.",
        )
        parser.add_argument("target", choices=sorted(TARGETS), help="What to measure.")
        parser.parse_args(argv[:1])
        return 2
    try:
        module = importlib.import_module(TARGETS[target])
    except ModuleNotFoundError as exc:
        if exc.name and TARGETS[target].startswith(exc.name):
            print(f"platewatch bench {target}: not built yet.", file=sys.stderr)
            return 3
        raise
    result: int = module.main(rest)
    return result
