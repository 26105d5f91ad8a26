"""The versioned event contract between edge nodes, the correlator and operators.

Every event is a pydantic v2 model with ``type``, ``schema_version`` and a UUIDv7 ``event_id``;
timestamps are timezone-aware and serialised as RFC 3339 UTC (``2026-11-25T08:00:00.000000Z``).
Unknown fields are rejected (``extra="forbid"``) so a typo is an error, not silent data loss.
A new optional field keeps ``schema_version``; anything else is a new version.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Annotated, Final, Literal, TypeVar
from uuid import UUID

import uuid6
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationError,
    model_validator,
)

from shared.errors import PayloadError
from shared.topics import SEVERITIES, SLUG_PATTERN

MAX_PAYLOAD_BYTES: Final = 64 * 1024
PLATE_PATTERN: Final = r"^[A-Z0-9]{1,16}$"


def utc_now() -> datetime:
    """The current time in UTC (only composition roots and adapters should call this)."""
    return datetime.now(UTC)


def new_event_id() -> UUID:
    """A time-ordered UUIDv7, so ids sort by creation time and index well."""
    return UUID(bytes=uuid6.uuid7().bytes)


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _check_v7(value: UUID) -> UUID:
    if value.version != 7:
        raise ValueError("event_id must be a UUIDv7")
    return value


UtcDatetime = Annotated[
    AwareDatetime, AfterValidator(_to_utc), PlainSerializer(_rfc3339, return_type=str)
]
EventId = Annotated[UUID, AfterValidator(_check_v7)]
Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN)]
PlateText = Annotated[str, StringConstraints(pattern=PLATE_PATTERN)]
Confidence = Annotated[float, Field(ge=0.0, le=1.0)]
Severity = Literal["info", "low", "medium", "high", "critical"]
assert Severity.__args__ == SEVERITIES  # type: ignore[attr-defined]  # one list, two spellings


class ContractModel(BaseModel):
    """Base of every model on the wire: frozen, strict about unknown fields."""

    # allow_inf_nan=False: a box or score of NaN/Infinity is refused at the edge of the system
    # rather than stored (as null by one insert path, rejected by another)
    model_config = ConfigDict(
        frozen=True, extra="forbid", str_strip_whitespace=False, allow_inf_nan=False
    )


class BBox(ContractModel):
    """A box in pixels of the frame as captured."""

    x1: float = Field(ge=0, description="Left edge, pixels.")
    y1: float = Field(ge=0, description="Top edge, pixels.")
    x2: float = Field(ge=0, description="Right edge, pixels.")
    y2: float = Field(ge=0, description="Bottom edge, pixels.")

    @model_validator(mode="after")
    def _ordered(self) -> BBox:
        if self.x2 <= self.x1 or self.y2 <= self.y1:
            raise ValueError("box needs x2 > x1 and y2 > y1")
        return self


class PlateCandidate(ContractModel):
    text: PlateText = Field(description="Normalised candidate text.")
    confidence: Confidence = Field(description="Reader score of this candidate, 0..1.")


class Signature(ContractModel):
    """Detached signature of an event by its node (see shared/signing.py)."""

    alg: Literal["ed25519"] = Field(description="Signature algorithm.")
    key_id: str = Field(min_length=1, max_length=64, description="Which registered key signed.")
    value: str = Field(
        min_length=1, max_length=200, description="Base64 signature over the canonical JSON."
    )

    @model_validator(mode="after")
    def _base64(self) -> Signature:
        try:
            base64.b64decode(self.value, validate=True)
        except ValueError as exc:
            raise ValueError("signature value is not base64") from exc
        return self


class EventBase(ContractModel):
    schema_version: Literal[1] = Field(default=1, description="Version of this event's schema.")
    event_id: EventId = Field(
        default_factory=new_event_id, description="Unique, time-ordered id (UUIDv7)."
    )


class PlateRead(EventBase):
    """One vehicle pass at one camera: the voted read of a track, published once."""

    type: Literal["plate_read"] = Field(default="plate_read", description="Event type.")
    site: Slug = Field(description="Site slug; must equal the topic's site.")
    camera: Slug = Field(description="Camera slug; must equal the topic's camera.")
    node: Slug = Field(description="Edge node that read the plate.")
    track_id: str = Field(min_length=1, max_length=64, description="Tracker id of the pass.")
    plate: PlateText = Field(description="Normalised plate: upper case A-Z0-9.")
    raw_text: str = Field(max_length=64, description="Reader output before normalisation.")
    region: str | None = Field(
        default=None, max_length=8, description="Plate region/format, e.g. us, br, eu."
    )
    confidence: Confidence = Field(description="Voted confidence of `plate`, 0..1.")
    char_confidences: list[Confidence] = Field(
        default_factory=list, max_length=16, description="Per-character confidence of `plate`."
    )
    candidates: list[PlateCandidate] = Field(
        default_factory=list, max_length=10, description="Other readings, best first."
    )
    first_seen: UtcDatetime = Field(description="First frame of the track.")
    last_seen: UtcDatetime = Field(description="Last frame of the track.")
    captured_at: UtcDatetime = Field(description="Frame the best read came from.")
    frames: int = Field(default=1, ge=1, description="Frames that voted for this read.")
    direction: Literal["in", "out", "unknown"] = Field(
        default="unknown", description="Direction of travel relative to the site."
    )
    box: BBox | None = Field(default=None, description="Plate box in the best frame.")
    image_ref: str | None = Field(
        default=None, max_length=512, description="Where the edge stored the plate image."
    )
    gate_request: bool = Field(
        default=False, description="The camera guards a gate and waits for a GateDecision."
    )
    signature: Signature | None = Field(default=None, description="Node signature, if signed.")

    @model_validator(mode="after")
    def _times(self) -> PlateRead:
        if self.last_seen < self.first_seen:
            raise ValueError("last_seen is before first_seen")
        return self


class AlertMatch(ContractModel):
    """The watch-list entry an alert matched, and why."""

    list_id: int = Field(description="Watch-list id.")
    list_name: str = Field(max_length=128, description="Watch-list name.")
    entry_id: int = Field(description="Watch-list entry id.")
    pattern: str = Field(max_length=32, description="The entry's pattern.")
    mode: Literal["exact", "fuzzy", "wildcard"] = Field(description="How it matched.")
    category: str = Field(max_length=32, description="wanted, stolen, banned, vip, custom...")
    cost: float = Field(ge=0, description="Weighted edit cost (0 for exact).")
    explanation: str = Field(max_length=256, description='e.g. "fuzzy: 0->O at position 3".')


class Alert(EventBase):
    """Something an operator must see: a watch-list hit or a cross-site pattern."""

    type: Literal["alert"] = Field(default="alert", description="Event type.")
    raised_at: UtcDatetime = Field(description="When the correlator raised it.")
    site: Slug = Field(description="Site of the sighting that raised it.")
    camera: Slug | None = Field(default=None, description="Camera of that sighting.")
    severity: Severity = Field(description="Routing and display priority.")
    kind: Literal["watchlist", "impossible_travel", "unregistered_gate", "repeated_sightings"] = (
        Field(description="What raised the alert.")
    )
    plate: PlateText = Field(description="Normalised plate.")
    seen_at: UtcDatetime = Field(description="When the plate was seen.")
    sighting_event_id: UUID | None = Field(default=None, description="The PlateRead behind it.")
    incident_id: UUID | None = Field(
        default=None, description="Groups escalating alerts on one plate into one incident."
    )
    historical: bool = Field(
        default=False, description="Raised by a retro-hunt over stored sightings."
    )
    title: str = Field(max_length=200, description="One line for a human.")
    reason: str = Field(max_length=1000, description="Why it was raised.")
    match: AlertMatch | None = Field(default=None, description="Watch-list match, if any.")
    related_sightings: list[UUID] = Field(
        default_factory=list, max_length=50, description="Other sightings in the pattern."
    )
    details: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Kind-specific facts (distance_km, speed_kmh...)."
    )


class CameraStatus(ContractModel):
    camera: Slug = Field(description="Camera slug.")
    state: Literal["online", "offline", "degraded"] = Field(description="Capture health.")
    fps: float = Field(default=0.0, ge=0, description="Frames processed per second.")
    last_frame_at: UtcDatetime | None = Field(default=None, description="Last decoded frame.")
    detail: str = Field(default="", max_length=256, description="Why degraded/offline.")


class NodeStatus(EventBase):
    """Health of an edge node; retained, and its offline form is the node's last will."""

    type: Literal["node_status"] = Field(default="node_status", description="Event type.")
    site: Slug = Field(description="Site slug; must equal the topic's site.")
    node: Slug = Field(description="Node slug; must equal the topic's node.")
    state: Literal["online", "offline", "degraded"] = Field(description="Node health.")
    reported_at: UtcDatetime = Field(description="When the node reported.")
    version: str = Field(default="", max_length=64, description="platewatch version.")
    uptime_s: float = Field(default=0.0, ge=0, description="Seconds since start.")
    outbox_depth: int = Field(default=0, ge=0, description="Events waiting on disk.")
    cameras: list[CameraStatus] = Field(
        default_factory=list, max_length=64, description="Per-camera health."
    )
    cpu_percent: float | None = Field(default=None, ge=0, description="Process CPU use.")
    memory_mb: float | None = Field(default=None, ge=0, description="Process resident memory.")


