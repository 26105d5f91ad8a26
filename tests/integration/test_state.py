"""Cross-site state on the real Redis; two CrossSiteState instances stand for two processes."""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from services.correlator.consumer import CrossSite
from services.correlator.rules import Sighting, SiteLocation, locations_by_site
from services.correlator.state import (
    CrossSiteCorrelator,
    CrossSiteState,
    ListChangeListener,
    StateError,
    StateKeys,
)
from shared.errors import PayloadError
from shared.events import Alert
from shared.settings import RedisSettings
from tests.factories import T0, plate_read

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.correlator]

WAIT_S = 10.0  # generous upper bound for a message to arrive; never asserted as a duration


@pytest.fixture
def client(redis_settings: RedisSettings) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_settings.url)
    yield c
    c.close()


@pytest.fixture
def two(
    client: redis.Redis, redis_settings: RedisSettings
) -> Iterator[tuple[CrossSiteState, CrossSiteState]]:
    """Two processes' views of one state: separate clients, one prefix."""
    other = redis.Redis.from_url(redis_settings.url)
    yield (
        CrossSiteState(client, redis_settings.key_prefix),
        CrossSiteState(other, redis_settings.key_prefix),
    )
    other.close()


def sighting(event_id: str, site: str, minutes: float, plate: str = "ABC1234") -> Sighting:
    return Sighting(event_id, plate, site, "cam-1", T0 + timedelta(minutes=minutes))


# -- sighting history -------------------------------------------------------------------------
def test_history_written_by_the_older_json_format_is_still_read(
    two: tuple[CrossSiteState, CrossSiteState], client: redis.Redis
) -> None:
    a, _ = two
    old = sighting("e-old", "north-gate", 0)
    client.zadd(a.keys.sightings("ABC1234"), {"e-old": round(old.seen_at.timestamp() * 1000)})
    legacy = {"site": "north-gate", "camera": "cam-1", "seen_at": old.seen_at.isoformat()}
    client.hset(a.keys.sighting_data("ABC1234"), "e-old", json.dumps(legacy))
    history = a.record_sighting(sighting("e-new", "south-gate", 5), 3600)
    assert history == [old, sighting("e-new", "south-gate", 5)]


def test_history_is_shared_and_time_ordered_across_processes(
    two: tuple[CrossSiteState, CrossSiteState],
) -> None:
    a, b = two
    a.record_sighting(sighting("e2", "depot", 10), 3600)
    history = b.record_sighting(sighting("e1", "london", 0), 3600)  # arrives late
    assert [s.event_id for s in history] == ["e1", "e2"]
    assert history[1] == sighting("e2", "depot", 10)


def test_redelivered_event_is_counted_once(two: tuple[CrossSiteState, CrossSiteState]) -> None:
    a, b = two
    a.record_sighting(sighting("e1", "london", 0), 3600)
    b.record_sighting(sighting("e1", "london", 0), 3600)
    history = a.record_sighting(sighting("e1", "london", 0), 3600)
    assert [s.event_id for s in history] == ["e1"]


def test_history_is_kept_per_plate(two: tuple[CrossSiteState, CrossSiteState]) -> None:
    a, _ = two
    a.record_sighting(sighting("e1", "london", 0, plate="XYZ999"), 3600)
    history = a.record_sighting(sighting("e2", "london", 1), 3600)
    assert [s.plate for s in history] == ["ABC1234"]


def test_entries_older_than_the_window_are_trimmed(
    two: tuple[CrossSiteState, CrossSiteState], client: redis.Redis
) -> None:
    a, _ = two
    a.record_sighting(sighting("e1", "london", 0), 3600)
    a.record_sighting(sighting("e2", "depot", 30), 3600)
    history = a.record_sighting(sighting("e3", "paris", 90), 3600)
    assert [s.event_id for s in history] == ["e2", "e3"]
    assert client.zrange(a.keys.sightings("ABC1234"), 0, -1) == [b"e2", b"e3"]
    assert sorted(client.hkeys(a.keys.sighting_data("ABC1234"))) == [b"e2", b"e3"]


