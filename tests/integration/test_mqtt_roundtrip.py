"""The skeleton end to end over the real mosquitto: publish, shared subscription, dead letters."""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator

import pytest

from shared.consumer import EventConsumer, MqttDeadLetterSink
from shared.errors import PayloadError
from shared.events import DeadLetter, PlateRead, decode_event, encode_event, utc_now
from shared.mqtt import Delivery, MqttClient, Will, ack_all
from shared.settings import MqttSettings
from shared.topics import (
    deadletter_filter,
    parse_plate_topic,
    plate_filter,
    plate_topic,
    shared_subscription,
    status_topic,
)
from tests.factories import plate_read

pytestmark = [pytest.mark.integration, pytest.mark.mqtt, pytest.mark.shared]


@pytest.fixture
def clients(mqtt_settings: MqttSettings, client_id: str) -> Iterator[list[MqttClient]]:
    made: list[MqttClient] = []
    yield made
    for c in made:
        c.stop()


def _client(
    clients: list[MqttClient], settings: MqttSettings, cid: str, **kw: object
) -> MqttClient:
    c = MqttClient(settings, cid, **kw)  # type: ignore[arg-type]
    clients.append(c)
    return c


def _site_check(event: PlateRead, delivery: Delivery) -> None:
    topic = parse_plate_topic(delivery.topic, root=delivery.topic.split("/", 1)[0])
    if (topic.site, topic.camera) != (event.site, event.camera):
        raise PayloadError("site", event.site, "disagrees with the topic")


def _consumer(
    clients: list[MqttClient], settings: MqttSettings, cid: str, got: queue.Queue[PlateRead]
) -> MqttClient:
    client = _client(clients, settings, cid, manual_ack=True)

    def on_event(event: PlateRead, delivery: Delivery) -> None:
        got.put(event)
        delivery.ack()

    EventConsumer(
        client,
        shared_subscription("correlator", plate_filter(settings.topic_root)),
        PlateRead,
        on_event,
        MqttDeadLetterSink(client, "correlator", settings.topic_root),
        "correlator",
        utc_now,
        check=_site_check,
    ).start()
    client.start()
    return client


def _dead_letters(
    clients: list[MqttClient], settings: MqttSettings, cid: str
) -> queue.Queue[DeadLetter]:
    letters: queue.Queue[DeadLetter] = queue.Queue()
    watcher = _client(clients, settings, cid)
    watcher.subscribe(
        deadletter_filter(settings.topic_root),
        lambda d: letters.put(decode_event(d.payload, DeadLetter)),
    )
    watcher.start()
    time.sleep(0.3)
    return letters


def test_plate_read_arrives_identical_through_shared_subscription(
    clients: list[MqttClient], mqtt_settings: MqttSettings, client_id: str
) -> None:
    got: queue.Queue[PlateRead] = queue.Queue()
    _consumer(clients, mqtt_settings, client_id + "-c", got)
    time.sleep(0.3)  # let the SUBACK land
    pub = _client(clients, mqtt_settings, client_id + "-p")
    pub.start()
    event = plate_read()
    pub.publish(
        plate_topic("north-gate", "cam-1", mqtt_settings.topic_root), encode_event(event)
    ).wait()
    assert got.get(timeout=5) == event


