"""SQLAlchemy 2 models of the whole platform. Alembic migrations in `migrations/` follow them.

Sightings are keyed by the edge's UUIDv7 `event_id`. A UUIDv7 starts with its millisecond
timestamp, so on PostgreSQL the table can be range-partitioned by `event_id` (one partition a
month) while `event_id` stays the primary key: inserts stay idempotent across partitions.
See docs/decisions.md (storage).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shared.store.types import BigId, JsonDoc, UtcDateTime

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

LIST_KINDS = ("watch", "allow")
MATCH_MODES = ("exact", "fuzzy", "wildcard")
CATEGORIES = ("wanted", "stolen", "banned", "vip", "allow", "custom")
ALERT_STATUSES = ("new", "acknowledged", "dismissed", "escalated")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UtcDateTime(), dict[str, Any]: JsonDoc}


class Site(Base):
    __tablename__ = "site"
    id: Mapped[str] = mapped_column(String(63), primary_key=True, comment="Site slug.")
    name: Mapped[str] = mapped_column(String(128), default="")
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC", comment="IANA zone.")
    retention_days: Mapped[int | None] = mapped_column(
        Integer, comment="Sightings older than this are deleted (none: the global default)."
    )
    privacy_mode: Mapped[bool] = mapped_column(
        Boolean, default=False, comment="Keep plates of sightings without a hit only as a hash."
    )
    created_at: Mapped[datetime]


class Node(Base):
    __tablename__ = "node"
    id: Mapped[str] = mapped_column(String(63), primary_key=True, comment="Node slug.")
    site_id: Mapped[str] = mapped_column(ForeignKey("site.id"), index=True)
    public_key: Mapped[str | None] = mapped_column(
        String(64), comment="Base64 Ed25519 key its events are signed with."
    )
    require_signature: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16), default="unknown")
    version: Mapped[str] = mapped_column(String(64), default="")
    last_status: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    last_seen_at: Mapped[datetime | None]


class Camera(Base):
    __tablename__ = "camera"
    __table_args__ = (UniqueConstraint("site_id", "slug"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("site.id"))
    slug: Mapped[str] = mapped_column(String(63))
    name: Mapped[str] = mapped_column(String(128), default="")
    node_id: Mapped[str | None] = mapped_column(String(63))
    is_gate: Mapped[bool] = mapped_column(
        Boolean, default=False, comment="Guards a gate: unregistered plates are denied."
    )
    state: Mapped[str] = mapped_column(String(16), default="unknown")
    last_status: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    last_seen_at: Mapped[datetime | None]


class Sighting(Base):
    __tablename__ = "sighting"
    __table_args__ = (
        Index("ix_sighting_plate_seen_at", "plate", "seen_at"),
        Index("ix_sighting_site_seen_at", "site_id", "seen_at"),
        Index("ix_sighting_seen_at", "seen_at"),
    )
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    plate: Mapped[str] = mapped_column(String(64), comment="Normalised plate, or its keyed hash.")
    plate_hashed: Mapped[bool] = mapped_column(Boolean, default=False)
    raw_text: Mapped[str] = mapped_column(String(64), default="")
    region: Mapped[str | None] = mapped_column(String(8))
    confidence: Mapped[float] = mapped_column(Float)
    char_confidences: Mapped[list[float] | None] = mapped_column(JsonDoc)
    candidates: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonDoc)
    site_id: Mapped[str] = mapped_column(String(63))
    camera: Mapped[str] = mapped_column(String(63))
    node: Mapped[str] = mapped_column(String(63))
    track_id: Mapped[str] = mapped_column(String(64))
    direction: Mapped[str] = mapped_column(String(8), default="unknown")
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]
    seen_at: Mapped[datetime] = mapped_column(comment="Capture time of the best frame.")
    received_at: Mapped[datetime]
    frames: Mapped[int] = mapped_column(Integer, default=1)
    box: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    image_ref: Mapped[str | None] = mapped_column(String(512))
    signed: Mapped[bool] = mapped_column(Boolean, default=False)


class WatchList(Base):
    __tablename__ = "watch_list"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(8), default="watch", comment="watch or allow.")
    site_id: Mapped[str | None] = mapped_column(
        ForeignKey("site.id"), comment="Allow-lists belong to a site; watch-lists may."
    )
    category: Mapped[str] = mapped_column(String(16), default="custom")
    severity: Mapped[str] = mapped_column(String(8), default="high")
    fuzzy_max_cost: Mapped[float] = mapped_column(Float, default=1.0)
    description: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str] = mapped_column(String(128), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    version: Mapped[int] = mapped_column(Integer, default=1, comment="Bumped on every change.")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    entries: Mapped[list[WatchEntry]] = relationship(
        back_populates="watch_list", cascade="all, delete-orphan"
    )


#: A watch entry not yet retro-hunted at its current version (see `WatchEntry.hunted_at`).
HUNT_PENDING_SQL = "hunted_at IS NULL OR hunted_at <> updated_at"


class WatchEntry(Base):
    __tablename__ = "watch_entry"
    __table_args__ = (
        Index("ix_watch_entry_list_pattern", "list_id", "pattern"),
        # only the entries waiting for a retro-hunt: the correlators' poll reads an empty
        # index, not a million rows
        Index(
            "ix_watch_entry_hunt_pending",
            "id",
            postgresql_where=text(HUNT_PENDING_SQL),
            sqlite_where=text(HUNT_PENDING_SQL),
        ),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("watch_list.id", ondelete="CASCADE"))
    pattern: Mapped[str] = mapped_column(String(32))
    mode: Mapped[str] = mapped_column(String(8), default="exact")
    category: Mapped[str] = mapped_column(String(16), default="custom")
    priority: Mapped[int] = mapped_column(Integer, default=50, comment="Lower is more urgent.")
    max_cost: Mapped[float | None] = mapped_column(Float)
    valid_from: Mapped[datetime | None]
    valid_until: Mapped[datetime | None]
    reason: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]  # set on every change: the entry then waits for a retro-hunt
    hunted_at: Mapped[datetime | None] = mapped_column(
        comment="The updated_at the entry was last retro-hunted at; NULL: never. The entry "
        "waits for a retro-hunt while it differs from updated_at."
    )
    watch_list: Mapped[WatchList] = relationship(back_populates="entries")


class AlertRecord(Base):
    __tablename__ = "alert"
    __table_args__ = (
        Index("ix_alert_status_raised_at", "status", "raised_at"),
        Index("ix_alert_plate_raised_at", "plate", "raised_at"),
    )
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, comment="The Alert event_id.")
    dedupe_key: Mapped[str] = mapped_column(
        String(200), unique=True, comment="kind:sighting:entry; redelivery never alerts twice."
    )
    kind: Mapped[str] = mapped_column(String(24))
    severity: Mapped[str] = mapped_column(String(8))
    site_id: Mapped[str] = mapped_column(String(63))
    camera: Mapped[str | None] = mapped_column(String(63))
    plate: Mapped[str] = mapped_column(String(64))
    seen_at: Mapped[datetime]
    raised_at: Mapped[datetime]
    sighting_event_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    list_id: Mapped[int | None] = mapped_column(BigId)
    entry_id: Mapped[int | None] = mapped_column(BigId)
    incident_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    historical: Mapped[bool] = mapped_column(Boolean, default=False)
    title: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    match: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    details: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDoc, comment="The Alert event as sent.")
    published_at: Mapped[datetime | None] = mapped_column(
        comment="When it went out on MQTT and the stream (null: still to publish)."
    )
    status: Mapped[str] = mapped_column(String(16), default="new")
    status_by: Mapped[str | None] = mapped_column(String(128))
    status_at: Mapped[datetime | None]
    notes: Mapped[list[AlertNote]] = relationship(
        back_populates="alert", cascade="all, delete-orphan", order_by="AlertNote.created_at"
    )


class AlertNote(Base):
    __tablename__ = "alert_note"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    alert_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("alert.id", ondelete="CASCADE"), index=True
    )
    author: Mapped[str] = mapped_column(String(128))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    alert: Mapped[AlertRecord] = relationship(back_populates="notes")


class AuditLog(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(128), comment="User, or system:<service>.")
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)


class DeadLetterRecord(Base):
    __tablename__ = "dead_letter"
    __table_args__ = (Index("ix_dead_letter_received_at", "received_at"),)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    service: Mapped[str] = mapped_column(String(63))
    received_at: Mapped[datetime]
    topic: Mapped[str] = mapped_column(String(512))
    reason: Mapped[str] = mapped_column(Text)
    field: Mapped[str | None] = mapped_column(String(128))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    payload_size: Mapped[int] = mapped_column(Integer)