def test_a_batch_answers_as_its_sightings_one_by_one(
    two: tuple[CrossSiteState, CrossSiteState], client: redis.Redis, redis_settings: RedisSettings
) -> None:
    """One script call for a batch: lone sightings (left out of the script's reply), a plate
    seen twice in the batch (the second sees the first), and a sighting older than the window
    before its plate's newest one (trimmed at once, so not in its own history)."""
    a, _ = two
    batch = [
        sighting("b1", "london", 0, plate="LONE001"),
        sighting("b2", "london", 0),
        sighting("b3", "depot", 10),
        sighting("b4", "paris", -120),  # 2 hours before b3: outside the 1-hour window
        sighting("b5", "london", 0, plate="LONE002"),
    ]
    got = a.record_sightings(batch, 3600)
    one_by_one = CrossSiteState(client, redis_settings.key_prefix + "one-by-one:")
    assert got == [one_by_one.record_sighting(s, 3600) for s in batch]
    assert [[s.event_id for s in h] for h in got] == [["b1"], ["b2"], ["b2", "b3"], [], ["b5"]]
    with pytest.raises(StateError, match="event_id"):
        a.record_sightings([sighting("x|y", "london", 0)], 3600)
    naive = (T0 + timedelta(minutes=1)).replace(tzinfo=None)
    with pytest.raises(StateError, match="seen_at"):
        a.record_items([("ABC1234", "e9", naive, "london", "cam-1")], 3600)
    with pytest.raises(StateError, match="event_id"):
        a.record_items([("ABC1234", "", T0, "london", "cam-1")], 3600)


def test_history_sent_now_and_read_later_leaves_the_connection_clean(
    client: redis.Redis, redis_settings: RedisSettings
) -> None:
    """The script goes out at once and its reply is read later (the ingest path overlaps it
    with the database insert). Left unread, its connection is dropped rather than returned
    with a reply pending; a server that has lost the script (SCRIPT FLUSH, a restart) is sent
    the script itself."""
    a = CrossSiteState(client, redis_settings.key_prefix)
    items = [("ABC1234", "s1", T0, "london", "cam-1")]
    with a.record_items_sent(items, 3600) as pending:
        client.set(redis_settings.key_prefix + "meanwhile", "1")  # another connection meanwhile
        assert pending.replies() == []  # the plate's only sighting: nothing to say
        with pytest.raises(StateError, match="replies"):
            pending.replies()
    unread = a.record_items_sent([("ABC1234", "s2", T0 + timedelta(minutes=1), "depot", "c")], 3600)
    unread.close()
    # the pool's connections answer their own commands, not the unread reply
    assert client.get(redis_settings.key_prefix + "meanwhile") == b"1"
    assert client.zrange(a.keys.sightings("ABC1234"), 0, -1) == [b"s1", b"s2"]
    client.script_flush()
    with a.record_items_sent(
        [("ABC1234", "s3", T0 + timedelta(minutes=2), "paris", "cam-1")], 3600
    ) as pending:
        (reply,) = pending.replies()
    assert reply.kept
    assert [event_id for event_id, _ in reply.others] == ["s1", "s2"]
    with a.record_items_sent([], 3600) as nothing:
        assert nothing.replies() == []


def test_history_is_capped_at_max_history(
    client: redis.Redis, redis_settings: RedisSettings
) -> None:
    state = CrossSiteState(client, redis_settings.key_prefix, max_history=3)
    for i in range(5):
        history = state.record_sighting(sighting(f"e{i}", "depot", i), 3600)
    assert [s.event_id for s in history] == ["e2", "e3", "e4"]
    assert client.hlen(state.keys.sighting_data("ABC1234")) == 3


