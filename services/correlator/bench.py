"""`platewatch bench correlator`: load through the real broker into PostgreSQL, as deployed.

What it does (issue 5):

1. Creates a schema of its own (``bench_<random>``) in the database, migrates it to head and
   bulk-loads N watch-list entries (95% exact, 4% fuzzy, 1% wildcard with ``?``) into 10 lists.
2. For each K in ``--processes``: starts K correlators as real subprocesses
   (``python -m services.correlator --instance bench-…``) on a topic root and Redis prefix of
   their own, waits for them to log "correlator started", then for warm-up events to be stored.
3. Throughput: publishes ``--events`` pre-encoded PlateRead events (QoS 1) as fast as one
   publisher can, but never more than ``--window`` per process ahead of the rows committed (the
   broker drops QoS 1 messages beyond its per-client queue, mosquitto's default 1,000). The
   sustained rate is rows committed per second between 10% and 90% of the run (``count(*)`` of
   ``sighting``, polled).
4. Latency (on the K = ``--latency-processes`` run): publishes at each ``--rate`` events/s; a
   share ``--hit-ratio`` of plates is on a watch-list. A subscriber on the alert topic records,
   for each alert, its arrival time minus the publish time of the sighting behind it (same clock:
   one machine): p50/p90/p99/max, split at the alert's ``raised_at``. A run whose backlog passes
   ``--window`` stops early (``kept_up: false``): the processes cannot sustain that rate.
5. Prints a table and writes JSON after every run (git sha, uncommitted files, date, CPU model,
   cores, versions, settings, CPU seconds used per component during each run, whether PostgreSQL
   restarted meanwhile). Drops the schema at the end.

Rows are counted by event id (UUIDv7, time-ordered) from the run's first event on, so nothing
published before a run (warm-up, or a redelivery after a restart) counts towards it.
See docs/performance.md for figures.

Never run by pytest with real sizes; `tests/integration/test_bench_correlator.py` runs it tiny.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import itertools
import json
import logging
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
import sqlalchemy.orm

from services.correlator.bench_matching import random_plate, random_wildcard
from shared.events import PlateRead, encode_event
from shared.machine import cpu_model, git_sha
from shared.mqtt import Delivery, MqttClient, PublishResult
from shared.settings import MqttSettings
from shared.store import migrate
from shared.store import models as m
from shared.store import repository as repo
from shared.topics import alert_filter, plate_topic

log = logging.getLogger(__name__)

DEFAULT_DB: Final = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SITES: Final = tuple(f"site-{i:02d}" for i in range(10))
CAMERAS: Final = ("cam-1", "cam-2")
LISTS: Final = 10
CATEGORIES: Final = ("stolen", "wanted", "banned", "custom")
TARGET_EVENTS_PER_S: Final = 10_000
TARGET_P99_MS: Final = 100.0
TARGET_RATE: Final = 1_000
_POLL_S: Final = 0.1
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


# -- data ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outgoing:
    """One pre-encoded event: where it goes and what it is."""

    topic: str
    payload: bytes
    event_id: uuid.UUID
    hit: bool


def schema_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


@contextlib.contextmanager
def bench_schema(base_url: str, keep: bool = False) -> Iterator[tuple[str, str]]:
    """A fresh schema migrated to head; yields (name, URL) and drops it afterwards."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = schema_url(base_url, schema)
    try:
        migrate.upgrade(url)
        yield schema, url
    finally:
        if not keep:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def load_entries(engine: sa.Engine, n: int, rng: random.Random) -> tuple[list[str], dict[str, Any]]:
    """Bulk-load n entries into LISTS watch-lists; returns the exact patterns and a summary."""
    now = datetime.now(UTC)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        list_ids = []
        for i in range(LISTS):
            row = conn.execute(
                sa.insert(m.WatchList)
                .values(
                    name=f"bench-{i}",
                    kind="watch",
                    category=CATEGORIES[i % len(CATEGORIES)],
                    severity="high",
                    fuzzy_max_cost=1.0,
                    description="",
                    owner="bench",
                    enabled=True,
                    version=1,
                    created_at=now,
                    updated_at=now,
                )
                .returning(m.WatchList.id)
            ).one()
            list_ids.append(int(row[0]))
        exact: list[str] = []
        seen: set[str] = set()
        counts = {"exact": 0, "fuzzy": 0, "wildcard": 0}
        rows: list[dict[str, Any]] = []
        insert = sa.insert(m.WatchEntry)
        while len(seen) < n:
            plate = random_plate(rng)
            if plate in seen:
                continue
            seen.add(plate)
            roll = rng.random()
            if roll < 0.95:
                mode, pattern = "exact", plate
                exact.append(plate)
            elif roll < 0.99:
                mode, pattern = "fuzzy", plate
            else:
                mode = "wildcard"
                pattern = random_wildcard(rng, plate)
                while "*" in pattern:  # `*` entries catch a share of random plates
                    pattern = random_wildcard(rng, plate)
            counts[mode] += 1
            list_id = list_ids[len(seen) % LISTS]
            rows.append(
                {
                    "list_id": list_id,
                    "pattern": pattern,
                    "mode": mode,
                    "category": CATEGORIES[(list_id - list_ids[0]) % len(CATEGORIES)],
                    "priority": 50,
                    "reason": "bench",
                    "owner": "bench",
                    "created_at": now,
                    "updated_at": now,
                    "hunted_at": now,  # no retro-hunt: the bench measures ingest
                }
            )
            if len(rows) == 10_000:
                conn.execute(insert, rows)
                rows = []
        if rows:
            conn.execute(insert, rows)
    summary = {"entries": n, **counts, "lists": LISTS, "load_s": round(time.perf_counter() - t0, 2)}
    return exact, summary


