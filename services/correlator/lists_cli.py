"""`platewatch lists`: manage watch-lists and allow-lists until the operator web app lands.

Every change is written to the audit log and announced on Redis, so running correlators reload
the list at once (and retro-hunt new entries).
"""

from __future__ import annotations

import argparse
import csv
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from services.correlator.announce import announce
from services.correlator.config import CorrelatorSettings
from services.correlator.matching import MatchingError, MatchMode, WatchEntry
from services.correlator.registry_cli import RegistryError, check_name
from shared.errors import ConfigError, PayloadError
from shared.events import utc_now
from shared.plates import normalise_plate
from shared.settings import load_settings
from shared.store import models as m
from shared.store import repository as repo
from shared.store.db import make_engine, session_factory

CSV_COLUMNS = ("pattern", "mode", "category", "priority", "valid_from", "valid_until", "reason")


class CsvError(PayloadError):
    """A bad CSV row: names the file, line and column."""


def _time(value: str, where: str) -> datetime | None:
    if not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise CsvError(where, value, "not an ISO 8601 time") from exc
    if parsed.tzinfo is None:
        raise CsvError(where, value, "needs a time zone, e.g. 2026-12-01T00:00:00Z")
    return parsed


def parse_csv(path: Path, default_category: str) -> list[dict[str, Any]]:
    """Rows of a watch-list CSV (header: pattern[,mode,category,priority,valid_from,...])."""
    rows: list[dict[str, Any]] = []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        unknown = set(reader.fieldnames or ()) - set(CSV_COLUMNS)
        if "pattern" not in (reader.fieldnames or ()) or unknown:
            raise CsvError(f"{path}:1", sorted(unknown), f"header must be among {CSV_COLUMNS}")
        for line, raw in enumerate(reader, start=2):
            where = f"{path}:{line}"
            mode = (raw.get("mode") or "exact").strip().lower()
            pattern = raw["pattern"] or ""
            if mode == "wildcard":
                pattern = "".join(ch for ch in pattern.upper() if ch.isalnum() or ch in "?*")
            else:
                pattern = normalise_plate(pattern)
            category = (raw.get("category") or default_category).strip().lower()
            valid_from = _time(raw.get("valid_from") or "", f"{where} valid_from")
            valid_until = _time(raw.get("valid_until") or "", f"{where} valid_until")
            try:  # the matcher's own validation: mode, pattern, priority and window
                priority = int(raw.get("priority") or 50)
                WatchEntry(
                    0, 0, pattern, MatchMode(mode), category, priority, valid_from, valid_until
                )
            except (MatchingError, ValueError) as exc:
                raise CsvError(where, dict(raw), str(exc)) from exc
            rows.append(
                {
                    "pattern": pattern,
                    "mode": mode,
                    "category": category,
                    "priority": priority,
                    "valid_from": valid_from,
                    "valid_until": valid_until,
                    "reason": (raw.get("reason") or "").strip(),
                }
            )
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="platewatch lists", description=__doc__)
    parser.add_argument("--config", type=Path, help="Correlator YAML (for db and redis).")
    parser.add_argument("--actor", default="cli", help="Who makes the change (audit log).")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = sub.add_parser("show", help="List the lists and their entry counts.")
    show.set_defaults(action="show")
    create = sub.add_parser("create", help="Create a list.")
    create.add_argument("name")
    create.add_argument("--kind", choices=m.LIST_KINDS, default="watch")
    create.add_argument("--category", choices=m.CATEGORIES, default="custom")
    create.add_argument(
        "--severity", choices=("info", "low", "medium", "high", "critical"), default="high"
    )
    create.add_argument("--site", help="Site the list applies to (required for allow-lists).")
    create.add_argument("--fuzzy-max-cost", type=float, default=1.0)
    imp = sub.add_parser("import", help="Add the entries of a CSV file to a list.")
    imp.add_argument("name")
    imp.add_argument("csv", type=Path)
    imp.add_argument(
        "--no-retro-hunt",
        dest="retro_hunt",
        action="store_false",
        help="Do not match the new entries against stored sightings (for example a first "
        "import of a large list whose past hits are not wanted as alerts).",
    )
    args = parser.parse_args(argv)
    try:  # the audit log's actor, the entries' owner and the list's name: 128-wide columns
        check_name("--actor", args.actor)
        check_name("NAME", getattr(args, "name", ""))
        settings = load_settings(CorrelatorSettings, args.config)
    except (ConfigError, RegistryError) as exc:
        print(f"platewatch lists: {exc}", file=sys.stderr)
        return 2
    sessions = session_factory(make_engine(settings.db))
    now = utc_now()
    changed: tuple[int, int] | None = None
    try:
        with sessions.begin() as s:
            if args.action == "show":
                for wl in repo.all_lists(s):
                    print(
                        f"{wl.id:>4} {wl.name:<32} {wl.kind:<5} {wl.category:<8} "
                        f"{wl.site_id or '*':<12} entries={len(wl.entries)} v{wl.version}"
                    )
                return 0
            if args.action == "create":
                if args.kind == "allow" and not args.site:
                    parser.error("an allow-list needs --site")
                wl = repo.create_list(
                    s,
                    args.name,
                    now,
                    kind=args.kind,
                    site_id=args.site,
                    category=args.category,
                    severity=args.severity,
                    fuzzy_max_cost=args.fuzzy_max_cost,
                    owner=args.actor,
                )
                repo.audit(
                    s, now, args.actor, "list.create", "watch_list", str(wl.id), {"name": args.name}
                )
                print(f"created list {wl.id} {args.name!r}")
            else:
                found = s.scalars(select(m.WatchList).where(m.WatchList.name == args.name)).first()
                if found is None:
                    print(f"platewatch lists: no list named {args.name!r}", file=sys.stderr)
                    return 2
                wl = found
                entries = parse_csv(args.csv, wl.category)
                repo.add_entries(
                    s,
                    wl,
                    [{**e, "owner": args.actor} for e in entries],
                    now,
                    retro_hunt=args.retro_hunt,
                )
                repo.audit(
                    s,
                    now,
                    args.actor,
                    "list.import",
                    "watch_list",
                    str(wl.id),
                    {"file": str(args.csv), "entries": len(entries), "retro_hunt": args.retro_hunt},
                )
                print(f"imported {len(entries)} entries into {args.name!r}")
            changed = (wl.id, wl.version)
    except (CsvError, PayloadError, OSError) as exc:
        print(f"platewatch lists: {exc}", file=sys.stderr)
        return 2
    if changed is not None:
        list_id, version = changed
        announce(settings, "platewatch lists", lambda s: s.publish_list_change(list_id, version))
    return 0
