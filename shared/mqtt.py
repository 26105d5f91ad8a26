"""The one MQTT adapter: paho-mqtt 2 on MQTT 5.

What it adds to paho: settings-driven TLS and credentials, reconnect with exponential backoff,
re-subscription in ``on_connect`` (so a broker restart or a lost session does not silently end a
consumer), a last will, persistent sessions for consumers, routing of messages to handlers by
filter (shared subscriptions included), and manual acknowledgement: with ``manual_ack=True`` a
QoS 1 message is acknowledged only when the handler's caller says ``delivery.ack()``, e.g. after the
database commit, so that a crash before that makes the broker deliver it again.
"""

from __future__ import annotations

import logging
import ssl
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from shared.errors import PlatewatchError
from shared.settings import MqttSettings
from shared.topics import parse_shared_subscription

log = logging.getLogger(__name__)
_ROUTE_CACHE_SIZE = 10_000


class MqttError(PlatewatchError):
    """The broker refused or could not be reached in time."""


class Publisher(Protocol):
    """What the core needs to send: a topic and bytes."""

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> PublishResult: ...


@dataclass(frozen=True)
class Will:
    """The message the broker publishes for us if we vanish without a clean disconnect."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class Delivery:
    """One received message. With manual acks, call ``ack()`` once it is safely handled."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    user_properties: tuple[tuple[str, str], ...] = ()
    _ack: Callable[[], None] = field(default=lambda: None, repr=False, compare=False)
    #: the client whose PUBACK this delivery needs (QoS 1, manual acks), for `ack_all`
    _pubacks: _BufferedClient | None = field(default=None, repr=False, compare=False)

    def ack(self) -> None:
        self._ack()


def ack_all(deliveries: Sequence[Delivery]) -> None:
    """Acknowledge deliveries (each once): the QoS 1 PUBACKs of one client are queued as one
    write, instead of one write and one wake-up of its network thread per message."""
    batches: dict[int, tuple[_BufferedClient, list[int]]] = {}
    for d in deliveries:
        if d._pubacks is None:
            d.ack()
        else:
            batches.setdefault(id(d._pubacks), (d._pubacks, []))[1].append(d.mid)
    for client, mids in batches.values():
        client.puback_many(mids)


class PublishResult:
    """Handle of one publish; ``wait()`` blocks until the broker has it (QoS >= 1)."""

    def __init__(self, info: paho.MQTTMessageInfo) -> None:
        self._info = info

    @property
    def mid(self) -> int:
        return int(self._info.mid)

    def is_published(self) -> bool:
        return bool(self._info.is_published())

    def wait(self, timeout: float = 10.0) -> None:
        if self._info.rc != paho.MQTT_ERR_SUCCESS and self._info.rc != paho.MQTT_ERR_NO_CONN:
            raise MqttError(f"publish mid={self._info.mid}: {paho.error_string(self._info.rc)}")
        try:
            self._info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            raise MqttError(f"publish mid={self._info.mid}: {exc}") from exc
        if not self._info.is_published():
            raise MqttError(f"publish mid={self._info.mid}: not acknowledged in {timeout}s")


Handler = Callable[[Delivery], None]

_RECV_CHUNK = 256 * 1024
_PUBACK = struct.Struct("!BBH")  # PUBACK: type, remaining length 2, message id

#: `_handler_for`: a topic not in the route cache (None there means "no handler")
_UNROUTED: Final = object()


#: The private paho hooks `_BufferedClient` overrides or calls (paho-mqtt 2.1-2.2); on a paho
#: without them the plain client is used.
_BUFFERED_READS = all(
    callable(getattr(paho.Client, name, None))
    for name in (
        "_sock_recv",
        "_packet_read",
        "_loop_rc_handle",
        "loop_read",
        "_handle_publish",
        "_packet_queue",
    )
)

#: fast_publish(topic, payload, qos, retain, mid): a PUBLISH parsed by `_BufferedClient`.
FastPublish = Callable[[str, bytes, int, bool, int], None]


