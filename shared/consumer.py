"""Validated event intake over MQTT: decode, dispatch, or dead-letter with the reason.

A payload that does not parse never crashes the consumer and is never silently dropped: it is
logged, handed to the dead-letter sink (published on ``{root}/v1/deadletter/{service}``; the
correlator also stores it), and only then acknowledged.
"""

from __future__ import annotations

import base64
import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from shared.errors import PayloadError
from shared.events import DeadLetter, EventBase, decode_event, encode_event
from shared.mqtt import Delivery, MqttClient
from shared.topics import deadletter_topic

log = logging.getLogger(__name__)

E = TypeVar("E", bound=EventBase)
MAX_DEADLETTER_COPY = 16 * 1024


_TICK = Delivery(topic="(tick)", payload=b"", qos=0, retain=False, mid=0)


class DeadLetterSink(Protocol):
    def dead_letter(self, letter: DeadLetter) -> None: ...


class MqttDeadLetterSink:
    """Publishes dead letters (QoS 1) and waits for the broker to take them."""

    def __init__(self, client: MqttClient, service: str, root: str) -> None:
        self._client = client
        self._topic = deadletter_topic(service, root)

    def dead_letter(self, letter: DeadLetter) -> None:
        self._client.publish(self._topic, encode_event(letter), qos=1).wait()


def make_dead_letter(
    service: str, delivery: Delivery, error: PayloadError | str, now: datetime
) -> DeadLetter:
    """The dead-letter record of a refused delivery (payload copied, capped at 16 KiB)."""
    reason = str(error)
    field = error.field if isinstance(error, PayloadError) else None
    return DeadLetter(
        service=service,
        received_at=now,
        topic=delivery.topic[:512],
        reason=reason[:1000],
        field=field[:128] if field else None,
        payload_b64=base64.b64encode(delivery.payload[:MAX_DEADLETTER_COPY]).decode(),
        payload_size=len(delivery.payload),
    )


class EventConsumer(Generic[E]):
    """Subscribes (shared or not), decodes each payload into `model` and calls `on_event`.

    `tick()`, when given, runs on the same thread about every `tick_s`, with or without traffic
    (batch flush by time, periodic jobs). `idle()`, when given, runs whenever no delivery is
    waiting (flush a batch early: batches then grow only while messages queue up).
    `ignore_empty` skips empty payloads (the way a retained topic is cleared).
    `on_event(event, delivery)` owns the acknowledgement of good events (ack after commit);
    `check(event, delivery)` may raise PayloadError to refuse an event that parses but is wrong
    (e.g. its site disagrees with its topic). Refused payloads are dead-lettered, then acked.

    Work runs on one worker thread, never on the MQTT network thread, so handlers may block on
    the database or wait for their own publishes. The broker's receive maximum (the client's
    ``max_inflight``) bounds how many unacknowledged messages can pile up in between.
    """

    def __init__(
        self,
        client: MqttClient,
        subscription: str,
        model: type[E],
        on_event: Callable[[E, Delivery], None],
        sink: DeadLetterSink,
        service: str,
        clock: Callable[[], datetime],
        check: Callable[[E, Delivery], None] | None = None,
        tick: Callable[[], None] | None = None,
        tick_s: float = 0.05,
        ignore_empty: bool = False,
        idle: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._subscription = subscription
        self._model = model
        self._on_event = on_event
        self._sink = sink
        self._service = service
        self._clock = clock
        self._check = check
        self._tick = tick
        self._tick_s = tick_s
        self._ignore_empty = ignore_empty
        self._idle = idle
        # SimpleQueue: C-implemented, a tenth of Queue's cost per put + get at thousands a second
        self._inbox: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        #: monotonic time of the last delivery handled (or of the start)
        self.last_delivery = time.monotonic()
        #: a delivery is being handled right now
        self.busy = False

    def start(self, qos: int = 1, subscribe: bool = True) -> None:
        """Start the worker and subscribe; `subscribe=False` only routes what the client's
        persistent session already holds (draining it)."""
        self._worker = threading.Thread(
            target=self._run, name=f"{self._service}-consumer", daemon=True
        )
        self._worker.start()
        self.last_delivery = time.monotonic()
        if subscribe:
            self._client.subscribe(self._subscription, self._inbox.put, qos=qos)
        else:
            self._client.route(self._subscription, self._inbox.put)

    @property
    def subscription(self) -> str:
        return self._subscription

    def pending(self) -> int:
        """Deliveries received but not yet handled."""
        return self._inbox.qsize()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop taking work; what is queued but unacknowledged is redelivered by the broker.
        True when the worker has finished (False: still busy after `timeout`)."""
        self._inbox.put(None)
        if self._worker is not None:
            self._worker.join(timeout)
            return not self._worker.is_alive()
        return True

    def _run(self) -> None:
        next_tick = time.monotonic() + self._tick_s
        while True:
            timeout = max(0.0, next_tick - time.monotonic()) if self._tick else None
            try:
                delivery = self._inbox.get(timeout=timeout)
            except queue.Empty:
                delivery = _TICK
            if delivery is None:
                return
            try:
                if delivery is not _TICK:
                    self.busy = True
                    try:
                        self._handle(delivery)
                    finally:
                        self.busy = False
                        self.last_delivery = time.monotonic()
                if self._idle is not None and self._inbox.empty():
                    self._idle()
                if self._tick is not None and time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self._tick_s
                    self._tick()
            except Exception:
                # Left unacknowledged: the broker redelivers it after a reconnect.
                log.exception("event handler failed", extra={"topic": delivery.topic})

    def _handle(self, delivery: Delivery) -> None:
        if self._ignore_empty and not delivery.payload:
            delivery.ack()  # an empty retained message clears the topic: nothing to consume
            return
        try:
            event = decode_event(delivery.payload, self._model)
            if self._check is not None:
                self._check(event, delivery)
        except PayloadError as exc:
            self.reject(delivery, exc)
            return
        self._on_event(event, delivery)

    def reject(self, delivery: Delivery, error: PayloadError | str) -> None:
        letter = make_dead_letter(self._service, delivery, error, self._clock())
        log.warning(
            "payload rejected",
            extra={
                "service": self._service,
                "topic": delivery.topic,
                "reason": letter.reason,
                "field": letter.field,
                "size": letter.payload_size,
            },
        )
        self._sink.dead_letter(letter)
        delivery.ack()
