"""`platewatch bench correlator` end to end with tiny numbers: real broker, PostgreSQL, Redis.

Only what the run stored and the shape of its JSON are asserted; never a time or a rate.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from services.correlator import bench
from tests.conftest import DEFAULT_PG

pytestmark = [pytest.mark.integration, pytest.mark.correlator, pytest.mark.db, pytest.mark.mqtt]


def _argv(broker: tuple[str, int], redis_url: str, db_url: str, out: Path) -> list[str]:
    """The bench's connection options for the test services, one process, JSON to `out`."""
    return [
        "--db-url", db_url,
        "--mqtt", f"{broker[0]}:{broker[1]}",
        "--redis-url", redis_url,
        "--processes", "1",
        "--json", str(out),
    ]  # fmt: skip


def test_bench_stores_every_event_and_writes_the_json(
    broker: tuple[str, int], redis_url: str, tmp_path: Path
) -> None:
    db_url = os.environ.get("PW_TEST_PG", DEFAULT_PG)
    out = tmp_path / "bench.json"
    argv = [
        *_argv(broker, redis_url, db_url, out),
        "--entries", "200",
        "--events", "300",
        "--rate", "100",
        "--latency-s", "2",
        "--hit-ratio", "0.2",
    ]  # fmt: skip

    assert bench.main(argv) == 0

    result = json.loads(out.read_text())
    assert {
        "benchmark", "git_sha", "date_utc", "machine", "versions", "settings", "watchlist",
        "throughput", "latency", "targets",
    } <= result.keys()  # fmt: skip
    assert {"cpu_model", "cores"} <= result["machine"].keys()
    assert {"python", "postgresql", "broker"} <= result["versions"].keys()
    assert result["watchlist"]["entries"] == 200
    (run,) = result["throughput"]
    assert run["processes"] == 1
    assert run["stored"] == run["events"] == 300
    assert run["complete"] and run["lost"] == 0
    assert {"sustained_events_per_s", "per_process_events_per_s", "cpu_s"} <= run.keys()
    (lat,) = result["latency"]
    assert lat["stored"] == lat["published"] and lat["complete"]
    assert lat["alerts_received"] == lat["alerts_stored"] > 0
    assert {"p50_ms", "p90_ms", "p99_ms", "max_ms"} <= lat.keys()
    assert {"throughput_met", "latency_met"} <= result["targets"].keys()
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        left = conn.execute(
            sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :s"),
            {"s": result["settings"]["schema"]},
        ).all()
    engine.dispose()
    assert left == []  # the bench dropped its schema


def test_bench_backlog_mode_drains_what_was_published_while_paused(
    broker: tuple[str, int], redis_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    argv = [
        *_argv(broker, redis_url, os.environ.get("PW_TEST_PG", DEFAULT_PG), out),
        "--entries", "100",
        "--events", "400",
        "--latency-s", "0",
        "--backlog",
    ]  # fmt: skip

    assert bench.main(argv) == 0

    (run,) = json.loads(out.read_text())["throughput"]
    assert run["mode"] == "backlog"
    assert run["stored"] == run["events"] == 400 and run["lost"] == 0
    assert run["publisher_waited_s"] == 0  # nothing was published during the drain


def test_bench_latency_run_with_a_retro_hunt_beside_it(
    broker: tuple[str, int], redis_url: str, tmp_path: Path
) -> None:
    """`--hunt-entries`: older sightings are stored and entries marked changed just before the
    latency run; the hunter takes them up during it, and its historical alerts (some of them
    on the run's own sightings) are counted apart, never as live latencies."""
    out = tmp_path / "bench.json"
    argv = [
        *_argv(broker, redis_url, os.environ.get("PW_TEST_PG", DEFAULT_PG), out),
        "--entries", "100",
        "--events", "100",
        "--rate", "100",
        "--latency-s", "4",
        "--hit-ratio", "0.2",
        "--hunt-entries", "40",
        "--hunt-sightings", "400",
    ]  # fmt: skip

    assert bench.main(argv) == 0

    doc = json.loads(out.read_text())
    assert doc["settings"]["hunt_entries"] == 40
    (lat,) = doc["latency"]
    hunt = lat["hunt"]
    assert hunt["entries"] == 40 and hunt["sightings"] == 400
    assert hunt["still_waiting"] == 0  # hunted within the run
    assert hunt["historical_alerts"] > 0  # every 20th stored sighting carries a hunted plate
    assert lat["alerts_received"] == lat["alerts_stored"] > 0  # live alerts only


def test_bench_retro_hunts_each_chunk_and_writes_the_json(tmp_path: Path) -> None:
    """`platewatch bench retro` with tiny numbers: every chunk's entries are stored plates, so
    each exact entry raises at least one alert; only counts and the JSON's shape are checked."""
    from services.correlator import bench_retro

    out = tmp_path / "retro.json"
    argv = ["--db-url", os.environ.get("PW_TEST_PG", DEFAULT_PG), "--sightings", "600"]
    argv += ["--plates", "200", "--chunks", "5:0,4:1", "--json", str(out)]
    assert bench_retro.main(argv) == 0
    doc = json.loads(out.read_text())
    assert [(c["exact"], c["fuzzy"]) for c in doc["chunks"]] == [(5, 0), (4, 1)]
    assert all(c["alerts"] >= c["exact"] for c in doc["chunks"])
    assert doc["sightings"] == 600 and doc["git_sha"]


@pytest.mark.parametrize("bad", ["a:1", "0:0", "-1:2", "3:x"])
def test_bench_retro_refuses_bad_chunks(bad: str) -> None:
    from services.correlator import bench_retro

    with pytest.raises(SystemExit):
        bench_retro.build_parser().parse_args(["--chunks", bad])
