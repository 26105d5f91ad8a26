"""The production broker files on a real mosquitto: TLS, passwords and the ACL as shipped.

`deploy/mosquitto/mosquitto.conf` is adapted only where it must be to run unprivileged in a
temporary folder: free loopback ports instead of 8883/1883, file paths under the folder, and a
test certificate authority instead of the placeholders. The ACL files are used unchanged.
A message that must not arrive is checked with a sentinel published after it by the same client
on the same connection: QoS 1 messages of one publisher reach one subscriber in order, so once
the sentinel is in, the forbidden message would have been too.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import queue
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from shared.mqtt import Delivery, MqttClient
from shared.settings import MqttSettings, TlsSettings
from shared.topics import (
    alert_topic,
    decision_topic,
    plate_filter,
    plate_topic,
    shared_subscription,
    status_topic,
)

pytestmark = [pytest.mark.integration, pytest.mark.mqtt]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
WAIT_S = 10.0
PASSWORDS = {
    "depot-north": "pw-north",  # edge nodes of site depot-north
    "depot-south": "pw-south",  # edge nodes of site depot-south
    "svc.correlator": "pw-correlator",
    "svc.api": "pw-api",
    "op.alice": "pw-alice",
}


@dataclass(frozen=True)
class Broker:
    port: int  # the TLS listener (8883 in production)
    health_port: int  # the loopback health listener (1883 in production)
    ca_file: Path
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_certs(folder: Path) -> Path:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost; returns the CA file."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "platewatch test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    certs = folder / "certs"
    certs.mkdir()
    pem = serialization.Encoding.PEM
    (certs / "ca.crt").write_bytes(ca.public_bytes(pem))
    (certs / "server.crt").write_bytes(cert.public_bytes(pem))
    (certs / "server.key").write_bytes(
        key.private_bytes(
            pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    return certs / "ca.crt"


def _adapt_conf(conf: str, folder: Path, port: int, health_port: int) -> str:
    """The production conf with test ports and paths; everything else as shipped."""
    out = conf.replace("/etc/mosquitto/", f"{folder}/").replace("/var/lib/mosquitto/", f"{folder}/")
    out, n_tls = re.subn(r"(?m)^listener 8883$", f"listener {port} 127.0.0.1", out)
    out, n_health = re.subn(
        r"(?m)^listener 1883 127\.0\.0\.1$", f"listener {health_port} 127.0.0.1", out
    )
    assert (n_tls, n_health) == (1, 1), "mosquitto.conf lost its 8883 or 1883 listener"
    if os.geteuid() == 0:  # mosquitto drops root to "mosquitto", which cannot read tmp_path
        out += "\nuser root\n"
    return out


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    if not Path(MOSQUITTO).exists() or shutil.which("mosquitto_passwd") is None:
        pytest.fail("mosquitto and mosquitto_passwd are needed; run `make services`")
    folder = tmp_path_factory.mktemp("broker")
    ca_file = _write_certs(folder)
    passwd = folder / "passwd"
    passwd.touch(mode=0o600)
    for user, password in PASSWORDS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
    for name in ("acl", "acl.health"):
        shutil.copy(DEPLOY / name, folder / name)
    port, health_port = _free_port(), _free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(_adapt_conf((DEPLOY / "mosquitto.conf").read_text(), folder, port, health_port))
    log = folder / "mosquitto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT, cwd=folder
        )
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mosquitto exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"mosquitto did not open {port}:\n{log.read_text()}")
                time.sleep(0.05)
        yield Broker(port, health_port, ca_file, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Client:
    """A bare paho MQTT 5 client that records what the broker answers."""

    raw: paho.Client
    messages: queue.Queue[paho.MQTTMessage] = field(default_factory=queue.Queue)
    acks: dict[int, int] = field(default_factory=dict)  # mid -> PUBACK reason code value
    subacks: dict[int, list[int]] = field(default_factory=dict)
    connack: queue.Queue[int] = field(default_factory=queue.Queue)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """Publish at QoS 1 and return the broker's PUBACK reason code."""
        info = self.raw.publish(topic, payload, qos=1, retain=retain)
        with self.changed:
            assert self.changed.wait_for(lambda: info.mid in self.acks, WAIT_S), "no PUBACK"
            return self.acks[info.mid]

    def subscribe(self, topic_filter: str) -> list[int]:
        """Subscribe at QoS 1 and return the SUBACK reason codes (0x87: not authorised)."""
        _, mid = self.raw.subscribe(topic_filter, qos=1)
        assert mid is not None
        with self.changed:
            assert self.changed.wait_for(lambda: mid in self.subacks, WAIT_S), "no SUBACK"
            return self.subacks[mid]

    def next_payload(self) -> bytes:
        return bytes(self.messages.get(timeout=WAIT_S).payload)


