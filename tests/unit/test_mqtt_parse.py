"""`parse_publish`, the correlator's fast PUBLISH decoder, against paho's own decoder."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion

from shared.mqtt import parse_publish


def _publish(
    topic: bytes, payload: bytes, qos: int, retain: bool, mid: int, props: bytes = b"\0"
) -> tuple[int, bytes]:
    command = 0x30 | (qos << 1) | int(retain)
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if qos else b"")
    return command, body + props + payload


@given(
    topic=st.text(min_size=1, max_size=80).filter(lambda t: "\0" not in t),
    payload=st.binary(max_size=300),
    qos=st.sampled_from([0, 1]),
    retain=st.booleans(),
    mid=st.integers(1, 65535),
)
def test_matches_paho_for_plain_qos0_and_qos1(
    topic: str, payload: bytes, qos: int, retain: bool, mid: int
) -> None:
    command, packet = _publish(topic.encode(), payload, qos, retain, mid)
    ours = parse_publish(command, packet)
    assert parse_publish(command, bytearray(packet)) == ours  # paho's read buffer type
    paho = _packet.decode_publish(command, packet, MQTTProtocolVersion.MQTTv5)
    assert ours == (
        paho.topic.decode(),
        paho.payload,
        paho.qos,
        paho.retain,
        paho.mid if qos else 0,
    )


@pytest.mark.parametrize(
    ("command", "packet", "why"),
    [
        (*_publish(b"a/b", b"x", 2, False, 7), "QoS 2"),
        (*_publish(b"a/b", b"x", 1, False, 7, props=b"\x02\x02\x00"), "properties"),
        (*_publish(b"", b"x", 1, False, 7), "empty topic (an alias)"),
        (*_publish(b"a/\xff", b"x", 1, False, 7), "topic not UTF-8"),
        (0x32, b"\x00\x05a/b", "topic longer than the packet"),
        (0x32, b"\x00\x03a/b\x00", "no room for the packet id and properties"),
        (0x30, b"\x00\x03a/b", "QoS 0 without the property length"),
        (0x30, b"\x00", "truncated header"),
        (0x36, b"\x00\x03a/b\x00\x01\x00", "QoS 3"),
    ],
)
def test_leaves_everything_else_to_paho(command: int, packet: bytes, why: str) -> None:
    assert parse_publish(command, packet) is None, why


def test_empty_payload_and_retain_flag() -> None:
    command, packet = _publish(b"t", b"", 1, True, 9)
    assert parse_publish(command, packet) == ("t", b"", 1, True, 9)
