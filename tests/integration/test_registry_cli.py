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


def _audit(db_url: str) -> list[m.AuditLog]:
    sessions = session_factory(make_engine(DbSettings(url=db_url)))
    with sessions() as s:
        return list(s.scalars(select(m.AuditLog).order_by(m.AuditLog.id)))


def test_site_node_and_camera_are_created_changed_and_audited(
    env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    key = public_key_b64(generate_private_key())
    argv = ["site", "depot", "--location", "52.52,13.405", "--timezone", "Europe/Berlin"]
    assert main(argv) == 0
    assert main(["--actor", "alice", "site", "depot", "--retention-days", "30", "--privacy"]) == 0
    assert main(["node", "edge-1", "--site", "depot", "--public-key", key]) == 0
    assert main(["camera", "depot", "lane-in", "--node", "edge-1", "--gate", "--name", "Lane"]) == 0
    assert main(["site", "depot", "--timezone", "Europe/Berlin"]) == 0
    out = capsys.readouterr().out
    assert "created site depot" in out and "site depot: nothing to change" in out
    assert "created camera depot/lane-in" in out
    sessions = session_factory(make_engine(DbSettings(url=env)))
    with sessions() as s:
        site = s.get(m.Site, "depot")
        assert site is not None
        assert (site.latitude, site.longitude, site.timezone) == (52.52, 13.405, "Europe/Berlin")
        assert (site.retention_days, site.privacy_mode) == (30, True)
        node = s.get(m.Node, "edge-1")
        assert node is not None and (node.public_key, node.require_signature) == (key, True)
        cam = s.scalars(select(m.Camera).where(m.Camera.slug == "lane-in")).one()
        assert (cam.site_id, cam.node_id, cam.is_gate, cam.name) == (
            "depot",
            "edge-1",
            True,
            "Lane",
        )
    audit = _audit(env)
    assert [(a.actor, a.action, a.target_id) for a in audit] == [
        ("cli", "registry.site", "depot"),
        ("alice", "registry.site", "depot"),
        ("cli", "registry.node", "edge-1"),
        ("cli", "registry.camera", str(cam.id)),
    ]  # the unchanged time zone wrote nothing
    assert audit[0].details == {  # a created record: every audited field
        "name": [None, "depot"],
        "latitude": [None, 52.52],
        "longitude": [None, 13.405],
        "timezone": [None, "Europe/Berlin"],
        "retention_days": [None, None],
        "privacy_mode": [None, False],
    }
    assert audit[1].details == {"retention_days": [None, 30], "privacy_mode": [False, True]}
    assert audit[2].details == {
        "site_id": [None, "depot"],
        "public_key": [None, key],
        "require_signature": [None, True],
    }
    assert audit[3].details is not None and audit[3].details["slug"] == [None, "lane-in"]
    assert main(["camera", "depot", "lane-in", "--no-gate"]) == 0
    assert _audit(env)[-1].details == {"is_gate": [True, False], "camera": "depot/lane-in"}
    capsys.readouterr()
    assert main(["show"]) == 0
    shown = capsys.readouterr().out
    assert "52.52000,13.40500" in shown and "Europe/Berlin" in shown and "30 days" in shown
    assert "key registered, must sign" in shown and "'Lane'" in shown
    assert "guards a gate" not in shown  # just cleared
    assert main(["camera", "depot", "lane-in", "--gate"]) == 0
    capsys.readouterr()
    assert main(["show"]) == 0
    assert "guards a gate" in capsys.readouterr().out


def test_a_key_can_be_registered_without_requiring_signatures_yet(
    env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    key = public_key_b64(generate_private_key())
    assert main(["site", "depot"]) == 0
    argv = ["node", "edge-1", "--site", "depot", "--public-key", key, "--no-require-signature"]
    assert main(argv) == 0
    assert main(["node", "edge-2", "--site", "depot", "--public-key", key]) == 0
    capsys.readouterr()
    assert main(["node", "edge-2", "--no-key"]) == 0  # revoked: the requirement stays
    assert "every event from it is refused" in capsys.readouterr().err
    sessions = session_factory(make_engine(DbSettings(url=env)))
    with sessions() as s:
        one, two = s.get(m.Node, "edge-1"), s.get(m.Node, "edge-2")
        assert one is not None and (one.public_key, one.require_signature) == (key, False)
        assert two is not None and (two.public_key, two.require_signature) == (None, True)


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["site", "north", "--timezone", "Mars/Olympus"], "--timezone"),
        (["site", "north", "--timezone", "localtime"], "--timezone"),
        (["site", "north", "--location", "95,10"], "--location"),
        (["site", "north", "--retention-days", "-1"], "--retention-days"),
        (["site", "north", "--retention-days", "40000"], "--retention-days"),
        (["site", "north", "--name", "x" * 129], "--name"),
        (["--actor", "a" * 129, "site", "north"], "--actor"),
        (["site", "North Gate"], "SITE"),
        (["node", "edge-9"], "--site"),
        (["node", "edge-9", "--site", "nowhere"], "--site"),
        (["node", "edge-9", "--site", "north", "--public-key", "AAAA"], "--public-key"),
        (["node", "edge-south", "--site", "north"], "--site"),  # its camera is at south
        (["camera", "nowhere", "cam-1"], "SITE"),
        (["camera", "north", "cam-1", "--node", "edge-south"], "--node"),
        (["camera", "north", "Cam 1"], "CAMERA"),
    ],
    ids=[
        "zone",
        "host-zone-file",
        "location",
        "retention-negative",
        "retention-huge",
        "name",
        "actor",
        "slug",
        "new-node-site",
        "unknown-site",
        "key",
        "node-move",
        "cam-site",
        "cam-node",
        "cam-slug",
    ],
)
def test_bad_values_name_their_field_and_change_nothing(
    env: str, argv: list[str], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["site", "north"]) == 0
    assert main(["site", "south"]) == 0
    assert main(["node", "edge-south", "--site", "south"]) == 0
    assert main(["camera", "south", "cam-1", "--node", "edge-south"]) == 0
    before = len(_audit(env))
    capsys.readouterr()
    assert main(argv) == 2
    assert field in capsys.readouterr().err
    assert len(_audit(env)) == before
    sessions = session_factory(make_engine(DbSettings(url=env)))
    with sessions() as s:
        assert s.get(m.Node, "edge-9") is None
        south = s.get(m.Node, "edge-south")
        assert south is not None and south.site_id == "south"


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
        assert main(["site", "north", "--location", "1,2"]) == 0
        assert resynced.acquire(timeout=5)  # the registry change: reload everything
    finally:
        listener.stop()


@pytest.mark.parametrize(
    ("url", "said"), [("", "no redis.url set"), ("redis://127.0.0.1:1/0", "saved, but not")]
)
def test_a_change_is_saved_when_it_cannot_be_announced(
    env: str,
    url: str,
    said: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PW_CORRELATOR_REDIS__URL", url)
    assert main(["site", "north", "--location", "1,2"]) == 0
    err = capsys.readouterr().err
    assert said in err and "next full reload" in err
    assert [a.action for a in _audit(env)] == ["registry.site"]