def parse_publish(
    command: int, packet: bytes | bytearray
) -> tuple[str, bytes, int, bool, int] | None:
    """(topic, payload, qos, retain, mid) of an MQTT 5 PUBLISH packet (the bytes after its
    fixed header), or None for anything but a well-formed QoS 0/1 packet with a UTF-8 topic
    name and no properties: QoS 2, properties (user properties, topic aliases, expiry...) and
    malformed packets take paho's own path.

    Pure: no I/O. paho's decoder builds a Properties object and slices the packet three times
    through struct format strings made per call; this is what the correlator's intake spends
    most of its MQTT time on, so the common case is parsed here directly."""
    qos = (command & 0x06) >> 1
    if qos > 1 or len(packet) < 3:
        return None
    end = 2 + ((packet[0] << 8) | packet[1])
    if end == 2 or end + (2 if qos else 0) >= len(packet):
        return None
    try:
        topic = packet[2:end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    mid = 0
    if qos:
        mid = (packet[end] << 8) | packet[end + 1]
        end += 2
    if packet[end] != 0:  # the property length: properties present
        return None
    return topic, bytes(packet[end + 1 :]), qos, bool(command & 0x01), mid


class _BufferedClient(paho.Client):
    """paho's client with buffered socket reads.

    paho reads each packet with two or more ``recv`` calls (one byte of type, the length bytes
    one by one, then the body) and goes back to ``select`` after every packet. At thousands of
    messages a second those system calls were a tenth of the correlator's CPU. Here one
    ``recv`` takes up to 256 KiB and ``loop_read`` parses every whole packet in it before the
    next ``select``. paho's own packet state machine is unchanged; only where its bytes come
    from is. (paho 2.1-2.2 private hooks ``_sock_recv``/``_packet_read``; the MQTT integration
    tests exercise this path on every run.)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rx = b""
        self._rx_pos = 0
        self._rx_sock: object | None = None
        #: set by MqttClient: QoS 0/1 PUBLISH packets go here instead of paho's decoder and
        #: on_message dispatch (see `parse_publish`)
        self.fast_publish: FastPublish | None = None

    def _sock_recv(self, bufsize: int) -> bytes:
        sock = self._sock
        if sock is not self._rx_sock:  # a new connection: bytes of the old one are void
            self._rx_sock, self._rx, self._rx_pos = sock, b"", 0
        available = len(self._rx) - self._rx_pos
        if available <= 0:
            chunk = super()._sock_recv(max(bufsize, _RECV_CHUNK))  # may raise BlockingIOError
            if not chunk:
                return chunk  # connection closed
            self._rx, self._rx_pos = chunk, 0
            available = len(chunk)
        take = min(bufsize, available)
        out = self._rx[self._rx_pos : self._rx_pos + take]
        self._rx_pos += take
        return out

    def _handle_publish(self) -> MQTTErrorCode:
        fast = self.fast_publish
        if fast is None or self._protocol != paho.MQTTv5:
            return super()._handle_publish()
        command = self._in_packet["command"]
        parsed = parse_publish(command, self._in_packet["packet"])
        if parsed is None:
            return super()._handle_publish()
        fast(*parsed)
        if parsed[2] == 1 and not self._manual_ack:
            return self._send_puback(parsed[4])
        return paho.MQTT_ERR_SUCCESS

    def puback_many(self, mids: Sequence[int]) -> None:
        """PUBACK these message ids (manual acks), queued as one packet and one write."""
        packet = b"".join([_PUBACK.pack(paho.PUBACK, 2, mid) for mid in mids])
        self._packet_queue(paho.PUBACK, packet, 0, 0)

    def _buffered(self) -> bool:
        return (
            self._sock is not None
            and self._sock is self._rx_sock
            and (len(self._rx) > self._rx_pos)
        )

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        # Parse what is already buffered: select() cannot see it.
        while rc == paho.MQTT_ERR_SUCCESS and self._buffered():
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == paho.MQTT_ERR_AGAIN:
                return paho.MQTT_ERR_SUCCESS
        return rc


def _filter_of(subscription: str) -> str:
    if subscription.startswith("$share/"):
        return parse_shared_subscription(subscription)[1]
    return subscription


class MqttClient:
    """A connected MQTT 5 client; build in a composition root, pass it down."""

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        manual_ack: bool = False,
        persistent_session: bool = False,
        will: Will | None = None,
        max_inflight: int = 100,
    ) -> None:
        self._settings = settings
        self._client_id = settings.client_id or client_id
        self._persistent = persistent_session
        self._subscriptions: dict[str, tuple[int, Handler]] = {}
        self._route_cache: dict[str, Handler | None] = {}
        self._routes_only: dict[str, Handler] = {}
        self._unsubacks: dict[int, threading.Event] = {}
        self._unsuback_errors: dict[int, list[str]] = {}
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self._v5 = settings.protocol == "5"
        client_class = _BufferedClient if _BUFFERED_READS else paho.Client
        self._client = client_class(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
            manual_ack=manual_ack,
            clean_session=None if self._v5 else not persistent_session,
        )
        self._manual_ack = manual_ack
        self._client.enable_logger(logging.getLogger("paho"))
        self._max_inflight = max_inflight
        self._client.max_inflight_messages_set(max_inflight)
        self._client.reconnect_delay_set(
            min_delay=max(1, round(settings.reconnect_min_s)),
            max_delay=max(1, round(settings.reconnect_max_s)),
        )
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else None
            self._client.username_pw_set(settings.username, password)
        if settings.tls is not None:
            tls = settings.tls
            self._client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            self._client.tls_insecure_set(tls.insecure)
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_unsubscribe = self._on_unsubscribe
        if isinstance(self._client, _BufferedClient) and self._v5:
            self._client.fast_publish = self._deliver

    @property
    def client_id(self) -> str:
        return self._client_id

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, wait_s: float | None = 10.0) -> None:
        """Connect in the background (retrying for ever); optionally wait for the first CONNACK."""
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self._settings.session_expiry_s if self._persistent else 0
            props.ReceiveMaximum = self._max_inflight
            self._client.connect_async(
                self._settings.host,
                self._settings.port,
                keepalive=self._settings.keepalive_s,
                clean_start=not self._persistent,
                properties=props,
            )
        else:
            self._client.connect_async(
                self._settings.host, self._settings.port, keepalive=self._settings.keepalive_s
            )
        self._client.loop_start()
        if wait_s is not None and not self.connected.wait(wait_s):
            self.stop()
            raise MqttError(
                f"no connection to {self._settings.host}:{self._settings.port} in {wait_s}s"
            )

    def stop(self, end_session: bool = False) -> bool:
        """Clean disconnect (no last will), then stop the network thread. `end_session` asks
        the broker to discard a persistent session now (MQTT 5 session expiry 0), e.g. after
        draining it for good. True when the DISCONNECT was sent (False: not connected, so a
        persistent session is kept by the broker)."""
        props: Properties | None = None
        if end_session:
            if not (self._v5 and self._persistent):
                raise MqttError("ending a session needs MQTT 5 and a persistent session")
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        rc = self._client.disconnect(properties=props)
        sent = rc == paho.MQTT_ERR_SUCCESS
        if not sent:  # expected when never connected; it matters when ending a session
            log.log(
                logging.WARNING if end_session else logging.DEBUG,
                "mqtt disconnect not sent",
                extra={"client_id": self._client_id, "rc": paho.error_string(rc)},
            )
        self._client.loop_stop()
        self.connected.clear()
        return sent

    def __enter__(self) -> MqttClient:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- publish / subscribe -------------------------------------------------------------
    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        user_properties: tuple[tuple[str, str], ...] = (),
        expiry_s: int | None = None,
    ) -> PublishResult:
        props: Properties | None = None
        if self._v5 and (user_properties or expiry_s is not None):
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if user_properties:
                props.UserProperty = list(user_properties)
            if expiry_s is not None:
                props.MessageExpiryInterval = expiry_s
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        return PublishResult(info)

    def subscribe(self, subscription: str, handler: Handler, qos: int = 1) -> None:
        """Subscribe now if connected, and again after every reconnect."""
        with self._lock:
            self._subscriptions[subscription] = (qos, handler)
            self._route_cache = {}
        if self.connected.is_set():
            self._client.subscribe(subscription, qos=qos)

    def route(self, subscription: str, handler: Handler) -> None:
        """Route messages matching `subscription` to `handler` without subscribing at the broker:
        for messages a persistent session already holds (draining a session, see
        `unsubscribe_at_broker`)."""
        with self._lock:
            self._routes_only[subscription] = handler
            self._route_cache = {}

    def unsubscribe_at_broker(self, subscription: str, wait_s: float = 10.0) -> None:
        """Remove the broker's subscription of this (persistent) session, keeping the local
        route: messages the session already holds still arrive and are handled, no new ones are
        dealt to it. Waits for the UNSUBACK."""
        done = threading.Event()
        with self._lock:  # registered before the UNSUBACK can be handled
            result, mid = self._client.unsubscribe(subscription)
            if result != paho.MQTT_ERR_SUCCESS or mid is None:
                raise MqttError(f"unsubscribe {subscription!r}: {paho.error_string(result)}")
            self._unsubacks[mid] = done
        if not done.wait(wait_s):
            raise MqttError(f"unsubscribe {subscription!r}: no UNSUBACK in {wait_s}s")
        with self._lock:
            errors = self._unsuback_errors.pop(mid, [])
        if errors:
            raise MqttError(f"unsubscribe {subscription!r} refused: {', '.join(errors)}")

    def _on_unsubscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._lock:
            done = self._unsubacks.pop(mid, None)
            if done is not None:
                # 0x11 "no subscription existed" is success for our purpose
                self._unsuback_errors[mid] = [
                    str(rc) for rc in reason_codes if rc.is_failure and rc.value != 0x11
                ]
        if done is not None:
            done.set()

    def unsubscribe(self, subscription: str) -> None:
        with self._lock:
            self._subscriptions.pop(subscription, None)
            self._route_cache = {}
        self._client.unsubscribe(subscription)

    # -- paho callbacks (network thread) -------------------------------------------------
    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error(
                "mqtt connect refused",
                extra={"client_id": self._client_id, "reason": str(reason_code)},
            )
            return
        with self._lock:
            subs = [(s, q) for s, (q, _) in self._subscriptions.items()]
        for subscription, qos in subs:
            client.subscribe(subscription, qos=qos)
        log.info(
            "mqtt connected",
            extra={
                "client_id": self._client_id,
                "session_present": bool(flags.session_present),
                "subscriptions": len(subs),
            },
        )
        self.connected.set()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        level = logging.WARNING if reason_code.is_failure else logging.INFO
        log.log(
            level,
            "mqtt disconnected",
            extra={"client_id": self._client_id, "reason": str(reason_code)},
        )

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        user_props: tuple[tuple[str, str], ...] = ()
        props = getattr(msg, "properties", None)
        if props is not None and hasattr(props, "UserProperty"):
            user_props = tuple((str(k), str(v)) for k, v in props.UserProperty)
        self._deliver(
            msg.topic, bytes(msg.payload), int(msg.qos), bool(msg.retain), int(msg.mid), user_props
        )

    def _deliver(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        mid: int,
        user_props: tuple[tuple[str, str], ...] = (),
    ) -> None:
        handler = self._handler_for(topic)
        client = self._client

        def ack() -> None:
            if self._manual_ack and qos > 0:
                client.ack(mid, qos)

        batchable = self._manual_ack and qos == 1  # `ack_all` PUBACKs it with its batch
        pubacks = client if batchable and isinstance(client, _BufferedClient) else None

        delivery = Delivery(
            topic=topic,
            payload=payload,
            qos=qos,
            retain=retain,
            mid=mid,
            user_properties=user_props,
            _ack=ack,
            _pubacks=pubacks,
        )
        if handler is None:
            log.warning("mqtt message matches no handler", extra={"topic": topic})
            delivery.ack()
            return
        try:
            handler(delivery)
        except Exception:
            # A handler must never kill the network thread. With manual acks the message stays
            # unacknowledged, so the broker delivers it again after a reconnect.
            log.exception("mqtt handler failed", extra={"topic": topic})

    def _handler_for(self, topic: str) -> Handler | None:
        """The handler of the first subscription matching `topic` (cached per topic: there are
        as many topics as cameras, and matching every message costs a tenth of the intake)."""
        # Read without the lock (one dict lookup is atomic): a subscription change replaces
        # the whole dict, so a topic routed before the change is routed again after it.
        cache = self._route_cache
        cached = cache.get(topic, _UNROUTED)
        if cached is not _UNROUTED:
            return cached  # type: ignore[return-value]  # not _UNROUTED: a handler or None
        with self._lock:
            items = [(s, h) for s, (_, h) in self._subscriptions.items()]
            items += list(self._routes_only.items())
        found = None
        for subscription, handler in items:
            if paho.topic_matches_sub(_filter_of(subscription), topic):
                found = handler
                break
        with self._lock:
            if self._route_cache is not cache:
                return found  # the routes changed meanwhile: not cached, worked out again
            if len(cache) >= _ROUTE_CACHE_SIZE:
                self._route_cache = cache = {}
            cache[topic] = found
        return found