def test_two_shared_consumers_split_the_load_without_duplicates(
    clients: list[MqttClient], mqtt_settings: MqttSettings, client_id: str
) -> None:
    got_a: queue.Queue[PlateRead] = queue.Queue()
    got_b: queue.Queue[PlateRead] = queue.Queue()
    _consumer(clients, mqtt_settings, client_id + "-a", got_a)
    _consumer(clients, mqtt_settings, client_id + "-b", got_b)
    time.sleep(0.3)
    pub = _client(clients, mqtt_settings, client_id + "-p")
    pub.start()
    sent = [plate_read(track_id=f"t{i}") for i in range(40)]
    for e in sent:
        pub.publish(
            plate_topic("north-gate", "cam-1", mqtt_settings.topic_root), encode_event(e)
        ).wait()
    received: list[PlateRead] = []
    deadline = time.monotonic() + 10
    while len(received) < len(sent) and time.monotonic() < deadline:
        for q in (got_a, got_b):
            while not q.empty():
                received.append(q.get())
        time.sleep(0.05)
    assert sorted(e.event_id for e in received) == sorted(e.event_id for e in sent)
    assert got_a.qsize() == got_b.qsize() == 0


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"\xff\xfe not json", "payload"),
        (b'{"type": "plate_read"}', "site"),
        (
            encode_event(plate_read()).replace(b'"confidence":0.93', b'"confidence":"high"'),
            "confidence",
        ),
        (b"{" + b" " * 70000 + b"}", "payload"),
    ],
    ids=["garbage", "missing-fields", "wrong-type", "oversized"],
)
def test_malformed_payload_is_dead_lettered_logged_and_consumer_survives(
    clients: list[MqttClient],
    mqtt_settings: MqttSettings,
    client_id: str,
    payload: bytes,
    field: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="shared.consumer")
    letters = _dead_letters(clients, mqtt_settings, client_id + "-dl")
    got: queue.Queue[PlateRead] = queue.Queue()
    _consumer(clients, mqtt_settings, client_id + "-c", got)
    time.sleep(0.3)
    pub = _client(clients, mqtt_settings, client_id + "-p")
    pub.start()
    topic = plate_topic("north-gate", "cam-1", mqtt_settings.topic_root)
    pub.publish(topic, payload).wait()
    letter = letters.get(timeout=5)
    assert letter.topic == topic and letter.payload_size == len(payload)
    assert (letter.field or "").startswith(field) or field in letter.reason
    assert any(r.getMessage() == "payload rejected" for r in caplog.records)
    good = plate_read()
    pub.publish(topic, encode_event(good)).wait()
    assert got.get(timeout=5) == good  # the consumer is still alive


def test_event_whose_site_disagrees_with_topic_is_dead_lettered(
    clients: list[MqttClient], mqtt_settings: MqttSettings, client_id: str
) -> None:
    letters = _dead_letters(clients, mqtt_settings, client_id + "-dl")
    got: queue.Queue[PlateRead] = queue.Queue()
    _consumer(clients, mqtt_settings, client_id + "-c", got)
    time.sleep(0.3)
    pub = _client(clients, mqtt_settings, client_id + "-p")
    pub.start()
    spoof = plate_read(site="south-gate")
    pub.publish(
        plate_topic("north-gate", "cam-1", mqtt_settings.topic_root), encode_event(spoof)
    ).wait()
    letter = letters.get(timeout=5)
    assert letter.field == "site" and "disagrees" in letter.reason
    assert got.empty()


def test_unacked_message_is_redelivered_to_a_persistent_session(
    clients: list[MqttClient], mqtt_settings: MqttSettings, client_id: str
) -> None:
    seen: queue.Queue[Delivery] = queue.Queue()
    first = MqttClient(mqtt_settings, client_id + "-c", manual_ack=True, persistent_session=True)
    first.subscribe(
        shared_subscription("correlator", plate_filter(mqtt_settings.topic_root)), seen.put
    )
    first.start()
    time.sleep(0.3)
    pub = _client(clients, mqtt_settings, client_id + "-p")
    pub.start()
    event = plate_read()
    pub.publish(
        plate_topic("north-gate", "cam-1", mqtt_settings.topic_root), encode_event(event)
    ).wait()
    seen.get(timeout=5)  # received, never acknowledged: a crash before the commit
    first._client.loop_stop()  # simulate the crash: no DISCONNECT, no ack
    first._client.socket().close()  # type: ignore[union-attr]
    again: queue.Queue[Delivery] = queue.Queue()
    second = _client(
        clients, mqtt_settings, client_id + "-c", manual_ack=True, persistent_session=True
    )
    second.subscribe(
        shared_subscription("correlator", plate_filter(mqtt_settings.topic_root)),
        lambda d: (again.put(d), d.ack()),
    )
    second.start()
    redelivered = again.get(timeout=10)
    assert decode_event(redelivered.payload, PlateRead) == event


