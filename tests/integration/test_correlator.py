"""The correlator on the real broker, database (SQLite and PostgreSQL) and Redis."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import func, select, text

from services.correlator.config import CorrelatorSettings
from services.correlator.consumer import Ingestor
from services.correlator.service import Correlator, DrainError, drain_session
from services.correlator.state import StateKeys
from shared.events import Alert, GateDecision, PlateRead, decode_event, encode_event, utc_now
from shared.mqtt import Delivery, MqttClient
from shared.settings import DbSettings, MqttSettings, RedisSettings
from shared.signing import generate_private_key, public_key_b64, sign_event
from shared.store import migrate
from shared.store import models as m
from shared.store import repository as repo
from shared.topics import alert_filter, decision_filter, plate_topic
from tests.factories import plate_read

pytestmark = [pytest.mark.integration, pytest.mark.correlator, pytest.mark.db, pytest.mark.mqtt]


class Harness:
    def __init__(self, correlator: Correlator, publisher: MqttClient, root: str) -> None:
        self.c = correlator
        self.pub = publisher
        self.root = root
        self.alerts: queue.Queue[Alert] = queue.Queue()
        self.decisions: queue.Queue[GateDecision] = queue.Queue()

    def publish(
        self, event: PlateRead | bytes, site: str = "north-gate", camera: str = "cam-1"
    ) -> None:
        if isinstance(event, PlateRead):
            site, camera, payload = event.site, event.camera, encode_event(event)
        else:
            payload = event
        self.pub.publish(plate_topic(site, camera, self.root), payload).wait()

    def wait_for(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.05)
        raise AssertionError("condition not met in time")

    def count(self, model: Any) -> int:
        with self.c.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(model)) or 0)

    def add_list(self, name: str, entries: list[dict[str, Any]], **kw: Any) -> int:
        with self.c.sessions.begin() as s:
            wl = repo.create_list(s, name, utc_now(), **kw)
            repo.add_entries(s, wl, entries, utc_now())
            list_id = wl.id
        self.c.refresh()
        return list_id


@pytest.fixture
def harness(
    request: pytest.FixtureRequest,
    mqtt_settings: MqttSettings,
    db_url: str,
    redis_settings: RedisSettings,
    client_id: str,
) -> Iterator[Harness]:
    marker = request.node.get_closest_marker("correlator_settings")
    settings = CorrelatorSettings(
        instance=client_id,
        mqtt=mqtt_settings,
        db=DbSettings(url=db_url),
        redis=redis_settings,
        **(marker.kwargs if marker else {}),
    )
    migrate.upgrade(db_url)  # the real `alembic upgrade head`, as `platewatch db upgrade` runs it
    correlator = Correlator(settings)
    publisher = MqttClient(mqtt_settings, client_id + "-edge")
    publisher.start()
    h = Harness(correlator, publisher, mqtt_settings.topic_root)
    watcher = MqttClient(mqtt_settings, client_id + "-ops")
    watcher.subscribe(alert_filter(h.root), lambda d: h.alerts.put(decode_event(d.payload, Alert)))
    watcher.subscribe(
        decision_filter(h.root), lambda d: h.decisions.put(decode_event(d.payload, GateDecision))
    )
    watcher.start()
    correlator.start()
    time.sleep(0.3)
    yield h
    correlator.stop()
    publisher.stop()
    watcher.stop()


def test_published_read_becomes_one_sighting_row(harness: Harness) -> None:
    event = plate_read()
    harness.publish(event)
    harness.wait_for(lambda: harness.count(m.Sighting) == 1)
    with harness.c.sessions() as s:
        row = s.get(m.Sighting, event.event_id)
        assert row is not None
        assert (row.plate, row.site_id, row.camera, row.raw_text) == (
            "ABC1234",
            "north-gate",
            "cam-1",
            "ABC 1234",
        )
        assert row.seen_at == event.captured_at
        assert row.candidates and row.candidates[1]["text"] == "A8C1234"
        assert s.get(m.Site, "north-gate") is not None


def test_watchlist_hit_goes_publish_row_alert(harness: Harness) -> None:
    harness.add_list(
        "stolen-cars",
        [{"pattern": "ABC1234", "mode": "exact", "category": "stolen"}],
        category="stolen",
        severity="critical",
    )
    event = plate_read()
    harness.publish(event)
    alert = harness.alerts.get(timeout=10)
    assert alert.kind == "watchlist" and alert.severity == "critical"
    assert alert.sighting_event_id == event.event_id and alert.plate == "ABC1234"
    assert alert.match is not None and alert.match.explanation == "exact"

    def published() -> bool:
        with harness.c.sessions() as s:
            rows = s.scalars(select(m.AlertRecord)).all()
            assert [r.id for r in rows] == [alert.event_id] and rows[0].status == "new"
            return rows[0].published_at is not None

    harness.wait_for(published)


def test_duplicates_are_stored_once_and_alert_once(harness: Harness) -> None:
    harness.add_list("wanted", [{"pattern": "ABC1234", "mode": "exact", "category": "wanted"}])
    event = plate_read()
    for _ in range(3):
        harness.publish(event)
    harness.wait_for(lambda: harness.c.ingestor.stats["duplicates"] == 2)
    assert harness.count(m.Sighting) == 1
    assert harness.count(m.AlertRecord) == 1
    harness.alerts.get(timeout=5)
    time.sleep(0.3)
    assert harness.alerts.empty()


def test_fuzzy_and_wildcard_entries_alert_with_the_reason(harness: Harness) -> None:
    harness.add_list("fuzzy", [{"pattern": "KLM5821", "mode": "fuzzy", "category": "wanted"}])
    harness.add_list("partial", [{"pattern": "XY?12*", "mode": "wildcard", "category": "banned"}])
    harness.publish(plate_read(plate="KLM582I", track_id="a"))  # I read where the list has 1
    harness.publish(plate_read(plate="XYZ1299", track_id="b"))
    got = {
        a.match.mode: a
        for a in (harness.alerts.get(timeout=10), harness.alerts.get(timeout=10))
        if a.match
    }
    assert got["fuzzy"].match is not None and "I->1 at position 7" in got["fuzzy"].match.explanation
    assert got["wildcard"].plate == "XYZ1299"


def test_expired_entry_raises_nothing(harness: Harness) -> None:
    past = utc_now() - timedelta(days=2)
    harness.add_list(
        "old",
        [
            {
                "pattern": "ABC1234",
                "mode": "exact",
                "valid_from": past - timedelta(days=1),
                "valid_until": past,
            }
        ],
    )
    harness.publish(plate_read())
    harness.wait_for(lambda: harness.count(m.Sighting) == 1)
    time.sleep(0.3)
    assert harness.alerts.empty() and harness.count(m.AlertRecord) == 0


def test_spoofed_topic_is_dead_lettered_not_stored(harness: Harness) -> None:
    spoof = plate_read(site="south-gate")
    harness.publish(encode_event(spoof), site="north-gate", camera="cam-1")
    harness.wait_for(lambda: harness.count(m.DeadLetterRecord) == 1)
    assert harness.count(m.Sighting) == 0
    with harness.c.sessions() as s:
        letter = s.scalars(select(m.DeadLetterRecord)).one()
        assert letter.field == "site" and "disagrees" in letter.reason


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"{broken", "payload"),
        (b"{" + b" " * 70_000 + b"}", "payload"),
        (encode_event(plate_read()).replace(b'"frames":9', b'"frames":"nine"'), "frames"),
    ],
    ids=["malformed", "oversized", "wrong-type"],
)
def test_bad_payload_goes_to_dead_letters_and_intake_continues(
    harness: Harness, payload: bytes, field: str
) -> None:
    harness.publish(payload)
    harness.wait_for(lambda: harness.count(m.DeadLetterRecord) == 1)
    with harness.c.sessions() as s:
        letter = s.scalars(select(m.DeadLetterRecord)).one()
        assert (letter.field or "payload").startswith(field)
        assert letter.payload == payload[: len(letter.payload)] and letter.payload_size == len(
            payload
        )
    harness.publish(plate_read())
    harness.wait_for(lambda: harness.count(m.Sighting) == 1)


def test_signed_events_verify_and_forgeries_are_refused(harness: Harness) -> None:
    key = generate_private_key()
    with harness.c.sessions.begin() as s:
        s.add(m.Site(id="north-gate", name="North", created_at=utc_now()))
        s.flush()
        s.add(
            m.Node(
                id="edge-1",
                site_id="north-gate",
                public_key=public_key_b64(key),
                require_signature=True,
            )
        )
    harness.c.refresh()
    good = sign_event(plate_read(track_id="ok"), key, "edge-1")
    forged = sign_event(plate_read(track_id="forged"), generate_private_key(), "edge-1")
    unsigned = plate_read(track_id="unsigned")
    for e in (good, forged, unsigned):
        harness.publish(e)
    harness.wait_for(
        lambda: harness.count(m.DeadLetterRecord) == 2 and harness.count(m.Sighting) == 1
    )
    with harness.c.sessions() as s:
        assert s.get(m.Sighting, good.event_id) is not None
        reasons = sorted(r.reason for r in s.scalars(select(m.DeadLetterRecord)))
    assert any("does not verify" in r for r in reasons) and any(
        "must be signed" in r for r in reasons
    )


def test_gate_denies_unregistered_plate_and_allows_registered(harness: Harness) -> None:
    with harness.c.sessions.begin() as s:
        s.add(m.Site(id="north-gate", name="North", created_at=utc_now()))
        s.flush()
        s.add(m.Camera(site_id="north-gate", slug="cam-1", is_gate=True))
    harness.add_list(
        "north-residents",
        [{"pattern": "KLM5821", "mode": "exact", "category": "allow"}],
        kind="allow",
        site_id="north-gate",
        category="allow",
    )
    harness.publish(plate_read(plate="KLM5821", track_id="resident"))
    allowed = harness.decisions.get(timeout=10)
    assert (allowed.decision, allowed.plate, allowed.gate) == ("allow", "KLM5821", "cam-1")
    stranger = plate_read(plate="ZZZ9999", track_id="stranger")
    harness.publish(stranger)
    denied = harness.decisions.get(timeout=10)
    assert denied.decision == "deny" and denied.sighting_event_id == stranger.event_id
    alert = harness.alerts.get(timeout=10)
    assert alert.kind == "unregistered_gate" and alert.plate == "ZZZ9999"
    assert harness.alerts.empty()  # the resident raised nothing


def test_registry_changes_reach_a_running_correlator_without_a_restart(
    harness: Harness,
    db_url: str,
    redis_settings: RedisSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.correlator.registry_cli import main as registry

    monkeypatch.setenv("PW_CORRELATOR_DB__URL", db_url)
    monkeypatch.setenv("PW_CORRELATOR_REDIS__URL", redis_settings.url)
    monkeypatch.setenv("PW_CORRELATOR_REDIS__KEY_PREFIX", redis_settings.key_prefix)
    assert registry(["site", "north-gate"]) == 0
    assert registry(["camera", "north-gate", "cam-1", "--gate"]) == 0
    key = generate_private_key()
    assert (
        registry(["node", "edge-1", "--site", "north-gate", "--public-key", public_key_b64(key)])
        == 0
    )
    # no refresh() here: the correlator reloads on the registry's Redis announcement
    harness.wait_for(lambda: "edge-1" in harness.c.ingestor.registry.nodes)
    harness.publish(plate_read(track_id="unsigned"))  # the node must now sign
    signed = sign_event(plate_read(plate="ZZZ9999", track_id="signed"), key, "edge-1")
    harness.publish(signed)
    denied = harness.decisions.get(timeout=10)  # cam-1 now guards a gate
    assert (denied.decision, denied.sighting_event_id) == ("deny", signed.event_id)
    harness.wait_for(lambda: harness.count(m.DeadLetterRecord) == 1)
    assert harness.count(m.Sighting) == 1


def test_unpublished_alert_is_swept_out_after_a_crash(harness: Harness) -> None:
    event = plate_read()
    with harness.c.sessions.begin() as s:
        s.add(m.Site(id="north-gate", name="North", created_at=utc_now()))
    alert = Alert(
        raised_at=utc_now() - timedelta(minutes=1),
        site="north-gate",
        camera="cam-1",
        severity="high",
        kind="watchlist",
        plate="ABC1234",
        seen_at=event.captured_at,
        sighting_event_id=event.event_id,
        title="t",
        reason="r",
    )
    with harness.c.sessions.begin() as s:
        repo.insert_alerts(s, [alert])  # committed, then the process died before publishing
    assert harness.c.ingestor.publish_pending() == 1
    assert harness.alerts.get(timeout=5).event_id == alert.event_id
    with harness.c.sessions() as s:
        assert s.get(m.AlertRecord, alert.event_id).published_at is not None  # type: ignore[union-attr]


@pytest.mark.parametrize("size", [10, 100])  # PostgreSQL: the JSON insert, then the COPY
def test_insert_sightings_returns_exactly_the_new_ids(harness: Harness, size: int) -> None:
    now = utc_now()
    first = [plate_read(plate=f"AB{i:04d}", track_id=f"t{i}") for i in range(size)]
    more = [plate_read(plate=f"CD{i:04d}", track_id=f"u{i}") for i in range(size // 2)]
    with harness.c.sessions.begin() as s:
        repo.ensure_sites_and_cameras(s, {("north-gate", "cam-1", "edge-1")}, now)
        assert repo.insert_sightings(s, first, now) == {e.event_id for e in first}
    with harness.c.sessions.begin() as s:  # half of them again, with as many new ones
        again = first[: size // 2] + more
        assert repo.insert_sightings(s, again, now) == {e.event_id for e in more}
    assert harness.count(m.Sighting) == size + size // 2
    with harness.c.sessions() as s:  # every column as sighting_row gives it, on each path
        for event in (first[0], more[-1]):
            row = s.get(m.Sighting, event.event_id)
            assert row is not None
            for column, want in repo.sighting_row(event, now).items():
                got = getattr(row, column)
                if isinstance(got, datetime) and got.tzinfo is None:
                    got = got.replace(tzinfo=UTC)  # SQLite keeps naive UTC
                assert got == want, column


def test_alert_rows_store_every_field_once_on_both_databases(harness: Harness) -> None:
    """The alert insert (one JSON parameter on PostgreSQL, a multi-row INSERT on SQLite) stores
    what `alert_row` gives, JSON columns included, and skips an alert raised before."""
    import uuid

    from shared.events import AlertMatch

    now = utc_now()
    with harness.c.sessions.begin() as s:
        s.add(m.Site(id="north-gate", name="North", created_at=now))
    match = AlertMatch(
        list_id=3,
        list_name="wanted",
        entry_id=7,
        pattern="AB?12*",
        mode="wildcard",
        category="wanted",
        cost=0.0,
        explanation="wildcard AB?12*",
    )
    alerts = [
        Alert(
            raised_at=now,
            site="north-gate",
            camera="cam-1",
            severity="high",
            kind="watchlist",
            plate=f"ABX12{i}",
            seen_at=now - timedelta(seconds=i),
            sighting_event_id=plate_read().event_id,
            incident_id=uuid.uuid4() if i else None,
            match=match,
            details={"incident_hits": i + 1, "note": 'x "quoted"', "ok": True, "speed": 1.5},
            title="Wanted plate",
            reason="watch-list hit",
        )
        for i in range(3)
    ]
    with harness.c.sessions.begin() as s:
        assert repo.insert_alerts(s, alerts) == {a.event_id for a in alerts}
    with harness.c.sessions.begin() as s:
        assert repo.insert_alerts(s, alerts[:1]) == set()  # the same alert again: skipped
    with harness.c.sessions() as s:
        for alert in alerts:
            row = s.get(m.AlertRecord, alert.event_id)
            assert row is not None
            for column, want in repo.alert_row(alert).items():
                got = getattr(row, column)
                if hasattr(got, "tzinfo") and got is not None and got.tzinfo is None:
                    got = got.replace(tzinfo=want.tzinfo)  # SQLite keeps naive UTC
                assert got == want, column
            assert Alert.model_validate(row.payload) == alert
    # An alert without a match stores JSON null in `match` (not SQL NULL), on both databases.
    lone = alerts[0].model_copy(update={"event_id": plate_read().event_id, "match": None})
    lone = lone.model_copy(update={"sighting_event_id": plate_read().event_id})
    with harness.c.sessions.begin() as s:
        assert repo.insert_alerts(s, [lone]) == {lone.event_id}
    with harness.c.sessions() as s:
        sql_nulls = s.execute(text("SELECT count(*) FROM alert WHERE match IS NULL")).scalar()
        assert sql_nulls == 0
        assert s.get(m.AlertRecord, lone.event_id).match is None  # type: ignore[union-attr]


def test_bad_config_stops_startup_naming_the_field(tmp_path: Any) -> None:
    from services.correlator.__main__ import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"ingest": {"batch_max_rows": 0}}))
    assert main(["--config", str(cfg)]) == 2


def test_new_entry_retro_hunts_recent_sightings_as_historical_alerts(harness: Harness) -> None:
    for site in ("north-gate", "depot"):
        harness.publish(plate_read(plate="XYZ9876", site=site, track_id=site))
    harness.publish(plate_read(plate="OTHER12", track_id="other"))
    harness.wait_for(lambda: harness.count(m.Sighting) == 3)
    with harness.c.sessions.begin() as s:
        wl = repo.create_list(s, "new-wanted", utc_now(), category="wanted", severity="high")
        repo.add_entries(s, wl, [{"pattern": "XYZ9876", "mode": "exact"}], utc_now())
        list_id = wl.id
    harness.c.notify_list_change(list_id)
    got = [harness.alerts.get(timeout=10), harness.alerts.get(timeout=10)]
    assert all(a.historical and a.plate == "XYZ9876" for a in got)
    assert sorted(a.site for a in got) == ["depot", "north-gate"]
    time.sleep(0.3)
    assert harness.alerts.empty()
    harness.publish(plate_read(plate="XYZ9876", track_id="live"))  # and it is live from now on
    live = harness.alerts.get(timeout=10)
    assert not live.historical


def _waiting_entries(harness: Harness) -> int:
    """Entries waiting for a retro-hunt (counted without locking them, unlike a hunt)."""
    with harness.c.sessions() as s:
        stmt = select(func.count()).select_from(m.WatchEntry).where(repo.hunt_pending())
        return int(s.scalar(stmt) or 0)


@pytest.mark.correlator_settings(matching={"retro_poll_s": 3600})  # only the reload can wake it
def test_a_list_change_whose_message_was_lost_is_retro_hunted_by_the_full_reload(
    harness: Harness,
) -> None:
    harness.publish(plate_read(plate="XYZ9876", track_id="before"))
    harness.wait_for(lambda: harness.count(m.Sighting) == 1)
    with harness.c.sessions.begin() as s:  # no notify: its pub/sub message never came
        wl = repo.create_list(s, "lost-message", utc_now(), category="stolen", severity="high")
        repo.add_entries(s, wl, [{"pattern": "XYZ9876", "mode": "exact"}], utc_now())
    harness.c._request_reload()  # what a Redis resync, a registry change or the hour does
    alert = harness.alerts.get(timeout=10)
    assert alert.historical and alert.plate == "XYZ9876"
    assert _waiting_entries(harness) == 0  # hunted at its version: not again
    loaded = harness.c.cache
    harness.c._request_reload()
    harness.wait_for(lambda: harness.c.cache is not loaded)
    time.sleep(0.3)
    assert harness.alerts.empty()


@pytest.mark.correlator_settings(matching={"retro_poll_s": 0.5})
def test_a_change_without_a_message_is_hunted_and_then_matched_live(harness: Harness) -> None:
    """No change message (a lost one, or no Redis): the poll finds the changed entry, has the
    ingest thread load its list first, then hunts; so live sightings after the historical
    alert are matched too, not only after the next full reload."""
    harness.publish(plate_read(plate="XYZ9876", track_id="before"))
    harness.wait_for(lambda: harness.count(m.Sighting) == 1)
    list_id = harness.add_list("edited", [{"pattern": "AAA1111", "mode": "exact"}])
    harness.wait_for(lambda: _waiting_entries(harness) == 0)
    assert harness.alerts.empty()  # nothing matched AAA1111
    with harness.c.sessions.begin() as s:  # an operator corrects the pattern; nobody announces
        entry = s.scalars(select(m.WatchEntry).where(m.WatchEntry.list_id == list_id)).one()
        entry.pattern, entry.updated_at = "XYZ9876", utc_now()
        entry.watch_list.version += 1
    alert = harness.alerts.get(timeout=10)
    assert alert.historical and alert.plate == "XYZ9876"
    harness.publish(plate_read(plate="XYZ9876", track_id="live"))
    live = harness.alerts.get(timeout=10)
    assert not live.historical and live.plate == "XYZ9876"


def test_retro_hunts_run_off_the_ingest_thread(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hunt reads days of sightings: the ingest thread never waits for it."""
    import threading

    import services.correlator.service as service

    hunt = service.retro_hunt
    threads: list[str] = []

    def recording(*args: Any, **kw: Any) -> Any:
        threads.append(threading.current_thread().name)
        return hunt(*args, **kw)

    monkeypatch.setattr(service, "retro_hunt", recording)
    harness.publish(plate_read(plate="XYZ9876", track_id="before"))
    harness.wait_for(lambda: harness.count(m.Sighting) == 1)
    list_id = harness.add_list("w", [{"pattern": "XYZ9876", "mode": "exact"}])
    harness.c.notify_list_change(list_id)
    assert harness.alerts.get(timeout=10).historical
    assert threads and set(threads) == {"retro-hunt"}


