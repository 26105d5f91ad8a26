"""`platewatch bench matching`: build a `WatchIndex` of N random entries and time `match`.

Entries use realistic plate formats (`shared.plates.DEFAULT_FORMATS`), 80% exact, 15% fuzzy
(``--loose-share`` of those, default 1%, with ``max_cost`` 2.0, which makes every plate look up
its two-deletion neighbourhood; the rest on the 1.0 default) and 5% wildcard (one or two ``?``,
a known start or end of 4-5 characters plus ``*``, or ``*MIDDLE*``); 10% of all entries carry a
validity window. Queries: 30% plates of exact entries, 30% confused or edited
variants of fuzzy entries, 10% plates fitting wildcard entries, 30% fresh random plates (mostly
misses). Prints a table and writes JSON; never run by pytest.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from services.correlator.matching import (
    CONFUSION_CLASSES,
    MatchMode,
    WatchEntry,
    WatchIndex,
)
from shared.machine import git_sha
from shared.plates import DEFAULT_FORMATS

NOW: Final = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
LETTERS: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DIGITS: Final = "0123456789"
FORMATS: Final = tuple(p for f in DEFAULT_FORMATS.values() for p in f.patterns)
CATEGORIES: Final = ("stolen", "wanted", "expired-insurance", "allow", "vip")
_PARTNER: Final = {ch: cls.replace(ch, "") for cls in CONFUSION_CLASSES for ch in cls}
_SAMPLE_EVERY: Final = 97


@dataclass
class Samples:
    """A few patterns per mode kept while generating, to build hitting queries."""

    exact: list[str] = field(default_factory=list)
    fuzzy: list[str] = field(default_factory=list)
    wildcard: list[str] = field(default_factory=list)


def random_plate(rng: random.Random) -> str:
    fmt = rng.choice(FORMATS)
    return "".join(
        rng.choice(LETTERS) if c == "L" else rng.choice(DIGITS) if c == "N" else rng.choice(c)
        for c in fmt
    )


def random_wildcard(rng: random.Random, plate: str) -> str:
    roll = rng.random()
    if roll < 0.5:  # one or two unknown characters
        chars = list(plate)
        for i in rng.sample(range(len(chars)), rng.choice((1, 2))):
            chars[i] = "?"
        return "".join(chars)
    if roll < 0.85:  # known start
        return plate[: rng.randint(4, 5)] + "*"
    if roll < 0.97:  # known end
        return "*" + plate[-rng.randint(4, 5) :]
    start = rng.randint(1, 2)  # known middle only
    return "*" + plate[start : start + 4] + "*"


def random_entries(
    n: int, rng: random.Random, samples: Samples, loose_share: float = 0.01
) -> Iterator[WatchEntry]:
    for entry_id in range(n):
        plate = random_plate(rng)
        roll = rng.random()
        max_cost: float | None = None
        if roll < 0.80:
            mode, pattern = MatchMode.EXACT, plate
            bucket = samples.exact
        elif roll < 0.95:
            mode, pattern = MatchMode.FUZZY, plate
            max_cost = 2.0 if rng.random() < loose_share else None
            bucket = samples.fuzzy
        else:
            mode, pattern = MatchMode.WILDCARD, random_wildcard(rng, plate)
            bucket = samples.wildcard
        if entry_id % _SAMPLE_EVERY == 0:
            bucket.append(pattern)
        valid_from = valid_until = None
        if rng.random() < 0.10:
            valid_from = NOW + timedelta(days=rng.randint(-60, 5))
            valid_until = valid_from + timedelta(days=rng.randint(1, 90))
        yield WatchEntry(
            entry_id=entry_id,
            list_id=rng.randint(1, 50),
            pattern=pattern,
            mode=mode,
            category=rng.choice(CATEGORIES),
            priority=rng.randint(0, 3),
            valid_from=valid_from,
            valid_until=valid_until,
            max_cost=max_cost,
        )


def confused(rng: random.Random, plate: str) -> str:
    """One or two OCR confusions, or else one ordinary substitution, insertion or deletion."""
    chars = list(plate)
    swappable = [i for i, c in enumerate(chars) if c in _PARTNER]
    if swappable and rng.random() < 0.7:
        for i in rng.sample(swappable, min(len(swappable), rng.choice((1, 2)))):
            chars[i] = rng.choice(_PARTNER[chars[i]])
        return "".join(chars)
    i = rng.randrange(len(chars))
    kind = rng.randrange(3)
    if kind == 0:
        chars[i] = rng.choice(LETTERS + DIGITS)
    elif kind == 1:
        chars.insert(i, rng.choice(LETTERS + DIGITS))
    elif len(chars) > 1:
        del chars[i]
    return "".join(chars)


def fill_wildcard(rng: random.Random, pattern: str) -> str:
    out = []
    for c in pattern:
        if c == "?":
            out.append(rng.choice(LETTERS + DIGITS))
        elif c == "*":
            out.append("".join(rng.choice(LETTERS + DIGITS) for _ in range(rng.randint(0, 3))))
        else:
            out.append(c)
    return "".join(out)


def make_queries(n: int, rng: random.Random, samples: Samples) -> list[tuple[str, str]]:
    queries = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.30 and samples.exact:
            queries.append(("exact-hit", rng.choice(samples.exact)))
        elif roll < 0.60 and samples.fuzzy:
            queries.append(("fuzzy-variant", confused(rng, rng.choice(samples.fuzzy))))
        elif roll < 0.70 and samples.wildcard:
            queries.append(("wildcard-hit", fill_wildcard(rng, rng.choice(samples.wildcard))))
        else:
            queries.append(("random", random_plate(rng)))
    return queries


def rss_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentiles(values_us: list[float]) -> dict[str, float]:
    ordered = sorted(values_us)
    q = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered
    return {
        "p50_us": round(statistics.median(ordered), 1),
        "p99_us": round(q[98] if len(q) > 98 else ordered[-1], 1),
        "max_us": round(ordered[-1], 1),
        "mean_us": round(statistics.fmean(ordered), 1),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="platewatch bench matching",
        description="Time watch-list matching against N random entries.",
    )
    parser.add_argument("--entries", type=int, default=1_000_000, help="Entries to index.")
    parser.add_argument("--queries", type=int, default=20_000, help="Plates to match.")
    parser.add_argument("--updates", type=int, default=2_000, help="Single adds and removes.")
    parser.add_argument("--seed", type=int, default=1, help="Random seed.")
    parser.add_argument(
        "--loose-share",
        type=float,
        default=0.01,
        help="Share of fuzzy entries with max_cost 2.0 (0 keeps every plate on 1 deletion).",
    )
    parser.add_argument("--batch", type=_positive, default=500, help="Plates per match_many call.")
    parser.add_argument("--json", type=Path, default=None, help="Write the results here.")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"want a positive integer, got {text!r}")
    return value


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    rng = random.Random(args.seed)
    samples = Samples()
    gc.collect()
    rss_before = rss_mib()

    index = WatchIndex()
    gen_s = build_s = 0.0
    stream = random_entries(args.entries, rng, samples, args.loose_share)
    while True:
        t0 = time.perf_counter()
        chunk = [e for _, e in zip(range(65_536), stream, strict=False)]
        t1 = time.perf_counter()
        if not chunk:
            break
        index.add_many(chunk)
        t2 = time.perf_counter()
        gen_s += t1 - t0
        build_s += t2 - t1
    del chunk
    gc.collect()
    rss_built = rss_mib()

    queries = make_queries(args.queries, rng, samples)
    times: dict[str, list[float]] = {}
    cpu_times: list[float] = []
    hits: dict[str, int] = {}
    for kind, plate in queries:
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        found = index.match(plate, NOW)
        elapsed = (time.perf_counter_ns() - t0) / 1000
        cpu_times.append((time.thread_time_ns() - c0) / 1000)
        times.setdefault(kind, []).append(elapsed)
        hits[kind] = hits.get(kind, 0) + bool(found)
    all_times = [t for ts in times.values() for t in ts]

    # The same plates matched in batches, as the correlator matches a batch of sightings.
    plates = [plate for _, plate in queries]
    batch_hits = 0
    c0 = time.thread_time_ns()
    for start in range(0, len(plates), args.batch):
        found_many = index.match_many(plates[start : start + args.batch], NOW)
        batch_hits += sum(bool(m) for m in found_many)
    batch_cpu_us = (time.thread_time_ns() - c0) / 1000 / max(1, len(plates))
    if batch_hits != sum(hits.values()):  # match_many must find what match finds
        raise RuntimeError(f"match_many found {batch_hits} plates, match {sum(hits.values())}")

    add_us: list[float] = []
    remove_us: list[float] = []
    extra = list(random_entries(args.updates, rng, Samples(), args.loose_share))
    for i, e in enumerate(extra):
        e = WatchEntry(
            args.entries + i, e.list_id, e.pattern, e.mode, e.category, e.priority,
            e.valid_from, e.valid_until, e.max_cost,
        )  # fmt: skip
        t0 = time.perf_counter_ns()
        index.add(e)
        add_us.append((time.perf_counter_ns() - t0) / 1000)
    for entry_id in rng.sample(range(args.entries), min(args.updates, args.entries)):
        t0 = time.perf_counter_ns()
        index.remove(entry_id)
        remove_us.append((time.perf_counter_ns() - t0) / 1000)

    t0 = time.perf_counter()
    index.compact()  # what a quarter of rows dead would trigger; merges pending keys too
    compact_s = time.perf_counter() - t0

    result = {
        "benchmark": "matching",
        "git_sha": git_sha(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "python": sys.version.split()[0],
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "entries": args.entries,
        "queries": args.queries,
        "seed": args.seed,
        "loose_share": args.loose_share,
        "generate_s": round(gen_s, 2),
        "build_s": round(build_s, 2),
        "build_entries_per_s": round(args.entries / build_s) if build_s else None,
        "index_nbytes_mib": round(index.nbytes / 2**20, 1),
        "rss_before_mib": round(rss_before, 1),
        "rss_built_mib": round(rss_built, 1),
        "rss_index_mib": round(rss_built - rss_before, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "match": percentiles(all_times),
        "match_cpu": percentiles(cpu_times),
        "batch": args.batch,
        "match_many_cpu_us_per_plate": round(batch_cpu_us, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "match_by_kind": {
            kind: {**percentiles(ts), "n": len(ts), "hit_rate": round(hits[kind] / len(ts), 3)}
            for kind, ts in sorted(times.items())
        },
        "add_one": percentiles(add_us) if add_us else None,
        "remove_one": percentiles(remove_us) if remove_us else None,
        "compact_s": round(compact_s, 3),
    }
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
