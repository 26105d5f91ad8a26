"""Retro-hunt: a new or changed watch-list entry is matched against stored sightings at once.

Hits become alerts marked `historical`, so a newly wanted car's recent path across every site
is known the moment it is listed. The entry's `valid_until` is respected (an expired entry hunts
nothing); its `valid_from` is not, since the point is to look back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from services.correlator.evaluate import SILENT_CATEGORIES, watchlist_alert
from services.correlator.lists import ListHit, ListInfo
from services.correlator.matching import WatchEntry, match_entry
from shared.events import Alert, PlateRead
from shared.store import models as m
from shared.store import repository as repo


def as_read(row: m.Sighting) -> PlateRead:
    """The stored sighting as the PlateRead it came from (enough for an alert)."""
    return PlateRead(
        event_id=row.event_id,
        site=row.site_id,
        camera=row.camera,
        node=row.node,
        track_id=row.track_id,
        plate=row.plate,
        raw_text=row.raw_text,
        region=row.region,
        confidence=row.confidence,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        captured_at=row.seen_at,
        frames=row.frames,
    )


def retro_hunt(
    session: Session,
    entries: Iterable[WatchEntry],
    lists: dict[int, ListInfo],
    now: datetime,
    days: int,
    limit_per_entry: int = 10_000,
) -> list[Alert]:
    """Historical alerts for every stored sighting of the last `days` that an entry matches."""
    since = now - timedelta(days=days)
    alerts: list[Alert] = []
    for entry in entries:
        info = lists.get(entry.list_id)
        if info is None or info.kind != "watch" or entry.category in SILENT_CATEGORIES:
            continue
        if entry.valid_until is not None and entry.valid_until <= now:
            continue
        timeless = replace(entry, valid_from=None, valid_until=None)
        rows = repo.retro_candidates(
            session, entry.mode.value, entry.pattern, since, limit_per_entry
        )
        for row in rows:
            if info.site_id is not None and row.site_id != info.site_id:
                continue
            found = match_entry(timeless, row.plate, now)
            if found is not None:
                alerts.append(
                    watchlist_alert(as_read(row), ListHit(found, info), now, historical=True)
                )
    return alerts