class GateDecision(EventBase):
    """The correlator's answer to a gate camera: open or keep closed."""

    type: Literal["gate_decision"] = Field(default="gate_decision", description="Event type.")
    decided_at: UtcDatetime = Field(description="When the decision was made.")
    site: Slug = Field(description="Site slug.")
    gate: Slug = Field(description="Gate (camera) slug the decision is for.")
    plate: PlateText = Field(description="Normalised plate the decision is about.")
    decision: Literal["allow", "deny"] = Field(description="Open or keep closed.")
    reason: str = Field(max_length=256, description="Why, for the gate's log and display.")
    sighting_event_id: UUID | None = Field(default=None, description="The PlateRead behind it.")
    valid_until: UtcDatetime | None = Field(
        default=None, description="The gate ignores the decision after this time."
    )


class DeadLetter(EventBase):
    """A payload a service refused, with the reason; published and stored, never dropped."""

    type: Literal["dead_letter"] = Field(default="dead_letter", description="Event type.")
    service: Slug = Field(description="Service that refused it.")
    received_at: UtcDatetime = Field(description="When it arrived.")
    topic: str = Field(max_length=512, description="Topic it arrived on.")
    reason: str = Field(max_length=1000, description="Why it was refused.")
    field: str | None = Field(default=None, max_length=128, description="Offending field.")
    payload_b64: str = Field(description="The payload as received (base64, maybe truncated).")
    payload_size: int = Field(ge=0, description="Size of the payload as received, bytes.")


