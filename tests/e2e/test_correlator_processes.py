"""Correlator processes as they run in production: real subprocesses, real services."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from shared.events import Alert, decode_event, encode_event, utc_now
from shared.mqtt import MqttClient
from shared.settings import DbSettings, MqttSettings, RedisSettings
from shared.store import migrate
from shared.store import models as m
from shared.store import repository as repo
from shared.store.db import make_engine, session_factory
from shared.topics import alert_filter, plate_topic
from tests.factories import plate_read

pytestmark = [pytest.mark.e2e, pytest.mark.correlator, pytest.mark.integration]
ROOT_DIR = Path(__file__).resolve().parents[2]


class Procs:
    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env = env
        self.tmp = tmp
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, instance: str) -> None:
        log = self.tmp / f"{instance}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.correlator", "--instance", instance],
            env=self.env,
            cwd=ROOT_DIR,
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )
        self.procs.append((proc, log))
        deadline = time.monotonic() + 30
        while "mqtt connected" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{instance} did not start:\n{log.read_text()}")
            time.sleep(0.1)

    def stop_all(self) -> list[dict[str, object]]:
        stats = []
        for proc, log in self.procs:
            proc.terminate()
            proc.wait(30)
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("{") and '"correlator stopped"' in line:
                    stats.append(json.loads(line))
        self.procs.clear()
        return stats


@pytest.fixture
def procs(
    tmp_path: Path, mqtt_settings: MqttSettings, redis_settings: RedisSettings
) -> Iterator[Procs]:
    env = dict(os.environ)
    env.update(
        {
            "PW_CORRELATOR_MQTT__HOST": mqtt_settings.host,
            "PW_CORRELATOR_MQTT__PORT": str(mqtt_settings.port),
            "PW_CORRELATOR_MQTT__TOPIC_ROOT": mqtt_settings.topic_root,
            "PW_CORRELATOR_REDIS__URL": redis_settings.url,
            "PW_CORRELATOR_REDIS__KEY_PREFIX": redis_settings.key_prefix,
            "PW_CORRELATOR_LOG__LEVEL": "INFO",
            "PW_CORRELATOR_INGEST__DB_RETRY_MAX_S": "1",
        }
    )
    p = Procs(env, tmp_path)
    yield p
    for proc, _ in p.procs:
        proc.kill()


def _count(url: str, model: object) -> int:
    engine = make_engine(DbSettings(url=url))
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(model)).scalar() or 0)  # type: ignore[arg-type]
    finally:
        engine.dispose()


def _wait(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_processes_share_the_load_with_no_double_alert(
    procs: Procs, db_url: str, mqtt_settings: MqttSettings, client_id: str
) -> None:
    migrate.upgrade(db_url)
    hits = [f"HIT{i:03d}" for i in range(20)]
    sessions = session_factory(engine := make_engine(DbSettings(url=db_url)))
    with sessions.begin() as s:
        wl = repo.create_list(s, "wanted", utc_now(), category="wanted")
        repo.add_entries(s, wl, [{"pattern": p, "mode": "exact"} for p in hits], utc_now())
    engine.dispose()
    procs.env["PW_CORRELATOR_DB__URL"] = db_url
    procs.start(client_id + "-a")
    procs.start(client_id + "-b")
    alerts: queue.Queue[Alert] = queue.Queue()
    ops = MqttClient(mqtt_settings, client_id + "-ops")
    ops.subscribe(
        alert_filter(mqtt_settings.topic_root), lambda d: alerts.put(decode_event(d.payload, Alert))
    )
    ops.start()
    edge = MqttClient(mqtt_settings, client_id + "-edge")
    edge.start()
    events = [plate_read(plate=f"CAR{i:04d}", track_id=str(i)) for i in range(300)]
    events += [plate_read(plate=p, track_id=p, site=f"site-{i % 3}") for i, p in enumerate(hits)]
    topic_of = lambda e: plate_topic(e.site, e.camera, mqtt_settings.topic_root)  # noqa: E731
    pending = [edge.publish(topic_of(e), encode_event(e)) for e in events]
    pending += [
        edge.publish(topic_of(e), encode_event(e)) for e in events[-20:]
    ]  # redelivered hits
    for p in pending:
        p.wait()
    _wait(lambda: _count(db_url, m.Sighting) == len(events), 60, "all sightings stored")
    _wait(lambda: alerts.qsize() >= len(hits), 30, "all alerts")
    time.sleep(1.0)
    got = [alerts.get() for _ in range(alerts.qsize())]
    assert sorted(a.plate for a in got) == sorted(hits)  # one alert per hit, none twice
    assert _count(db_url, m.AlertRecord) == len(hits)
    stats = procs.stop_all()
    assert len(stats) == 2
    assert all(int(s["events"]) > 0 for s in stats), stats  # both processes took a share
    assert sum(int(s["events"]) for s in stats) == len(events)
    edge.stop()
    ops.stop()


def _pg_restart(down_s: float) -> None:
    ctl = shutil.which("pg_ctlcluster")
    versions = (
        sorted(Path("/etc/postgresql").glob("*/main")) if Path("/etc/postgresql").exists() else []
    )
    if ctl is None or not versions or os.geteuid() != 0:
        pytest.fail(
            "this test restarts PostgreSQL: it needs root and pg_ctlcluster (make test)",
            pytrace=False,
        )
    ver = versions[-1].parent.name
    subprocess.run(
        [ctl, "--skip-systemctl-redirect", ver, "main", "stop", "-m", "fast"], check=True
    )
    time.sleep(down_s)
    subprocess.run([ctl, "--skip-systemctl-redirect", ver, "main", "start"], check=True)


def test_database_restart_during_load_loses_nothing(
    procs: Procs, pg_url: str, mqtt_settings: MqttSettings, client_id: str
) -> None:
    migrate.upgrade(pg_url)
    procs.env["PW_CORRELATOR_DB__URL"] = pg_url
    procs.start(client_id + "-a")
    edge = MqttClient(mqtt_settings, client_id + "-edge")
    edge.start()
    events = [plate_read(plate=f"LD{i:05d}", track_id=str(i)) for i in range(600)]

    def load() -> None:
        for e in events:
            edge.publish(
                plate_topic(e.site, e.camera, mqtt_settings.topic_root), encode_event(e)
            ).wait()
            time.sleep(0.005)

    loader = threading.Thread(target=load)
    loader.start()
    time.sleep(1.0)
    _pg_restart(down_s=3.0)
    loader.join(60)
    _wait(lambda: _count(pg_url, m.Sighting) == len(events), 90, "every sighting after the restart")
    stats = procs.stop_all()
    assert stats and int(stats[0]["retries"]) > 0  # it really saw the database go away
    assert int(stats[0]["events"]) == len(events)
    edge.stop()
