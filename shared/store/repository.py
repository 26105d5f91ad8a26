"""Queries and writes of the platform, as functions over a Session (no engine, no commit).

The caller owns the transaction: the correlator commits a whole batch at once, the API one
request at once. Inserts of sightings and alerts are idempotent (ON CONFLICT DO NOTHING on the
event id / dedupe key) on PostgreSQL and SQLite alike.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, cast

from pydantic import TypeAdapter
from sqlalchemy import ColumnElement, Select, Table, bindparam, delete, exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, joinedload

from shared.errors import FieldError
from shared.events import Alert, DeadLetter, NodeStatus, PlateCandidate, PlateRead
from shared.store.models import (
    CATEGORIES,
    LIST_KINDS,
    AlertRecord,
    AuditLog,
    Camera,
    DeadLetterRecord,
    Node,
    Sighting,
    Site,
    WatchEntry,
    WatchList,
)
from shared.topics import SEVERITIES


def _insert(session: Session, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"database dialect {dialect!r} is not supported")


def _sighting_values(event: PlateRead, received_at: datetime, json_text: bool) -> list[Any]:
    """A sighting's column values in SIGHTING_COLUMNS order. The JSON columns are Python
    objects, or with `json_text` JSON text (for the COPY; pydantic's serializer makes it)."""
    if json_text:
        char_confidences: Any = _FLOATS_JSON.dump_json(event.char_confidences).decode()
        candidates: Any = _CANDIDATES_JSON.dump_json(event.candidates).decode()
        box: Any = event.box.model_dump_json() if event.box else None
    else:
        char_confidences = list(event.char_confidences)
        candidates = [c.model_dump() for c in event.candidates]
        box = event.box.model_dump() if event.box else None
    return [
        event.event_id,
        event.plate,
        False,  # plate_hashed
        event.raw_text,
        event.region,
        event.confidence,
        char_confidences,
        candidates,
        event.site,
        event.camera,
        event.node,
        event.track_id,
        event.direction,
        event.first_seen,
        event.last_seen,
        event.captured_at,  # seen_at
        received_at,
        event.frames,
        box,
        event.image_ref,
        event.signature is not None,  # signed
    ]


#: The order of `_sighting_values`; the model must have exactly these columns (checked below).
SIGHTING_COLUMNS: tuple[str, ...] = (
    "event_id",
    "plate",
    "plate_hashed",
    "raw_text",
    "region",
    "confidence",
    "char_confidences",
    "candidates",
    "site_id",
    "camera",
    "node",
    "track_id",
    "direction",
    "first_seen",
    "last_seen",
    "seen_at",
    "received_at",
    "frames",
    "box",
    "image_ref",
    "signed",
)
if set(SIGHTING_COLUMNS) != {c.name for c in Sighting.__table__.columns}:  # pragma: no cover
    raise RuntimeError("repository.SIGHTING_COLUMNS disagrees with the sighting table")
_SIGHTING_COLS_SQL = ", ".join(SIGHTING_COLUMNS)  # the model's own names, never input
#: the COPY's PostgreSQL types in SIGHTING_COLUMNS order, so psycopg picks each value's dumper
#: once per batch instead of inspecting every value (JSON columns go as text: the server parses
#: them for jsonb)
_SIGHTING_COPY_TYPES: tuple[str, ...] = (
    "uuid", "text", "bool", "text", "text", "float8", "text", "text", "text", "text", "text",
    "text", "text", "timestamptz", "timestamptz", "timestamptz", "timestamptz", "int4", "text",
    "text", "bool",
)  # fmt: skip
if len(_SIGHTING_COPY_TYPES) != len(SIGHTING_COLUMNS):  # pragma: no cover
    raise RuntimeError("repository._SIGHTING_COPY_TYPES disagrees with SIGHTING_COLUMNS")
_CANDIDATES_JSON: TypeAdapter[list[PlateCandidate]] = TypeAdapter(list[PlateCandidate])
_FLOATS_JSON: TypeAdapter[list[float]] = TypeAdapter(list[float])
_SQLITE_ROWS_PER_INSERT = 500  # x 21 columns stays under SQLite's 32,766 bound parameters


def sighting_row(event: PlateRead, received_at: datetime) -> dict[str, Any]:
    return dict(zip(SIGHTING_COLUMNS, _sighting_values(event, received_at, False), strict=True))


def insert_sightings(
    session: Session, events: Sequence[PlateRead], received_at: datetime
) -> set[uuid.UUID]:
    """Insert what is new; return the event ids that were inserted (duplicates are skipped)."""
    return {e.event_id for e in events} - store_sightings(session, events, received_at)


def store_sightings(
    session: Session, events: Sequence[PlateRead], received_at: datetime
) -> set[uuid.UUID]:
    """Insert what is new; return the event ids that were already stored and so skipped
    (usually none: the ingest path then has nothing to compare)."""
    if not events:
        return set()
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres and len(events) > _JSON_INSERT_MAX_ROWS:
        copy_rows = [_sighting_values(e, received_at, True) for e in events]
        return _copy_sightings(session, copy_rows)
    rows = [sighting_row(e, received_at) for e in events]
    if postgres:
        new = _json_insert(session, "sighting", rows, "event_id", "event_id")
        return {e.event_id for e in events} - new
    inserted: set[uuid.UUID] = set()
    for start in range(0, len(rows), _SQLITE_ROWS_PER_INSERT):  # SQLite caps bound parameters
        stmt = (
            _insert(session, Sighting)
            .values(rows[start : start + _SQLITE_ROWS_PER_INSERT])
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(Sighting.event_id)
        )
        inserted |= {row[0] for row in session.execute(stmt)}
    return {e.event_id for e in events} - inserted


#: Up to this many rows, one INSERT ... SELECT FROM json_populate_recordset (one round trip)
#: beats the COPY (three); above it the COPY costs less CPU per row (measured 2026-11-25:
#: 1 row 0.7 vs 1.5 ms per batch, 30 rows 2.7 vs 3.4 ms, 60 rows even, 120 rows 12.1 vs 8.7 ms).
_JSON_INSERT_MAX_ROWS = 64


def _driver_connection(session: Session) -> Any:
    """The psycopg connection under the session's transaction (PostgreSQL fast paths)."""
    raw = session.connection().connection.driver_connection
    assert raw is not None
    return raw


def _json_insert(
    session: Session,
    table: str,
    rows: list[dict[str, Any]],
    unique: str,
    returning: str,
    values: dict[str, str] | None = None,
) -> set[uuid.UUID]:
    """PostgreSQL: rows (dicts keyed by `table`'s column names) as one JSON parameter,
    expanded by the server with json_populate_recordset, ON CONFLICT (`unique`) DO NOTHING;
    returns the `returning` column of the rows inserted. One fixed statement per table, so
    psycopg parses it once (a multi-row VALUES differs with each batch size). `values`: an SQL
    expression that replaces a column's plain value."""
    names = list(rows[0])  # the model's own column names, never input
    cols = ", ".join(names)
    picked = ", ".join((values or {}).get(c, c) for c in names)
    payload = json.dumps(rows, default=str, separators=(",", ":"))
    with _driver_connection(session).cursor() as cur:
        cur.execute(  # the table and column names are the model's own, never input
            f"INSERT INTO {table} ({cols}) SELECT {picked} "  # noqa: S608
            f"FROM json_populate_recordset(NULL::{table}, %s::json) "
            f"ON CONFLICT ({unique}) DO NOTHING RETURNING {returning}",
            (payload,),
        )
        return {r[0] for r in cur.fetchall()}


_SIGHTING_IN = (
    "CREATE TEMP TABLE IF NOT EXISTS sighting_in "
    "(LIKE sighting INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)


def prepare_ingest_connection(dbapi_conn: Any, record: Any) -> None:
    """SQLAlchemy "connect" listener (PostgreSQL): create the COPY staging table once per
    connection rather than once per batch. Without the schema yet, it is left to the batch."""
    try:
        with dbapi_conn.cursor() as cur:
            cur.execute(_SIGHTING_IN)
        dbapi_conn.commit()
        record.info["sighting_in"] = True
    except Exception:
        dbapi_conn.rollback()


def _copy_sightings(session: Session, rows: list[list[Any]]) -> set[uuid.UUID]:
    """PostgreSQL: COPY the batch into a temporary table, then move it with one INSERT ...
    SELECT ... ON CONFLICT DO NOTHING. About 20x less client CPU per row than a multi-row
    VALUES insert (docs/performance.md), same idempotent contract. Two round trips per batch,
    the COPY and the move: the table is made once per connection. Returns the event ids that
    were already stored (skipped): usually none, so nothing comes back to parse."""
    cols = _SIGHTING_COLS_SQL
    pooled = session.connection().connection
    raw = pooled.driver_connection
    assert raw is not None
    with raw.cursor() as cur:
        if not pooled.info.get("sighting_in"):
            cur.execute(_SIGHTING_IN)
        # JSON columns go as JSON text (the server parses it for jsonb); psycopg's C row
        # formatter does the rest. Cheaper than Jsonb() wrappers or formatting rows in Python.
        with cur.copy(f"COPY sighting_in ({cols}) FROM STDIN") as copy:
            copy.set_types(_SIGHTING_COPY_TYPES)
            for row in rows:
                copy.write_row(row)
        # Emptying the table in the same statement: the next batch may share this transaction.
        cur.execute(  # the column names are the model's own, never input
            f"WITH moved AS (DELETE FROM sighting_in RETURNING {cols}), "  # noqa: S608
            f"inserted AS (INSERT INTO sighting ({cols}) SELECT {cols} FROM moved "
            "ON CONFLICT (event_id) DO NOTHING RETURNING event_id) "
            "SELECT event_id FROM moved EXCEPT SELECT event_id FROM inserted"
        )
        return {r[0] for r in cur.fetchall()}


def ensure_sites_and_cameras(
    session: Session, pairs: Iterable[tuple[str, str, str]], now: datetime
) -> None:
    """Register unseen (site, camera, node) triples; existing rows are left alone."""
    pairs = set(pairs)
    if not pairs:
        return
    site_rows = [{"id": s, "name": s, "created_at": now} for s in {p[0] for p in pairs}]
    session.execute(_insert(session, Site).values(site_rows).on_conflict_do_nothing())
    cam_rows = [{"site_id": s, "slug": c, "name": c, "node_id": n} for s, c, n in pairs]
    session.execute(
        _insert(session, Camera)
        .values(cam_rows)
        .on_conflict_do_nothing(index_elements=["site_id", "slug"])
    )


def record_node_status(session: Session, status: NodeStatus, now: datetime) -> None:
    """Upsert the node and its cameras with their last status (site registered if new)."""
    session.execute(
        _insert(session, Site)
        .values(id=status.site, name=status.site, created_at=now)
        .on_conflict_do_nothing()
    )
    doc = status.model_dump(mode="json")
    values = {
        "site_id": status.site,
        "state": status.state,
        "version": status.version,
        "last_status": doc,
        "last_seen_at": status.reported_at,
    }
    session.execute(
        _insert(session, Node)
        .values(id=status.node, **values)
        .on_conflict_do_update(index_elements=["id"], set_=values)
    )
    for cam in status.cameras:
        cam_values = {
            "node_id": status.node,
            "state": cam.state,
            "last_status": cam.model_dump(mode="json"),
            "last_seen_at": cam.last_frame_at,
        }
        session.execute(
            _insert(session, Camera)
            .values(site_id=status.site, slug=cam.camera, name=cam.camera, **cam_values)
            .on_conflict_do_update(index_elements=["site_id", "slug"], set_=cam_values)
        )


def known_cameras(session: Session) -> set[tuple[str, str]]:
    return {(s, c) for s, c in session.execute(select(Camera.site_id, Camera.slug))}


def gate_cameras(session: Session) -> set[tuple[str, str]]:
    rows = session.execute(select(Camera.site_id, Camera.slug).where(Camera.is_gate))
    return {(s, c) for s, c in rows}


def node_keys(session: Session) -> dict[str, tuple[str | None, bool, str]]:
    """node id -> (public key, signature required, site)."""
    rows = session.execute(select(Node.id, Node.public_key, Node.require_signature, Node.site_id))
    return {n: (k, bool(r), s) for n, k, r, s in rows}


def site_locations(session: Session) -> dict[str, tuple[float, float]]:
    rows = session.execute(
        select(Site.id, Site.latitude, Site.longitude).where(
            Site.latitude.is_not(None), Site.longitude.is_not(None)
        )
    )
    return {
        s: (float(lat), float(lon)) for s, lat, lon in rows if lat is not None and lon is not None
    }


def alert_dedupe_key(alert: Alert) -> str:
    entry = alert.match.entry_id if alert.match else ""
    subject = alert.sighting_event_id or alert.incident_id or alert.event_id
    return f"{alert.kind}:{subject}:{entry}"


def alert_row(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.event_id,
        "dedupe_key": alert_dedupe_key(alert),
        "kind": alert.kind,
        "severity": alert.severity,
        "site_id": alert.site,
        "camera": alert.camera,
        "plate": alert.plate,
        "seen_at": alert.seen_at,
        "raised_at": alert.raised_at,
        "sighting_event_id": alert.sighting_event_id,
        "list_id": alert.match.list_id if alert.match else None,
        "entry_id": alert.match.entry_id if alert.match else None,
        "incident_id": alert.incident_id,
        "historical": alert.historical,
        "title": alert.title,
        "reason": alert.reason,
        "match": alert.match.model_dump() if alert.match else None,
        "details": dict(alert.details),
        "payload": alert.model_dump(mode="json"),
        "status": "new",
    }


def insert_alerts(session: Session, alerts: Sequence[Alert]) -> set[uuid.UUID]:
    """Insert alerts not raised before (same kind, sighting and entry); return the new ids.

    One executemany of a fixed statement (SQLAlchemy's insertmanyvalues sends it as one
    multi-row INSERT ... RETURNING), so the statement is compiled once per process; a
    ``values([...])`` statement is compiled again for every batch size."""
    if not alerts:
        return set()
    rows = [alert_row(a) for a in alerts]
    if session.get_bind().dialect.name == "postgresql":
        # json_populate_recordset turns a JSON null into SQL NULL; an alert without a match is
        # stored as JSON null, as SQLAlchemy's JSON type (and SQLite, and earlier rows) store it.
        # (SQLAlchemy's multi-row VALUES here cost about 4% of the ingest CPU in psycopg.)
        match_json_null = {"match": "COALESCE(match, 'null'::jsonb)"}
        return _json_insert(session, "alert", rows, "dedupe_key", "id", match_json_null)
    table = AlertRecord.__table__
    stmt = (
        _insert(session, table)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(table.c.id)
    )
    result = session.connection().execute(stmt, rows)
    return {row[0] for row in result}


def unpublished_alerts(
    session: Session, older_than: datetime, limit: int = 500
) -> list[AlertRecord]:
    """Alerts committed but not yet published (a crash between commit and publish)."""
    stmt: Select[Any] = (
        select(AlertRecord)
        .where(AlertRecord.published_at.is_(None), AlertRecord.raised_at < older_than)
        .order_by(AlertRecord.raised_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return list(session.scalars(stmt))


def mark_published(session: Session, alert_ids: Iterable[uuid.UUID], at: datetime) -> None:
    ids = list(alert_ids)
    if not ids:
        return
    if session.get_bind().dialect.name == "postgresql":
        # One fixed statement with an array: psycopg parses it once (an IN list of each
        # batch's length was parsed again every batch)
        with _driver_connection(session).cursor() as cur:
            cur.execute("UPDATE alert SET published_at = %s WHERE id = ANY(%s)", (at, ids))
        return
    table = cast(Table, AlertRecord.__table__)  # a Core UPDATE: no ORM bulk-update bookkeeping
    session.connection().execute(update(table).where(table.c.id.in_(ids)).values(published_at=at))


def insert_dead_letter(session: Session, letter: DeadLetter, payload: bytes) -> None:
    session.execute(
        _insert(session, DeadLetterRecord)
        .values(
            id=letter.event_id,
            service=letter.service,
            received_at=letter.received_at,
            topic=letter.topic,
            reason=letter.reason,
            field=letter.field,
            payload=payload,
            payload_size=letter.payload_size,
        )
        .on_conflict_do_nothing()
    )


def audit(
    session: Session,
    at: datetime,
    actor: str,
    action: str,
    target_type: str,
    target_id: str,
    details: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditLog(
            at=at,
            actor=actor,
            action=action,
            target_type=target_type,
            target_id=target_id,
            details=details,
        )
    )


# -- watch-lists ---------------------------------------------------------------------------
def create_list(
    session: Session,
    name: str,
    now: datetime,
    *,
    kind: str = "watch",
    site_id: str | None = None,
    category: str = "custom",
    severity: str = "high",
    fuzzy_max_cost: float = 1.0,
    owner: str = "",
    description: str = "",
) -> WatchList:
    for field, value, allowed in (
        ("kind", kind, LIST_KINDS),
        ("category", category, CATEGORIES),
        ("severity", severity, SEVERITIES),
    ):
        if value not in allowed:
            raise FieldError(field, value, f"must be one of {', '.join(allowed)}")
    wl = WatchList(
        name=name,
        kind=kind,
        site_id=site_id,
        category=category,
        severity=severity,
        fuzzy_max_cost=fuzzy_max_cost,
        owner=owner,
        description=description,
        enabled=True,
        version=1,
        created_at=now,
        updated_at=now,
    )
    session.add(wl)
    session.flush()
    return wl


def add_entries(
    session: Session,
    watch_list: WatchList,
    entries: Sequence[dict[str, Any]],
    now: datetime,
    *,
    retro_hunt: bool = True,
) -> list[WatchEntry]:
    """Add entries (dicts of WatchEntry columns) and bump the list's version. They wait for a
    retro-hunt by the correlators unless `retro_hunt` is False (marked hunted at once)."""
    made = [
        WatchEntry(
            list_id=watch_list.id,
            category=e.get("category", watch_list.category),
            created_at=now,
            updated_at=now,
            hunted_at=None if retro_hunt else now,
            **{k: v for k, v in e.items() if k != "category"},
        )
        for e in entries
    ]
    session.add_all(made)
    watch_list.version += 1
    watch_list.updated_at = now
    session.flush()
    return made


def all_lists(session: Session) -> list[WatchList]:
    return list(session.scalars(select(WatchList).order_by(WatchList.id)))


def list_entries(session: Session, list_id: int | None = None) -> list[WatchEntry]:
    stmt = select(WatchEntry).order_by(WatchEntry.id)
    if list_id is not None:
        stmt = stmt.where(WatchEntry.list_id == list_id)
    return list(session.scalars(stmt))


def hunt_pending() -> ColumnElement[bool]:
    """The entries waiting for a retro-hunt: the partial index's predicate (`HUNT_PENDING_SQL`)."""
    return or_(WatchEntry.hunted_at.is_(None), WatchEntry.hunted_at != WatchEntry.updated_at)


def pending_hunts(session: Session, limit: int) -> list[WatchEntry]:
    """Up to `limit` entries waiting for a retro-hunt (changed since their last one), oldest
    first, with their lists. On PostgreSQL the rows stay locked until the session's transaction
    ends and other correlators skip them (FOR UPDATE SKIP LOCKED): each waiting entry is hunted
    by one process, and a hunt cut short leaves its entries waiting."""
    stmt = (
        select(WatchEntry)
        .where(hunt_pending())
        .order_by(WatchEntry.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=WatchEntry)
        .options(joinedload(WatchEntry.watch_list, innerjoin=True))
    )
    return list(session.scalars(stmt).unique())


def mark_hunted(session: Session, entries: Iterable[tuple[int, datetime]]) -> None:
    """(entry id, the updated_at it was hunted at): each entry waits no more, unless it was
    changed since (compare-and-set: on SQLite nothing locks the rows a hunt read, so a change
    made meanwhile by another process must leave its entry waiting)."""
    params = [{"entry_id": entry_id, "seen": updated_at} for entry_id, updated_at in entries]
    if not params:
        return
    table = cast(Table, WatchEntry.__table__)
    seen = bindparam("seen", type_=table.c.updated_at.type)
    stmt = (
        update(table)
        .where(table.c.id == bindparam("entry_id"), table.c.updated_at == seen)
        .values(hunted_at=seen)
    )
    session.execute(stmt, params)  # one executemany


# -- sightings: search, retro-hunt, retention ---------------------------------------------
def sightings_of_plate(
    session: Session, plate: str, since: datetime | None = None, limit: int = 1000
) -> list[Sighting]:
    stmt = select(Sighting).where(Sighting.plate == plate)
    if since is not None:
        stmt = stmt.where(Sighting.seen_at >= since)
    return list(session.scalars(stmt.order_by(Sighting.seen_at).limit(limit)))


def distinct_plates_since(
    session: Session, since: datetime, batch: int = 5_000
) -> Iterator[list[str]]:
    """Every distinct plate (not hashed) seen since `since`, `batch` at a time (streamed)."""
    stmt = (
        select(Sighting.plate)
        .where(Sighting.seen_at >= since, Sighting.plate_hashed.is_(False))
        .distinct()
    )
    result = session.execute(stmt.execution_options(yield_per=batch))
    for part in result.scalars().partitions():
        yield list(part)


def sighting_keys_of_plates(
    session: Session, plates: Iterable[str], since: datetime, chunk: int = 1_000
) -> Iterator[list[tuple[uuid.UUID, str, str, datetime]]]:
    """(event_id, plate, site_id, seen_at) of the sightings (not hashed) of these plates since
    `since`, in batches (streamed: a broad entry's hits are never all in memory)."""
    wanted = sorted(set(plates))
    for start in range(0, len(wanted), chunk):
        stmt = select(Sighting.event_id, Sighting.plate, Sighting.site_id, Sighting.seen_at).where(
            Sighting.plate.in_(wanted[start : start + chunk]),
            Sighting.seen_at >= since,
            Sighting.plate_hashed.is_(False),
        )
        result = session.execute(stmt.execution_options(yield_per=chunk))
        for part in result.partitions():
            yield [(r[0], r[1], r[2], r[3]) for r in part]


def sightings_by_id(
    session: Session, event_ids: Iterable[uuid.UUID], chunk: int = 1_000
) -> Iterator[Sighting]:
    """The stored sightings with these event ids (those that exist)."""
    ids = list(event_ids)
    for start in range(0, len(ids), chunk):
        yield from session.scalars(
            select(Sighting).where(Sighting.event_id.in_(ids[start : start + chunk]))
        )


def delete_expired_sightings(
    session: Session, site_id: str, before: datetime, batch: int = 10_000
) -> list[str | None]:
    """Delete a site's sightings older than `before`, keeping those an alert refers to.

    Returns the image references of the deleted rows (None where there was no image)."""
    has_alert = exists().where(AlertRecord.sighting_event_id == Sighting.event_id)
    rows = session.execute(
        select(Sighting.event_id, Sighting.image_ref)
        .where(Sighting.site_id == site_id, Sighting.seen_at < before, ~has_alert)
        .limit(batch)
    ).all()
    if rows:
        session.execute(delete(Sighting).where(Sighting.event_id.in_([r[0] for r in rows])))
    return [r[1] for r in rows]


def hash_plate(plate: str, key: bytes) -> str:
    """Keyed hash of a plate for privacy mode: equal plates still correlate, text is gone."""
    return "h:" + hmac.new(key, plate.encode(), hashlib.sha256).hexdigest()[:40]


def pseudonymise_unmatched(
    session: Session, site_id: str, before: datetime, key: bytes, batch: int = 10_000
) -> int:
    """Privacy mode: replace the plate of a site's sightings without any alert by its hash."""
    has_alert = exists().where(AlertRecord.sighting_event_id == Sighting.event_id)
    rows = session.execute(
        select(Sighting.event_id, Sighting.plate)
        .where(
            Sighting.site_id == site_id,
            Sighting.seen_at < before,
            Sighting.plate_hashed.is_(False),
            ~has_alert,
        )
        .limit(batch)
    ).all()
    for event_id, plate in rows:
        session.execute(
            update(Sighting)
            .where(Sighting.event_id == event_id)
            .values(plate=hash_plate(plate, key), plate_hashed=True, raw_text="", candidates=None)
        )
    return len(rows)


def sites(session: Session) -> list[Site]:
    return list(session.scalars(select(Site).order_by(Site.id)))
