import json
from datetime import UTC, datetime, timedelta, timezone
from uuid import uuid4

import pytest

from shared.errors import PayloadError, SignatureError
from shared.events import (
    MAX_PAYLOAD_BYTES,
    Alert,
    GateDecision,
    NodeStatus,
    PlateRead,
    decode_event,
    encode_event,
    json_schemas,
)
from shared.signing import generate_private_key, sign_event, verify_event
from tests.factories import T0, plate_read

pytestmark = pytest.mark.shared


def test_plate_read_round_trips_through_json() -> None:
    event = plate_read()
    assert decode_event(encode_event(event), PlateRead) == event


def test_event_ids_are_unique_time_ordered_uuid7() -> None:
    a, b = plate_read(), plate_read()
    assert a.event_id != b.event_id
    assert a.event_id.version == 7
    assert str(a.event_id) < str(b.event_id) or a.event_id.time <= b.event_id.time


def test_timestamps_serialise_as_rfc3339_utc() -> None:
    cest = timezone(timedelta(hours=2))
    event = plate_read(seen_at=datetime(2026, 6, 1, 12, 0, tzinfo=cest))
    data = json.loads(encode_event(event))
    assert data["last_seen"] == "2026-06-01T10:00:00.000000Z"
    assert event.last_seen.tzinfo == UTC


def test_decode_rejects_naive_timestamp_naming_the_field() -> None:
    data = json.loads(encode_event(plate_read()))
    data["captured_at"] = "2026-11-25T08:00:00"
    with pytest.raises(PayloadError) as info:
        decode_event(json.dumps(data).encode(), PlateRead)
    assert info.value.field == "captured_at"


def test_decode_rejects_unknown_field() -> None:
    data = json.loads(encode_event(plate_read()))
    data["colour"] = "red"
    with pytest.raises(PayloadError, match="colour"):
        decode_event(json.dumps(data).encode(), PlateRead)


def test_decode_rejects_wrong_type_missing_field_and_bad_json() -> None:
    data = json.loads(encode_event(plate_read()))
    data["confidence"] = "high"
    with pytest.raises(PayloadError) as info:
        decode_event(json.dumps(data).encode(), PlateRead)
    assert info.value.field == "confidence"
    del data["confidence"]
    with pytest.raises(PayloadError, match="<missing>"):
        decode_event(json.dumps(data).encode(), PlateRead)
    with pytest.raises(PayloadError):
        decode_event(b"{not json", PlateRead)


def test_decode_rejects_non_v7_event_id() -> None:
    data = json.loads(encode_event(plate_read()))
    data["event_id"] = str(uuid4())
    with pytest.raises(PayloadError) as info:
        decode_event(json.dumps(data).encode(), PlateRead)
    assert info.value.field == "event_id"


def test_decode_rejects_oversized_payload_before_parsing() -> None:
    with pytest.raises(PayloadError, match="payload"):
        decode_event(b" " * (MAX_PAYLOAD_BYTES + 1), PlateRead)


def test_plate_read_rejects_unnormalised_plate_and_reversed_times() -> None:
    with pytest.raises(ValueError):
        plate_read(plate="abc 123")
    with pytest.raises(ValueError, match="last_seen"):
        plate_read(first_seen=T0, last_seen=T0 - timedelta(seconds=1))


def test_every_event_kind_validates_and_exports_a_json_schema() -> None:
    alert = Alert(
        raised_at=T0,
        site="s",
        severity="high",
        kind="watchlist",
        plate="ABC123",
        seen_at=T0,
        title="Wanted plate ABC123",
        reason="exact",
    )
    status = NodeStatus(site="s", node="n", state="online", reported_at=T0)
    decision = GateDecision(
        decided_at=T0,
        site="s",
        gate="g",
        plate="ABC123",
        decision="deny",
        reason="not on allow-list",
    )
    for event, model in ((alert, Alert), (status, NodeStatus), (decision, GateDecision)):
        assert decode_event(encode_event(event), model) == event
    schemas = json_schemas()
    assert set(schemas) >= {"PlateRead", "Alert", "NodeStatus", "GateDecision"}
    assert "schema_version" in schemas["PlateRead"]["properties"]  # type: ignore[operator]


def test_signed_event_verifies_and_tampering_fails() -> None:
    key = generate_private_key()
    signed = sign_event(plate_read(), key, "edge-1")
    verify_event(signed, key.public_key())
    assert decode_event(encode_event(signed), PlateRead) == signed
    tampered = signed.model_copy(update={"plate": "XYZ999"})
    with pytest.raises(SignatureError, match="does not verify"):
        verify_event(tampered, key.public_key())
    with pytest.raises(SignatureError, match="missing"):
        verify_event(plate_read(), key.public_key())
    with pytest.raises(SignatureError):
        verify_event(signed, generate_private_key().public_key())


@pytest.mark.parametrize("value", ["1e999", "Infinity", "NaN"])
def test_decode_rejects_non_finite_numbers_naming_the_field(value: str) -> None:
    payload = plate_read().model_dump_json().replace('"x2":220.0', f'"x2":{value}')
    assert value in payload
    with pytest.raises(PayloadError) as err:
        decode_event(payload.encode(), PlateRead)
    assert err.value.field == "box.x2"
