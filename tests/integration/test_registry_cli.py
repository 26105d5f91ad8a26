"""`platewatch registry` against the real database (SQLite and PostgreSQL) and Redis."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from services.correlator.registry_cli import main
from services.correlator.state import CrossSiteState
from shared.settings import DbSettings, RedisSettings
from shared.signing import generate_private_key, public_key_b64
from shared.store import migrate
from shared.store import models as m
from shared.store.db import make_engine, session_factory

pytestmark = [pytest.mark.integration, pytest.mark.correlator, pytest.mark.db, pytest.mark.redis]


@pytest.fixture
def env(db_url: str, redis_settings: RedisSettings, monkeypatch: pytest.MonkeyPatch) -> str:
    migrate.upgrade(db_url)
    monkeypatch.setenv("PW_CORRELATOR_DB__URL", db_url)
    monkeypatch.setenv("PW_CORRELATOR_REDIS__URL", redis_settings.url)
    monkeypatch.setenv("PW_CORRELATOR_REDIS__KEY_PREFIX", redis_settings.key_prefix)
    return db_url


def test_site_node_and_camera_are_created_changed_and_audited(
    env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    key = public_key_b64(generate_private_key())
    assert (
        main(["site", "north-gate", "--location", "52.52,13.405", "--timezone", "Europe/Berlin"])
        == 0
    )
    assert (
        main(["--actor", "alice", "site", "north-gate", "--retention-days", "30", "--privacy"]) == 0
    )
    assert main(["node", "edge-1", "--site", "north-gate", "--public-key", key]) == 0
    assert main(["camera", "north-gate", "gate-in", "--node", "edge-1", "--gate"]) == 0
    assert main(["site", "north-gate", "--timezone", "Europe/Berlin"]) == 0
    out = capsys.readouterr().out
    assert "created site north-gate" in out and "site north-gate: nothing to change" in out
    sessions = session_factory(make_engine(DbSettings(url=env)))
    with sessions() as s:
        site = s.get(m.Site, "north-gate")
        assert site is not None
        assert (site.latitude, site.longitude, site.timezone) == (52.52, 13.405, "Europe/Berlin")
        assert (site.retention_days, site.privacy_mode) == (30, True)
        node = s.get(m.Node, "edge-1")
        assert node is not None and (node.public_key, node.require_signature) == (key, True)
        cam = s.scalars(select(m.Camera).where(m.Camera.slug == "gate-in")).one()
        assert (cam.site_id, cam.node_id, cam.is_gate) == ("north-gate", "edge-1", True)
        audit = list(s.scalars(select(m.AuditLog).order_by(m.AuditLog.id)))
    assert [(a.actor, a.action, a.target_id) for a in audit] == [
        ("cli", "registry.site", "north-gate"),
        ("alice", "registry.site", "north-gate"),
        ("cli", "registry.node", "edge-1"),
        ("cli", "registry.camera", "north-gate/gate-in"),
    ]  # the unchanged time zone wrote nothing
    assert audit[1].details == {"retention_days": [None, 30], "privacy_mode": [False, True]}
    assert main(["show"]) == 0
    shown = capsys.readouterr().out
    assert "52.52000,13.40500" in shown and "must sign" in shown and "gate" in shown


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["site", "north-gate", "--timezone", "Mars/Olympus"], "--timezone"),
        (["site", "north-gate", "--location", "95,10"], "--location"),
        (["site", "North Gate"], "site"),
        (["node", "edge-9"], "--site"),
        (["node", "edge-9", "--site", "nowhere"], "--site"),
        (["node", "edge-9", "--site", "north-gate", "--public-key", "AAAA"], "--public-key"),
        (["camera", "nowhere", "cam-1"], "--site"),
        (["camera", "north-gate", "cam-1", "--node", "edge-south"], "--node"),
    ],
    ids=[
        "zone",
        "location",
        "slug",
        "new-node-site",
        "unknown-site",
        "key",
        "cam-site",
        "cam-node",
    ],
)
def test_bad_values_name_their_field_and_change_nothing(
    env: str, argv: list[str], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["site", "north-gate"]) == 0
    assert main(["site", "south-gate"]) == 0
    assert main(["node", "edge-south", "--site", "south-gate"]) == 0
    sessions = session_factory(make_engine(DbSettings(url=env)))
    with sessions() as s:
        before = len(list(s.scalars(select(m.AuditLog))))
    capsys.readouterr()
    assert main(argv) == 2
    assert field in capsys.readouterr().err
    with sessions() as s:
        assert len(list(s.scalars(select(m.AuditLog)))) == before
        assert s.get(m.Node, "edge-9") is None


def test_a_change_is_announced_to_running_correlators(
    env: str, redis_settings: RedisSettings
) -> None:
    import redis

    resynced = threading.Semaphore(0)
    listener = CrossSiteState(
        redis.Redis.from_url(redis_settings.url), redis_settings.key_prefix
    ).list_change_listener(lambda _lid, _v: None, on_resync=resynced.release)
    listener.start()
    try:
        assert resynced.acquire(timeout=5)  # the first subscription
        assert main(["site", "north-gate", "--location", "1,2"]) == 0
        assert resynced.acquire(timeout=5)  # the registry change: reload everything
    finally:
        listener.stop()
