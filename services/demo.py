"""`platewatch demo`: the whole platform on one machine, on embedded defaults.

Starts a local broker (mosquitto, or amqtt in-process when mosquitto is missing), runs a
simulated edge that publishes plate reads from three sites, and a live monitor that receives
them through the shared subscription, validates them, and prints them. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import logging
import queue
import random
import time
from datetime import timedelta
from pathlib import Path

from services.devbroker import start_local_broker
from shared.consumer import EventConsumer, MqttDeadLetterSink
from shared.events import DeadLetter, PlateRead, decode_event, encode_event, utc_now
from shared.logs import configure_logging
from shared.mqtt import Delivery, MqttClient
from shared.settings import MqttSettings
from shared.topics import deadletter_filter, plate_filter, plate_topic, shared_subscription

log = logging.getLogger(__name__)

SITES = {"north-gate": ("gate-in", "gate-out"), "depot": ("yard-1",), "hq": ("barrier",)}
PLATES = ("ABC1234", "KLM5821", "BRA2E19", "XYZ9876", "NOP4411", "GHT7702", "MMX3090")


def scenario(rng: random.Random, count: int) -> list[PlateRead]:
    """Plate reads as edge nodes would publish them: random passes at random cameras."""
    reads = []
    for i in range(count):
        site = rng.choice(sorted(SITES))
        camera = rng.choice(SITES[site])
        plate = rng.choice(PLATES)
        now = utc_now()
        reads.append(
            PlateRead(
                site=site,
                camera=camera,
                node=f"{site}-edge",
                track_id=f"demo-{i}",
                plate=plate,
                raw_text=plate,
                region="us",
                confidence=round(rng.uniform(0.8, 0.99), 3),
                first_seen=now - timedelta(seconds=2),
                last_seen=now,
                captured_at=now,
                frames=7,
            )
        )
    return reads


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
    parser.add_argument("--rate", type=float, default=2.0, help="Plate reads per second.")
    parser.add_argument("--workdir", type=Path, default=Path("var/demo"), help="Demo state folder.")
    parser.add_argument("--seed", type=int, default=7, help="Seed of the simulated traffic.")
    args = parser.parse_args(argv)
    configure_logging("WARNING", json_format=False)
    broker = start_local_broker(args.workdir)
    print(f"broker: {broker.kind} on {broker.host}:{broker.port} (MQTT {broker.protocol})")
    settings = MqttSettings(host=broker.host, port=broker.port, protocol=broker.protocol)
    root = settings.topic_root
    monitor = MqttClient(settings, "demo-monitor", manual_ack=True)
    received: queue.Queue[PlateRead] = queue.Queue()

    def on_event(event: PlateRead, delivery: Delivery) -> None:
        received.put(event)
        delivery.ack()

    subscription = plate_filter(root)
    if broker.protocol == "5":
        subscription = shared_subscription("correlator", subscription)
    EventConsumer(
        monitor,
        subscription,
        PlateRead,
        on_event,
        MqttDeadLetterSink(monitor, "demo", root),
        "demo",
        utc_now,
    ).start()
    monitor.subscribe(
        deadletter_filter(root),
        lambda d: print("DEAD LETTER", decode_event(d.payload, DeadLetter).reason),
    )
    monitor.start()
    edge = MqttClient(settings, "demo-edge")
    edge.start()
    rng = random.Random(args.seed)
    print("publishing simulated plate reads; Ctrl-C stops the demo")
    started = time.monotonic()
    try:
        while not args.duration or time.monotonic() - started < args.duration:
            for event in scenario(rng, 1):
                edge.publish(
                    plate_topic(event.site, event.camera, root), encode_event(event)
                ).wait()
            time.sleep(1.0 / args.rate)
            while not received.empty():
                e = received.get()
                print(
                    f"{e.captured_at:%H:%M:%S} {e.site:>10}/{e.camera:<8} {e.plate:<8} "
                    f"conf={e.confidence:.2f} id={e.event_id}"
                )
    except KeyboardInterrupt:
        print("stopping")
    finally:
        edge.stop()
        monitor.stop()
        broker.stop()
    return 0
