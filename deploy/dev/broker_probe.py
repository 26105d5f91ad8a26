"""Probe an MQTT broker the way docs/decisions.md did: MQTT 5 and 3.1.1 connect, shared and
plain subscriptions, and QoS 1 publish rate.

    python deploy/dev/broker_probe.py mosquitto 1883      # an already running broker
    python deploy/dev/broker_probe.py amqtt 18831         # starts amqtt in this process
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


def run_amqtt(port: int) -> None:
    from amqtt.broker import Broker

    async def main() -> None:
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        await Broker(config).start()
        await asyncio.Event().wait()

    asyncio.run(main())


def probe(which: str, port: int, protocol: int, name: str) -> None:
    got: queue.Queue[bytes] = queue.Queue()
    try:
        sub = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="probe-s" + name, protocol=protocol
        )
        sub.on_message = lambda c, u, m: got.put(m.payload)
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        time.sleep(0.5)
        sub.subscribe("$share/g/probe/#", qos=1)
        sub.subscribe("plain/#", qos=1)
        time.sleep(0.3)
        pub = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="probe-p" + name, protocol=protocol
        )
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        time.sleep(0.3)
        pub.publish("probe/x", b"shared", qos=1).wait_for_publish(3)
        pub.publish("plain/x", b"plain", qos=1).wait_for_publish(3)
        time.sleep(0.5)
        received = [got.get() for _ in range(got.qsize())]
        n = 2000
        t = time.perf_counter()
        infos = [pub.publish("plain/y", b"x" * 300, qos=1) for _ in range(n)]
        for info in infos:
            info.wait_for_publish(10)
        rate = n / (time.perf_counter() - t)
        print(f"{which} {name}: received {received}, QoS 1 publish {rate:.0f} msg/s")
        sub.loop_stop()
        pub.loop_stop()
    except Exception as exc:  # a probe reports every failure and goes on
        print(f"{which} {name}: FAILED {type(exc).__name__}: {exc}")


def main() -> int:
    which, port = sys.argv[1], int(sys.argv[2])
    if which == "amqtt":
        threading.Thread(target=run_amqtt, args=(port,), daemon=True).start()
        time.sleep(1.5)
    for protocol, name in ((paho.MQTTv5, "v5"), (paho.MQTTv311, "v3.1.1")):
        probe(which, port, protocol, name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