@pytest.fixture
def connect(broker: Broker) -> Iterator[Any]:
    made: list[paho.Client] = []

    def _connect(
        username: str | None,
        password: str | None = None,
        client_id: str | None = None,
        tls: bool = True,
        port: int | None = None,
    ) -> tuple[Client, int]:
        raw = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"pwtest-{uuid.uuid4().hex[:10]}",
            protocol=paho.MQTTv5,
        )
        client = Client(raw)

        def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
            client.connack.put(rc.value)

        def on_message(c: Any, u: Any, msg: paho.MQTTMessage) -> None:
            client.messages.put(msg)

        def on_publish(c: Any, u: Any, mid: int, rc: Any, props: Any) -> None:
            with client.changed:
                client.acks[mid] = rc.value
                client.changed.notify_all()

        def on_subscribe(c: Any, u: Any, mid: int, rcs: Any, props: Any) -> None:
            with client.changed:
                client.subacks[mid] = [r.value for r in rcs]
                client.changed.notify_all()

        raw.on_connect, raw.on_message = on_connect, on_message
        raw.on_publish, raw.on_subscribe = on_publish, on_subscribe
        if username is not None:
            raw.username_pw_set(username, password)
        if tls:
            raw.tls_set(ca_certs=str(broker.ca_file), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        raw.connect("127.0.0.1", port or broker.port, keepalive=30)
        raw.loop_start()
        made.append(raw)
        return client, client.connack.get(timeout=WAIT_S)

    yield _connect
    for raw in made:
        raw.disconnect()
        raw.loop_stop()


def _ok(connect: Any, user: str, client_id: str | None = None) -> Client:
    client, rc = connect(user, PASSWORDS[user], client_id)
    assert rc == 0, f"{user} refused: {rc:#x}"
    assert isinstance(client, Client)
    return client


NOT_AUTHORISED = 0x87
ACCEPTED = (0x00, 0x10)  # success, or "no matching subscribers"


def test_node_publishes_plates_of_its_own_site_only(connect: Any) -> None:
    correlator = _ok(connect, "svc.correlator", "correlator-1")
    assert correlator.subscribe(shared_subscription("correlator", plate_filter())) == [1]
    node = _ok(connect, "depot-north", "depot-north-gw1")

    assert node.publish(plate_topic("depot-north", "cam1"), b"own site") in ACCEPTED
    assert correlator.next_payload() == b"own site"

    assert node.publish(plate_topic("depot-south", "cam1"), b"spoofed site") == NOT_AUTHORISED
    assert node.publish(plate_topic("depot-north", "cam2"), b"sentinel") in ACCEPTED
    assert correlator.next_payload() == b"sentinel"  # the spoofed read never arrived
    assert correlator.messages.empty()


def test_node_publishes_status_of_its_own_site_only(connect: Any) -> None:
    correlator = _ok(connect, "svc.correlator")
    correlator.subscribe("platewatch/v1/+/+/status")
    node = _ok(connect, "depot-south", "depot-south-gw1")

    assert node.publish(status_topic("depot-south", "depot-south-gw1"), b"online") in ACCEPTED
    assert node.publish(status_topic("depot-north", "gw1"), b"spoofed") == NOT_AUTHORISED
    assert node.publish(status_topic("depot-south", "depot-south-gw2"), b"sentinel") in ACCEPTED
    assert [correlator.next_payload(), correlator.next_payload()] == [b"online", b"sentinel"]
    assert correlator.messages.empty()


def test_node_receives_decisions_of_its_own_site_only(connect: Any) -> None:
    # mosquitto 2.0 grants every SUBSCRIBE and applies "read" rules to each delivery instead:
    # a wide subscription is accepted, but only what the user may read comes through.
    node = _ok(connect, "depot-north", "depot-north-gw1")
    node.subscribe("platewatch/v1/+/+/decision")
    node.subscribe("platewatch/v1/+/+/command")
    correlator = _ok(connect, "svc.correlator")

    assert correlator.publish(decision_topic("depot-south", "gate1"), b"other site") in ACCEPTED
    assert correlator.publish(decision_topic("depot-north", "gate1"), b"allow") in ACCEPTED
    assert node.next_payload() == b"allow"
    assert node.messages.empty()


def test_node_reads_no_plates_alerts_and_writes_no_alerts_or_decisions(connect: Any) -> None:
    node = _ok(connect, "depot-north")
    node.subscribe("#")
    assert node.publish(alert_topic("depot-north", "critical"), b"fake alert") == NOT_AUTHORISED
    assert node.publish(decision_topic("depot-north", "gate1"), b"allow") == NOT_AUTHORISED
    other = _ok(connect, "depot-south")
    assert other.publish(plate_topic("depot-south", "cam1"), b"other site's read") in ACCEPTED
    assert other.publish(status_topic("depot-south", "gw1"), b"other site's status") in ACCEPTED
    correlator = _ok(connect, "svc.correlator")
    assert correlator.publish(alert_topic("depot-north", "high"), b"alert") in ACCEPTED
    assert correlator.publish(decision_topic("depot-north", "gate1"), b"sentinel") in ACCEPTED
    assert node.next_payload() == b"sentinel"
    assert node.messages.empty()


def test_correlator_writes_alerts_decisions_and_dead_letters_but_no_plates(connect: Any) -> None:
    correlator = _ok(connect, "svc.correlator")
    assert correlator.publish(alert_topic("depot-north", "high"), b"a") in ACCEPTED
    assert correlator.publish(decision_topic("depot-south", "gate2"), b"d") in ACCEPTED
    assert correlator.publish("platewatch/v1/deadletter/correlator", b"x") in ACCEPTED
    assert correlator.publish(plate_topic("depot-north", "cam1"), b"p") == NOT_AUTHORISED
    # its own name as a site: the pattern lines apply to every user, the deny line wins
    own = "platewatch/v1/svc.correlator/cam1/plate"
    assert correlator.publish(own, b"p") == NOT_AUTHORISED


def test_operator_reads_alerts_and_publishes_nothing(connect: Any) -> None:
    operator = _ok(connect, "op.alice")
    operator.subscribe("#")
    assert operator.publish("platewatch/v1/op.alice/cam1/plate", b"p") == NOT_AUTHORISED
    assert operator.publish(alert_topic("depot-north", "info"), b"a") == NOT_AUTHORISED

    node = _ok(connect, "depot-north")
    assert node.publish(plate_topic("depot-north", "cam1"), b"plate") in ACCEPTED
    assert node.publish(status_topic("depot-north", "gw1"), b"status") in ACCEPTED
    correlator = _ok(connect, "svc.correlator")
    assert correlator.publish(decision_topic("depot-north", "gate1"), b"decision") in ACCEPTED
    assert correlator.publish(alert_topic("depot-north", "critical"), b"wanted") in ACCEPTED
    assert operator.next_payload() == b"wanted"
    assert operator.messages.empty()


def test_wrong_password_and_anonymous_are_refused_on_tls(connect: Any) -> None:
    _, rc = connect("depot-north", "wrong")
    assert rc != 0
    _, rc = connect(None)
    assert rc != 0


def test_health_listener_serves_uptime_only(connect: Any, broker: Broker) -> None:
    health, rc = connect(None, tls=False, port=broker.health_port)
    assert rc == 0
    assert health.subscribe("$SYS/broker/uptime") == [1]
    assert health.next_payload().endswith(b"seconds")
    assert health.publish(plate_topic("depot-north", "cam1"), b"p") == NOT_AUTHORISED


def test_correlator_adapter_connects_with_tls_and_shared_subscription(
    connect: Any, broker: Broker
) -> None:
    """The project's own MQTT adapter, set up as correlator.example.yaml says, over TLS."""
    settings = MqttSettings(
        host="localhost",
        port=broker.port,
        username="svc.correlator",
        password=PASSWORDS["svc.correlator"],
        tls=TlsSettings(ca_file=broker.ca_file),
        reconnect_min_s=0.2,
        reconnect_max_s=1.0,
        session_expiry_s=0,  # leave no member session behind in the module's broker
    )
    got: queue.Queue[bytes] = queue.Queue()

    def on_message(delivery: Delivery) -> None:
        got.put(delivery.payload)
        delivery.ack()

    client = MqttClient(settings, "correlator-9", manual_ack=True, persistent_session=True)
    client.subscribe(shared_subscription("correlator", plate_filter()), on_message)
    client.start(WAIT_S)
    try:
        node = _ok(connect, "depot-south")
        assert node.publish(plate_topic("depot-south", "cam3"), b"read") in ACCEPTED
        assert got.get(timeout=WAIT_S) == b"read"
    finally:
        client.stop()
