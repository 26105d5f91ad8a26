"""The correlator process: wires settings, adapters and the ingest core, and runs the jobs."""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import psycopg
import psycopg.errors
import redis
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from services.correlator.config import CorrelatorSettings
from services.correlator.consumer import (
    AlertStream,
    CrossSite,
    Ingestor,
    StatusIngestor,
    StoringDeadLetters,
    retry_outages,
)
from services.correlator.lists import ListCache, ListInfo, to_entry
from services.correlator.matching import MatchingError
from services.correlator.retention import run_retention
from services.correlator.retro import HuntStoppedError, retro_hunt
from services.correlator.rules import (
    CooldownPolicy,
    IncidentPolicy,
    RepeatPolicy,
    SiteLocation,
    TravelPolicy,
    locations_by_site,
)
from services.correlator.state import CrossSiteCorrelator, CrossSiteState
from shared.consumer import EventConsumer, MqttDeadLetterSink
from shared.errors import ConfigError, PlatewatchError
from shared.events import Alert, NodeStatus, PlateRead, utc_now
from shared.mqtt import MqttClient, MqttError
from shared.store import migrate
from shared.store import models as m
from shared.store import repository as repo
from shared.store.db import make_engine, session_factory
from shared.topics import plate_filter, shared_subscription, status_filter

log = logging.getLogger(__name__)

# How long start-up waits for the list-change subscription before loading the lists anyway.
_SUBSCRIBE_WAIT_S = 5.0
# A failed background reload is tried again after this long, not after reload_interval_s.
_RETRY_RELOAD_S = 30.0
# A retro-hunt that failed (the database down) is tried again after this long.
_RETRY_HUNT_S = 5.0
# At most this many waiting entries are hunted together, in one transaction (one pass over the
# window's distinct plates when fuzzy or wildcard entries are among them).
_HUNT_CHUNK = 1_000
#: historical alerts are published this many at a time, with the hunt's pause in between
_HUNT_PUBLISH_GROUP = 100
_HUNT_MAX_PAUSE_S = 1.0
#: a hunt's publishing pauses only this long after its alerts were stored (`raised_at`): the
#: sweeper publishes alerts left unpublished 10 s after they were raised
_HUNT_PACED_PUBLISH_S = 4.0
# How long the hunter waits for the ingest thread to load the lists it is about to hunt.
_CACHE_WAIT_S = 10.0
# How long `stop` waits for a hunt to notice it (the hunt then rolls back).
_HUNTER_JOIN_S = 5.0


def hunt_pause_s(busy_s: float, share: float, longest_s: float = _HUNT_MAX_PAUSE_S) -> float:
    """How long a hunt pauses after working `busy_s`, so that it works `share` of the time
    (at most `longest_s`; 0 when `share` is 1). Pure."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    return min(longest_s, max(0.0, busy_s) * (1 - share) / share)


class _ListsNotLoadedError(Exception):
    """The ingest thread has not loaded the lists of the entries to hunt yet (tried again)."""


@dataclass(frozen=True)
class _Snapshot:
    began: float  # monotonic time its loading began
    cache: ListCache
    cameras: set[tuple[str, str]]
    gates: set[tuple[str, str]]
    nodes: dict[str, tuple[str | None, bool, str]]
    locations: dict[str, tuple[float, float]]


class ChangeListener(Protocol):
    def start(self) -> None: ...

    def wait_subscribed(self, timeout_s: float) -> bool: ...

    def stop(self) -> None: ...


def ensure_schema(engine: Engine, url: str) -> None:
    """SQLite (embedded) is migrated on start; PostgreSQL must be migrated by `db upgrade`."""
    current = migrate.current_revision(engine)
    if current == migrate.head_revision():
        return
    if make_url(url).get_backend_name() == "sqlite":
        migrate.upgrade(url)
        return
    raise ConfigError(
        f"database schema is at {current or 'nothing'}, code needs {migrate.head_revision()}: "
        "run `platewatch db upgrade` first"
    )


def _retry_db(step: Callable[[], None], what: str) -> None:
    """Run a start-up step, waiting out a database that is down or restarting."""
    retry_outages(step, what, (OperationalError,), first_delay_s=0.5)


class DrainError(PlatewatchError):
    """A drain could not finish; the instance's session is kept, so nothing is lost."""


class SessionNotEndedError(DrainError):
    """A drain stored what the session held but could not end the session (it is kept)."""


