"""Migrations beyond the first, and the retro-hunt bookkeeping they add, on the real databases."""

from __future__ import annotations

from datetime import datetime

import pytest
import sqlalchemy as sa

from shared.events import utc_now
from shared.settings import DbSettings
from shared.store import migrate
from shared.store import models as m
from shared.store import repository as repo
from shared.store.db import make_engine, session_factory

pytestmark = [pytest.mark.integration, pytest.mark.db]


def _entry_as_0001_wrote_it(engine: sa.Engine, now: datetime) -> None:
    """A list and an entry written by the 0001 schema (no `hunted_at` column yet)."""
    meta = sa.MetaData()
    meta.reflect(engine, only=["watch_list", "watch_entry"])
    watch_list, watch_entry = meta.tables["watch_list"], meta.tables["watch_entry"]
    stamp = now.replace(tzinfo=None) if engine.dialect.name == "sqlite" else now
    with engine.begin() as conn:
        list_id = conn.execute(
            sa.insert(watch_list)
            .values(
                name="old",
                kind="watch",
                category="stolen",
                severity="high",
                fuzzy_max_cost=1.0,
                description="",
                owner="",
                enabled=True,
                version=2,
                created_at=stamp,
                updated_at=stamp,
            )
            .returning(watch_list.c.id)
        ).scalar_one()
        conn.execute(
            sa.insert(watch_entry).values(
                list_id=list_id, pattern="OLD123", mode="exact", category="stolen", priority=50,
                reason="", owner="", created_at=stamp, updated_at=stamp,
            )
        )  # fmt: skip


def test_upgrade_marks_existing_entries_hunted_and_new_ones_wait(db_url: str) -> None:
    migrate.upgrade(db_url, "0001")
    engine = make_engine(DbSettings(url=db_url))
    now = utc_now()
    _entry_as_0001_wrote_it(engine, now)
    migrate.upgrade(db_url)
    assert migrate.current_revision(engine) == migrate.head_revision() == "0002"
    sessions = session_factory(engine)
    with sessions.begin() as s:
        old = s.scalars(sa.select(m.WatchEntry)).one()
        assert old.hunted_at == old.updated_at  # handled before the upgrade: no flood of hunts
        assert repo.pending_hunts(s, 10) == []
        wl = s.scalars(sa.select(m.WatchList)).one()
        added = repo.add_entries(s, wl, [{"pattern": "NEW123"}], utc_now())
        quiet = repo.add_entries(s, wl, [{"pattern": "BULK99"}], utc_now(), retro_hunt=False)
    with sessions.begin() as s:
        waiting = repo.pending_hunts(s, 10)
        assert [e.id for e in waiting] == [added[0].id]  # not `quiet`, marked hunted at once
        assert quiet[0].hunted_at == quiet[0].updated_at
        assert waiting[0].watch_list.name == "old"
        repo.mark_hunted(s, [(e.id, e.updated_at) for e in waiting])
    with sessions.begin() as s:
        assert repo.pending_hunts(s, 10) == []
        entry = s.get(m.WatchEntry, added[0].id)
        assert entry is not None
        entry.updated_at = utc_now()  # a change: it waits again
    with sessions() as s:
        assert [e.id for e in repo.pending_hunts(s, 10)] == [added[0].id]
    engine.dispose()
    migrate.downgrade(db_url, "0001")
    migrate.upgrade(db_url)  # down and up again keep the rows
    with session_factory(make_engine(DbSettings(url=db_url)))() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(m.WatchEntry)) == 3


def test_correlators_split_the_waiting_entries_without_hunting_one_twice(pg_url: str) -> None:
    """FOR UPDATE SKIP LOCKED: a second process skips what the first is hunting, and once the
    first commits, those entries wait no more."""
    migrate.upgrade(pg_url)
    one = session_factory(make_engine(DbSettings(url=pg_url)))
    two = session_factory(make_engine(DbSettings(url=pg_url)))
    with one.begin() as s:
        wl = repo.create_list(s, "w", utc_now())
        repo.add_entries(s, wl, [{"pattern": f"ABC{i:03d}"} for i in range(6)], utc_now())
    with one.begin() as a:
        first = [(e.id, e.updated_at) for e in repo.pending_hunts(a, 4)]
        with two.begin() as b:
            second = [(e.id, e.updated_at) for e in repo.pending_hunts(b, 4)]
            assert len(first) == 4 and len(second) == 2 and not set(first) & set(second)
            repo.mark_hunted(b, second)
        repo.mark_hunted(a, first)
    with two() as s:
        assert repo.pending_hunts(s, 10) == []


def test_a_hunt_cut_short_leaves_its_entries_waiting(pg_url: str) -> None:
    migrate.upgrade(pg_url)
    sessions = session_factory(make_engine(DbSettings(url=pg_url)))
    with sessions.begin() as s:
        wl = repo.create_list(s, "w", utc_now())
        repo.add_entries(s, wl, [{"pattern": "ABC123"}], utc_now())
    with pytest.raises(RuntimeError), sessions.begin() as s:
        repo.mark_hunted(s, [(e.id, e.updated_at) for e in repo.pending_hunts(s, 10)])
        raise RuntimeError("the process dies before its commit")
    with sessions() as s:
        assert len(repo.pending_hunts(s, 10)) == 1


def test_an_entry_changed_during_its_hunt_waits_for_another(db_url: str) -> None:
    """Compare-and-set: on SQLite nothing locks what a hunt read, so a change committed by
    another writer meanwhile must not be marked hunted with it."""
    migrate.upgrade(db_url)
    hunter = session_factory(make_engine(DbSettings(url=db_url)))
    writer = session_factory(make_engine(DbSettings(url=db_url)))
    with writer.begin() as s:
        wl = repo.create_list(s, "w", utc_now())
        (entry,) = repo.add_entries(s, wl, [{"pattern": "OLD123"}], utc_now())
        entry_id = entry.id
    with hunter() as s:
        read = [(e.id, e.updated_at) for e in repo.pending_hunts(s, 10)]
        s.rollback()  # what SQLite's hunt holds meanwhile: nothing
    with writer.begin() as s:  # the operator corrects the pattern during the hunt
        changed = s.get(m.WatchEntry, entry_id)
        assert changed is not None
        changed.pattern, changed.updated_at = "NEW123", utc_now()
    with hunter.begin() as s:
        repo.mark_hunted(s, read)  # the hunt of OLD123 ends
    with hunter() as s:
        (waiting,) = repo.pending_hunts(s, 10)
        assert waiting.pattern == "NEW123"
