"""`make demo` as a user runs it: the demo command end to end, and its fallback broker."""

from __future__ import annotations

import queue
import subprocess
import sys
from pathlib import Path

import pytest

from services.devbroker import start_amqtt
from shared.events import PlateRead, decode_event, encode_event
from shared.mqtt import Delivery, MqttClient
from shared.settings import MqttSettings
from shared.topics import plate_filter, plate_topic
from tests.factories import plate_read

pytestmark = [pytest.mark.e2e, pytest.mark.mqtt]
ROOT_DIR = Path(__file__).resolve().parents[2]


def test_demo_shows_alerts_and_gate_decisions_then_stops(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "demo",
            "--duration",
            "10",
            "--rate",
            "5",
            "--workdir",
            str(tmp_path),
        ],
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "broker:" in out and "database: sqlite" in out
    assert "ALERT  critical watchlist          KLM5821" in out
    assert "fuzzy: G->6 at position 7" in out
    assert "GATE   ALLOW" in out and "GATE   DENY" in out
    assert "stopping after" in out


def test_fallback_broker_carries_events_over_mqtt_311() -> None:
    broker = start_amqtt()
    settings = MqttSettings(host=broker.host, port=broker.port, protocol="3.1.1")
    got: queue.Queue[Delivery] = queue.Queue()
    sub = MqttClient(settings, "fallback-sub")
    sub.subscribe(plate_filter(settings.topic_root), got.put)
    sub.start()
    pub = MqttClient(settings, "fallback-pub")
    pub.start()
    event = plate_read()
    import time

    time.sleep(0.3)
    pub.publish(plate_topic(event.site, event.camera), encode_event(event)).wait()
    assert decode_event(got.get(timeout=10).payload, PlateRead) == event
    pub.stop()
    sub.stop()