def _alert_insert_fails_once(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The database drops the connection at the first alert insert, then works again; returns
    the list of each call's alert count."""
    from sqlalchemy.exc import OperationalError

    insert_alerts = repo.insert_alerts
    calls: list[int] = []

    def flaky(session: Any, alerts: Any) -> Any:
        calls.append(len(alerts))
        if len(calls) == 1:
            raise OperationalError("INSERT INTO alert", {}, Exception("connection lost"))
        return insert_alerts(session, alerts)

    monkeypatch.setattr(repo, "insert_alerts", flaky)
    return calls


def test_a_retro_hunt_that_fails_is_tried_again_not_lost(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness.publish(plate_read(plate="XYZ9876", track_id="before"))
    harness.wait_for(lambda: harness.count(m.Sighting) == 1)
    calls = _alert_insert_fails_once(monkeypatch)
    with harness.c.sessions.begin() as s:
        wl = repo.create_list(s, "flaky", utc_now(), category="stolen", severity="high")
        repo.add_entries(s, wl, [{"pattern": "XYZ9876", "mode": "exact"}], utc_now())
        list_id = wl.id
    harness.c.notify_list_change(list_id)
    harness.wait_for(lambda: len(calls) == 1)
    assert _waiting_entries(harness) == 1  # rolled back: the entry still waits
    alert = harness.alerts.get(timeout=15)  # the retry, about 5 s later
    assert alert.historical and alert.plate == "XYZ9876"
    assert len(calls) == 2 and _waiting_entries(harness) == 0


def test_entries_added_while_every_correlator_was_down_are_hunted_at_start(
    mqtt_settings: MqttSettings, db_url: str, redis_settings: RedisSettings, client_id: str
) -> None:
    migrate.upgrade(db_url)
    settings = CorrelatorSettings(
        instance=client_id, mqtt=mqtt_settings, db=DbSettings(url=db_url), redis=redis_settings
    )
    got: queue.Queue[Alert] = queue.Queue()
    watcher = MqttClient(mqtt_settings, client_id + "-ops")
    watcher.subscribe(
        alert_filter(mqtt_settings.topic_root), lambda d: got.put(decode_event(d.payload, Alert))
    )
    watcher.start()
    first = Correlator(settings)
    first.start()
    edge = MqttClient(mqtt_settings, client_id + "-edge")
    edge.start()
    try:
        read = plate_read(plate="XYZ9876", track_id="before")
        edge.publish(
            plate_topic(read.site, read.camera, mqtt_settings.topic_root), encode_event(read)
        ).wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with first.sessions() as s:
                if s.get(m.Sighting, read.event_id) is not None:
                    break
            time.sleep(0.05)
        first.stop()
        with first.sessions.begin() as s:  # listed while no correlator runs: nobody hears of it
            wl = repo.create_list(s, "while-down", utc_now(), category="wanted", severity="high")
            repo.add_entries(s, wl, [{"pattern": "XYZ9876", "mode": "exact"}], utc_now())
        second = Correlator(settings)
        second.start()
        try:
            alert = got.get(timeout=10)
            assert alert.historical and alert.sighting_event_id == read.event_id
        finally:
            second.stop()
    finally:
        edge.stop()
        watcher.stop()


def test_retention_deletes_old_sightings_but_keeps_alerted_ones(harness: Harness) -> None:
    from services.correlator.config import RetentionSettings
    from services.correlator.retention import run_retention

    now = utc_now()
    old = [
        plate_read(plate=f"OLD{i}", track_id=f"o{i}", seen_at=now - timedelta(days=120))
        for i in range(3)
    ]
    recent = plate_read(plate="NEW1", track_id="n", seen_at=now - timedelta(days=1))
    with harness.c.sessions.begin() as s:
        repo.ensure_sites_and_cameras(s, {("north-gate", "cam-1", "edge-1")}, now)
        repo.insert_sightings(s, [*old, recent], now)
        repo.insert_alerts(
            s,
            [
                Alert(
                    raised_at=now,
                    site="north-gate",
                    severity="high",
                    kind="watchlist",
                    plate="OLD0",
                    seen_at=old[0].captured_at,
                    sighting_event_id=old[0].event_id,
                    title="t",
                    reason="r",
                )
            ],
        )
    report = run_retention(harness.c.sessions, RetentionSettings(default_days=90), now)
    assert report.deleted == 2
    with harness.c.sessions() as s:
        left = sorted(r.plate for r in s.scalars(select(m.Sighting)))
    assert left == ["NEW1", "OLD0"]


def test_privacy_mode_hashes_plates_without_a_hit(harness: Harness) -> None:
    from pydantic import SecretStr

    from services.correlator.config import RetentionSettings
    from services.correlator.retention import run_retention

    now = utc_now()
    reads = [
        plate_read(plate="PRIV1", track_id="a", seen_at=now - timedelta(days=2)),
        plate_read(plate="PRIV1", track_id="b", seen_at=now - timedelta(days=3)),
    ]
    with harness.c.sessions.begin() as s:
        s.add(m.Site(id="north-gate", name="N", privacy_mode=True, created_at=now))
        s.flush()
        repo.insert_sightings(s, reads, now)
    settings = RetentionSettings(privacy_key=SecretStr("k" * 32), privacy_after_hours=24)
    assert run_retention(harness.c.sessions, settings, now).pseudonymised == 2
    with harness.c.sessions() as s:
        plates = {r.plate for r in s.scalars(select(m.Sighting))}
    assert len(plates) == 1 and plates.pop().startswith("h:")  # same car still correlates


def test_node_status_and_last_will_update_node_and_cameras(
    harness: Harness, client_id: str
) -> None:
    from shared.events import CameraStatus, NodeStatus
    from shared.mqtt import Will
    from shared.topics import status_topic

    topic = status_topic("north-gate", "edge-7", harness.root)
    now = utc_now()
    online = NodeStatus(
        site="north-gate",
        node="edge-7",
        state="online",
        reported_at=now,
        version="0.1.0",
        outbox_depth=3,
        cameras=[
            CameraStatus(camera="cam-1", state="online", fps=12.5, last_frame_at=now),
            CameraStatus(camera="cam-2", state="degraded", detail="low light"),
        ],
    )
    will = NodeStatus(site="north-gate", node="edge-7", state="offline", reported_at=now)
    settings = harness.pub._settings.model_copy(update={"keepalive_s": 5})
    node = MqttClient(settings, client_id + "-node", will=Will(topic, encode_event(will)))
    node.start()
    node.publish(topic, encode_event(online), retain=True).wait()

    def node_state() -> str | None:
        with harness.c.sessions() as s:
            row = s.get(m.Node, "edge-7")
            return row.state if row else None

    harness.wait_for(lambda: node_state() == "online")
    with harness.c.sessions() as s:
        cams = {
            c.slug: c for c in s.scalars(select(m.Camera).where(m.Camera.site_id == "north-gate"))
        }
        assert cams["cam-2"].state == "degraded" and cams["cam-1"].node_id == "edge-7"
        assert s.get(m.Node, "edge-7").last_status["outbox_depth"] == 3  # type: ignore[union-attr,index]
    node._client.loop_stop()
    node._client.socket().close()  # type: ignore[union-attr]  # the box loses power
    harness.wait_for(lambda: node_state() == "offline", timeout=20)
    harness.pub.publish(topic, b"", retain=True).wait()


def _sites_with_locations(harness: Harness) -> None:
    with harness.c.sessions.begin() as s:
        s.add(
            m.Site(
                id="berlin", name="Berlin", latitude=52.52, longitude=13.405, created_at=utc_now()
            )
        )
        s.add(
            m.Site(
                id="munich", name="Munich", latitude=48.1351, longitude=11.582, created_at=utc_now()
            )
        )
    harness.c.refresh()


def test_same_plate_at_distant_sites_raises_impossible_travel(harness: Harness) -> None:
    _sites_with_locations(harness)
    t0 = utc_now()
    harness.publish(plate_read(plate="CLONE42", site="berlin", track_id="b", seen_at=t0))
    harness.publish(
        plate_read(plate="CLONE42", site="munich", track_id="m", seen_at=t0 + timedelta(minutes=20))
    )
    alert = harness.alerts.get(timeout=10)
    assert alert.kind == "impossible_travel" and alert.plate == "CLONE42"
    assert float(alert.details["distance_km"]) > 400
    assert float(alert.details["implied_speed_kmh"]) > 1000
    time.sleep(0.3)
    assert harness.alerts.empty()


def test_plausible_travel_raises_nothing(harness: Harness) -> None:
    _sites_with_locations(harness)
    t0 = utc_now() - timedelta(hours=6)
    harness.publish(plate_read(plate="HONEST1", site="berlin", track_id="b", seen_at=t0))
    harness.publish(
        plate_read(plate="HONEST1", site="munich", track_id="m", seen_at=t0 + timedelta(hours=5))
    )
    harness.wait_for(lambda: harness.count(m.Sighting) == 2)
    time.sleep(0.3)
    assert harness.alerts.empty()


def test_cooldown_gives_one_alert_per_car_not_fifty(harness: Harness) -> None:
    harness.add_list("wanted", [{"pattern": "ABC1234", "mode": "exact", "category": "wanted"}])
    for i in range(5):
        harness.publish(plate_read(track_id=f"pass-{i}"))  # the same car lingers at one camera
    harness.wait_for(lambda: harness.count(m.Sighting) == 5)
    time.sleep(0.3)
    assert harness.alerts.qsize() == 1 and harness.count(m.AlertRecord) == 1
    harness.publish(plate_read(site="depot", track_id="elsewhere"))  # another site: alerts again
    second = [harness.alerts.get(timeout=10) for _ in range(2)][-1]
    assert second.site == "depot" and second.incident_id is not None
    assert int(second.details["incident_hits"]) == 2


def test_list_change_over_redis_makes_new_entry_live_in_running_correlator(
    harness: Harness,
) -> None:
    with harness.c.sessions.begin() as s:
        wl = repo.create_list(s, "late", utc_now(), category="banned")
        repo.add_entries(s, wl, [{"pattern": "LATE001", "mode": "exact"}], utc_now())
        list_id = wl.id
    harness.c.state.publish_list_change(list_id, 2)  # what the operator API does after an edit
    harness.wait_for(lambda: list_id in harness.c.cache.lists)
    harness.publish(plate_read(plate="LATE001"))
    assert harness.alerts.get(timeout=10).match.pattern == "LATE001"  # type: ignore[union-attr]


def test_alerts_reach_the_redis_stream_for_live_monitors(harness: Harness) -> None:
    harness.add_list("wanted", [{"pattern": "ABC1234", "mode": "exact", "category": "wanted"}])
    harness.publish(plate_read())
    sent = harness.alerts.get(timeout=10)
    harness.wait_for(lambda: bool(harness.c.state.read_alerts("0", 10)))
    entries = harness.c.state.read_alerts("0", 10)
    assert [Alert.model_validate_json(body).event_id for _, body in entries] == [sent.event_id]


def test_full_reload_is_built_in_background_and_swapped_in(harness: Harness) -> None:
    with harness.c.sessions.begin() as s:  # a change whose pub/sub message was lost
        wl = repo.create_list(s, "missed", utc_now(), category="wanted")
        repo.add_entries(s, wl, [{"pattern": "MISSED1", "mode": "exact"}], utc_now())
        list_id = wl.id
    old_cache = harness.c.cache
    harness.c._request_reload()  # what a Redis resync or the periodic timer does
    harness.wait_for(lambda: list_id in harness.c.cache.lists)
    assert harness.c.cache is not old_cache and harness.c.ingestor.cache is harness.c.cache
    harness.publish(plate_read(plate="MISSED1"))
    assert harness.alerts.get(timeout=10).plate == "MISSED1"


class _CountingLoads(Correlator):
    loads = 0

    def _load_snapshot(self) -> Any:
        self.loads += 1
        return super()._load_snapshot()


def test_start_loads_the_lists_once(
    mqtt_settings: MqttSettings, db_url: str, redis_settings: RedisSettings, client_id: str
) -> None:
    """The list-change subscription is live before the first load, so its first resync needs
    no second load of every list (100,000 entries take seconds of the ingest's CPU)."""
    migrate.upgrade(db_url)
    c = _CountingLoads(
        CorrelatorSettings(
            instance=client_id, mqtt=mqtt_settings, db=DbSettings(url=db_url), redis=redis_settings
        )
    )
    c.start()
    try:
        time.sleep(1.0)  # many ingest ticks (every 50 ms)
        assert c.loads == 1
        c._request_reload()  # a later resync does reload
        deadline = time.monotonic() + 10
        while c.loads < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.loads == 2
    finally:
        c.stop()


def test_a_resync_asked_while_lists_load_is_not_lost(
    mqtt_settings: MqttSettings, db_url: str, redis_settings: RedisSettings, client_id: str
) -> None:
    migrate.upgrade(db_url)
    c = Correlator(
        CorrelatorSettings(
            instance=client_id, mqtt=mqtt_settings, db=DbSettings(url=db_url), redis=redis_settings
        )
    )
    try:
        snap = c._load_snapshot()
        c._request_reload()  # Redis resubscribed while `snap` was loading: changes may be lost
        c._install(snap)
        assert c._next_reload == 0.0  # so the next tick loads every list again
        c._install(c._load_snapshot())  # a load that began after the request saw them all
        assert c._next_reload > time.monotonic()
    finally:
        c.engine.dispose()


def test_a_large_batch_is_stored_whole_on_either_database(harness: Harness) -> None:
    now = utc_now()
    reads = [plate_read(plate=f"BULK{i:04d}", track_id=str(i)) for i in range(2_000)]
    with harness.c.sessions.begin() as s:
        repo.ensure_sites_and_cameras(s, {("north-gate", "cam-1", "edge-1")}, now)
        assert len(repo.insert_sightings(s, reads, now)) == 2_000
        assert repo.insert_sightings(s, reads[:10], now) == set()  # idempotent
    assert harness.count(m.Sighting) == 2_000


@pytest.mark.parametrize("batch", [1, 100])
def test_every_sighting_field_round_trips_through_the_bulk_insert(
    harness: Harness, batch: int
) -> None:
    """PostgreSQL's small-batch JSON insert and COPY (large batches), and SQLite's VALUES,
    store the same values, escapes included."""
    now = utc_now()
    others = [plate_read(plate=f"RT{i:04d}", track_id=f"rt{i}") for i in range(batch - 1)]
    read = plate_read(
        raw_text="AB\\C\t1\n2\r3 é",
        track_id="tr\\ack",
        image_ref="s3://bucket/a\tb.jpg",
        direction="in",
    )
    with harness.c.sessions.begin() as s:
        repo.ensure_sites_and_cameras(s, {("north-gate", "cam-1", "edge-1")}, now)
        stored_ids = repo.insert_sightings(s, [read, *others], now)
        assert stored_ids == {read.event_id} | {o.event_id for o in others}
    with harness.c.sessions.begin() as s:
        row = s.get(m.Sighting, read.event_id)
        assert row is not None
        stored = {c: getattr(row, c) for c in repo.SIGHTING_COLUMNS}
    expected = repo.sighting_row(read, now)
    assert stored == expected


def test_an_event_the_code_cannot_process_is_dead_lettered_and_its_batch_mates_stored(
    harness: Harness, redis_settings: RedisSettings
) -> None:
    real_hits = harness.c.cache.hits_many

    def hits_many(sightings: Any, now: Any) -> Any:
        if any(plate == "POISON1" for plate, _ in sightings):
            raise RuntimeError("simulated bug")
        return real_hits(sightings, now)

    harness.c.ingestor.cache.hits_many = hits_many  # type: ignore[method-assign]
    good, bad = plate_read(plate="GOOD001", track_id="g"), plate_read(plate="POISON1", track_id="p")
    harness.publish(bad)
    harness.publish(good)
    harness.wait_for(
        lambda: harness.count(m.DeadLetterRecord) == 1 and harness.count(m.Sighting) == 1
    )
    with harness.c.sessions() as s:
        assert s.get(m.Sighting, good.event_id) is not None
        letter = s.scalars(select(m.DeadLetterRecord)).one()
    assert "processing failed: RuntimeError: simulated bug" in letter.reason
    assert harness.c.ingestor.stats["poisoned"] == 1
    # its history was sent to Redis before the matching failed; not stored, so taken out again
    keys = StateKeys(redis_settings.key_prefix)
    client = redis.Redis.from_url(redis_settings.url)
    try:
        assert client.zcard(keys.sightings("POISON1")) == 0
        assert client.hlen(keys.sighting_data("POISON1")) == 0
        assert client.zrange(keys.sightings("GOOD001"), 0, -1) == [str(good.event_id).encode()]
    finally:
        client.close()


def _own_ingestor(harness: Harness, poisoned: list[str]) -> Ingestor:
    """An ingestor beside the running one, on the same database, lists and Redis state, fed by
    the test itself (so a batch holds exactly the events given)."""
    running = harness.c.ingestor
    return Ingestor(
        harness.c.sessions,
        harness.c.mqtt,
        running.cache,
        utc_now,
        root=harness.root,
        cross=running.cross,
        batch_max_ms=60_000,
        retry_max_s=0.2,
        retry_errors=(redis.RedisError,),
        on_poison=lambda delivery, reason: poisoned.append(reason),
    )


def _delivery(event: PlateRead, root: str) -> Delivery:
    return Delivery(plate_topic(event.site, event.camera, root), encode_event(event), 1, False, 1)


def _flush_one_batch_at_two_sites(harness: Harness, plate: str, poisoned: list[str]) -> Ingestor:
    """`plate` at Berlin, then 20 minutes later at Munich (impossible travel), stored as one
    batch by an ingestor of the test's own."""
    ingestor = _own_ingestor(harness, poisoned)
    t0 = utc_now()
    for event in (
        plate_read(plate=plate, site="berlin", track_id="b", seen_at=t0),
        plate_read(plate=plate, site="munich", track_id="m", seen_at=t0 + timedelta(minutes=20)),
    ):
        ingestor.handle(event, _delivery(event, harness.root))
    ingestor.flush()
    return ingestor


def _alert_kinds(harness: Harness, plate: str) -> list[str]:
    with harness.c.sessions() as s:
        return list(s.scalars(select(m.AlertRecord.kind).where(m.AlertRecord.plate == plate)))


def test_a_batch_retried_after_a_database_error_raises_its_cross_site_alert_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt records the batch's history in Redis and then loses the database; the
    retry keeps what that attempt read instead of recording again, when each sighting would
    also see its later batch mate and the symmetric rule would alert on both."""
    _sites_with_locations(harness)
    calls = _alert_insert_fails_once(monkeypatch)
    poisoned: list[str] = []
    ingestor = _flush_one_batch_at_two_sites(harness, "CLONE77", poisoned)
    assert calls == [1, 1] and poisoned == []
    assert _alert_kinds(harness, "CLONE77") == ["impossible_travel"]
    assert ingestor.stats["events"] == 2 and ingestor.stats["retries"] == 1


def test_a_batch_retried_after_a_database_error_counts_its_incident_hit_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Admission (cooldown, incident) is asked once per alert and flush: the retry reuses the
    first answer, so the incident does not count the one hit twice (and escalate early)."""
    harness.add_list("wanted", [{"pattern": "WANTED9", "mode": "exact"}], category="stolen")
    calls = _alert_insert_fails_once(monkeypatch)
    poisoned: list[str] = []
    ingestor = _own_ingestor(harness, poisoned)
    event = plate_read(plate="WANTED9", track_id="w")
    ingestor.handle(event, _delivery(event, harness.root))
    ingestor.flush()
    assert calls == [1, 1] and poisoned == []
    with harness.c.sessions() as s:
        (row,) = s.scalars(select(m.AlertRecord).where(m.AlertRecord.plate == "WANTED9")).all()
        alert = Alert.model_validate(row.payload)
    assert alert.kind == "watchlist" and alert.details["incident_hits"] == 1


def test_a_batch_resent_after_its_redis_reply_was_lost_raises_its_cross_site_alert_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis ran the history script but its reply never arrived (a timeout): the retry sends
    the batch again, and each sighting must still see only what the first send showed it, not
    its later batch mates, or the symmetric rule alerts on both."""
    from services.correlator.state import PendingHistory

    _sites_with_locations(harness)
    replies = PendingHistory.replies
    calls: list[int] = []

    def lost_once(self: PendingHistory) -> Any:
        got = replies(self)  # Redis did the work...
        calls.append(len(got))
        if len(calls) == 1:
            raise redis.TimeoutError("reply lost")  # ...but the answer did not arrive
        return got

    monkeypatch.setattr(PendingHistory, "replies", lost_once)
    poisoned: list[str] = []
    ingestor = _flush_one_batch_at_two_sites(harness, "CLONE88", poisoned)
    assert len(calls) == 2 and poisoned == []
    assert _alert_kinds(harness, "CLONE88") == ["impossible_travel"]
    assert ingestor.stats["retries"] == 1


def test_list_with_unknown_severity_or_category_is_refused_naming_the_field(
    harness: Harness,
) -> None:
    from shared.errors import FieldError

    for field, kwargs in (("severity", {"severity": "urgent"}), ("category", {"category": "x"})):
        with harness.c.sessions.begin() as s, pytest.raises(FieldError) as info:
            repo.create_list(s, f"bad-{field}", utc_now(), **kwargs)
        assert info.value.field == field


def test_drain_stores_what_a_stopped_instance_session_holds_then_ends_it(
    harness: Harness,
) -> None:
    """Scale-down: the broker deals shared-subscription messages to an offline member's
    session; `drain` stores them and removes the member, so later traffic all reaches the
    remaining instance."""
    gone = harness.c.settings.model_copy(update={"instance": harness.c.settings.instance + "-a"})
    first = Correlator(gone)
    first.start()
    first.stop()  # stopped, not drained: its session stays a member of the share group
    for i in range(30):
        harness.publish(plate_read(plate=f"DRN{i:04d}", track_id=f"d{i}"))
    harness.wait_for(lambda: harness.count(m.Sighting) >= 5)
    time.sleep(1.0)
    stored_by_live = harness.count(m.Sighting)
    assert stored_by_live < 30  # the offline session was dealt a share

    # drain_session takes the session over again if a try could not end it (seen in full
    # suite runs: the DISCONNECT was not sent, so the broker kept the session)
    drained = drain_session(gone, quiet_s=1.0, max_s=60)
    assert drained <= 30 - stored_by_live
    assert harness.count(m.Sighting) == 30

    for i in range(10):
        harness.publish(plate_read(plate=f"AFT{i:04d}", track_id=f"a{i}"))
    harness.wait_for(lambda: harness.count(m.Sighting) == 40)


def test_drain_needs_mqtt_5(harness: Harness) -> None:
    settings = harness.c.settings
    v311 = settings.model_copy(
        update={
            "instance": settings.instance + "-v311",
            "mqtt": settings.mqtt.model_copy(update={"protocol": "3.1.1"}),
        }
    )
    with pytest.raises(DrainError, match="MQTT 5"):
        Correlator(v311).drain(quiet_s=0.5, max_s=5)
    with pytest.raises(DrainError, match="MQTT 5"):  # not retried: it cannot succeed
        drain_session(v311, quiet_s=0.5, max_s=5)
