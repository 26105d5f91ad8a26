"""`platewatch db`: database administration (reads db.url from the correlator's settings)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.correlator.config import CorrelatorSettings
from shared.errors import ConfigError
from shared.settings import DbSettings, load_settings
from shared.store import migrate


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="platewatch db", description="Database administration.")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, helptext in (
        ("upgrade", "Apply the migrations up to REVISION (default head)."),
        ("downgrade", "Revert the migrations down to REVISION."),
        ("current", "Print the applied revision."),
    ):
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument("--url", help="SQLAlchemy URL (default: db.url of the correlator config).")
        p.add_argument("--config", type=Path, help="Correlator YAML config to read db.url from.")
        if name != "current":
            p.add_argument("revision", nargs="?", default="head" if name == "upgrade" else None)
    args = parser.parse_args(argv)
    try:
        url = args.url or load_settings(CorrelatorSettings, args.config).db.url
    except ConfigError as exc:
        print(f"platewatch db: {exc}", file=sys.stderr)
        return 2
    if args.action == "upgrade":
        migrate.upgrade(url, args.revision)
        print(
            f"database at {migrate.head_revision() if args.revision == 'head' else args.revision}"
        )
    elif args.action == "downgrade":
        if not args.revision:
            parser.error("downgrade needs a REVISION (e.g. base)")
        migrate.downgrade(url, args.revision)
    else:
        from shared.store.db import make_engine

        print(migrate.current_revision(make_engine(DbSettings(url=url))) or "(empty database)")
    return 0