def test_replay_older_than_the_window_is_not_kept_but_sees_its_nearby_history(
    two: tuple[CrossSiteState, CrossSiteState], client: redis.Redis
) -> None:
    a, _ = two
    a.record_sighting(sighting("e3", "paris", 50), 3600)
    a.record_sighting(sighting("e1", "london", 0), 3600)
    # 70 min before the newest sighting: trimmed at once, compared with what is within 1 h.
    history = a.record_sighting(sighting("e0", "depot", -20), 3600)
    assert [s.event_id for s in history] == ["e1"]
    assert client.zrange(a.keys.sightings("ABC1234"), 0, -1) == [b"e1", b"e3"]


def test_every_key_has_a_ttl(
    two: tuple[CrossSiteState, CrossSiteState], client: redis.Redis, redis_settings: RedisSettings
) -> None:
    a, _ = two
    a.record_sighting(sighting("e1", "london", 0), 3600)
    a.cooldown("watchlist", "ABC1234", "london", 600)
    a.incident("ABC1234", 1800, "inc-1")
    a.append_alert('{"kind":"watchlist"}')
    keys = list(client.scan_iter(match=redis_settings.key_prefix + "*"))
    assert len(keys) == 5
    ttls = {k.decode(): client.ttl(k) for k in keys}
    assert all(ttl > 0 for ttl in ttls.values()), ttls
    assert 3600 < client.ttl(a.keys.sightings("ABC1234")) <= 7200


def test_plate_outside_the_contract_is_refused_before_reaching_redis(
    two: tuple[CrossSiteState, CrossSiteState],
) -> None:
    a, _ = two
    with pytest.raises(PayloadError) as info:
        a.record_sighting(sighting("e1", "london", 0, plate="AB}C"), 3600)
    assert info.value.field == "plate"


# -- cooldown and incidents -------------------------------------------------------------------
def test_cooldown_is_granted_once_across_processes(
    two: tuple[CrossSiteState, CrossSiteState],
) -> None:
    a, b = two
    assert a.cooldown("impossible_travel", "ABC1234", "london", 600) is True
    assert b.cooldown("impossible_travel", "ABC1234", "london", 600) is False
    assert a.cooldown("impossible_travel", "ABC1234", "london", 600) is False
    # Another site, kind or plate has a cooldown of its own.
    assert b.cooldown("impossible_travel", "ABC1234", "paris", 600) is True
    assert b.cooldown("watchlist", "ABC1234", "london", 600) is True
    assert b.cooldown("impossible_travel", "XYZ999", "london", 600) is True


def test_cooldown_is_granted_to_exactly_one_of_many_concurrent_callers(
    redis_settings: RedisSettings,
) -> None:
    clients = [redis.Redis.from_url(redis_settings.url) for _ in range(4)]
    states = [CrossSiteState(c, redis_settings.key_prefix) for c in clients]
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            granted = list(
                pool.map(
                    lambda i: states[i % 4].cooldown("watchlist", "ABC1234", "london", 600),
                    range(40),
                )
            )
    finally:
        for c in clients:
            c.close()
    assert granted.count(True) == 1


def test_cooldown_expires_with_its_ttl(
    two: tuple[CrossSiteState, CrossSiteState], client: redis.Redis
) -> None:
    a, b = two
    assert a.cooldown("watchlist", "ABC1234", "london", 600)
    assert 0 < client.ttl(a.keys.cooldown("watchlist", "ABC1234", "london")) <= 600
    client.delete(a.keys.cooldown("watchlist", "ABC1234", "london"))  # as if expired
    assert b.cooldown("watchlist", "ABC1234", "london", 600)


def test_incident_is_shared_and_counts_hits_across_processes(
    two: tuple[CrossSiteState, CrossSiteState],
) -> None:
    a, b = two
    assert a.incident("ABC1234", 1800, "inc-a") == ("inc-a", 1)
    assert b.incident("ABC1234", 1800, "inc-b") == ("inc-a", 2)
    assert a.incident("ABC1234", 1800, "inc-c") == ("inc-a", 3)
    assert b.incident("XYZ999", 1800, "inc-d") == ("inc-d", 1)


