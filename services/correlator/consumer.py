"""Ingest: plate reads from the shared subscription into the database, then alerts out.

The order of work for each batch (up to `batch_max_rows` events or `batch_max_ms`):

1. One transaction: register unseen cameras, insert the sightings idempotently (ON CONFLICT
   DO NOTHING on `event_id`), evaluate the new ones (watch-lists, gates, cross-site rules), insert
   their alerts idempotently (dedupe key), commit. A database or Redis error rolls back and the
   whole batch is retried with backoff, for as long as it takes: intake stops (nothing is
   acknowledged, so the broker's receive maximum stops sending) and nothing is lost.
2. Publish the alerts (QoS 1, waiting for the broker) on MQTT and the Redis stream and mark
   them published; publish gate decisions. Alerts left unpublished by a crash are published by
   the sweeper on any correlator (`publish_pending`).
3. Acknowledge every message of the batch, duplicates included.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from services.correlator.evaluate import Evaluation, evaluate
from services.correlator.lists import ListCache
from shared.errors import PayloadError, SignatureError
from shared.events import Alert, DeadLetter, GateDecision, NodeStatus, PlateRead, encode_event
from shared.mqtt import Delivery, MqttError, PublishResult, ack_all
from shared.signing import load_public_key, verify_event
from shared.store import repository as repo
from shared.topics import alert_topic, decision_topic, parse_plate_topic, parse_status_topic

log = logging.getLogger(__name__)


class Publisher(Protocol):
    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> PublishResult: ...


class AlertStream(Protocol):
    def append_alerts(self, alerts_json: Sequence[str]) -> list[str]: ...


class Observation(Protocol):
    """Sightings sent to the cross-site state whose alerts are read later (a context manager:
    leaving it unread gives its connection up)."""

    def alerts(self, hide: Callable[[str, str], bool] | None = None) -> list[list[Alert]]: ...

    def __enter__(self) -> Observation: ...

    def __exit__(self, *exc: object) -> None: ...


class CrossSite(Protocol):
    """Cross-site state (Redis): what a new sighting means across sites, and alert admission."""

    def observe_sent(self, events: Sequence[PlateRead], now: datetime) -> Observation: ...

    def forget(self, events: Sequence[PlateRead]) -> None: ...

    def admit_many(self, alerts: Sequence[Alert]) -> list[Alert | None]: ...


class RetryableError(Exception):
    """A dependency (database, Redis) failed; the batch is retried."""


#: Connection-level failures: retried for as long as they last. Anything else is deterministic.
OUTAGES: tuple[type[Exception], ...] = (OperationalError, InterfaceError, RetryableError)

T = TypeVar("T")


def retry_outages(
    step: Callable[[], T],
    what: str,
    errors: tuple[type[Exception], ...] = OUTAGES,
    first_delay_s: float = 0.1,
    max_delay_s: float = 10.0,
    on_retry: Callable[[], None] | None = None,
) -> T:
    """Run `step` until it succeeds, waiting out outages with exponential backoff."""
    delay = first_delay_s
    while True:
        try:
            return step()
        except errors as exc:
            if on_retry is not None:
                on_retry()
            log.warning(
                "dependency unavailable, retrying",
                extra={"step": what, "error": str(exc)[:300], "retry_in_s": delay},
            )
            time.sleep(delay)
            delay = min(delay * 2, max_delay_s)


@dataclass
class Registry:
    """What the correlator knows of cameras and nodes (refreshed from the database)."""

    cameras: set[tuple[str, str]] = field(default_factory=set)
    gates: set[tuple[str, str]] = field(default_factory=set)
    nodes: dict[str, tuple[str | None, bool, str]] = field(default_factory=dict)


#: An alert whose publish is not yet acknowledged by the broker is left to the sweeper after this.
CONFIRM_GIVE_UP_S = 60.0
#: Alerts the broker has acknowledged are marked published by the next batch's transaction, or
#: by one of their own once no batch has been stored for this long (the sweeper waits 10 s).
CONFIRM_IDLE_S = 0.2


@dataclass
class Batch:
    events: list[PlateRead] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    started: float = 0.0


class Ingestor:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        publisher: Publisher,
        cache: ListCache,
        clock: Callable[[], datetime],
        *,
        root: str,
        stream: AlertStream | None = None,
        cross: CrossSite | None = None,
        batch_max_rows: int = 500,
        batch_max_ms: int = 50,
        batch_linger_ms: int | None = None,
        retry_max_s: float = 10.0,
        accept_unknown_cameras: bool = True,
        require_signatures: bool = False,
        decision_ttl_s: int = 30,
        retry_errors: tuple[type[Exception], ...] = (),
        on_poison: Callable[[Delivery, str], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._publisher = publisher
        self.cache = cache
        self._clock = clock
        self._root = root
        self._stream = stream
        self.cross = cross
        self._max_rows = batch_max_rows
        self._max_s = batch_max_ms / 1000
        # None: no early flush, batches always wait for batch_max_ms or batch_max_rows.
        self._linger_s = None if batch_linger_ms is None else batch_linger_ms / 1000
        self._retry_max_s = retry_max_s
        self._accept_unknown = accept_unknown_cameras
        self._require_signatures = require_signatures
        self._decision_ttl_s = decision_ttl_s
        # Outages are retried for as long as they last; anything else (a data or integrity
        # error, a bug) is deterministic and goes the poison path in `flush`.
        self._retry_errors: tuple[type[Exception], ...] = (*OUTAGES, *retry_errors)
        self.registry = Registry()
        self._batch = Batch()
        # Alerts published without waiting: (alert id, publish handle, monotonic time). Once the
        # broker acknowledges one, it is marked published inside the next batch's transaction.
        self._unconfirmed: list[tuple[uuid.UUID, PublishResult, float]] = []
        self._last_flush = time.monotonic()
        # Within one flush (its retries and its one-by-one pass): the cross-site alerts read
        # per sighting (by event id), and the sightings whose history was sent to Redis, in
        # the order first sent.
        self._observed: dict[int, list[Alert]] = {}
        self._sent_order: dict[int, int] = {}
        # what admission (cooldown, incident) answered per alert (by its dedupe key)
        self._admitted: dict[str, Alert | None] = {}
        self._on_poison = on_poison or _drop_with_log
        self.stats = {
            "events": 0,
            "duplicates": 0,
            "alerts": 0,
            "batches": 0,
            "retries": 0,
            "poisoned": 0,
        }

    # -- checks run by the EventConsumer before an event is accepted --------------------
    def check(self, event: PlateRead, delivery: Delivery) -> None:
        """Refuse spoofed, unregistered or badly signed events (PayloadError -> dead letter)."""
        topic = parse_plate_topic(delivery.topic, self._root)
        if topic.site != event.site:
            raise PayloadError("site", event.site, f"disagrees with topic site {topic.site!r}")
        if topic.camera != event.camera:
            raise PayloadError(
                "camera", event.camera, f"disagrees with topic camera {topic.camera!r}"
            )
        known = (event.site, event.camera) in self.registry.cameras
        if not known and not self._accept_unknown:
            raise PayloadError("camera", event.camera, f"not registered at site {event.site!r}")
        node = self.registry.nodes.get(event.node)
        if node is not None and node[2] != event.site:
            raise PayloadError(
                "node", event.node, f"registered at site {node[2]!r}, not {event.site!r}"
            )
        key, required, _ = node if node is not None else (None, False, "")
        if event.signature is None:
            if required or self._require_signatures:
                raise PayloadError("signature", None, "this node's events must be signed")
            return
        if key is None:
            raise PayloadError("signature", event.signature.key_id, "node has no registered key")
        try:
            verify_event(event, load_public_key(key, f"node {event.node} public_key"))
        except SignatureError as exc:
            raise PayloadError("signature", event.signature.key_id, str(exc)) from exc

    # -- batching ------------------------------------------------------------------------
    def handle(self, event: PlateRead, delivery: Delivery) -> None:
        if not self._batch.events:
            self._batch.started = time.monotonic()
        self._batch.events.append(event)
        self._batch.deliveries.append(delivery)
        if len(self._batch.events) >= self._max_rows or self._batch_age() >= self._max_s:
            self.flush()

    def tick(self) -> None:
        if self._batch.events and self._batch_age() >= self._max_s:
            self.flush()
        elif (
            not self._batch.events
            and self._unconfirmed
            and time.monotonic() - self._last_flush >= CONFIRM_IDLE_S
        ):
            # Under load the next batch's transaction marks them; this transaction of its own
            # is for when the traffic pauses.
            self._mark_confirmed_now()

    @property
    def batched(self) -> int:
        """Events in the batch being collected (not yet stored)."""
        return len(self._batch.events)

    def settle(self, timeout_s: float = 5.0) -> None:
        """Wait up to `timeout_s` for the broker to acknowledge the alerts published without
        waiting, and mark them published (before a stop, so no sweeper republishes them)."""
        deadline = time.monotonic() + timeout_s
        for _, result, _ in list(self._unconfirmed):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                result.wait(left)
            except MqttError:
                break  # the broker is gone: the sweeper publishes them later
        self._mark_confirmed_now()

    def idle(self) -> None:
        """No message is waiting: flush now rather than wait for more (after the linger)."""
        linger = self._linger_s
        if linger is not None and self._batch.events and self._batch_age() >= linger:
            self.flush()

    def _batch_age(self) -> float:
        return time.monotonic() - self._batch.started

    def flush(self) -> None:
        batch, self._batch = self._batch, Batch()
        if not batch.events:
            return
        try:
            self._flush(batch)
        finally:
            self._observed.clear()
            self._sent_order.clear()
            self._admitted.clear()

    def _flush(self, batch: Batch) -> None:
        try:
            alerts, decisions = self._store_with_retry(batch.events)
            done = batch.deliveries
        except Exception:
            # Not an outage (those are retried above) but an event the code cannot process.
            # Find it by storing the events one by one; dead-letter it, keep the others.
            log.exception("batch failed; storing its events one by one")
            alerts, decisions, done = [], [], []
            for event, delivery in zip(batch.events, batch.deliveries, strict=True):
                try:
                    found, decided = self._store_with_retry([event])
                except Exception as exc:
                    self.stats["poisoned"] += 1
                    self._forget_history(event)
                    self._on_poison(delivery, f"processing failed: {type(exc).__name__}: {exc}")
                    continue
                alerts += found
                decisions += decided
                done.append(delivery)
        # The sightings and alerts are committed (the alert table is the outbox: the sweeper
        # republishes what is not marked published), so the messages are acknowledged now and
        # the alerts go out without waiting for the broker's acknowledgement.
        self._publish(alerts, decisions, wait=False)
        ack_all(done)
        self.stats["batches"] += 1
        self._last_flush = time.monotonic()

    def _sent_after(self, event_id: str, other_id: str) -> bool:
        """`other_id` was first sent to Redis in this flush after `event_id`: the first send
        could not have shown it to `event_id`, so a resend (its reply was lost) must not
        either, or the symmetric rules would alert on both."""
        try:
            mine = self._sent_order.get(uuid.UUID(event_id).int)
            theirs = self._sent_order.get(uuid.UUID(other_id).int)
        except ValueError:  # not an id this service wrote: not one of the flush's sightings
            return False
        return mine is not None and theirs is not None and theirs > mine

    def _forget_history(self, event: PlateRead) -> None:
        """A sighting that is not stored must not stay in the cross-site history either."""
        if self.cross is None or event.event_id.int not in self._sent_order:
            return
        try:
            self.cross.forget([event])
        except self._retry_errors as exc:
            log.warning(
                "could not remove a dead-lettered sighting from the cross-site history",
                extra={"plate": event.plate, "event_id": str(event.event_id), "error": str(exc)},
            )

    # -- the transaction -----------------------------------------------------------------
    def _store_with_retry(
        self, events: Sequence[PlateRead]
    ) -> tuple[list[Alert], list[GateDecision]]:
        return retry_outages(
            lambda: self._store(events),
            f"store batch of {len(events)}",
            self._retry_errors,
            max_delay_s=self._retry_max_s,
            on_retry=self._count_retry,
        )

    def _count_retry(self) -> None:
        self.stats["retries"] += 1

    def _store(self, events: Sequence[PlateRead]) -> tuple[list[Alert], list[GateDecision]]:
        now = self._clock()
        # One event per id (a batch may hold a redelivered copy of its own event), in id order:
        # two processes inserting overlapping ids then lock rows in the same order (no deadlock).
        # (keyed by the ids' ints: UUID's own hash and comparisons are Python-level calls)
        unique = sorted({e.event_id.int: e for e in events}.values(), key=lambda e: e.event_id.int)
        confirmed = self._confirmed()
        with self._sessions.begin() as session:
            if confirmed:
                repo.mark_published(session, confirmed, now)
            unseen = {
                (e.site, e.camera, e.node)
                for e in unique
                if (e.site, e.camera) not in self.registry.cameras
            }
            if unseen:
                repo.ensure_sites_and_cameras(session, unseen, now)
            skipped = repo.store_sightings(session, unique, now)
            fresh_events = [e for e in unique if e.event_id not in skipped] if skipped else unique
            alerts, decisions = self._evaluate_all(fresh_events, now)
            inserted = repo.insert_alerts(session, alerts)
        self._forget(confirmed)
        self.registry.cameras |= {(e.site, e.camera) for e in unique}
        self.stats["events"] += len(fresh_events)
        self.stats["duplicates"] += len(events) - len(fresh_events)
        fresh = [a for a in alerts if a.event_id in inserted]
        self.stats["alerts"] += len(fresh)
        return fresh, decisions

    def _evaluate_all(
        self, events: Sequence[PlateRead], now: datetime
    ) -> tuple[list[Alert], list[GateDecision]]:
        """Alerts and gate decisions of new sightings: the cross-site history goes to Redis
        first (one round trip for the batch), the lists and gates are matched while Redis works,
        then the cooldowns and incidents of every alert (one more)."""
        cross = self.cross
        # Sightings whose history a failed attempt of this batch recorded already keep the
        # alerts it read: recording them again would show each its later batch mates, and the
        # symmetric rules would raise their alerts twice over.
        to_send = [e for e in events if e.event_id.int not in self._observed] if cross else []
        with cross.observe_sent(to_send, now) if cross and to_send else nullcontext() as observing:
            for e in to_send:
                self._sent_order.setdefault(e.event_id.int, len(self._sent_order))
            results: list[Evaluation] = []
            hits = self.cache.hits_many([(e.plate, e.site) for e in events], now)
            gates = self.registry.gates
            for event, (watch, allow) in zip(events, hits, strict=True):
                is_gate = event.gate_request or (event.site, event.camera) in gates
                if watch or is_gate:  # otherwise nothing to raise or decide (most sightings)
                    results.append(
                        evaluate(event, watch, allow, is_gate, now, self._decision_ttl_s)
                    )
            alerts = [a for r in results for a in r.alerts]
            decisions = [r.decision for r in results if r.decision is not None]
            if observing is not None:
                found_all = observing.alerts(hide=self._sent_after)
                for event, found in zip(to_send, found_all, strict=True):
                    self._observed[event.event_id.int] = found
        if cross is not None and events:
            alerts += [a for e in events for a in self._observed[e.event_id.int]]
            alerts = self._admit(cross, alerts)
        return alerts, decisions

    def _admit(self, cross: CrossSite, alerts: list[Alert]) -> list[Alert]:
        """Cooldowns and incidents for these alerts, each asked once per flush: a retried
        batch reuses the first answers, instead of counting its incident hits again."""
        keys = [repo.alert_dedupe_key(a) for a in alerts]
        todo = [(k, a) for k, a in zip(keys, alerts, strict=True) if k not in self._admitted]
        if todo:
            answers = cross.admit_many([a for _, a in todo])
            self._admitted.update(zip((k for k, _ in todo), answers, strict=True))
        return [a for a in (self._admitted[k] for k in keys) if a is not None]

    # -- publishing ----------------------------------------------------------------------
    def publish_alerts(self, alerts: Sequence[Alert], log_each: bool = True) -> None:
        """Publish committed alerts (MQTT + stream), wait for the broker, mark them published.
        `log_each=False`: no log line per alert (a retro-hunt logs its count)."""
        self._publish(alerts, (), wait=True, log_each=log_each)

    def _publish(
        self,
        alerts: Sequence[Alert],
        decisions: Sequence[GateDecision],
        wait: bool,
        log_each: bool = True,
    ) -> None:
        pending: list[PublishResult] = []
        for decision in decisions:
            pending.append(
                self._publisher.publish(
                    decision_topic(decision.site, decision.gate, self._root), encode_event(decision)
                )
            )
        encoded = [encode_event(a) for a in alerts]  # once, for the stream and MQTT
        if self._stream is not None and alerts:
            try:
                self._stream.append_alerts([data.decode() for data in encoded])
            except self._retry_errors as exc:
                # Committed already: the messages must still be acknowledged. The alerts go out
                # on MQTT; live monitors of the stream miss them (logged).
                log.warning(
                    "alert stream append failed", extra={"alerts": len(alerts), "error": str(exc)}
                )
        sent: list[tuple[uuid.UUID, PublishResult]] = []
        for alert, data in zip(alerts, encoded, strict=True):
            topic = alert_topic(alert.site, alert.severity, self._root)
            sent.append((alert.event_id, self._publisher.publish(topic, data)))
        for a in alerts if log_each else ():
            log.info(
                "alert raised",
                extra={"kind": a.kind, "plate": a.plate, "site": a.site, "severity": a.severity},
            )
        if not wait:
            started = time.monotonic()
            self._unconfirmed += [(alert_id, result, started) for alert_id, result in sent]
            return
        for result in [*pending, *(r for _, r in sent)]:
            result.wait()
        if alerts:
            self._mark_published([a.event_id for a in alerts])

    def _confirmed(self) -> list[uuid.UUID]:
        """Alerts the broker has acknowledged since they were published (not yet marked)."""
        now = time.monotonic()
        stale = [u for u in self._unconfirmed if now - u[2] > CONFIRM_GIVE_UP_S]
        if stale:
            log.warning(
                "alert publishes not acknowledged; the sweeper will republish them",
                extra={"alerts": len(stale)},
            )
            self._forget([u[0] for u in stale])
        return [alert_id for alert_id, result, _ in self._unconfirmed if result.is_published()]

    def _forget(self, alert_ids: Sequence[uuid.UUID]) -> None:
        if alert_ids:
            done = set(alert_ids)
            self._unconfirmed = [u for u in self._unconfirmed if u[0] not in done]

    def _mark_confirmed_now(self) -> None:
        confirmed = self._confirmed()
        if confirmed:
            self._mark_published(confirmed)
            self._forget(confirmed)

    def _mark_published(self, ids: list[uuid.UUID]) -> None:
        try:
            with self._sessions.begin() as session:
                repo.mark_published(session, ids, self._clock())
        except SQLAlchemyError:
            log.warning("could not mark alerts published; the sweeper will republish them")

    def publish_pending(self, older_than_s: float = 10.0) -> int:
        """Publish alerts committed but never published (after a crash); returns how many."""
        cutoff = self._clock() - timedelta(seconds=older_than_s)
        with self._sessions.begin() as session:
            rows = repo.unpublished_alerts(session, cutoff)
            alerts = [Alert.model_validate(r.payload) for r in rows]
            sent = [
                self._publisher.publish(
                    alert_topic(alert.site, alert.severity, self._root), encode_event(alert)
                )
                for alert in alerts
            ]
            for result in sent:
                result.wait()
            if self._stream is not None and alerts:
                self._stream.append_alerts([a.model_dump_json() for a in alerts])
            repo.mark_published(session, [a.event_id for a in alerts], self._clock())
        return len(alerts)


def _drop_with_log(delivery: Delivery, reason: str) -> None:
    log.error(
        "event dropped: no dead-letter sink", extra={"topic": delivery.topic, "reason": reason}
    )
    delivery.ack()


class StatusIngestor:
    """Node status (retained, last will included) into the node and camera rows."""

    def __init__(
        self, sessions: sessionmaker[Session], clock: Callable[[], datetime], root: str
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._root = root

    def check(self, status: NodeStatus, delivery: Delivery) -> None:
        topic = parse_status_topic(delivery.topic, self._root)
        if (topic.site, topic.node) != (status.site, status.node):
            raise PayloadError("node", status.node, f"disagrees with topic {delivery.topic!r}")

    def handle(self, status: NodeStatus, delivery: Delivery) -> None:
        def store() -> None:
            with self._sessions.begin() as session:
                repo.record_node_status(session, status, self._clock())

        retry_outages(store, "store node status")
        delivery.ack()
        log.info(
            "node status", extra={"site": status.site, "node": status.node, "state": status.state}
        )


class StoringDeadLetters:
    """Dead letters go to the broker's dead-letter topic and to the dead_letter table."""

    def __init__(
        self, sessions: sessionmaker[Session], mqtt_sink: Callable[[DeadLetter], None]
    ) -> None:
        self._sessions = sessions
        self._mqtt_sink = mqtt_sink

    def dead_letter(self, letter: DeadLetter) -> None:
        def store() -> None:
            with self._sessions.begin() as session:
                repo.insert_dead_letter(session, letter, base64.b64decode(letter.payload_b64))

        retry_outages(store, "store dead letter")
        self._mqtt_sink(letter)
