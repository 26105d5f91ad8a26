"""`platewatch`: one command, lazy subcommands.

Each subcommand lives in its service and exposes ``main(argv: list[str]) -> int``; only this
module names several services. A subcommand whose issue is not built yet says so and exits 3.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

NOT_BUILT_EXIT: Final = 3


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    target: str | None  # "module:function", or None while its issue is open
    issue: str = ""


COMMANDS: Final = (
    Command("edge", "Run an edge node: cameras -> plates -> MQTT.", None, "the edge-node issue"),
    Command(
        "correlator",
        "Run the correlator: MQTT -> DB, watch-lists, alerts.",
        "services.correlator.__main__:main",
        "issue 5",
    ),
    Command("api", "Run the operator REST API and web app.", None, "the operator web app issue"),
    Command("demo", "Run the single-machine demo on embedded defaults.", "services.demo:main"),
    Command(
        "eval",
        "Evaluate plate recognition on a labels.jsonl folder.",
        "services.edge.eval:main",
        "issue 3",
    ),
    Command(
        "bench",
        "Benchmarks: recognition (default), correlator, matching, retro.",
        "services.bench:main",
    ),
    Command("db", "Database: `db upgrade` runs the migrations.", "services.db_cli:main", "issue 5"),
    Command(
        "lists",
        "Watch-lists and allow-lists: show, create, import CSV.",
        "services.correlator.lists_cli:main",
    ),
    Command(
        "registry",
        "Sites, nodes and cameras: show; set location, time zone, node key, gate.",
        "services.correlator.registry_cli:main",
    ),
    Command(
        "docs",
        "Regenerate docs/mqtt.md, docs/schemas/ and docs/configuration.md from the code.",
        "services.docs:main",
    ),
)


def _resolve(target: str) -> Callable[[list[str]], int] | None:
    module_name, _, func = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
            return None  # the module itself is not written yet
        raise
    entry: Callable[[list[str]], int] = getattr(module, func)
    return entry


def _not_built(cmd: Command, argv: list[str]) -> int:
    where = f" ({cmd.issue})" if cmd.issue else ""
    if any(a in ("-h", "--help") for a in argv):
        print(
            f"usage: platewatch {cmd.name} [...]\n\n{cmd.summary}\n\n"
            f"Not built yet{where}: this command does nothing today."
        )
        return 0
    print(f"platewatch {cmd.name}: not built yet{where}.", file=sys.stderr)
    return NOT_BUILT_EXIT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="platewatch",
        description="Multi-site licence-plate recognition: edge, correlator, operator API.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `platewatch COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS:
        sub.add_parser(cmd.name, help=cmd.summary, add_help=False)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"platewatch {version('platewatch')}"
    except PackageNotFoundError:
        return "platewatch (not installed)"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not args or args[0] in ("-h", "--help", "--version"):
        parser.parse_args(args or ["--help"])
        return 0
    by_name = {c.name: c for c in COMMANDS}
    cmd = by_name.get(args[0])
    if cmd is None:
        parser.parse_args(args[:1])  # prints the usage error and exits 2
        return 2
    entry = _resolve(cmd.target) if cmd.target else None
    if entry is None:
        return _not_built(cmd, args[1:])
    return entry(args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