def test_concurrent_hits_join_one_incident_with_an_exact_count(
    redis_settings: RedisSettings,
) -> None:
    clients = [redis.Redis.from_url(redis_settings.url) for _ in range(4)]
    states = [CrossSiteState(c, redis_settings.key_prefix) for c in clients]
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(
                pool.map(lambda i: states[i % 4].incident("ABC1234", 1800, f"inc-{i}"), range(40))
            )
    finally:
        for c in clients:
            c.close()
    assert len({incident_id for incident_id, _ in results}) == 1
    assert sorted(count for _, count in results) == list(range(1, 41))


def test_incident_after_the_window_starts_a_new_one(
    two: tuple[CrossSiteState, CrossSiteState], client: redis.Redis
) -> None:
    a, b = two
    a.incident("ABC1234", 1800, "inc-a")
    assert 0 < client.ttl(a.keys.incident("ABC1234")) <= 1800
    client.delete(a.keys.incident("ABC1234"))  # as if the window had passed with no hit
    assert b.incident("ABC1234", 1800, "inc-b") == ("inc-b", 1)


# -- alert stream ---------------------------------------------------------------------------
def test_alerts_appended_by_two_processes_are_read_in_order(
    two: tuple[CrossSiteState, CrossSiteState],
) -> None:
    a, b = two
    first = a.append_alert('{"n":1}')
    second = b.append_alert('{"n":2}')
    assert a.read_alerts("0", 10) == [(first, '{"n":1}'), (second, '{"n":2}')]
    assert b.read_alerts(first, 10) == [(second, '{"n":2}')]
    assert b.read_alerts(second, 10) == []


def test_read_alerts_honours_count(two: tuple[CrossSiteState, CrossSiteState]) -> None:
    a, _ = two
    ids = [a.append_alert(json.dumps({"n": i})) for i in range(5)]
    assert [i for i, _ in a.read_alerts("0", 2)] == ids[:2]


def test_alert_stream_is_capped_near_maxlen(
    two: tuple[CrossSiteState, CrossSiteState], client: redis.Redis
) -> None:
    a, _ = two
    for i in range(300):
        a.append_alert(json.dumps({"n": i}), maxlen=10)
    # Approximate trimming removes whole nodes (100 entries by default), never below maxlen.
    assert 10 <= client.xlen(a.keys.alerts()) < 300


def test_read_alerts_on_an_empty_stream_is_empty(
    two: tuple[CrossSiteState, CrossSiteState],
) -> None:
    a, _ = two
    assert a.read_alerts("0", 10) == []


# -- watch-list invalidation ----------------------------------------------------------------
@pytest.fixture
def listeners() -> Iterator[list[ListChangeListener]]:
    made: list[ListChangeListener] = []
    yield made
    for listener in made:
        listener.stop()


def test_list_change_reaches_a_listener_in_another_process(
    two: tuple[CrossSiteState, CrossSiteState], listeners: list[ListChangeListener]
) -> None:
    a, b = two
    got: queue.Queue[tuple[int, int]] = queue.Queue()
    listener = b.list_change_listener(lambda list_id, version: got.put((list_id, version)))
    listeners.append(listener)
    listener.start()
    assert listener.wait_subscribed(WAIT_S)
    assert a.publish_list_change(7, 3) == 1
    assert got.get(timeout=WAIT_S) == (7, 3)


def test_listener_survives_a_bad_message_and_a_failing_callback(
    two: tuple[CrossSiteState, CrossSiteState],
    client: redis.Redis,
    listeners: list[ListChangeListener],
) -> None:
    a, b = two
    got: queue.Queue[tuple[int, int]] = queue.Queue()

    def callback(list_id: int, version: int) -> None:
        got.put((list_id, version))
        if list_id == 1:
            raise RuntimeError("cache reload failed")

    listener = b.list_change_listener(callback)
    listeners.append(listener)
    listener.start()
    assert listener.wait_subscribed(WAIT_S)
    client.publish(a.keys.list_changes(), "not json")
    a.publish_list_change(1, 1)
    a.publish_list_change(2, 5)
    assert got.get(timeout=WAIT_S) == (1, 1)
    assert got.get(timeout=WAIT_S) == (2, 5)