def test_ack_all_acknowledges_every_message_of_a_batch(
    clients: list[MqttClient], mqtt_settings: MqttSettings, client_id: str
) -> None:
    """`ack_all` sends a batch's PUBACKs as one write: after a crash (no DISCONNECT) the
    persistent session redelivers only the messages left out of the batch."""
    seen: queue.Queue[Delivery] = queue.Queue()
    sub = shared_subscription("correlator", plate_filter(mqtt_settings.topic_root))
    first = MqttClient(mqtt_settings, client_id + "-c", manual_ack=True, persistent_session=True)
    first.subscribe(sub, seen.put)
    first.start()
    time.sleep(0.3)
    pub = _client(clients, mqtt_settings, client_id + "-p")
    pub.start()
    events = [plate_read(track_id=f"t{i}") for i in range(30)]
    topic = plate_topic("north-gate", "cam-1", mqtt_settings.topic_root)
    for e in events:
        pub.publish(topic, encode_event(e)).wait()
    got = [seen.get(timeout=5) for _ in events]
    assert all(d._pubacks is not None for d in got)  # the batched path is the one tested
    ack_all(got[:25])  # a batch committed; the last five were not
    time.sleep(0.5)  # the PUBACK write reaches the broker before the crash
    first._client.loop_stop()  # crash: no DISCONNECT
    first._client.socket().close()  # type: ignore[union-attr]
    again: queue.Queue[Delivery] = queue.Queue()
    second = _client(
        clients, mqtt_settings, client_id + "-c", manual_ack=True, persistent_session=True
    )
    second.subscribe(sub, lambda d: (again.put(d), d.ack()))
    second.start()
    redelivered = [decode_event(again.get(timeout=10).payload, PlateRead) for _ in range(5)]
    assert sorted(e.track_id for e in redelivered) == sorted(e.track_id for e in events[25:])
    time.sleep(0.5)
    assert again.empty()


def test_last_will_publishes_retained_offline_status(
    clients: list[MqttClient], mqtt_settings: MqttSettings, client_id: str
) -> None:
    topic = status_topic("north-gate", "edge-1", mqtt_settings.topic_root)
    node = MqttClient(
        mqtt_settings.model_copy(update={"keepalive_s": 5}),
        client_id + "-n",
        will=Will(topic, b'{"state":"offline"}'),
    )
    node.start()
    node._client.loop_stop()
    node._client.socket().close()  # type: ignore[union-attr]
    time.sleep(0.5)
    late: queue.Queue[Delivery] = queue.Queue()
    watcher = _client(clients, mqtt_settings, client_id + "-w")
    watcher.subscribe(topic, late.put)
    watcher.start()
    d = late.get(timeout=10)
    assert d.payload == b'{"state":"offline"}' and d.retain
    watcher.publish(topic, b"", retain=True).wait()  # clear the retained message


def test_burst_of_small_and_large_messages_arrives_whole_and_in_order(
    clients: list[MqttClient], mqtt_settings: MqttSettings, client_id: str
) -> None:
    """The buffered reader: many packets per recv, and packets larger than one recv chunk."""
    got: queue.Queue[bytes] = queue.Queue()
    topic = f"{mqtt_settings.topic_root}/burst"
    sub = _client(clients, mqtt_settings, f"{client_id}-sub", manual_ack=True)

    def on_message(delivery: Delivery) -> None:
        got.put(delivery.payload)
        delivery.ack()

    sub.subscribe(topic, on_message, qos=1)
    sub.start()
    time.sleep(0.3)
    pub = _client(clients, mqtt_settings, f"{client_id}-pub")
    pub.start()
    payloads = [f"m{i:05d}".encode() * (1 + i % 7) for i in range(3000)]
    payloads[1500] = bytes(range(256)) * 2048  # 512 KiB: spans several 256 KiB reads
    # Bursts of 500: stock mosquitto queues at most 1,000 QoS 1 messages per client and drops
    # the rest ("Outgoing messages are being dropped"), so never get further ahead than that.
    received: list[bytes] = []
    for start in range(0, len(payloads), 500):
        burst = payloads[start : start + 500]
        for r in [pub.publish(topic, p, qos=1) for p in burst]:
            r.wait()
        received += [got.get(timeout=20) for _ in burst]
    assert received == payloads
    assert got.empty()