def make_events(
    n: int,
    rng: random.Random,
    root: str,
    hit_plates: Sequence[str],
    miss_guard: set[str],
    hit_ratio: float,
) -> list[Outgoing]:
    """n valid PlateReads, encoded once; a share `hit_ratio` carries a watch-listed plate."""
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        hit = bool(hit_plates) and rng.random() < hit_ratio
        if hit:
            plate = rng.choice(hit_plates)
        else:
            plate = random_plate(rng)
            while plate in miss_guard:
                plate = random_plate(rng)
        site, camera = SITES[i % len(SITES)], CAMERAS[(i // len(SITES)) % len(CAMERAS)]
        event = PlateRead(
            site=site,
            camera=camera,
            node=f"edge-{site[-2:]}",
            track_id=f"t-{i}",
            plate=plate,
            raw_text=plate,
            region="us",
            confidence=0.93,
            char_confidences=[0.9] * len(plate),
            candidates=[{"text": plate, "confidence": 0.93}],
            first_seen=now - timedelta(seconds=2),
            last_seen=now,
            captured_at=now - timedelta(seconds=1),
            frames=9,
            box={"x1": 100, "y1": 200, "x2": 220, "y2": 240},
        )
        out.append(
            Outgoing(plate_topic(site, camera, root), encode_event(event), event.event_id, hit)
        )
    return out


# -- measurement helpers ---------------------------------------------------------------------
class RowCounter:
    """Polls `count(*)` of sighting (and alert) on its own thread; samples (t, rows).

    Counts only the rows of a run's own events: event ids are UUIDv7, time-ordered, so every
    event made for the run has an id >= `since` and anything older (warm-up, a redelivery of an
    earlier run's event after a restart) has a smaller one.
    """

    def __init__(self, engine: sa.Engine, since: uuid.UUID) -> None:
        self._engine = engine
        self._since = since
        self.rows = 0
        self.alerts = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> tuple[int, int]:
        with self._engine.connect() as conn:
            since = {"since": self._since}
            rows = conn.execute(
                sa.text("SELECT count(*) FROM sighting WHERE event_id >= :since"), since
            ).scalar_one()
            alerts = conn.execute(
                # live alerts: a retro-hunt (--hunt-entries) may also alert on these sightings
                sa.text(
                    "SELECT count(*) FROM alert WHERE sighting_event_id >= :since "
                    "AND NOT historical"
                ),
                since,
            ).scalar_one()
        return int(rows), int(alerts)

    def start(self) -> None:
        self.samples = [(time.perf_counter(), self.rows)]
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bench-counter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.rows, self.alerts = self.read()
        self.samples.append((time.perf_counter(), self.rows))

    def _run(self) -> None:
        while not self._stop.wait(_POLL_S):
            try:
                self.rows, self.alerts = self.read()
            except sa.exc.OperationalError:  # e.g. PostgreSQL restarted: keep polling
                continue
            self.samples.append((time.perf_counter(), self.rows))


def crossing(samples: Sequence[tuple[float, int]], level: float) -> float | None:
    """Time the row count reached `level`, interpolated between samples."""
    for (t0, r0), (t1, r1) in itertools.pairwise(samples):
        if r1 >= level > r0:
            return t0 + (t1 - t0) * (level - r0) / (r1 - r0)
        if r0 >= level:
            return t0
    return None


def sustained_rate(samples: Sequence[tuple[float, int]], total: int) -> float | None:
    """Rows/s between 10% and 90% of `total` (leaves out ramp-up and the tail)."""
    lo, hi = crossing(samples, 0.1 * total), crossing(samples, 0.9 * total)
    if lo is None or hi is None or hi <= lo:
        return None
    return 0.8 * total / (hi - lo)


def proc_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (command name, CPU seconds so far) of every process we can read."""
    out: dict[int, tuple[str, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        out[int(entry.name)] = (comm, (int(fields[11]) + int(fields[12])) / _CLK_TCK)
    return out


def cpu_split(
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    correlators: Sequence[int],
) -> dict[str, float]:
    """CPU seconds used between two snapshots, by component."""
    split: dict[str, float] = {}
    for pid, (comm, cpu) in after.items():
        used = cpu - before.get(pid, (comm, 0.0))[1]
        if used <= 0:
            continue
        if pid in correlators:
            key = "correlators"
        elif pid == os.getpid():
            key = "bench (publisher, subscriber, poller)"
        elif comm.startswith(("postgres", "mosquitto", "redis")):
            key = comm.split(":")[0].split("-")[0]
        else:
            key = "other (e.g. model training)"
        split[key] = split.get(key, 0.0) + used
    return {k: round(v, 2) for k, v in sorted(split.items())}


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# -- the correlator processes ----------------------------------------------------------------
@dataclass
class Correlators:
    """K `python -m services.correlator` subprocesses sharing one topic root."""

    count: int
    db_url: str
    mqtt: tuple[str, int]
    redis_url: str
    root: str
    log_dir: Path
    overrides: dict[str, str]
    module: str = "services.correlator"
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self, instance: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PW_CORRELATOR_")}
        env.update(
            {
                "PW_CORRELATOR_INSTANCE": instance,
                "PW_CORRELATOR_DB__URL": self.db_url,
                "PW_CORRELATOR_MQTT__HOST": self.mqtt[0],
                "PW_CORRELATOR_MQTT__PORT": str(self.mqtt[1]),
                "PW_CORRELATOR_MQTT__TOPIC_ROOT": self.root,
                "PW_CORRELATOR_MQTT__SESSION_EXPIRY_S": "0",
                "PW_CORRELATOR_REDIS__URL": self.redis_url,
                "PW_CORRELATOR_REDIS__KEY_PREFIX": f"{self.root}:",
                "PW_CORRELATOR_LOG__LEVEL": "INFO",
            }
        )
        env.update({f"PW_CORRELATOR_{k.upper()}": v for k, v in self.overrides.items()})
        return env

    def log_path(self, i: int) -> Path:
        return self.log_dir / f"{self.root}-{i}.log"

    def start(self, timeout_s: float = 300.0) -> None:
        root_dir = Path(__file__).resolve().parents[2]
        for i in range(self.count):
            instance = f"bench-{self.root[-8:]}-{i}"
            with self.log_path(i).open("wb") as out:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", self.module, "--instance", instance],
                        env=self.env(instance),
                        cwd=root_dir,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + timeout_s
        pending = set(range(self.count))
        while pending:
            for i in list(pending):
                if b"correlator started" in self.log_path(i).read_bytes():
                    pending.discard(i)
                elif self.procs[i].poll() is not None:
                    raise RuntimeError(f"correlator {i} exited:\n{self.tail(i)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"correlators {sorted(pending)} did not start in {timeout_s}s")
            time.sleep(0.1)

    def tail(self, i: int, lines: int = 20) -> str:
        text = self.log_path(i).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def pause(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)  # in case a run stopped while they were paused
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# -- the runs --------------------------------------------------------------------------------
class AlertWatcher:
    """Arrival time of every alert on the bench's topic root (decoded after the run)."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, bytes]] = []
        #: arrivals that are not a retro-hunt's (compact JSON, as `encode_event` writes it)
        self.live = 0
        self._lock = threading.Lock()

    def on_alert(self, delivery: Delivery) -> None:
        now = time.time()
        with self._lock:
            self.arrivals.append((now, delivery.payload))
            self.live += b'"historical":true' not in delivery.payload

    def take(self) -> list[tuple[float, bytes]]:
        with self._lock:
            got, self.arrivals, self.live = self.arrivals, [], 0
        return got


def wait_stored(
    counter: RowCounter, total: int, procs: Correlators, stall_s: float
) -> tuple[int, bool]:
    """Wait until `total` rows are stored or nothing moved for `stall_s`; (rows, complete)."""
    last, moved = -1, time.monotonic()
    while True:
        rows = counter.rows
        if rows >= total:
            return rows, True
        if rows != last:
            last, moved = rows, time.monotonic()
        elif time.monotonic() - moved > stall_s:
            return rows, False
        for i, p in enumerate(procs.procs):
            if p.poll() is not None:
                raise RuntimeError(f"correlator {i} exited:\n{procs.tail(i)}")
        time.sleep(_POLL_S)


def warm_up(
    engine: sa.Engine, pub: MqttClient, procs: Correlators, rng: random.Random, stall_s: float
) -> None:
    """Until every process has stored something: camera registration and JIT-free start."""
    n = 20 * procs.count
    events = make_events(n, rng, procs.root, [], set(), 0.0)
    counter = RowCounter(engine, first_id(events))
    for e in events:
        pub.publish(e.topic, e.payload).wait()
    counter.rows, counter.alerts = counter.read()
    counter.start()
    rows, complete = wait_stored(counter, n, procs, stall_s)
    counter.stop()
    if not complete:
        raise RuntimeError(f"warm-up: {rows} of {n} events stored; are the correlators subscribed?")


def postmaster_start(engine: sa.Engine) -> str:
    """When PostgreSQL last started: a run during which it changed saw a restart."""
    with engine.connect() as conn:
        return str(conn.execute(sa.text("SELECT pg_postmaster_start_time()")).scalar_one())


def truncate(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE sighting, alert CASCADE"))


def batches(engine: sa.Engine, since: uuid.UUID) -> int:
    """Batches committed: a batch's sightings share one `received_at`."""
    query = "SELECT count(DISTINCT received_at) FROM sighting WHERE event_id >= :since"
    with engine.connect() as conn:
        return int(conn.execute(sa.text(query), {"since": since}).scalar_one())


def first_id(events: Sequence[Outgoing]) -> uuid.UUID:
    return min(e.event_id for e in events)


def throughput_run(
    engine: sa.Engine,
    pub: MqttClient,
    procs: Correlators,
    events: Sequence[Outgoing],
    window: int,
    stall_s: float,
    backlog: bool = False,
) -> dict[str, Any]:
    """Publish `events` and measure how fast they are stored. `backlog`: the correlators are
    paused (SIGSTOP) while every event is published, then resumed: the rate at which they
    drain a backlog, with the publisher no longer competing for the CPU (the broker must
    queue them all: max_queued_messages >= len(events))."""
    counter = RowCounter(engine, first_id(events))
    truncate(engine)
    counter.rows, counter.alerts = 0, 0
    total = len(events)
    if backlog:
        procs.pause()
        try:
            queued: PublishResult | None = None
            for e in events:
                queued = pub.publish(e.topic, e.payload)
            if queued is not None:
                queued.wait(timeout=120)
        finally:
            procs.resume()
    cpu0 = proc_cpu()
    counter.start()
    t0 = time.perf_counter()
    waited = 0.0
    last: PublishResult | None = None
    for i, e in enumerate([] if backlog else events):
        if i - counter.rows > window:
            w0 = time.perf_counter()
            while i - counter.rows > window:
                time.sleep(0.001)
            waited += time.perf_counter() - w0
        last = pub.publish(e.topic, e.payload)
    if last is not None:
        last.wait(timeout=60)
    t_pub = time.perf_counter() - t0
    _, complete = wait_stored(counter, total, procs, stall_s)
    counter.stop()
    elapsed = next((t for t, r in counter.samples if r >= total), counter.samples[-1][0]) - t0
    cpu = cpu_split(cpu0, proc_cpu(), procs.pids)
    n_batches = batches(engine, first_id(events))
    sustained = sustained_rate(counter.samples, total)
    stored = counter.rows
    return {
        "processes": procs.count,
        "mode": "backlog" if backlog else "live",
        "events": total,
        "stored": stored,
        "complete": complete and stored == total,
        "lost": total - stored,
        "alerts": counter.alerts,
        "elapsed_s": round(elapsed, 2),
        "publish_s": round(t_pub, 2),
        "publisher_waited_s": round(waited, 2),
        "events_per_s": round(stored / elapsed) if elapsed > 0 else None,
        "sustained_events_per_s": round(sustained) if sustained else None,
        "per_process_events_per_s": round(sustained / procs.count) if sustained else None,
        "batches": n_batches,
        "mean_batch_rows": round(stored / n_batches, 1) if n_batches else None,
        "cpu_s": cpu,
        "correlator_cpu_us_per_event": round(cpu.get("correlators", 0.0) / stored * 1e6)
        if stored
        else None,
    }


def latency_run(
    engine: sa.Engine,
    pub: MqttClient,
    watcher: AlertWatcher,
    procs: Correlators,
    events: Sequence[Outgoing],
    rate: float,
    window: int,
    stall_s: float,
    hunt: HuntLoad | None = None,
) -> dict[str, Any]:
    """Publish at `rate`; stop early when the backlog passes `window` (the rate is too high).
    With `hunt`, a retro-hunt is set going in the correlators just before publishing."""
    counter = RowCounter(engine, first_id(events))
    truncate(engine)
    hunt_info = hunt.start(engine) if hunt is not None else None
    counter.rows, counter.alerts = 0, 0
    watcher.take()
    sent: dict[uuid.UUID, float] = {}
    cpu0 = proc_cpu()
    counter.start()
    t0 = time.perf_counter()
    t0_wall = time.time()
    late = 0
    kept_up = True
    for i, e in enumerate(events):
        if i - counter.rows > window:
            kept_up = False
            break
        due = t0 + i / rate
        ahead = due - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
        elif ahead < -0.01:
            late += 1
        sent[e.event_id] = time.time()
        pub.publish(e.topic, e.payload)
    published = len(sent)
    t_pub = time.perf_counter() - t0
    rows, complete = wait_stored(counter, published, procs, stall_s)
    counter.stop()
    # Alerts are published after their batch commits: wait for as many as the table holds.
    deadline = time.monotonic() + stall_s
    while watcher.live < counter.alerts and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    cpu = cpu_split(cpu0, proc_cpu(), procs.pids)
    if hunt is not None and hunt_info is not None:
        hunt_info.update(hunt.finish(engine, t0_wall))
    latencies: list[float] = []
    to_raised: list[float] = []  # publish -> the batch that raised it started (queue, batching)
    after_raised: list[float] = []  # -> alert arrived (evaluate, commit, publish, broker)
    for arrived, payload in watcher.take():
        alert = json.loads(payload)
        if alert.get("historical"):
            continue  # a retro-hunt's (`--hunt-entries`), possibly of this run's sightings
        sighting = alert.get("sighting_event_id")
        sent_at = sent.get(uuid.UUID(sighting)) if sighting else None
        if sent_at is not None:
            latencies.append((arrived - sent_at) * 1000)
            raised = datetime.fromisoformat(alert["raised_at"]).timestamp()
            to_raised.append((raised - sent_at) * 1000)
            after_raised.append((arrived - raised) * 1000)
    latencies.sort()
    to_raised.sort()
    after_raised.sort()

    def ms(value: float) -> float | None:
        return round(value, 1) if latencies else None

    return {
        "processes": procs.count,
        "rate": rate,
        "events": len(events),
        "published": published,
        "kept_up": kept_up,
        "achieved_rate": round(published / t_pub, 1) if t_pub > 0 else None,
        "publishes_late_over_10ms": late,
        "stored": rows,
        "complete": complete and rows == published,
        "hits_published": sum(e.hit for e in events[:published]),
        "alerts_stored": counter.alerts,
        "alerts_received": len(latencies),
        "p50_ms": ms(percentile(latencies, 50)),
        "p90_ms": ms(percentile(latencies, 90)),
        "p99_ms": ms(percentile(latencies, 99)),
        "max_ms": ms(latencies[-1] if latencies else 0.0),
        "mean_ms": ms(statistics.fmean(latencies) if latencies else 0.0),
        "publish_to_raised_p50_p99_ms": [
            ms(percentile(to_raised, 50)),
            ms(percentile(to_raised, 99)),
        ],
        "raised_to_alert_p50_p99_ms": [
            ms(percentile(after_raised, 50)),
            ms(percentile(after_raised, 99)),
        ],
        "cpu_s": cpu,
        "hunt": hunt_info,
    }


def past_read(
    plate: str,
    seen: datetime,
    site: int,
    track_id: str,
    first_seen: datetime | None = None,
    event_id: uuid.UUID | None = None,
) -> PlateRead:
    """A read of `plate` at `seen` by camera cam-1 of site-{site} (node edge-{site}), to store
    as an older sighting (the benches that search stored sightings)."""
    extra = {"event_id": event_id} if event_id is not None else {}
    return PlateRead(
        site=f"site-{site}",
        camera="cam-1",
        node=f"edge-{site}",
        track_id=track_id,
        plate=plate,
        raw_text=plate,
        confidence=0.9,
        first_seen=seen if first_seen is None else first_seen,
        last_seen=seen,
        captured_at=seen,
        **extra,
    )


def uuid7_at(t: datetime, rng: random.Random) -> uuid.UUID:
    """A UUIDv7 for time `t` (ms precision, random rest): ids sort with the times they carry."""
    ms = int(t.timestamp() * 1000) & ((1 << 48) - 1)
    value = (ms << 80) | (0x7 << 76) | (rng.getrandbits(12) << 64) | (0b10 << 62)
    return uuid.UUID(int=value | rng.getrandbits(62))


@dataclass
class HuntLoad:
    """A retro-hunt running during a latency run: `sightings` older sightings are stored (their
    plates drawn from the entries, so the hunt finds some), then `entries` random watch-list
    entries are marked changed, which the correlators' hunter threads take up (every
    `matching.retro_poll_s`, which the bench sets to 1 s) beside live ingest."""

    entries: int
    sightings: int
    rng: random.Random

    def start(self, engine: sa.Engine) -> dict[str, Any]:
        started = time.perf_counter()
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, pattern, mode FROM watch_entry")).all()
        picked = self.rng.sample(rows, min(self.entries, len(rows)))
        exact = [str(r[1]) for r in picked if r[2] == "exact"] or ["AAA0000"]
        now = datetime.now(UTC)
        with sa.orm.Session(engine) as session, session.begin():
            for start in range(0, self.sightings, 10_000):
                reads = []
                for i in range(start, min(start + 10_000, self.sightings)):
                    plate = self.rng.choice(exact) if i % 20 == 0 else random_plate(self.rng)
                    seen = now - timedelta(seconds=self.rng.randrange(600, 7 * 86_400))
                    # ids from the sighting's time: older than the run's events, which the
                    # run's counters count by id
                    event_id = uuid7_at(seen, self.rng)
                    reads.append(past_read(plate, seen, i % 10, f"seed-{i}", event_id=event_id))
                repo.insert_sightings(session, reads, now)
            session.execute(
                sa.update(m.WatchEntry)
                .where(m.WatchEntry.id.in_([r[0] for r in picked]))
                .values(updated_at=now)
            )
        return {
            "entries": len(picked),
            "fuzzy": sum(r[2] == "fuzzy" for r in picked),
            "sightings": self.sightings,
            "seed_s": round(time.perf_counter() - started, 2),
        }

    def finish(self, engine: sa.Engine, t0_wall: float) -> dict[str, Any]:
        """How much of the hunt ran, and when it ended against the run's start."""
        with engine.connect() as conn:
            waiting = conn.execute(
                sa.select(sa.func.count()).select_from(m.WatchEntry).where(repo.hunt_pending())
            ).scalar_one()
            # a hunt's alerts are stamped when they are stored: the last one is the hunt's end
            historical, last = conn.execute(
                sa.text("SELECT count(*), max(raised_at) FROM alert WHERE historical")
            ).one()
        ended = last.timestamp() - t0_wall if last is not None else None
        return {
            "still_waiting": int(waiting),
            "historical_alerts": int(historical),
            "hunt_ended_s_after_start": round(ended, 1) if ended is not None else None,
        }


# -- environment facts -----------------------------------------------------------------------
def uncommitted() -> list[str]:
    """Changed files under shared/ and services/: the processes run the working tree."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", "shared", "services"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parents[2],
        )
    except OSError:
        return []
    return [line[3:] for line in out.stdout.splitlines() if line[3:]]


def versions(engine: sa.Engine, redis_url: str, broker_version: str | None) -> dict[str, str]:
    found: dict[str, str] = {"python": sys.version.split()[0]}
    for pkg in ("paho-mqtt", "sqlalchemy", "psycopg", "pydantic", "redis"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[pkg] = importlib.metadata.version(pkg)
    with engine.connect() as conn:
        found["postgresql"] = str(conn.execute(sa.text("SHOW server_version")).scalar_one())
    import redis

    with contextlib.suppress(redis.RedisError):
        client = redis.Redis.from_url(redis_url)
        found["redis-server"] = str(client.info("server").get("redis_version", "unknown"))
        client.close()
    found["broker"] = broker_version or "unknown"
    return found


def targets(throughput: list[dict[str, Any]], latency: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets. Events/s per process is judged on the run with the fewest processes
    (one, normally): once the processes outnumber the cores that the broker, the database and
    Redis leave free, each one's share measures the machine, not the process; the runs with
    more processes show the scale-out (docs/decisions.md, 2026-12-08). None: not measured."""
    runs = sorted(
        (r for r in throughput if r["per_process_events_per_s"]), key=lambda r: r["processes"]
    )
    judged = runs[0] if runs else None
    at_target = [r for r in latency if r["rate"] >= TARGET_RATE]
    p99 = at_target[0]["p99_ms"] if at_target and at_target[0]["kept_up"] else None
    return {
        "events_per_s_per_process": TARGET_EVENTS_PER_S,
        "p99_ms_at_rate": TARGET_P99_MS,
        "rate": TARGET_RATE,
        "throughput_judged_on_processes": judged["processes"] if judged else None,
        "throughput_met": (
            None if judged is None else judged["per_process_events_per_s"] >= TARGET_EVENTS_PER_S
        ),
        "latency_met": None if not at_target else p99 is not None and p99 <= TARGET_P99_MS,
    }


def _verdict(met: bool | None) -> str:
    return "not measured" if met is None else "met" if met else "NOT met"


def table(result: dict[str, Any]) -> str:
    lines = [
        f"correlator bench, {result['machine']['cpu_model']}, {result['machine']['cores']} cores, "
        f"{result['watchlist']['entries']} entries, git {result['git_sha']}",
        "",
        f"{'procs':>5} {'events':>8} {'stored':>8} {'sustained/s':>12} {'per proc/s':>11} "
        f"{'overall/s':>10} {'rows/batch':>10} {'CPU us/event':>12}",
    ]
    for r in result["throughput"]:
        lines.append(
            f"{r['processes']:>5} {r['events']:>8} {r['stored']:>8} "
            f"{r['sustained_events_per_s'] or '-':>12} {r['per_process_events_per_s'] or '-':>11} "
            f"{r['events_per_s'] or '-':>10} {r['mean_batch_rows'] or '-':>10} "
            f"{r['correlator_cpu_us_per_event'] or '-':>12}"
        )
    if result["latency"]:
        lines += [
            "",
            "latency publish -> alert",
            f"{'procs':>5} {'rate/s':>7} {'achieved':>9} {'kept up':>7} {'alerts':>6} "
            f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}",
        ]
    for lat in result["latency"]:
        lines.append(
            f"{lat['processes']:>5} {lat['rate']:>7g} {lat['achieved_rate'] or '-':>9} "
            f"{'yes' if lat['kept_up'] else 'NO':>7} {lat['alerts_received']:>6} "
            f"{lat['p50_ms'] or '-':>8} {lat['p90_ms'] or '-':>8} {lat['p99_ms'] or '-':>8} "
            f"{lat['max_ms'] or '-':>8}"
        )
    for lat in result["latency"]:
        h = lat.get("hunt")
        if h:
            lines.append(
                f"  at {lat['rate']:g}/s a retro-hunt ran beside: {h['entries']} entries "
                f"({h['fuzzy']} fuzzy) over {h['sightings']} older sightings, ended "
                f"{h['hunt_ended_s_after_start']} s after the start, {h['still_waiting']} still "
                f"waiting, {h['historical_alerts']} historical alerts"
            )
    t = result["targets"]
    lines += [
        "",
        f"target >= {t['events_per_s_per_process']}/s per process "
        f"(judged on {t['throughput_judged_on_processes'] or '-'} process(es)): "
        f"{_verdict(t['throughput_met'])}; "
        f"p99 <= {t['p99_ms_at_rate']} ms at {t['rate']}/s: {_verdict(t['latency_met'])}",
    ]
    return "\n".join(lines)


# -- command ---------------------------------------------------------------------------------
def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected host:port")
    return host, int(port)


def _counts(value: str) -> list[int]:
    try:
        counts = [int(v) for v in value.split(",") if v]
    except ValueError as exc:
        raise argparse.ArgumentTypeError("expected e.g. 1,2") from exc
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("expected positive counts, e.g. 1,2")
    return counts


def _rates(value: str) -> list[float]:
    try:
        rates = [float(v) for v in value.split(",") if v]
    except ValueError as exc:
        raise argparse.ArgumentTypeError("expected e.g. 100,1000") from exc
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError("expected positive rates, e.g. 100,1000")
    return rates


def _setting(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError("expected KEY=VALUE, e.g. INGEST__BATCH_MAX_ROWS=2000")
    return key, val


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="platewatch bench correlator",
        description="Drive plate reads through the real broker into PostgreSQL with N "
        "watch-list entries loaded: sustained events/s for K correlator processes and the "
        "publish -> alert latency at a fixed rate. Prints a table and writes JSON.",
    )
    parser.add_argument(
        "--db-url", default=os.environ.get("PW_BENCH_DB", DEFAULT_DB), help="PostgreSQL URL."
    )
    parser.add_argument(
        "--mqtt", type=_host_port, default=("127.0.0.1", 1883), help="Broker host:port."
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15", help="Redis URL.")
    parser.add_argument("--entries", type=int, default=100_000, help="Watch-list entries.")
    parser.add_argument(
        "--processes", type=_counts, default=[1, 2], help="Correlator counts, e.g. 1,2."
    )
    parser.add_argument("--events", type=int, default=50_000, help="Events per throughput run.")
    parser.add_argument(
        "--window",
        type=int,
        default=800,
        help="Per process: most events published but not yet stored. Keep it well under the "
        "broker's per-client queue (mosquitto max_queued_messages, 1,000 by default), which "
        "drops QoS 1 messages beyond it.",
    )
    parser.add_argument(
        "--backlog",
        action="store_true",
        help="Throughput as a backlog drain: the correlators are paused while all --events are "
        "published, then resumed (the publisher no longer shares the CPU). The broker must "
        "queue them all (deploy/mosquitto: max_queued_messages 200000; mosquitto's default "
        "1,000 drops the rest, which the run reports as lost).",
    )
    parser.add_argument(
        "--rate",
        type=_rates,
        default=[1_000.0],
        help="Events/s of the latency runs, e.g. 100,1000 (a run stops early when the backlog "
        "passes --window: the processes cannot keep up).",
    )
    parser.add_argument(
        "--latency-s", type=float, default=30.0, help="Seconds of each latency run (0: skip)."
    )
    parser.add_argument(
        "--latency-processes",
        type=int,
        default=1,
        help="Correlator processes during the latency run (one of --processes).",
    )
    parser.add_argument(
        "--hit-ratio", type=float, default=0.01, help="Share of events on a watch-list."
    )
    parser.add_argument(
        "--set",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Correlator setting for the processes (PW_CORRELATOR_ + KEY), repeatable.",
    )
    parser.add_argument(
        "--correlator-module",
        default="services.correlator",
        help="Module run as each correlator process (`python -m MODULE --instance NAME`), to "
        "measure a candidate change side by side with the committed code.",
    )
    parser.add_argument(
        "--stall-s", type=float, default=30.0, help="Give up when no row is stored for this long."
    )
    parser.add_argument(
        "--hunt-entries",
        type=int,
        default=0,
        help="Retro-hunt during each latency run: mark this many random entries changed just "
        "before it, so the correlators' hunter threads work beside live ingest (their poll is "
        "set to 1 s). 0: no hunt.",
    )
    parser.add_argument(
        "--hunt-sightings",
        type=int,
        default=100_000,
        help="With --hunt-entries: older sightings stored first for the hunt to search (over 7 "
        "days; every 20th carries a hunted entry's plate).",
    )
    parser.add_argument("--seed", type=int, default=1, help="Random seed.")
    parser.add_argument("--json", type=Path, default=None, help="Write the results here.")
    parser.add_argument("--keep-schema", action="store_true", help="Do not drop the schema.")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rng = random.Random(args.seed)
    overrides = dict(args.set)
    if args.hunt_entries < 0 or args.hunt_sightings < 0:
        print("platewatch bench: --hunt-entries and --hunt-sightings must be >= 0", file=sys.stderr)
        return 2
    if args.hunt_entries:
        overrides.setdefault("MATCHING__RETRO_POLL_S", "1")
    if args.backlog:
        # A paused correlator sends no PINGREQ: the broker drops it (and, with the bench's
        # session expiry of 0, its queue) after 1.5 keep-alives. Publishing must end first.
        overrides.setdefault("MQTT__KEEPALIVE_S", "600")
    run_id = uuid.uuid4().hex[:8]
    load_start = os.getloadavg()[0]
    throughput: list[dict[str, Any]] = []
    latency: list[dict[str, Any]] = []
    broker_version: list[str] = []
    with (
        bench_schema(args.db_url, args.keep_schema) as (schema, url),
        tempfile.TemporaryDirectory(prefix="pw-bench-") as log_dir,
    ):
        engine = sa.create_engine(url, pool_pre_ping=True)
        log.info("loading watch-list entries", extra={"entries": args.entries})
        exact, wl_summary = load_entries(engine, args.entries, rng)
        exact_set = set(exact)
        settings = MqttSettings(host=args.mqtt[0], port=args.mqtt[1], protocol="5")
        pub = MqttClient(settings, f"bench-pub-{run_id}", max_inflight=1000)
        pub.start()
        watcher = AlertWatcher()
        ops = MqttClient(settings, f"bench-ops-{run_id}", max_inflight=1000)
        ops.subscribe("$SYS/broker/version", lambda d: broker_version.append(d.payload.decode()))
        ops.start()
        result: dict[str, Any] = {
            "benchmark": "correlator",
            "git_sha": git_sha(),
            "uncommitted": uncommitted(),
            "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpu_model": cpu_model(),
                "cores": os.cpu_count(),
                "platform": platform.platform(),
                "load_avg_1m_start": round(load_start, 2),
            },
            "versions": {},
            "settings": {
                "entries": args.entries,
                "processes": args.processes,
                "events": args.events,
                "window_per_process": args.window,
                "rate": args.rate,
                "latency_s": args.latency_s,
                "latency_processes": args.latency_processes,
                "hit_ratio": args.hit_ratio,
                "seed": args.seed,
                "hunt_entries": args.hunt_entries,
                "hunt_sightings": args.hunt_sightings if args.hunt_entries else 0,
                "correlator_module": args.correlator_module,
                "correlator_env": {f"PW_CORRELATOR_{k.upper()}": v for k, v in args.set},
                "database": sa.make_url(args.db_url).render_as_string(hide_password=True),
                "schema": schema,
                "broker": f"{args.mqtt[0]}:{args.mqtt[1]}",
            },
            "watchlist": wl_summary,
            "throughput": throughput,
            "latency": latency,
        }

        def save() -> None:
            """Written after every run, so a failure later keeps what was measured."""
            result["machine"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
            result["versions"] = versions(
                engine, args.redis_url, broker_version[0] if broker_version else None
            )
            result["targets"] = targets(throughput, latency)
            if args.json is not None:
                args.json.write_text(json.dumps(result, indent=2) + "\n")

        try:
            for k in args.processes:
                root = f"pwbench-{run_id}-k{k}"
                ops.subscribe(alert_filter(root), watcher.on_alert)
                procs = Correlators(
                    k,
                    url,
                    args.mqtt,
                    args.redis_url,
                    root,
                    Path(log_dir),
                    overrides,
                    args.correlator_module,
                )
                log.info("starting correlators", extra={"processes": k})
                try:
                    procs.start()
                    warm_up(engine, pub, procs, rng, args.stall_s)
                    events = make_events(args.events, rng, root, exact, exact_set, args.hit_ratio)
                    log.info("throughput run", extra={"processes": k, "events": args.events})
                    pg0 = postmaster_start(engine)
                    run = throughput_run(
                        engine, pub, procs, events, args.window * k, args.stall_s, args.backlog
                    )
                    run["postgres_restarted"] = postmaster_start(engine) != pg0
                    throughput.append(run)
                    save()
                    log.info("throughput run done", extra={"processes": k})
                    for rate in args.rate if k == args.latency_processes else []:
                        n = round(rate * args.latency_s)
                        if n < 1:
                            continue
                        events = make_events(n, rng, root, exact, exact_set, args.hit_ratio)
                        log.info("latency run", extra={"rate": rate, "events": n})
                        pg0 = postmaster_start(engine)
                        hunt = (
                            HuntLoad(args.hunt_entries, args.hunt_sightings, rng)
                            if args.hunt_entries
                            else None
                        )
                        run = latency_run(
                            engine, pub, watcher, procs, events, rate, args.window * k,
                            args.stall_s, hunt,
                        )  # fmt: skip
                        run["postgres_restarted"] = postmaster_start(engine) != pg0
                        latency.append(run)
                        save()
                finally:
                    procs.stop()
                    ops.unsubscribe(alert_filter(root))
                    _drop_redis_prefix(args.redis_url, f"{root}:")
            save()
        finally:
            pub.stop()
            ops.stop()
            engine.dispose()
    print(table(result))
    return 0 if all(r["complete"] for r in throughput) else 1


def _drop_redis_prefix(url: str, prefix: str) -> None:
    import redis

    with contextlib.suppress(redis.RedisError):
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
