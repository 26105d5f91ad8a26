"""`platewatch bench retro`: how long a retro-hunt chunk takes over a large window.

A fresh PostgreSQL schema gets `--sightings` sightings of `--plates` random plates spread over
`--days` days at 10 sites (COPY, as ingest stores them); then each chunk of `--chunks` (EXACT:FUZZY
entry counts, patterns drawn from the stored plates, so every entry hits) is hunted as the
correlator's hunter thread does (`retro.retro_hunt`: the chunk's index, the distinct-plate pass
when fuzzy entries are among them, the bounded newest-hits heaps, the alerts built), timed on
one thread. Prints a table and writes JSON; a benchmark, never a test of time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from services.correlator.bench import DEFAULT_DB, bench_schema, past_read
from services.correlator.bench_matching import random_plate
from services.correlator.lists import ListInfo
from services.correlator.matching import MatchMode, WatchEntry
from services.correlator.retro import retro_hunt
from shared.events import utc_now
from shared.machine import cpu_model, git_sha
from shared.settings import DbSettings
from shared.store import repository as repo
from shared.store.db import make_engine, session_factory

SITES = 10


def parse_chunks(text: str) -> list[tuple[int, int]]:
    """'100:0,96:4' -> [(100, 0), (96, 4)]: exact and fuzzy entries of each chunk. Pure."""
    chunks = []
    for part in text.split(","):
        exact, _, fuzzy = part.partition(":")
        try:
            pair = (int(exact), int(fuzzy or 0))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"want EXACT:FUZZY counts, got {part!r}") from exc
        if min(pair) < 0 or sum(pair) == 0:
            raise argparse.ArgumentTypeError(f"want counts >= 0, not both 0, got {part!r}")
        chunks.append(pair)
    return chunks


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="platewatch bench retro", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--db-url", default=os.environ.get("PW_BENCH_DB", DEFAULT_DB), help="PostgreSQL URL."
    )
    ap.add_argument("--sightings", type=int, default=300_000)
    ap.add_argument("--plates", type=int, default=100_000, help="distinct plates among them")
    ap.add_argument("--days", type=int, default=14, help="the window (matching.retro_hunt_days)")
    ap.add_argument("--chunks", type=parse_chunks, default=parse_chunks("100:0,96:4,1000:0,960:40"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--keep-schema", action="store_true")
    return ap


def _store(url: str, args: argparse.Namespace, rng: random.Random) -> tuple[list[str], float]:
    sessions = session_factory(make_engine(DbSettings(url=url)))
    now = utc_now()
    plates = [random_plate(rng) for _ in range(args.plates)]
    started = time.perf_counter()
    with sessions.begin() as s:
        pairs = {(f"site-{i}", "cam-1", f"edge-{i}") for i in range(SITES)}
        repo.ensure_sites_and_cameras(s, pairs, now)
    for start in range(0, args.sightings, 10_000):
        reads = []
        for i in range(start, min(start + 10_000, args.sightings)):
            plate = plates[i % len(plates)]
            seen = now - timedelta(seconds=rng.randrange(args.days * 86_400))
            k = rng.randrange(SITES)
            reads.append(past_read(plate, seen, k, f"t{i}", first_seen=seen - timedelta(seconds=2)))
        with sessions.begin() as s:
            repo.insert_sightings(s, reads, now)
    with sessions.begin() as s:
        s.execute(sa.text("ANALYZE sighting"))
    return plates, time.perf_counter() - started


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.sightings < 1 or not 1 <= args.plates <= args.sightings or args.days < 1:
        print(
            "platewatch bench retro: want sightings >= plates >= 1 and days >= 1", file=sys.stderr
        )
        return 2
    rng = random.Random(args.seed)
    rows: list[dict[str, Any]] = []
    with bench_schema(args.db_url, args.keep_schema) as (_schema, url):
        plates, store_s = _store(url, args, rng)
        print(f"stored {args.sightings} sightings of {args.plates} plates in {store_s:.1f} s")
        info = {1: ListInfo(1, "bench", "watch", None, "stolen", "high", 1.0, 1)}
        sessions = session_factory(make_engine(DbSettings(url=url)))
        print(f"{'exact':>6} {'fuzzy':>6} {'seconds':>8} {'alerts':>7}")
        for n_exact, n_fuzzy in args.chunks:
            modes = [MatchMode.EXACT] * n_exact + [MatchMode.FUZZY] * n_fuzzy
            entries = [
                WatchEntry(
                    entry_id=i,
                    list_id=1,
                    pattern=rng.choice(plates),
                    mode=mode,
                    category="stolen",
                    priority=50,
                    max_cost=1.0,
                )
                for i, mode in enumerate(modes)
            ]
            with sessions() as s:
                started = time.perf_counter()
                alerts = retro_hunt(s, entries, info, utc_now(), args.days)
                took = time.perf_counter() - started
            rows.append(
                {"exact": n_exact, "fuzzy": n_fuzzy, "seconds": took, "alerts": len(alerts)}
            )
            print(f"{n_exact:>6} {n_fuzzy:>6} {took:>8.2f} {len(alerts):>7}")
    if args.json:
        doc = {
            "git_sha": git_sha(),
            "date": utc_now().isoformat(),
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "sightings": args.sightings,
            "plates": args.plates,
            "days": args.days,
            "store_seconds": store_s,
            "chunks": rows,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0