def drain_session(
    settings: CorrelatorSettings, quiet_s: float = 3.0, max_s: float = 3600.0, attempts: int = 3
) -> int:
    """Drain an instance's session (`Correlator.drain`), taking it over again when a try
    stored its messages but could not end the session (SessionNotEndedError: the session is kept,
    nothing lost). Returns the events stored over all tries. Any other DrainError (no broker,
    still busy after `max_s`, no MQTT 5) is raised at once; after `attempts` tries the last
    SessionNotEndedError is raised, and the events stored so far are logged."""
    if settings.mqtt.protocol != "5":
        raise DrainError("draining needs MQTT 5 (mqtt.protocol: '5')")
    stored = 0
    for attempt in range(1, attempts + 1):
        correlator = Correlator(settings)
        try:
            return stored + correlator.drain(quiet_s=quiet_s, max_s=max_s)
        except SessionNotEndedError as exc:
            stored += correlator.ingestor.stats["events"]
            log.warning(
                "drain try could not end the session",
                extra={
                    "instance": settings.instance,
                    "attempt": attempt,
                    "stored_so_far": stored,
                    "reason": str(exc),
                },
            )
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


class Correlator:
    """One correlator process. `start()` connects and consumes; `stop()` flushes and leaves."""

    def __init__(
        self, settings: CorrelatorSettings, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self.settings = settings
        self._clock = clock
        # No pre-ping: every transaction here is retried on connection errors anyway, and the
        # ping was a round trip per batch.
        self.engine = make_engine(settings.db, pre_ping=False)
        if self.engine.dialect.name == "postgresql":
            event.listen(self.engine, "connect", repo.prepare_ingest_connection)
        _retry_db(lambda: ensure_schema(self.engine, settings.db.url), "schema check")
        self.sessions: sessionmaker[Session] = session_factory(self.engine)
        self.redis = redis.Redis.from_url(settings.redis.url) if settings.redis.url else None
        root = settings.mqtt.topic_root
        self.mqtt = MqttClient(
            settings.mqtt,
            settings.instance,
            manual_ack=True,
            persistent_session=True,
            max_inflight=settings.ingest.max_inflight,
        )
        self.cache = ListCache(settings.matching.fuzzy_max_cost)
        cross, stream, self._listener = self._cross_site()
        ing = settings.ingest
        self.ingestor = Ingestor(
            self.sessions,
            self.mqtt,
            self.cache,
            clock,
            root=root,
            stream=stream,
            cross=cross,
            batch_max_rows=ing.batch_max_rows,
            batch_max_ms=ing.batch_max_ms,
            batch_linger_ms=ing.batch_linger_ms,
            retry_max_s=ing.db_retry_max_s,
            accept_unknown_cameras=ing.accept_unknown_cameras,
            require_signatures=ing.require_signatures,
            decision_ttl_s=settings.correlation.gate_decision_ttl_s,
            # Raw-driver errors of the insert paths (not wrapped by SQLAlchemy): a dropped
            # connection, and deadlocks/serialisation failures, which succeed when retried.
            retry_errors=(
                redis.RedisError,
                psycopg.OperationalError,
                psycopg.errors.TransactionRollback,
            ),
            on_poison=lambda delivery, reason: self.consumer.reject(delivery, reason),
        )
        mqtt_sink = MqttDeadLetterSink(self.mqtt, "correlator", root)
        subscription = plate_filter(root)
        if settings.mqtt.protocol == "5":
            subscription = shared_subscription(ing.share_group, subscription)
        self.consumer = EventConsumer(
            self.mqtt,
            subscription,
            PlateRead,
            self.ingestor.handle,
            StoringDeadLetters(self.sessions, mqtt_sink.dead_letter),
            "correlator",
            clock,
            check=self.ingestor.check,
            tick=self._tick,
            tick_s=min(0.05, ing.batch_max_ms / 2000),
            idle=self.ingestor.idle,
        )
        statuses = StatusIngestor(self.sessions, clock, root)
        self.status_consumer = EventConsumer(
            self.mqtt,
            status_filter(root),  # not shared: retained statuses reach every process
            NodeStatus,
            statuses.handle,
            StoringDeadLetters(self.sessions, mqtt_sink.dead_letter),
            "correlator",
            clock,
            check=statuses.check,
            ignore_empty=True,
        )
        self._changes: queue.Queue[int] = queue.Queue()
        self._snapshots: queue.Queue[_Snapshot | None] = queue.Queue()
        self._reloading = False
        self._changed_during_reload: set[int] = set()
        # retro-hunts run on a thread of their own, woken by list changes and full reloads
        self._hunt_wake = threading.Event()
        self._hunter_stop = threading.Event()
        self._hunt_slice_started = time.monotonic()
        self._hunter: threading.Thread | None = None
        self._next_reload = 0.0
        self._reload_asked_at = -math.inf  # monotonic time of the last resync request
        self._next_sweep = 0.0
        self._next_retention = time.monotonic() + 60.0
        self._stopped = threading.Event()
        self._stop_outcome = "not stopped"

    def _cross_site(self) -> tuple[CrossSite | None, AlertStream | None, ChangeListener | None]:
        """Redis-backed cross-site rules, alert stream and list-change listener."""
        if self.redis is None:
            return None, None, None
        self.state = CrossSiteState(self.redis, self.settings.redis.key_prefix)
        listener = self.state.list_change_listener(
            lambda list_id, _version: self.notify_list_change(list_id),
            on_resync=self._request_reload,
        )
        return self._cross_correlator({}), self.state, listener

    def _cross_correlator(self, locations: dict[str, tuple[float, float]]) -> CrossSiteCorrelator:
        c = self.settings.correlation
        return CrossSiteCorrelator(
            self.state,
            locations_by_site(SiteLocation(s, lat, lon) for s, (lat, lon) in locations.items()),
            travel=TravelPolicy(
                max_speed_kmh=c.max_speed_kmh,
                min_distance_km=c.min_distance_km,
                clock_skew_s=c.clock_skew_s,
            ),
            repeat=RepeatPolicy(
                window_s=c.repeat_window_s,
                min_sites=c.repeat_min_sites,
                min_passes=c.repeat_min_count,
            ),
            cooldown=CooldownPolicy(default_s=c.cooldown_s),
            incident=IncidentPolicy(window_s=c.incident_window_s),
        )

    def _request_reload(self) -> None:
        """After a Redis reconnect list-change messages may be lost: reload everything.

        A request made while a snapshot is being loaded is kept: `_install` reloads again
        unless the load began after the request (and so saw every change before it)."""
        self._reload_asked_at = time.monotonic()
        self._next_reload = 0.0

    def _listen_for_changes(self) -> None:
        """Subscribe to list changes before the first load, so that the load sees every change
        made before the subscription and the subscription every change after it; the first
        subscription's resync then needs no second load of every list. Without Redis in
        time, start anyway: the subscription's resync reloads once Redis answers."""
        if self._listener is None:
            return
        self._listener.start()
        if not self._listener.wait_subscribed(_SUBSCRIBE_WAIT_S):
            log.warning(
                "list changes not subscribed yet; every list is reloaded once they are",
                extra={"waited_s": _SUBSCRIBE_WAIT_S},
            )

    def _load_or_stop_listening(self) -> None:
        """The first load of the lists; a failure stops the listener started for it."""
        try:
            _retry_db(self.refresh, "loading lists")
        except BaseException:
            if self._listener is not None:
                self._listener.stop()
            raise

    def notify_list_change(self, list_id: int) -> None:
        """Thread-safe: the ingest thread reloads the list before the next batch, and the
        hunter thread retro-hunts its waiting entries."""
        self._changes.put(list_id)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, wait_s: float | None = 15.0) -> None:
        self._listen_for_changes()
        self._load_or_stop_listening()
        self.consumer.start()
        self.status_consumer.start()
        self.mqtt.start(wait_s)
        self._start_hunter()  # after MQTT: its alerts are published at once
        log.info("correlator started", extra={"instance": self.settings.instance})

    def drain(self, quiet_s: float = 3.0, max_s: float = 3600.0, wait_s: float = 15.0) -> int:
        """Scale-down: empty and end this instance's persistent session; returns the events
        stored. Raises DrainError (the session is then kept, nothing lost) when it cannot.

        A shared subscription keeps dealing messages to a member whose session is offline, so
        a correlator instance removed for good would strand what its session holds until the
        session expires, and then lose it. `drain` takes the session over (same `instance`),
        unsubscribes at the broker so no new message is dealt to it (the other members take
        them), stores everything the session still holds, and once nothing has arrived for
        `quiet_s` of connected time, with nothing being handled or batched, ends the session
        (MQTT 5 session expiry 0).
        """
        if self.settings.mqtt.protocol != "5":
            raise DrainError("draining needs MQTT 5 (mqtt.protocol: '5')")
        self._listen_for_changes()
        self._load_or_stop_listening()
        self.consumer.start(subscribe=False)
        self.status_consumer.start(subscribe=False)
        try:
            self.mqtt.start(wait_s)
            self.mqtt.unsubscribe_at_broker(self.consumer.subscription)
            self.mqtt.unsubscribe_at_broker(self.status_consumer.subscription)
        except MqttError as exc:
            self.stop()
            raise DrainError(f"{exc}; the session is kept") from exc
        log.info("correlator draining its session", extra={"instance": self.settings.instance})
        deadline = time.monotonic() + max_s
        quiet_since = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= deadline:
                self.stop()
                raise DrainError(f"messages still arriving after {max_s:.0f}s; the session is kept")
            working = (
                not self.mqtt.connected.is_set()  # a reconnect may bring redeliveries
                or self.consumer.busy
                or self.consumer.pending() > 0
                or self.ingestor.batched > 0
            )
            if working:
                quiet_since = now
            elif now - max(quiet_since, self.consumer.last_delivery) >= quiet_s:
                break
            time.sleep(0.1)
        if not self.stop(end_session=True):
            raise SessionNotEndedError(
                "could not end the session cleanly "
                f"({self._stop_outcome}); it is kept (run the drain again)"
            )
        return self.ingestor.stats["events"]

    def stop(self, end_session: bool = False) -> bool:
        """Flush and leave. The persistent session is kept (a restart resumes it) unless
        `end_session`; returns True when the session was ended as asked.

        The last batch is flushed only once the ingest thread has finished (never beside it);
        alerts it published are given a few seconds to be acknowledged and marked, so that the
        sweeper of another instance does not publish them again."""
        self._stop_hunter()  # first: its alerts are published while MQTT is still up
        finished = self.consumer.stop()
        self.status_consumer.stop()
        if finished:
            self.ingestor.flush()
            self.ingestor.settle(timeout_s=5.0)
        else:
            log.warning("ingest still busy at stop; its batch is redelivered by the broker")
        sent = self.mqtt.stop(end_session=end_session and finished)
        ended = sent and end_session and finished
        self._stop_outcome = f"ingest finished: {finished}, session-ending DISCONNECT sent: {ended}"
        if end_session and not ended:
            log.warning(
                "session not ended", extra={"ingest_finished": finished, "disconnect_sent": sent}
            )
        if self._listener is not None:
            self._listener.stop()
        self.engine.dispose()
        log.info(
            "correlator stopped",
            extra={
                "instance": self.settings.instance,
                "session_ended": ended,
                **self.ingestor.stats,
            },
        )
        self._stopped.set()
        return ended

    def run_forever(self) -> None:
        self._stopped.wait()

    # -- state from the database ---------------------------------------------------------
    def refresh(self) -> None:
        """Reload lists and the camera/node registry from the database, now (start-up, tests)."""
        self._install(self._load_snapshot())

    def _load_snapshot(self) -> _Snapshot:
        """Read lists, registry and site locations and build a new list cache (any thread)."""
        began = time.monotonic()
        cache = ListCache(self.settings.matching.fuzzy_max_cost)
        with self.sessions() as session:
            if session.get_bind().dialect.name == "postgresql":
                # one snapshot for every read below: lists and their entries of one version
                # (SQLite's read transaction is one snapshot already)
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            cache.load_all(repo.all_lists(session), repo.list_entries(session))
            return _Snapshot(
                began=began,
                cache=cache,
                cameras=repo.known_cameras(session),
                gates=repo.gate_cameras(session),
                nodes=repo.node_keys(session),
                locations=repo.site_locations(session),
            )

    def _install(self, snap: _Snapshot) -> None:
        """Swap a snapshot in (the ingest thread, between batches)."""
        self.cache = snap.cache
        self.ingestor.cache = snap.cache
        reg = self.ingestor.registry
        reg.cameras, reg.gates, reg.nodes = snap.cameras, snap.gates, snap.nodes
        if self.ingestor.cross is not None:
            self.ingestor.cross = self._cross_correlator(snap.locations)
        # the listener thread may ask for a reload at any moment: schedule the next one first,
        # then honour a request made since this snapshot began loading (read after the write,
        # so a request landing in between is never overwritten)
        self._next_reload = time.monotonic() + self.settings.matching.reload_interval_s
        if self._reload_asked_at >= snap.began:
            self._next_reload = 0.0

    def _reload_in_background(self) -> None:
        """The periodic full reload: built off the ingest thread (100,000 entries take seconds),
        handed over through `_snapshots`; list changes seen meanwhile are applied again."""
        self._next_reload = time.monotonic() + self.settings.matching.reload_interval_s
        self._changed_during_reload = set()

        def build() -> None:
            try:
                self._snapshots.put(self._load_snapshot())
            except Exception:
                log.exception("background reload failed; keeping the current lists")
                self._snapshots.put(None)

        threading.Thread(target=build, name="lists-reload", daemon=True).start()
        self._reloading = True

    def apply_list_change(self, list_id: int) -> None:
        """Reload one list (its change message came) and look for entries to retro-hunt now."""
        with self.sessions() as session:
            wl = session.get(m.WatchList, list_id)
            rows = repo.list_entries(session, list_id) if wl is not None else []
            self.cache.reload_list(wl, list_id, rows)
        self._hunt_wake.set()

    def _start_hunter(self) -> None:
        if self._hunter is None:
            self._hunter = threading.Thread(target=self._hunt_loop, name="retro-hunt", daemon=True)
            self._hunter.start()

    def _stop_hunter(self) -> None:
        self._hunter_stop.set()
        self._hunt_wake.set()
        if self._hunter is not None:
            self._hunter.join(timeout=_HUNTER_JOIN_S)
            if self._hunter.is_alive():
                log.warning("retro-hunt still finishing at stop; an unfinished hunt rolls back")

    def _hunt_loop(self) -> None:
        """Retro-hunt the entries waiting for it (`watch_entry.hunted_at`), a chunk at a time,
        on this thread (a hunt reads the sightings of `retro_hunt_days`, which can take seconds
        that the ingest thread must not wait for). It looks every `matching.retro_poll_s`, at
        start-up, and at once after a change message or a full reload. The waiting is kept in
        the database, not in a process: a change made while every correlator was down, or whose
        message was lost, is hunted all the same, by one process (FOR UPDATE SKIP LOCKED on
        PostgreSQL). A hunt that fails (the database down) rolls back, so its entries wait on
        and are tried again after `_RETRY_HUNT_S`: none is lost."""
        stop, wake = self._hunter_stop, self._hunt_wake
        while not stop.is_set():
            wake.clear()
            if stop.is_set():  # set between the loop's test and the clear
                break
            try:
                while not stop.is_set() and self._hunt_waiting() == _HUNT_CHUNK:
                    if self._hunt_pause():  # a full chunk: more may wait; give way first
                        break
            except HuntStoppedError:
                break
            except Exception as exc:
                if isinstance(exc, _ListsNotLoadedError):
                    log.warning("retro-hunt waits for the lists to load", extra={"lists": str(exc)})
                else:
                    log.exception("retro-hunt failed; tried again later")
                stop.wait(_RETRY_HUNT_S)
                continue
            wake.wait(self.settings.matching.retro_poll_s)

    def _hunt_waiting(self) -> int:
        """One chunk of waiting entries: once the ingest thread's lists hold them (so no live
        sighting falls between the hunt and live matching), hunted, their alerts stored and
        the entries marked hunted in one transaction, then the alerts published; returns the
        entries taken. With `retro_hunt_days` 0 they are only marked."""
        days = self.settings.matching.retro_hunt_days
        self._hunt_slice_started = time.monotonic()
        with self.sessions.begin() as session:
            rows = repo.pending_hunts(session, _HUNT_CHUNK)
            if not rows:
                return 0
            alerts: list[Alert] = []
            if days > 0:
                self._wait_for_lists({r.list_id: r.watch_list for r in rows})
                lists = {r.list_id: ListInfo.of(r.watch_list) for r in rows if r.watch_list.enabled}
                entries = []
                for r in rows:
                    if r.list_id not in lists:
                        continue
                    try:
                        entries.append(to_entry(r, lists[r.list_id]))
                    except (ValueError, MatchingError):  # live matching cannot load it either
                        log.exception("retro-hunt skipped a bad entry", extra={"entry_id": r.id})
                found = retro_hunt(
                    session, entries, lists, self._clock(), days, should_stop=self._hunt_pause
                )
                now = self._clock()  # raised when stored: the sweeper leaves them to us
                alerts = [a.model_copy(update={"raised_at": now}) for a in found]
            inserted = repo.insert_alerts(session, alerts)
            repo.mark_hunted(session, [(r.id, r.updated_at) for r in rows])
        fresh_alerts = [a for a in alerts if a.event_id in inserted]
        stored = self._hunt_slice_started = time.monotonic()
        try:
            for start in range(0, len(fresh_alerts), _HUNT_PUBLISH_GROUP):
                # Paced too, but only while the sweeper (which republishes what is unpublished
                # 10 s after it was raised) cannot take them: never both publish one alert.
                paced = time.monotonic() - stored < _HUNT_PACED_PUBLISH_S
                if start and paced and self._hunt_pause():
                    break  # stopping: the sweeper publishes the rest
                self.ingestor.publish_alerts(
                    fresh_alerts[start : start + _HUNT_PUBLISH_GROUP], log_each=False
                )
        except Exception:  # stored already: the sweeper publishes them
            log.exception("retro-hunt alerts not published; the sweeper will")
        log.info("retro-hunt done", extra={"entries": len(rows), "alerts": len(fresh_alerts)})
        return len(rows)

    def _hunt_pause(self) -> bool:
        """Between two slices of a hunt's work: pause so that the hunt takes at most
        `matching.retro_hunt_share` of the time (live ingest shares the process's GIL and the
        machine's cores with it), then say whether the hunter is stopping."""
        busy = time.monotonic() - self._hunt_slice_started
        pause = hunt_pause_s(busy, self.settings.matching.retro_hunt_share)
        stopping = self._hunter_stop.wait(pause) if pause > 0 else self._hunter_stop.is_set()
        self._hunt_slice_started = time.monotonic()
        return stopping

    def _wait_for_lists(self, lists: dict[int, m.WatchList]) -> None:
        """Have the ingest thread load these lists at (at least) these versions, and wait
        until it has: a hunt before that would leave live sightings of its entries unmatched
        until the next full reload (no change message came, or Redis is not used)."""
        stale = self._stale_lists(lists)
        if not stale:
            return
        for list_id in stale:
            self.notify_list_change(list_id)
        deadline = time.monotonic() + _CACHE_WAIT_S
        while stale and time.monotonic() < deadline:
            if self._hunter_stop.wait(0.05):
                raise HuntStoppedError
            stale = self._stale_lists(lists)
        if stale:
            raise _ListsNotLoadedError(",".join(map(str, stale)))

    def _stale_lists(self, lists: dict[int, m.WatchList]) -> list[int]:
        """The lists the ingest thread's cache has at an older version than these rows (or
        still has although disabled)."""
        cached = self.cache.lists  # one read: the ingest thread swaps whole caches
        stale = []
        for list_id, wl in lists.items():
            have = cached.get(list_id)
            if (wl.enabled and (have is None or have.version < wl.version)) or (
                not wl.enabled and have is not None
            ):
                stale.append(list_id)
        return stale

    def _claim(self, job: str, ttl_s: int = 3600) -> bool:
        """True for the one correlator process that should run this job (Redis SET NX)."""
        if self.redis is None:
            return True  # without Redis there is only one process
        key = f"{self.settings.redis.key_prefix}job:{job}"
        return bool(self.redis.set(key, self.settings.instance, nx=True, ex=ttl_s))

    def _tick(self) -> None:
        while not self._changes.empty():
            list_id = self._changes.get()
            self.apply_list_change(list_id)
            if self._reloading:
                self._changed_during_reload.add(list_id)
        if self._reloading and not self._snapshots.empty():
            snap = self._snapshots.get()
            self._reloading = False
            if snap is not None:
                self._install(snap)
                for list_id in self._changed_during_reload:  # newer than the snapshot
                    self.apply_list_change(list_id)
                self._hunt_wake.set()
            else:  # failed (logged): a resync or registry change it carried must not wait an hour
                self._next_reload = min(self._next_reload, time.monotonic() + _RETRY_RELOAD_S)
        self.ingestor.tick()
        now = time.monotonic()
        if now >= self._next_reload and not self._reloading:
            self._reload_in_background()
        if now >= self._next_sweep:
            self._next_sweep = now + 5.0
            self.ingestor.publish_pending()
        if now >= self._next_retention:
            interval = self.settings.retention.interval_s
            self._next_retention = now + interval
            if self._claim(f"retention:{int(time.time() // interval)}", int(interval)):
                run_retention(self.sessions, self.settings.retention, self._clock())
