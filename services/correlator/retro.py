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

import heapq
import logging
import re
import uuid
from collections.abc import Callable, Iterable
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
#: distinct plates matched per slice of a hunt (the hunter may pause between slices)
_SLICE_PLATES = 1_000


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


class HuntStoppedError(Exception):
    """The correlator is stopping: the hunt's transaction rolls back, its entries wait on."""


def retro_hunt(
    session: Session,
    entries: Iterable[WatchEntry],
    lists: dict[int, ListInfo],
    now: datetime,
    days: int,
    limit_per_entry: int = 1_000,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[Alert]:
    """Historical alerts for the stored sightings of the last `days` that the entries match,
    the newest `limit_per_entry` of each entry (newest first). Memory holds the keys of those
    newest hits, never every matching sighting; `should_stop` is asked between batches."""
    hunted = hunted_entries(entries, lists, now)
    if not hunted:
        return []
    since = now - timedelta(days=days)
    index = WatchIndex.from_entries(hunted)
    plates = {e.pattern for e in hunted if e.mode is MatchMode.EXACT}
    if any(e.mode is not MatchMode.EXACT for e in hunted):
        for batch in repo.distinct_plates_since(session, since, batch=_SLICE_PLATES):
            if should_stop():
                raise HuntStoppedError
            batch = [p for p in batch if _PLATE.fullmatch(p)]  # the contract's; never fails a hunt
            hits = index.match_many(batch, now)
            plates.update(p for p, hit in zip(batch, hits, strict=True) if hit)
    # each entry's newest hits, as a min-heap of (seen_at, event_id) no longer than the limit
    newest: dict[int, list[tuple[datetime, uuid.UUID]]] = {}
    # per plate (all valid: exact patterns and filtered batches): how each entry matches it
    matched: dict[str, dict[int, Match]] = {}
    capped: set[int] = set()
    for keys in repo.sighting_keys_of_plates(session, plates, since):
        if should_stop():
            raise HuntStoppedError
        for sighting_id, plate, site_id, seen_at in keys:
            if plate not in matched:
                matched[plate] = {f.entry.entry_id: f for f in index.match(plate, now)}
            for entry_id, found in matched[plate].items():
                only_site = lists[found.entry.list_id].site_id
                if only_site is not None and only_site != site_id:
                    continue
                heap = newest.setdefault(entry_id, [])
                key = (seen_at, sighting_id)
                if len(heap) < limit_per_entry:
                    heapq.heappush(heap, key)
                elif key > heap[0]:
                    heapq.heapreplace(heap, key)
                    capped.add(entry_id)
                else:
                    capped.add(entry_id)
    if capped:
        log.warning(
            "retro-hunt kept only the newest hits of some entries",
            extra={"entries": sorted(capped)[:20], "limit_per_entry": limit_per_entry},
        )
    wanted = {event_id for heap in newest.values() for _, event_id in heap}
    rows = {row.event_id: row for row in repo.sightings_by_id(session, wanted)}
    alerts: list[Alert] = []
    for entry_id, heap in newest.items():
        for _, event_id in sorted(heap, reverse=True):
            row = rows.get(event_id)
            if row is None:  # deleted by retention in between
                continue
            match = matched[row.plate][entry_id]  # the index's match of this plate
            info = lists[match.entry.list_id]
            try:
                read = as_read(row)
            except ValueError:  # a stored row the contract no longer accepts: skip, say so
                log.exception("retro-hunt skipped a sighting", extra={"event_id": str(event_id)})
                continue
            alerts.append(watchlist_alert(read, ListHit(match, info), now, historical=True))
    return alerts