EVENT_MODELS: Final[dict[str, type[EventBase]]] = {
    "PlateRead": PlateRead,
    "Alert": Alert,
    "NodeStatus": NodeStatus,
    "GateDecision": GateDecision,
    "DeadLetter": DeadLetter,
}

E = TypeVar("E", bound=EventBase)


def encode_event(event: EventBase) -> bytes:
    """Compact JSON bytes of an event, as published."""
    return event.model_dump_json(exclude_none=False).encode("utf-8")


def decode_event(payload: bytes, model: type[E]) -> E:
    """Parse and validate a payload; PayloadError names the first bad field."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError("payload", f"{len(payload)} bytes", f"over {MAX_PAYLOAD_BYTES} bytes")
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"]) or "payload"
        value = "<missing>" if err["type"] == "missing" else err.get("input")
        raise PayloadError(loc, value, err["msg"]) from exc


def canonical_bytes(event: EventBase, exclude: frozenset[str] = frozenset()) -> bytes:
    """Deterministic JSON of an event (sorted keys, no spaces) for signing and hashing."""
    data = event.model_dump(mode="json", exclude=set(exclude))
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def json_schemas() -> dict[str, dict[str, object]]:
    """JSON Schema (draft 2020-12) of every event, by model name."""
    return {name: model.model_json_schema() for name, model in EVENT_MODELS.items()}
