"""Retro-hunt: a new or changed watch-list entry is matched against stored sightings at once.

Hits become alerts marked `historical`, so a newly wanted car's recent path across every site
is known the moment it is listed. The entry's `valid_until` is respected (an expired entry hunts
nothing); its `valid_from` is not, since the point is to look back.

The entries of a hunt are matched with the same index and rules as live sightings
(`WatchIndex`): exact entries look their plates up (the plate index), and when fuzzy or
wildcard entries are among them, every distinct plate seen in the window is matched once
against them, however many sightings there are. The newest `limit_per_entry` hits of an
entry become alerts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from services.correlator.evaluate import SILENT_CATEGORIES, watchlist_alert
from services.correlator.lists import ListHit, ListInfo
from services.correlator.matching import Match, MatchMode, WatchEntry, WatchIndex
from shared.events import PLATE_PATTERN, Alert, PlateRead
from shared.store import models as m
from shared.store import repository as repo

log = logging.getLogger(__name__)

_PLATE = re.compile(PLATE_PATTERN)


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


def hunted_entries(
    entries: Iterable[WatchEntry], lists: dict[int, ListInfo], now: datetime
) -> list[WatchEntry]:
    """The entries a retro-hunt matches: of enabled watch-lists, not silent, not expired at
    `now`; without their validity window (the hunt looks back before `valid_from`). Pure."""
    out = []
    for entry in entries:
        info = lists.get(entry.list_id)
        if info is None or info.kind != "watch" or entry.category in SILENT_CATEGORIES:
            continue
        if entry.valid_until is not None and entry.valid_until <= now:
            continue
        out.append(replace(entry, valid_from=None, valid_until=None))
    return out


def retro_hunt(
    session: Session,
    entries: Iterable[WatchEntry],
    lists: dict[int, ListInfo],
    now: datetime,
    days: int,
    limit_per_entry: int = 10_000,
) -> list[Alert]:
    """Historical alerts for the stored sightings of the last `days` that the entries match,
    the newest `limit_per_entry` of each entry."""
    hunted = hunted_entries(entries, lists, now)
    if not hunted:
        return []
    since = now - timedelta(days=days)
    index = WatchIndex.from_entries(hunted)
    plates = {e.pattern for e in hunted if e.mode is MatchMode.EXACT}
    if any(e.mode is not MatchMode.EXACT for e in hunted):
        for batch in repo.distinct_plates_since(session, since):
            batch = [p for p in batch if _PLATE.fullmatch(p)]  # the contract's; never fails a hunt
            hits = index.match_many(batch, now)
            plates.update(p for p, hit in zip(batch, hits, strict=True) if hit)
    matches: dict[str, list[Match]] = {}
    per_entry: dict[int, int] = {}
    capped: set[int] = set()
    alerts: list[Alert] = []
    for row in repo.sightings_of_plates(session, plates, since):  # newest first
        if not _PLATE.fullmatch(row.plate):
            continue
        if row.plate not in matches:
            matches[row.plate] = index.match(row.plate, now)
        for found in matches[row.plate]:
            info = lists[found.entry.list_id]
            if info.site_id is not None and row.site_id != info.site_id:
                continue
            n = per_entry.get(found.entry.entry_id, 0)
            if n == limit_per_entry:
                capped.add(found.entry.entry_id)
                continue
            per_entry[found.entry.entry_id] = n + 1
            alerts.append(watchlist_alert(as_read(row), ListHit(found, info), now, historical=True))
    if capped:
        log.warning(
            "retro-hunt kept only the newest hits of some entries",
            extra={"entries": sorted(capped)[:20], "limit_per_entry": limit_per_entry},
        )
    return alerts
