"""`platewatch demo`: the platform on one machine, on embedded defaults.

Starts a local broker (the system mosquitto, or amqtt in-process when mosquitto is missing),
uses Redis when one answers on 127.0.0.1:6379 (or starts `redis-server` when installed), keeps
the database in SQLite under the work folder, seeds three sites with watch-lists and a gate
allow-list, runs the real correlator, and replays simulated edge traffic: ordinary passes, a
stolen car, a misread wanted plate, a cloned plate seen at two distant sites, strangers at the
gate. Alerts and gate decisions are printed as operators and gates receive them. Ctrl-C stops.
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from services.correlator.config import CorrelatorSettings
from services.correlator.service import Correlator
from services.devbroker import free_port, start_local_broker, wait_for_port
from shared.events import Alert, GateDecision, PlateRead, decode_event, encode_event, utc_now
from shared.logs import configure_logging
from shared.mqtt import Delivery, MqttClient
from shared.settings import DbSettings, LogSettings, MqttSettings, RedisSettings
from shared.store import migrate
from shared.store import models as m
from shared.store import repository as repo
from shared.topics import alert_filter, decision_filter, plate_topic

log = logging.getLogger(__name__)

SITES = {  # site: (name, lat, lon, cameras, gate camera)
    "north-gate": ("North gate, Berlin", 52.5200, 13.4050, ("gate-in", "gate-out"), "gate-in"),
    "depot": ("Depot, Munich", 48.1351, 11.5820, ("yard-1",), None),
    "hq": ("HQ, Berlin", 52.5000, 13.4500, ("barrier",), None),
}
RESIDENTS = ("ABC1234", "NOP4411", "GHT7702")
STRANGERS = ("WQE7719", "ZUL4402")
#: Ordinary traffic: each car keeps to its home site, so only the clone travels impossibly.
TRAFFIC = {"BRA2E19": "depot", "KTY3301": "depot", "PLM8820": "hq", "RTX5510": "hq"}
STOLEN = "KLM5821"
WANTED_FUZZY = "XYZ9876"
CLONED = "MMX3090"


def seed(correlator: Correlator) -> None:
    now = utc_now()
    with correlator.sessions.begin() as s:
        for site, (name, lat, lon, cameras, gate) in SITES.items():
            s.add(m.Site(id=site, name=name, latitude=lat, longitude=lon, created_at=now))
            s.flush()
            for cam in cameras:
                s.add(m.Camera(site_id=site, slug=cam, name=cam, is_gate=cam == gate))
        stolen = repo.create_list(s, "Stolen vehicles", now, category="stolen", severity="critical")
        repo.add_entries(
            s, stolen, [{"pattern": STOLEN, "mode": "exact", "reason": "reported stolen"}], now
        )
        wanted = repo.create_list(s, "Wanted (police)", now, category="wanted", severity="high")
        repo.add_entries(s, wanted, [{"pattern": WANTED_FUZZY, "mode": "fuzzy"}], now)
        allow = repo.create_list(
            s,
            "North gate residents",
            now,
            kind="allow",
            site_id="north-gate",
            category="allow",
            severity="info",
        )
        repo.add_entries(s, allow, [{"pattern": p, "mode": "exact"} for p in RESIDENTS], now)
    correlator.refresh()


def traffic(rng: random.Random) -> Iterator[PlateRead]:
    """An endless, scripted stream of passes with the interesting cases mixed in."""
    script = ["normal"] * 6 + ["resident", "stranger", "stolen", "misread", "clone"]
    n = 0
    while True:
        case = rng.choice(script)
        n += 1
        now = utc_now()
        site, camera, plate, raw = "hq", "barrier", rng.choice(sorted(TRAFFIC)), None
        if case == "normal":
            site = TRAFFIC[plate]
            camera = rng.choice(SITES[site][3])
        elif case in ("resident", "stranger"):
            site, camera = "north-gate", "gate-in"
            plate = rng.choice(RESIDENTS if case == "resident" else STRANGERS)
        elif case == "stolen":
            site, camera, plate = "depot", "yard-1", STOLEN
        elif case == "misread":
            plate = raw = "XYZ987G"  # the reader took the last 6 for a G
        else:
            for s, cam in (("north-gate", "gate-out"), ("depot", "yard-1")):
                yield _read(s, cam, CLONED, CLONED, n, now)
                n += 1
            continue
        yield _read(site, camera, plate, raw or plate, n, now)


def _read(site: str, camera: str, plate: str, raw: str, n: int, now: object) -> PlateRead:
    t = utc_now()
    return PlateRead(
        site=site,
        camera=camera,
        node=f"{site}-edge",
        track_id=f"demo-{n}",
        plate=plate,
        raw_text=raw,
        region="eu",
        confidence=0.94,
        first_seen=t - timedelta(seconds=2),
        last_seen=t,
        captured_at=t - timedelta(seconds=1),
        frames=8,
    )


def _redis_url(workdir: Path, procs: list[subprocess.Popen[bytes]]) -> str:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return "redis://127.0.0.1:6379/0"
    except OSError:
        pass
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis: not installed; cross-site rules are off (apt-get install redis-server)")
        return ""
    port = free_port()
    procs.append(
        subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(workdir),
            ],
            stdout=subprocess.DEVNULL,
        )
    )
    wait_for_port("127.0.0.1", port)
    return f"redis://127.0.0.1:{port}/0"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="platewatch demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="Stop after this many seconds (default: run until Ctrl-C).",
    )
    parser.add_argument("--rate", type=float, default=2.0, help="Vehicle passes per second.")
    parser.add_argument("--workdir", type=Path, default=Path("var/demo"), help="Demo state folder.")
    parser.add_argument("--seed", type=int, default=7, help="Seed of the simulated traffic.")
    args = parser.parse_args(argv)
    configure_logging("WARNING", json_format=False)
    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "platewatch.db").unlink(missing_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    broker = start_local_broker(workdir)
    print(f"broker:   {broker.kind} on {broker.host}:{broker.port} (MQTT {broker.protocol})")
    mqtt = MqttSettings(host=broker.host, port=broker.port, protocol=broker.protocol)
    redis_url = _redis_url(workdir, procs)
    print(f"redis:    {redis_url or 'off'}")
    db_url = f"sqlite:///{workdir / 'platewatch.db'}"
    print(f"database: {db_url}")
    migrate.upgrade(db_url)
    settings = CorrelatorSettings(
        instance="demo-correlator",
        mqtt=mqtt,
        db=DbSettings(url=db_url),
        redis=RedisSettings(url=redis_url, key_prefix=f"pw-demo-{broker.port}:"),
        log=LogSettings(level="WARNING", json_format=False),
    )
    correlator = Correlator(settings)
    seed(correlator)
    correlator.start()
    ops = MqttClient(mqtt, "demo-operator")
    ops.subscribe(alert_filter(mqtt.topic_root), _print_alert)
    ops.subscribe(decision_filter(mqtt.topic_root), _print_decision)
    ops.start()
    edge = MqttClient(mqtt, "demo-edge")
    edge.start()
    print("simulated edge traffic from 3 sites; alerts and gate decisions below. Ctrl-C stops.\n")
    started = time.monotonic()
    passes = 0
    try:
        for read in traffic(random.Random(args.seed)):
            if args.duration and time.monotonic() - started >= args.duration:
                break
            edge.publish(
                plate_topic(read.site, read.camera, mqtt.topic_root), encode_event(read)
            ).wait()
            passes += 1
            time.sleep(1.0 / args.rate)
    except KeyboardInterrupt:
        pass
    finally:
        print(f"\nstopping after {passes} passes: {correlator.ingestor.stats}")
        edge.stop()
        ops.stop()
        correlator.stop()
        broker.stop()
        for p in procs:
            p.terminate()
    return 0


def _print_alert(d: Delivery) -> None:
    a = decode_event(d.payload, Alert)
    why = a.match.explanation if a.match else a.reason
    print(f"ALERT  {a.severity:<8} {a.kind:<18} {a.plate:<8} {a.site}/{a.camera or '-'}: {why}")


def _print_decision(d: Delivery) -> None:
    g = decode_event(d.payload, GateDecision)
    print(f"GATE   {g.decision.upper():<8} {g.plate:<8} {g.site}/{g.gate}: {g.reason}")