def test_listener_resubscribes_and_resyncs_after_its_connection_is_killed(
    redis_settings: RedisSettings, listeners: list[ListChangeListener]
) -> None:
    name = "pwtest-listener-" + redis_settings.key_prefix.split(":")[1]
    listen_client = redis.Redis.from_url(redis_settings.url, client_name=name)
    admin = redis.Redis.from_url(redis_settings.url)
    publisher = CrossSiteState(admin, redis_settings.key_prefix)
    got: queue.Queue[tuple[int, int]] = queue.Queue()
    resyncs = threading.Semaphore(0)
    listener = ListChangeListener(
        listen_client,
        redis_settings.key_prefix,
        lambda list_id, version: got.put((list_id, version)),
        on_resync=resyncs.release,
        reconnect_min_s=0.05,
    )
    listeners.append(listener)
    try:
        listener.start()
        assert resyncs.acquire(timeout=WAIT_S)  # first subscription
        ours = [c for c in admin.client_list() if c.get("name") == name and c.get("sub") == "1"]
        assert len(ours) == 1
        admin.client_kill_filter(_id=ours[0]["id"])
        assert resyncs.acquire(timeout=WAIT_S)  # resubscribed: caches told to reload
        assert listener.wait_subscribed(WAIT_S)
        assert publisher.publish_list_change(4, 9) == 1
        assert got.get(timeout=WAIT_S) == (4, 9)
    finally:
        listener.stop()
        listen_client.close()
        admin.close()


def test_stopped_listener_unsubscribes(
    two: tuple[CrossSiteState, CrossSiteState],
    client: redis.Redis,
    listeners: list[ListChangeListener],
) -> None:
    a, b = two
    listener = b.list_change_listener(lambda list_id, version: None)
    listener.start()
    assert listener.wait_subscribed(WAIT_S)
    listener.stop()
    deadline = time.monotonic() + WAIT_S  # the server drops the subscription on disconnect
    while _subscribers(client, listener.channel) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert a.publish_list_change(1, 1) == 0


def _subscribers(client: redis.Redis, channel: str) -> int:
    return int(client.pubsub_numsub(channel)[0][1])


def test_listener_keepalive_pings_do_not_cause_reconnects(
    redis_settings: RedisSettings, listeners: list[ListChangeListener]
) -> None:
    name = "pwtest-ping-" + redis_settings.key_prefix.split(":")[1]
    listen_client = redis.Redis.from_url(redis_settings.url, client_name=name)
    admin = redis.Redis.from_url(redis_settings.url)
    got: queue.Queue[tuple[int, int]] = queue.Queue()
    resyncs: list[int] = []
    listener = ListChangeListener(
        listen_client,
        redis_settings.key_prefix,
        lambda list_id, version: got.put((list_id, version)),
        on_resync=lambda: resyncs.append(1),
        poll_s=0.01,
        ping_every_s=0.02,
    )
    listeners.append(listener)
    try:
        listener.start()
        assert listener.wait_subscribed(WAIT_S)
        pings_seen = 0
        deadline = time.monotonic() + WAIT_S
        while pings_seen < 3 and time.monotonic() < deadline:  # several keepalive rounds
            ours = [c for c in admin.client_list() if c.get("name") == name]
            pings_seen += any(c.get("cmd") == "ping" for c in ours)
            time.sleep(0.05)
        assert pings_seen == 3
        CrossSiteState(admin, redis_settings.key_prefix).publish_list_change(5, 2)
        assert got.get(timeout=WAIT_S) == (5, 2)
        assert resyncs == [1]  # subscribed once, never dropped
    finally:
        listener.stop()
        listen_client.close()
        admin.close()