def test_fast_and_paho_publish_paths_deliver_the_same_fields(
    clients: list[MqttClient], mqtt_settings: MqttSettings, client_id: str
) -> None:
    """QoS 0/1 packets without properties take `parse_publish`; packets with user properties
    take paho's decoder. Both give the same Delivery fields, and manual acks still work."""
    got: queue.Queue[Delivery] = queue.Queue()
    topic = f"{mqtt_settings.topic_root}/paths/ü"
    sub = _client(clients, mqtt_settings, f"{client_id}-sub", manual_ack=True)

    def on_message(delivery: Delivery) -> None:
        got.put(delivery)
        delivery.ack()

    sub.subscribe(topic, on_message, qos=1)
    assert sub._client.fast_publish is not None  # type: ignore[attr-defined]
    sub.start()
    time.sleep(0.3)
    pub = _client(clients, mqtt_settings, f"{client_id}-pub")
    pub.start()
    pub.publish(topic, b"plain-q1", qos=1).wait()
    pub.publish(topic, b"plain-q0", qos=0)
    pub.publish(topic, b"props-q1", qos=1, user_properties=(("k", "v"), ("k2", "ü"))).wait()
    pub.publish(topic, b"", qos=1).wait()
    seen = [got.get(timeout=10) for _ in range(4)]
    assert [(d.topic, d.payload, d.qos, d.user_properties) for d in seen] == [
        (topic, b"plain-q1", 1, ()),
        (topic, b"plain-q0", 0, ()),
        (topic, b"props-q1", 1, (("k", "v"), ("k2", "ü"))),
        (topic, b"", 1, ()),
    ]
    assert all(not d.retain for d in seen)
    assert seen[0].mid > 0 and seen[1].mid == 0


def test_a_queued_burst_mixing_both_publish_paths_arrives_in_order(
    clients: list[MqttClient], mqtt_settings: MqttSettings, client_id: str
) -> None:
    """A persistent session's queued messages arrive many to a read: plain PUBLISH packets
    take `parse_publish`, every fifth one (user properties) paho's decoder, and the order,
    fields and acknowledgements hold across the two."""
    topic = f"{mqtt_settings.topic_root}/mixed"
    cid = f"{client_id}-sub"
    first = MqttClient(mqtt_settings, cid, manual_ack=True, persistent_session=True)
    first.subscribe(topic, lambda d: d.ack(), qos=1)
    first.start()
    time.sleep(0.3)
    first.stop()  # offline: the broker queues what follows for the session
    pub = _client(clients, mqtt_settings, f"{client_id}-pub")
    pub.start()
    sent = []
    for i in range(400):
        props = (("n", str(i)),) if i % 5 == 0 else ()
        sent.append((f"m{i:04d}".encode() * (1 + i % 9), props))
        pub.publish(topic, sent[-1][0], qos=1, user_properties=props).wait()
    got: queue.Queue[Delivery] = queue.Queue()
    sub = _client(clients, mqtt_settings, cid, manual_ack=True, persistent_session=True)
    sub.subscribe(topic, lambda d: (got.put(d), d.ack()), qos=1)
    sub.start()
    seen = [got.get(timeout=20) for _ in sent]
    assert [(d.payload, d.user_properties) for d in seen] == sent
    time.sleep(0.3)
    assert got.empty()
