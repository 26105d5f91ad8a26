"""The in-memory cache of watch-lists and allow-lists, built from the database.

One `WatchIndex` holds the entries of every enabled list; `ListInfo` says what each list is
(watch or allow, which site, severity). Not thread-safe: the ingest thread owns it and applies
reloads between batches.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from services.correlator.matching import Match, MatchMode, WatchEntry, WatchIndex
from shared.store import models
from shared.topics import SEVERITIES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListInfo:
    id: int
    name: str
    kind: str
    site_id: str | None
    category: str
    severity: str
    fuzzy_max_cost: float
    version: int

    @classmethod
    def of(cls, wl: models.WatchList) -> ListInfo:
        severity = wl.severity
        if severity not in SEVERITIES:  # edited by hand in the database: never drop the alert
            log.warning(
                "list has an unknown severity", extra={"list_id": wl.id, "severity": severity}
            )
            severity = "high"
        return cls(
            id=wl.id,
            name=wl.name,
            kind=wl.kind,
            site_id=wl.site_id,
            category=wl.category,
            severity=severity,
            fuzzy_max_cost=wl.fuzzy_max_cost,
            version=wl.version,
        )


@dataclass(frozen=True)
class ListHit:
    match: Match
    info: ListInfo


def to_entry(row: models.WatchEntry, info: ListInfo) -> WatchEntry:
    return WatchEntry(
        entry_id=row.id,
        list_id=row.list_id,
        pattern=row.pattern,
        mode=MatchMode(row.mode),
        category=row.category,
        priority=row.priority,
        valid_from=row.valid_from,
        valid_until=row.valid_until,
        max_cost=row.max_cost if row.max_cost is not None else info.fuzzy_max_cost,
    )


#: (watch-list hits that apply at a site, allow-list hits of the site)
Hits = tuple[Sequence[ListHit], Sequence[ListHit]]
_NO_HITS: Hits = ((), ())


class ListCache:
    def __init__(self, default_max_cost: float = 1.0) -> None:
        self._default = default_max_cost
        self.index = WatchIndex(default_max_cost)
        self.lists: dict[int, ListInfo] = {}
        self._ids_by_list: dict[int, set[int]] = {}

    def __len__(self) -> int:
        return len(self.index)

    def load_all(
        self, lists: Iterable[models.WatchList], entries: Iterable[models.WatchEntry]
    ) -> None:
        """Replace everything (start-up and the periodic full reload)."""
        infos = {wl.id: ListInfo.of(wl) for wl in lists if wl.enabled}
        ids: dict[int, set[int]] = {i: set() for i in infos}
        converted = []
        for row in entries:
            info = infos.get(row.list_id)
            if info is None:
                continue
            converted.append(to_entry(row, info))
            ids[row.list_id].add(row.id)
        self.index = WatchIndex.from_entries(converted, self._default)
        self.lists = infos
        self._ids_by_list = ids
        log.info("watch-lists loaded", extra={"lists": len(infos), "entries": len(converted)})

    def reload_list(
        self, wl: models.WatchList | None, list_id: int, entries: Iterable[models.WatchEntry]
    ) -> None:
        """Apply one list's current state (its change message came)."""
        for entry_id in self._ids_by_list.pop(list_id, set()):
            self.index.remove(entry_id)
        self.lists.pop(list_id, None)
        if wl is None or not wl.enabled:
            return
        info = ListInfo.of(wl)
        self.lists[list_id] = info
        fresh = [to_entry(row, info) for row in entries]
        self.index.add_many(fresh)
        self._ids_by_list[list_id] = {e.entry_id for e in fresh}

    def hits(self, plate: str, site: str, now: datetime) -> Hits:
        """(watch-list hits that apply at this site, allow-list hits of this site)."""
        return self.hits_many([(plate, site)], now)[0]

    def hits_many(self, sightings: Sequence[tuple[str, str]], now: datetime) -> list[Hits]:
        """`hits` for each (plate, site), in order, matched as one batch."""
        out: list[Hits] = []
        plates = [plate for plate, _ in sightings]
        for (_, site), matches in zip(sightings, self.index.match_many(plates, now), strict=True):
            if not matches:  # most sightings
                out.append(_NO_HITS)
                continue
            watch: list[ListHit] = []
            allow: list[ListHit] = []
            for m in matches:
                info = self.lists.get(m.entry.list_id)
                if info is None or (info.site_id is not None and info.site_id != site):
                    continue
                (allow if info.kind == "allow" else watch).append(ListHit(m, info))
            out.append((watch, allow))
        return out