# -- the consumer's cross-site port -----------------------------------------------------------
LOCATIONS = locations_by_site(
    [
        SiteLocation("london", 51.5074, -0.1278),
        SiteLocation("paris", 48.8566, 2.3522),
        SiteLocation("lille", 50.6292, 3.0573),
    ]
)


@pytest.fixture
def correlators(
    two: tuple[CrossSiteState, CrossSiteState],
) -> tuple[CrossSiteCorrelator, CrossSiteCorrelator]:
    return CrossSiteCorrelator(two[0], LOCATIONS), CrossSiteCorrelator(two[1], LOCATIONS)


def _watchlist_alert(site: str, historical: bool = False) -> Alert:
    return Alert(
        raised_at=T0,
        site=site,
        severity="medium",
        kind="watchlist",
        plate="ABC1234",
        seen_at=T0,
        title="Stolen vehicle",
        reason="exact match",
        historical=historical,
    )


def test_correlator_implements_the_consumer_port(
    correlators: tuple[CrossSiteCorrelator, CrossSiteCorrelator],
) -> None:
    port: CrossSite = correlators[0]
    assert port.observe(plate_read(site="london"), T0) == []


def test_sightings_seen_by_two_processes_raise_impossible_travel(
    correlators: tuple[CrossSiteCorrelator, CrossSiteCorrelator],
) -> None:
    a, b = correlators
    london = plate_read(site="london", seen_at=T0)
    paris = plate_read(site="paris", seen_at=T0 + timedelta(minutes=20))
    assert a.observe(london, T0) == []
    [alert] = b.observe(paris, T0 + timedelta(minutes=21))
    assert alert.kind == "impossible_travel" and alert.site == "paris"
    assert alert.related_sightings == [london.event_id]
    assert b.observe(paris, T0 + timedelta(minutes=22))[0].related_sightings == [london.event_id]


def test_three_sites_within_the_hour_raise_repeated_sightings(
    correlators: tuple[CrossSiteCorrelator, CrossSiteCorrelator],
) -> None:
    a, b = correlators  # sites without a location: only the repeat rule applies
    assert a.observe(plate_read(site="north-gate", seen_at=T0), T0) == []
    assert b.observe(plate_read(site="south-gate", seen_at=T0 + timedelta(minutes=20)), T0) == []
    [alert] = a.observe(plate_read(site="east-gate", seen_at=T0 + timedelta(minutes=40)), T0)
    assert alert.kind == "repeated_sightings" and alert.details["site_count"] == 3
    assert len(alert.related_sightings) == 2


def test_admit_applies_cooldown_and_joins_hits_into_one_escalating_incident(
    correlators: tuple[CrossSiteCorrelator, CrossSiteCorrelator],
) -> None:
    a, b = correlators
    first = a.admit(_watchlist_alert("london"))
    assert first is not None and first.incident_id is not None
    assert first.severity == "medium" and first.details["incident_hits"] == 1
    assert b.admit(_watchlist_alert("london")) is None  # same kind, plate and site: cooldown
    second = b.admit(_watchlist_alert("paris"))
    assert second is not None and second.incident_id == first.incident_id
    third = a.admit(_watchlist_alert("lille"))
    assert third is not None and third.incident_id == first.incident_id
    assert third.severity == "high" and third.details["incident_hits"] == 3


def test_admit_many_in_one_call_equals_admitting_one_by_one(
    correlators: tuple[CrossSiteCorrelator, CrossSiteCorrelator],
) -> None:
    a, _ = correlators
    batch = [
        _watchlist_alert("london"),
        _watchlist_alert("london"),  # same kind, plate and site: in cooldown
        _watchlist_alert("london", historical=True),  # its own cooldown, no incident
        _watchlist_alert("paris"),
        _watchlist_alert("lille"),
    ]
    first, cooled, old, second, third = a.admit_many(batch)
    assert cooled is None
    assert old is not None and old.incident_id is None and "incident_hits" not in old.details
    assert first is not None and second is not None and third is not None
    assert first.incident_id == second.incident_id == third.incident_id is not None
    assert [x.details["incident_hits"] for x in (first, second, third)] == [1, 2, 3]
    assert third.severity == "high"
    assert a.admit_many([]) == []


