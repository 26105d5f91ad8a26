"""Retro-hunt matching over stored sightings, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from itertools import product
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.correlator.lists import ListInfo
from services.correlator.matching import MatchMode, WatchEntry
from services.correlator.retro import retro_hunt
from shared.settings import DbSettings
from shared.store import migrate
from shared.store import repository as repo
from shared.store.db import make_engine, session_factory
from tests.factories import T0, plate_read

pytestmark = [pytest.mark.integration, pytest.mark.db]

NOW = T0 + timedelta(hours=1)


def _info(list_id: int = 1, site_id: str | None = None, kind: str = "watch") -> ListInfo:
    return ListInfo(list_id, f"list-{list_id}", kind, site_id, "stolen", "high", 1.0, 2)


def _entry(pattern: str, mode: MatchMode, entry_id: int = 1, **kw: Any) -> WatchEntry:
    fields: dict[str, Any] = {"list_id": 1, "category": "stolen", "priority": 50, **kw}
    fields.setdefault("max_cost", 1.0)
    return WatchEntry(entry_id=entry_id, pattern=pattern, mode=mode, **fields)


@pytest.fixture
def sessions(db_url: str) -> sessionmaker[Session]:
    migrate.upgrade(db_url)
    return session_factory(make_engine(DbSettings(url=db_url)))


def _store(sessions: sessionmaker[Session], reads: list[Any]) -> None:
    with sessions.begin() as s:
        pairs = {(r.site, r.camera, r.node) for r in reads}
        repo.ensure_sites_and_cameras(s, pairs, NOW)
        repo.insert_sightings(s, reads, NOW)


def test_a_fuzzy_entry_finds_a_recent_hit_behind_thousands_of_older_lookalikes(
    sessions: sessionmaker[Session],
) -> None:
    """Every distinct plate of the window is matched: no cap on candidates drops new hits."""
    older = [
        plate_read(plate=f"Q{a}{b}{c}999", track_id=f"o{a}{b}{c}", seen_at=T0 - timedelta(days=3))
        for a, b, c in product("ABCDEFGHJKLMNPRSTUVWXYZ", repeat=3)
    ][:10_050]  # seven characters, like the entry, none within its cost
    recent = plate_read(plate="XYZ9876", track_id="recent", seen_at=T0)
    _store(sessions, [*older, recent])
    entry = _entry("XYZ98O6", MatchMode.FUZZY)  # listed with O for 0
    with sessions() as s:
        alerts = retro_hunt(s, [entry], {1: _info()}, NOW, days=14)
    assert [a.sighting_event_id for a in alerts] == [recent.event_id]
    assert alerts[0].historical and "fuzzy" in alerts[0].match.explanation  # type: ignore[union-attr]


def test_wildcard_and_exact_entries_respect_the_window_and_the_lists_site(
    sessions: sessionmaker[Session],
) -> None:
    reads = [
        plate_read(plate="AB7123", site="north-gate", track_id="1", seen_at=T0),
        plate_read(plate="AB8125", site="depot", track_id="2", seen_at=T0),
        plate_read(plate="AB9126", site="north-gate", track_id="3", seen_at=T0 - timedelta(30)),
        plate_read(plate="KLM111", site="depot", track_id="4", seen_at=T0),
        plate_read(plate="ZZZ999", site="depot", track_id="5", seen_at=T0),
    ]  # fmt: skip
    _store(sessions, reads)
    entries = [
        _entry("AB?12*", MatchMode.WILDCARD, entry_id=1, list_id=1),
        _entry("KLM111", MatchMode.EXACT, entry_id=2, list_id=2),
    ]
    lists = {1: _info(1, site_id="north-gate"), 2: _info(2)}
    with sessions() as s:
        alerts = retro_hunt(s, entries, lists, NOW, days=14)
    got = sorted((a.plate, a.site) for a in alerts)
    assert got == [("AB7123", "north-gate"), ("KLM111", "depot")]  # depot's AB8125: other site


def test_an_entry_keeps_its_newest_hits_and_skips_expired_silent_and_allow_entries(
    sessions: sessionmaker[Session],
) -> None:
    reads = [
        plate_read(plate="ABC1234", track_id=str(i), seen_at=T0 - timedelta(hours=i))
        for i in range(5)
    ]
    _store(sessions, reads)
    with sessions() as s:
        kept = retro_hunt(s, [_entry("ABC1234", MatchMode.EXACT)], {1: _info()}, NOW, 14, 2)
        assert [a.sighting_event_id for a in kept] == [reads[0].event_id, reads[1].event_id]
        expired = _entry("ABC1234", MatchMode.EXACT, valid_until=NOW - timedelta(minutes=1))
        silent = _entry("ABC1234", MatchMode.EXACT, entry_id=2, category="allow")
        allowed = _entry("ABC1234", MatchMode.EXACT, entry_id=3, list_id=3)
        lists = {1: _info(), 3: _info(3, kind="allow")}
        assert retro_hunt(s, [expired, silent, allowed], lists, NOW, 14) == []
        future = _entry("ABC1234", MatchMode.EXACT, valid_from=NOW + timedelta(days=1))
        assert len(retro_hunt(s, [future], {1: _info()}, NOW, 14)) == 5  # looks back anyway
