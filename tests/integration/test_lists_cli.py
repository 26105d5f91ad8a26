"""`platewatch lists`: CSV import with clear errors, audit, and live reload via Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from services.correlator.lists_cli import CsvError, main, parse_csv
from services.correlator.state import CrossSiteState
from shared.settings import DbSettings, RedisSettings
from shared.store import migrate
from shared.store import models as m
from shared.store.db import make_engine, session_factory

pytestmark = [pytest.mark.integration, pytest.mark.correlator, pytest.mark.db, pytest.mark.redis]


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "list.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_import_csv_creates_entries_audits_and_announces_the_change(
    tmp_path: Path, db_url: str, redis_settings: RedisSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    migrate.upgrade(db_url)
    monkeypatch.setenv("PW_CORRELATOR_DB__URL", db_url)
    monkeypatch.setenv("PW_CORRELATOR_REDIS__URL", redis_settings.url)
    monkeypatch.setenv("PW_CORRELATOR_REDIS__KEY_PREFIX", redis_settings.key_prefix)
    heard: list[tuple[int, int]] = []
    listener = CrossSiteState(
        redis.Redis.from_url(redis_settings.url), redis_settings.key_prefix
    ).list_change_listener(lambda lid, v: heard.append((lid, v)))
    listener.start()
    assert listener.wait_subscribed(5)
    assert main(["create", "Stolen", "--category", "stolen", "--severity", "critical"]) == 0
    path = _csv(
        tmp_path,
        "pattern,mode,reason,valid_until\nab c-123,exact,theft,\nXY?12*,wildcard,,"
        "2030-01-01T00:00:00Z\nKLM5821,fuzzy,,\n",
    )
    assert main(["--actor", "alice", "import", "Stolen", str(path)]) == 0
    sessions = session_factory(make_engine(DbSettings(url=db_url)))
    with sessions() as s:
        entries = s.scalars(select(m.WatchEntry).order_by(m.WatchEntry.id)).all()
        assert [(e.pattern, e.mode, e.category) for e in entries] == [
            ("ABC123", "exact", "stolen"),
            ("XY?12*", "wildcard", "stolen"),
            ("KLM5821", "fuzzy", "stolen"),
        ]
        assert entries[1].valid_until is not None and entries[0].owner == "alice"
        assert all(e.hunted_at is None for e in entries)  # each waits for a retro-hunt
        actions = [a.action for a in s.scalars(select(m.AuditLog).order_by(m.AuditLog.id))]
        assert actions == ["list.create", "list.import"]
    import time

    deadline = time.monotonic() + 5
    while len(heard) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    listener.stop()
    assert [lid for lid, _ in heard] == [1, 1] and heard[1][1] > heard[0][1]


def test_import_without_retro_hunt_marks_the_entries_hunted(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate.upgrade(db_url)
    monkeypatch.setenv("PW_CORRELATOR_DB__URL", db_url)
    monkeypatch.delenv("PW_CORRELATOR_REDIS__URL", raising=False)
    assert main(["create", "Initial"]) == 0
    path = _csv(tmp_path, "pattern\nABC123\nXYZ987\n")
    assert main(["import", "Initial", str(path), "--no-retro-hunt"]) == 0
    sessions = session_factory(make_engine(DbSettings(url=db_url)))
    with sessions() as s:
        entries = s.scalars(select(m.WatchEntry)).all()
        assert len(entries) == 2 and all(e.hunted_at == e.updated_at for e in entries)
        audit = s.scalars(select(m.AuditLog).where(m.AuditLog.action == "list.import")).one()
        assert audit.details["retro_hunt"] is False


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("plate\nABC123\n", ":1"),
        ("pattern,mode\nABC123,regex\n", ":2"),
        ("pattern,valid_until\nABC123,tomorrow\n", ":2 valid_until"),
        ("pattern,valid_until\nABC123,2030-01-01T00:00:00\n", ":2 valid_until"),
        ("pattern,mode\n***,wildcard\n", ":2"),
    ],
    ids=["no-pattern-column", "bad-mode", "bad-time", "naive-time", "no-literal"],
)
def test_bad_csv_row_names_file_line_and_field(tmp_path: Path, text: str, where: str) -> None:
    path = _csv(tmp_path, text)
    with pytest.raises(CsvError) as info:
        parse_csv(path, "custom")
    assert info.value.field.startswith(f"{path}{where}")