def test_historical_alert_neither_silences_a_live_one_nor_joins_its_incident(
    correlators: tuple[CrossSiteCorrelator, CrossSiteCorrelator],
) -> None:
    a, b = correlators
    old = a.admit(_watchlist_alert("london", historical=True))
    assert old is not None and old.incident_id is None
    assert b.admit(_watchlist_alert("london", historical=True)) is None
    live = b.admit(_watchlist_alert("london"))
    assert live is not None and live.details["incident_hits"] == 1


@pytest.mark.parametrize("protocol", [2, 3])
def test_state_works_with_a_decoding_client_on_either_protocol(
    redis_settings: RedisSettings, protocol: int
) -> None:
    c = redis.Redis.from_url(redis_settings.url, decode_responses=True, protocol=protocol)
    state = CrossSiteState(c, redis_settings.key_prefix)
    got: queue.Queue[tuple[int, int]] = queue.Queue()
    listener = state.list_change_listener(lambda i, v: got.put((i, v)))
    try:
        state.record_sighting(sighting("e1", "london", 0), 3600)
        history = state.record_sighting(sighting("e2", "paris", 5), 3600)
        assert [s.event_id for s in history] == ["e1", "e2"]
        assert state.cooldown("watchlist", "ABC1234", "london", 60)
        assert state.incident("ABC1234", 60, "inc-1") == ("inc-1", 1)
        stream_id = state.append_alert('{"n":1}')
        assert state.read_alerts("0", 10) == [(stream_id, '{"n":1}')]
        listener.start()
        assert listener.wait_subscribed(WAIT_S)
        state.publish_list_change(3, 4)
        assert got.get(timeout=WAIT_S) == (3, 4)
    finally:
        listener.stop()
        c.close()


def test_key_layout_is_the_one_documented() -> None:
    text = (Path(__file__).parents[2] / "docs" / "correlation.md").read_text()
    documented = re.findall(r"^\| `(<prefix>[^`]+)` \|", text, flags=re.MULTILINE)
    keys = StateKeys("pw:")
    built = [
        keys.sightings("AB12CDE"),
        keys.sighting_data("AB12CDE"),
        keys.cooldown("watchlist", "AB12CDE", "north-gate"),
        keys.incident("AB12CDE"),
        keys.alerts(),
        keys.list_changes(),
    ]
    values = {
        "<prefix>": "pw:",
        "<plate>": "AB12CDE",
        "<kind>": "watchlist",
        "<site>": "north-gate",
    }
    expanded = []
    for template in documented:
        for placeholder, value in values.items():
            template = template.replace(placeholder, value)
        expanded.append(template)
    assert expanded == built


def test_cooldown_is_granted_again_to_the_same_owner_only(
    two: tuple[CrossSiteState, CrossSiteState],
) -> None:
    a, b = two
    assert a.cooldown("watchlist", "ABC1234", "london", 600, owner="sighting-1") is True
    # the same sighting, retried after a failed database commit, keeps its alert
    assert b.cooldown("watchlist", "ABC1234", "london", 600, owner="sighting-1") is True
    assert b.cooldown("watchlist", "ABC1234", "london", 600, owner="sighting-2") is False


def test_append_alerts_adds_several_in_order_in_one_call(
    two: tuple[CrossSiteState, CrossSiteState],
) -> None:
    a, b = two
    assert a.append_alerts([]) == []
    ids = a.append_alerts(['{"n":1}', '{"n":2}', '{"n":3}'])
    assert len(ids) == 3
    assert b.read_alerts("0", 10) == list(zip(ids, ['{"n":1}', '{"n":2}', '{"n":3}'], strict=True))
