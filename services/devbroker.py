"""A local MQTT broker for the demo and for development: the system mosquitto when installed,
else amqtt in this process (MQTT 3.1.1 only: no shared subscriptions). See docs/decisions.md
for the measurements behind that choice.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from shared.errors import PlatewatchError

log = logging.getLogger(__name__)


class BrokerError(PlatewatchError):
    """No local broker could be started."""


@dataclass
class LocalBroker:
    host: str
    port: int
    kind: Literal["mosquitto", "amqtt"]
    protocol: Literal["5", "3.1.1"]
    _stop: list[object] = field(default_factory=list, repr=False)

    def stop(self) -> None:
        for item in self._stop:
            if isinstance(item, subprocess.Popen):
                item.terminate()
                try:
                    item.wait(5)
                except subprocess.TimeoutExpired:
                    item.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise BrokerError(f"broker did not open {host}:{port} within {timeout}s")


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )


def start_mosquitto(workdir: Path, port: int | None = None) -> LocalBroker:
    binary = find_mosquitto()
    if binary is None:
        raise BrokerError("mosquitto is not installed")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"max_queued_messages 100000\nlog_dest file {workdir / 'mosquitto.log'}\n",
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for_port("127.0.0.1", port)
    except BrokerError:
        proc.kill()
        raise
    return LocalBroker("127.0.0.1", port, "mosquitto", "5", [proc])


def start_amqtt(port: int | None = None) -> LocalBroker:
    try:
        from amqtt.broker import Broker  # optional: the [demo] extra
    except ImportError as exc:
        raise BrokerError("neither mosquitto nor amqtt is installed") from exc
    import asyncio

    port = port or free_port()
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }

    def serve() -> None:
        async def run() -> None:
            broker = Broker(config)
            await broker.start()
            await asyncio.Event().wait()

        asyncio.run(run())

    threading.Thread(target=serve, name="amqtt-broker", daemon=True).start()
    wait_for_port("127.0.0.1", port)
    return LocalBroker("127.0.0.1", port, "amqtt", "3.1.1")


def start_local_broker(workdir: Path, port: int | None = None) -> LocalBroker:
    """mosquitto if installed (MQTT 5), else amqtt in-process (MQTT 3.1.1)."""
    if find_mosquitto() is not None:
        return start_mosquitto(workdir, port)
    log.warning("mosquitto not installed; using the in-process amqtt broker (MQTT 3.1.1)")
    return start_amqtt(port)
