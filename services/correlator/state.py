"""Cross-site correlation state in Redis, shared by every correlator process.

Every key lives under one prefix and has a TTL (the alert stream is also capped by length), so
Redis never grows without bound. Every update is one atomic command or Lua script, so N
correlator processes on a shared subscription never race on read-modify-write. The key layout
is in ``docs/correlation.md``; `StateKeys` is the one place that spells it.

The rules themselves are pure (`services.correlator.rules`); this module only stores and fetches.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast
from uuid import UUID

import redis

from services.correlator.rules import (
    CooldownPolicy,
    IncidentPolicy,
    RepeatPolicy,
    Sighting,
    SiteLocation,
    TravelPolicy,
    history_window_s,
    impossible_travel,
    incident_severity,
    repeat_alert,
    repeated_sightings,
    travel_alert,
)
from shared.errors import FieldError, PayloadError
from shared.events import PLATE_PATTERN, Alert, PlateRead, Severity, new_event_id
from shared.topics import SLUG_PATTERN

log = logging.getLogger(__name__)

DEFAULT_MAX_HISTORY: Final = 1000  # sightings kept per plate, newest win
DEFAULT_ALERT_MAXLEN: Final = 100_000
DEFAULT_STREAM_TTL_S: Final = 7 * 24 * 3600
_PLATE: Final = re.compile(PLATE_PATTERN)
_SLUG: Final = re.compile(SLUG_PATTERN)
_KIND: Final = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

# One call for a whole batch. KEYS: per sighting, the plate's sorted set (member event_id,
# score seen_at in ms) and its hash (event_id -> sighting data). ARGV: window_ms, ttl_s,
# max_entries, then per sighting one "event_id|score_ms|data" (neither the id nor the score holds
# a "|"). For each sighting in order: adds it (a redelivered event_id overwrites itself), trims
# entries older than the window before the newest sighting and beyond max_entries, refreshes both
# TTLs. Returns only the sightings with something to say, as [n, kept, event_id, data, ...]: n is
# the sighting's 1-based place in the batch, kept is 1 when it is still stored (not trimmed at
# once), then the other sightings within the window either side of it (its own data is not sent
# back: the caller has it); so a sighting sees the batch's earlier ones. A sighting left out was
# kept and is its plate's only one in the window (the common case: nothing to send or parse).
# (All keys in one script: a single Redis server or a replicated/Sentinel one, not a cluster.)
_RECORD_LUA: Final = """
local window, ttl, cap = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local results = {}
for n = 1, #KEYS / 2 do
  local zkey, hkey = KEYS[2 * n - 1], KEYS[2 * n]
  local arg = ARGV[3 + n]
  local bar1 = string.find(arg, '|', 1, true)
  local bar2 = string.find(arg, '|', bar1 + 1, true)
  local id, score = string.sub(arg, 1, bar1 - 1), tonumber(string.sub(arg, bar1 + 1, bar2 - 1))
  redis.call('ZADD', zkey, score, id)
  redis.call('HSET', hkey, id, string.sub(arg, bar2 + 1))
  if redis.call('ZCARD', zkey) == 1 then
    -- the plate's only sighting (the common case): nothing to trim, nothing to say
    redis.call('EXPIRE', zkey, ttl)
    redis.call('EXPIRE', hkey, ttl)
  else
    local newest = tonumber(redis.call('ZRANGE', zkey, -1, -1, 'WITHSCORES')[2])
    local horizon = string.format('%.0f', newest - window)
    local old = redis.call('ZRANGEBYSCORE', zkey, '-inf', '(' .. horizon)
    if #old > 0 then
      for _, m in ipairs(old) do redis.call('HDEL', hkey, m) end
      redis.call('ZREMRANGEBYSCORE', zkey, '-inf', '(' .. horizon)
    end
    local extra = redis.call('ZCARD', zkey) - cap
    if extra > 0 then
      local drop = redis.call('ZRANGE', zkey, 0, extra - 1)
      for _, m in ipairs(drop) do redis.call('HDEL', hkey, m) end
      redis.call('ZREMRANGEBYRANK', zkey, 0, extra - 1)
    end
    redis.call('EXPIRE', zkey, ttl)
    redis.call('EXPIRE', hkey, ttl)
    local lo = string.format('%.0f', score - window)
    local hi = string.format('%.0f', score + window)
    local ids = redis.call('ZRANGEBYSCORE', zkey, lo, hi)
    local out = {n, 0}
    for _, m in ipairs(ids) do
      if m == id then
        out[2] = 1
      else
        local d = redis.call('HGET', hkey, m)
        if d then out[#out + 1] = m; out[#out + 1] = d end
      end
    end
    if out[2] == 0 or #out > 2 then results[#results + 1] = out end
  end
end
return results
"""

# Cooldowns and incidents, for a batch of alerts in one call, in order. KEYS: per alert, its
# cooldown key and its plate's incident hash. ARGV: incident window_s, then per alert: owner,
# cooldown ttl_s ('0': no cooldown claim), new incident id ('': do not join an incident).
# Cooldown: granted to the first owner within ttl_s, and again to the same owner. Incident
# (only when granted): reuses the plate's open incident or opens one with the new id, counts the
# hit and slides the window. Returns {granted, incident id, hits} per alert ('' and 0 when no
# incident was joined).
_ADMIT_LUA: Final = """
local window = ARGV[1]
local results = {}
for n = 1, #KEYS / 2 do
  local ckey, ikey = KEYS[2 * n - 1], KEYS[2 * n]
  local a = 1 + 3 * (n - 1)
  local owner, ttl, new_id = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local granted = 1
  if ttl ~= '0' and not redis.call('SET', ckey, owner, 'NX', 'EX', ttl) then
    if redis.call('GET', ckey) ~= owner then granted = 0 end
  end
  local id, hits = '', 0
  if granted == 1 and new_id ~= '' then
    id = redis.call('HGET', ikey, 'id')
    if not id then
      id = new_id
      redis.call('HSET', ikey, 'id', id)
    end
    hits = redis.call('HINCRBY', ikey, 'hits', 1)
    redis.call('EXPIRE', ikey, window)
  end
  results[n] = {granted, id, hits}
end
return results
"""


@dataclass(frozen=True, slots=True)
class AdmitClaim:
    """One alert's claim on its cooldown per (kind, plate, site) for `ttl_s` (None: no
    cooldown), then, when granted and `new_incident_id` is set, on its plate's incident."""

    plate: str
    cooldown: tuple[str, str, int, str] | None  # kind, site, ttl_s, owner
    new_incident_id: str | None


class StateError(FieldError):
    """A bad argument to the cross-site state (a window, TTL or limit): names it and why."""


def _text(value: object) -> str:
    """A Redis reply as str, whether the client decodes responses or not."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _stream_entries(reply: Any) -> list[tuple[Any, dict[Any, Any]]]:
    """(id, fields) of an XREAD reply, RESP2 (list of [stream, entries]) or RESP3 (a dict of
    stream -> entries, which redis-py wraps in one more list)."""
    if not reply:
        return []
    groups = list(reply.values()) if isinstance(reply, dict) else [e for _, e in reply]
    out: list[tuple[Any, dict[Any, Any]]] = []
    for entries in groups:
        if entries and isinstance(entries[0], list):
            entries = [e for sub in entries for e in sub]
        out.extend((entry_id, fields) for entry_id, fields in entries)
    return out


def _check(field: str, value: str, pattern: re.Pattern[str]) -> str:
    if not pattern.fullmatch(value):
        raise PayloadError(field, value, f"must match {pattern.pattern}")
    return value


def _ms(t: datetime) -> int:
    return round(t.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class StateKeys:
    """Every Redis key and channel of the cross-site state. (A plate's two keys share a hash
    tag, but the batch script touches many plates at once, so the state needs one Redis server,
    replicated or behind Sentinel, not a cluster.)"""

    prefix: str

    def sightings(self, plate: str) -> str:
        return f"{self.prefix}seen:{{{_check('plate', plate, _PLATE)}}}"

    def sighting_data(self, plate: str) -> str:
        return f"{self.prefix}seen:{{{_check('plate', plate, _PLATE)}}}:data"

    def history(self, plate: str) -> tuple[str, str]:
        """(`sightings`, `sighting_data`) of a plate, checked once."""
        zkey = self.sightings(plate)
        return zkey, zkey + ":data"

    def cooldown(self, kind: str, plate: str, site: str) -> str:
        _check("kind", kind, _KIND)
        _check("plate", plate, _PLATE)
        _check("site", site, _SLUG)
        return f"{self.prefix}cooldown:{kind}:{plate}:{site}"

    def incident(self, plate: str) -> str:
        return f"{self.prefix}incident:{_check('plate', plate, _PLATE)}"

    def alerts(self) -> str:
        return f"{self.prefix}alerts"

    def list_changes(self) -> str:
        return f"{self.prefix}watchlist:changed"


def _encode_record(site: str, camera: str, seen_at: datetime) -> str:
    """The history record, JSON as every release reads it (site and camera are slugs: nothing to
    escape, so it is formatted directly rather than through json.dumps)."""
    seen = seen_at.astimezone(UTC).isoformat(timespec="microseconds")
    return f'{{"site":"{site}","camera":"{camera}","seen_at":"{seen}"}}'


#: One sighting for the history script: (plate, event_id, seen_at, site, camera).
HistoryItem = tuple[str, str, datetime, str, str]


@dataclass(frozen=True, slots=True)
class HistoryReply:
    """The history script's answer about one sighting of a batch that is not simply kept and
    alone in its window (those get no reply)."""

    index: int  # its place in the batch
    kept: bool  # still stored (False: older than the window before the plate's newest)
    others: list[tuple[str, str]]  # (event_id, record) of the plate's others in the window

    def history(self, current: Sighting) -> list[Sighting]:
        """The plate's sightings in the window, time-ordered, `current` included if kept."""
        found = [_decode_sighting(current.plate, i, data) for i, data in self.others]
        if self.kept:
            found.append(current)
        if len(found) > 1:
            found.sort(key=lambda h: (h.seen_at, h.event_id))
        return found


def _decode_sighting(plate: str, event_id: str, data: str) -> Sighting:
    d = json.loads(data)
    return Sighting(
        event_id=event_id,
        plate=plate,
        site=str(d["site"]),
        camera=str(d["camera"]),
        seen_at=datetime.fromisoformat(str(d["seen_at"])),
    )


class PendingHistory:
    """The history script sent on a connection of its own, its reply not yet read (see
    `CrossSiteState.record_items_sent`). Nothing is sent for an empty batch."""

    def __init__(
        self, client: redis.Redis, script: Any, keys: list[str], args: list[str | int]
    ) -> None:
        self._client = client
        self._script = script
        self._keys = keys
        self._args = args
        self._conn: Any = None
        if keys:
            pool = client.connection_pool
            conn = pool.get_connection()
            try:
                conn.send_command(  # type: ignore[no-untyped-call]
                    "EVALSHA", script.sha, len(keys), *keys, *args
                )
            except BaseException:
                pool.release(conn)  # send_command has dropped the socket on an error
                raise
            self._conn = conn

    def replies(self) -> list[HistoryReply]:
        """Read the script's answer (waiting for it); once."""
        conn, self._conn = self._conn, None
        if conn is None:
            if self._keys:
                raise StateError("replies", None, "already read or closed")
            return []
        try:
            raw = conn.read_response()
        except redis.exceptions.NoScriptError:
            # first use on this server, or it restarted: EVAL through the script (loads it)
            raw = self._script(keys=self._keys, args=self._args, client=self._client)
        except BaseException:
            conn.disconnect()
            raise
        finally:
            self._client.connection_pool.release(conn)
        return [
            HistoryReply(
                index=int(reply[0]) - 1,
                kept=bool(int(reply[1])),
                others=[(_text(reply[i]), _text(reply[i + 1])) for i in range(2, len(reply), 2)],
            )
            for reply in cast(list[Any], raw)
        ]

    def close(self) -> None:
        """Give the connection back unread: dropped, so no later command reads this reply."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.disconnect()
            self._client.connection_pool.release(conn)

    def __enter__(self) -> PendingHistory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CrossSiteState:
    """Per-plate sighting history, alert cooldowns, incidents, the live alert stream and
    watch-list change notices, in Redis, safe with several correlator processes at once."""

    def __init__(
        self,
        redis: redis.Redis,
        prefix: str,
        *,
        max_history: int = DEFAULT_MAX_HISTORY,
        stream_ttl_s: int = DEFAULT_STREAM_TTL_S,
    ) -> None:
        if max_history < 1:
            raise StateError("max_history", max_history, "must be >= 1")
        if stream_ttl_s < 1:
            raise StateError("stream_ttl_s", stream_ttl_s, "must be >= 1")
        self._redis = redis
        self.keys = StateKeys(prefix)
        self._max_history = max_history
        self._stream_ttl_s = stream_ttl_s
        self._record = redis.register_script(_RECORD_LUA)
        self._admit = redis.register_script(_ADMIT_LUA)

    def record_sighting(self, s: Sighting, window_s: int) -> list[Sighting]:
        """Add `s` to its plate's history and return the plate's sightings within `window_s`
        either side of `s`, time-ordered, `s` included (unless it is older than the window
        before the plate's newest sighting, and so trimmed at once).

        A redelivered event (same event_id) replaces itself, so it is never counted twice.
        Entries older than `window_s` before the newest sighting, and beyond `max_history`, are
        dropped; both keys expire after 2 x `window_s` without a new sighting.
        """
        return self.record_sightings([s], window_s)[0]

    def record_sightings(self, batch: Sequence[Sighting], window_s: int) -> list[list[Sighting]]:
        """`record_sighting` for a whole batch in one round trip (one call of the script);
        the histories come back in batch order, each seeing the batch's earlier sightings."""
        items = [(s.plate, s.event_id, s.seen_at, s.site, s.camera) for s in batch]
        histories = [[s] for s in batch]  # kept, and alone in its window: no reply
        for reply in self.record_items(items, window_s):
            histories[reply.index] = reply.history(batch[reply.index])
        return histories

    def record_items(self, items: Sequence[HistoryItem], window_s: int) -> list[HistoryReply]:
        """`record_sightings` without building a `Sighting` per item: the replies only, for the
        items that are not simply kept and alone in their window (the common case)."""
        with self.record_items_sent(items, window_s) as pending:
            return pending.replies()

    def forget_sightings(self, sightings: Sequence[tuple[str, str]]) -> None:
        """Remove these (plate, event_id) sightings from their plates' histories, in one round
        trip (a sighting recorded and then dead-lettered, never stored)."""
        if not sightings:
            return
        pipe = self._redis.pipeline(transaction=True)
        for plate, event_id in sightings:
            zkey, hkey = self.keys.history(plate)
            pipe.zrem(zkey, event_id)
            pipe.hdel(hkey, event_id)
        pipe.execute()

    def record_items_sent(self, items: Sequence[HistoryItem], window_s: int) -> PendingHistory:
        """`record_items` in two halves: the script is sent now and its replies are read by
        `replies()` of what comes back, so the caller's own work (the database insert) runs
        while Redis works. Use it as a context manager: leaving it unread drops the connection
        (its reply is never read into the pool's next command)."""
        if window_s < 1:
            raise StateError("window_s", window_s, "must be >= 1")
        keys: list[str] = []
        args: list[str | int] = [window_s * 1000, 2 * window_s, self._max_history]
        for plate, event_id, seen_at, site, camera in items:
            if not event_id or "|" in event_id:  # "|": the script's field separator
                raise StateError("event_id", event_id, "must be set and not contain '|'")
            if seen_at.utcoffset() is None:
                raise StateError("seen_at", seen_at, "must be timezone-aware")
            keys += self.keys.history(plate)
            args.append(f"{event_id}|{_ms(seen_at)}|{_encode_record(site, camera, seen_at)}")
        return PendingHistory(self._redis, self._record, keys, args)

    def cooldown(
        self, kind: str, plate: str, site: str, ttl_s: int, owner: str | None = None
    ) -> bool:
        """True for the first caller per (kind, plate, site) within `ttl_s`, across processes.

        The same `owner` (e.g. the sighting's event id) is granted again: a batch retried after
        a failed database commit keeps the alert it claimed instead of losing it to its own
        cooldown."""
        claimant = owner if owner is not None else uuid.uuid4().hex
        claim = AdmitClaim(plate, (kind, site, ttl_s, claimant), None)
        return self.admit_alerts([claim], 1)[0][0]

    def incident(self, plate: str, window_s: int, new_id: str) -> tuple[str, int]:
        """(incident_id, hit_count) of this hit on `plate`.

        The first hit opens an incident with `new_id`; a hit less than `window_s` after the
        previous one joins it and increments the count (the window slides with each hit).
        """
        if not new_id:
            raise StateError("new_id", new_id, "must not be empty")
        _, incident_id, hits = self.admit_alerts([AdmitClaim(plate, None, new_id)], window_s)[0]
        return incident_id, hits

    def admit_alerts(
        self, claims: Sequence[AdmitClaim], incident_window_s: int
    ) -> list[tuple[bool, str, int]]:
        """`cooldown` then, where granted, `incident`, for each claim in order, in one round
        trip: (granted, incident id, hits) each; ('', 0) where no incident was joined."""
        if incident_window_s < 1:
            raise StateError("incident_window_s", incident_window_s, "must be >= 1")
        if not claims:
            return []
        keys: list[str] = []
        args: list[str | int] = [incident_window_s]
        for c in claims:
            # no cooldown claim (ttl 0): the script never touches this placeholder key
            owner, ttl_s, cooldown_key = "", 0, self.keys.incident(c.plate) + ":-"
            if c.cooldown is not None:
                kind, site, ttl_s, owner = c.cooldown
                if ttl_s < 1:
                    raise StateError("ttl_s", ttl_s, "must be >= 1")
                cooldown_key = self.keys.cooldown(kind, c.plate, site)
            if c.new_incident_id == "":
                raise StateError("new_incident_id", "", "must not be empty")
            keys += [cooldown_key, self.keys.incident(c.plate)]
            args += [owner, ttl_s, c.new_incident_id or ""]
        replies = cast(list[Any], self._admit(keys=keys, args=args))
        return [(bool(int(r[0])), _text(r[1]), int(r[2])) for r in replies]

    def append_alert(self, alert_json: str, maxlen: int = DEFAULT_ALERT_MAXLEN) -> str:
        """Append an alert to the live stream (capped near `maxlen`); returns its stream id."""
        key = self.keys.alerts()
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(key, {"alert": alert_json}, maxlen=maxlen, approximate=True)
        pipe.expire(key, self._stream_ttl_s)
        stream_id, _ = pipe.execute()
        return _text(stream_id)

    def append_alerts(
        self, alerts_json: Sequence[str], maxlen: int = DEFAULT_ALERT_MAXLEN
    ) -> list[str]:
        """`append_alert` for several alerts in one round trip; their stream ids, in order."""
        if not alerts_json:
            return []
        key = self.keys.alerts()
        pipe = self._redis.pipeline(transaction=True)
        for alert_json in alerts_json:
            pipe.xadd(key, {"alert": alert_json}, maxlen=maxlen, approximate=True)
        pipe.expire(key, self._stream_ttl_s)
        replies = pipe.execute()
        return [_text(r) for r in replies[:-1]]

    def read_alerts(
        self, last_id: str = "0", count: int = 100, block_ms: int | None = None
    ) -> list[tuple[str, str]]:
        """Up to `count` alerts after stream id `last_id`, as (stream id, alert JSON), oldest
        first; with `block_ms`, waits up to that long for one. `last_id="0"`: from the start."""
        if count < 1:
            raise StateError("count", count, "must be >= 1")
        reply: Any = self._redis.xread({self.keys.alerts(): last_id}, count=count, block=block_ms)
        out: list[tuple[str, str]] = []
        for entry_id, fields in _stream_entries(reply):
            data = {_text(k): _text(v) for k, v in fields.items()}
            out.append((_text(entry_id), data["alert"]))
        return out

    def publish_list_change(self, list_id: int, version: int) -> int:
        """Tell every process that watch-list `list_id` is now at `version`; returns how many
        subscribers heard it."""
        payload = json.dumps({"list_id": list_id, "version": version}, separators=(",", ":"))
        return int(self._redis.publish(self.keys.list_changes(), payload))

    def publish_registry_change(self) -> int:
        """Tell every process that sites, nodes or cameras changed: they reload everything
        (lists and registry, built in the background); returns how many subscribers heard it."""
        return int(self._redis.publish(self.keys.list_changes(), _REGISTRY_CHANGE))

    def list_change_listener(
        self,
        callback: Callable[[int, int], None],
        on_resync: Callable[[], None] | None = None,
    ) -> ListChangeListener:
        """A listener (not started) on this state's watch-list change channel."""
        return ListChangeListener(self._redis, self.keys.prefix, callback, on_resync=on_resync)


_REGISTRY_CHANGE = '{"registry":true}'


class ListChangeListener:
    """Calls ``callback(list_id, version)`` for each watch-list change, from a thread of its own.

    A registry change (sites, nodes, cameras: ``publish_registry_change``) calls ``on_resync()``:
    the registry is small but read with the lists, so everything is reloaded.

    Robust to Redis restarts and dropped connections: it resubscribes with backoff, and pings
    to notice a silently dead connection. Changes published while it was not subscribed are
    lost, so ``on_resync()`` is called every time the subscription is (re)established, the
    first time included: reload every list then. Exceptions of the callbacks are logged, never
    stop the thread.
    """

    def __init__(
        self,
        redis: redis.Redis,
        prefix: str,
        callback: Callable[[int, int], None],
        *,
        on_resync: Callable[[], None] | None = None,
        poll_s: float = 0.5,
        ping_every_s: float = 15.0,
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 30.0,
    ) -> None:
        self._redis = redis
        self.channel = StateKeys(prefix).list_changes()
        self._callback = callback
        self._on_resync = on_resync
        self._poll_s = poll_s
        self._ping_every_s = ping_every_s
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff_s = reconnect_min_s

    def start(self) -> None:
        """Start the listener thread (once)."""
        if self._thread is not None:
            raise RuntimeError("listener already started")
        self._thread = threading.Thread(target=self._run, name="list-change-listener", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and close its connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def wait_subscribed(self, timeout_s: float) -> bool:
        """Wait until the subscription is live; False on timeout."""
        return self._subscribed.wait(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = self._redis.pubsub()  # type: ignore[no-untyped-call,unused-ignore]  # untyped before redis-py 8
            try:
                self._listen(pubsub)
            except (redis.RedisError, OSError) as exc:
                log.warning(
                    "list change listener lost redis; resubscribing",
                    extra={
                        "channel": self.channel,
                        "error": str(exc),
                        "retry_in_s": self._backoff_s,
                    },
                )
                self._retry_later()
            except Exception:  # the thread's edge: never die silently, keep listening
                log.exception("list change listener failed", extra={"channel": self.channel})
                self._retry_later()
            finally:
                self._subscribed.clear()
                try:
                    pubsub.close()
                except (redis.RedisError, OSError):
                    log.debug("list change listener close failed", extra={"channel": self.channel})

    def _retry_later(self) -> None:
        self._stop.wait(self._backoff_s)
        self._backoff_s = min(self._backoff_s * 2, self._reconnect_max_s)

    def _listen(self, pubsub: redis.client.PubSub) -> None:
        pubsub.subscribe(self.channel)
        last_pong = time.monotonic()
        last_ping = last_pong
        while not self._stop.is_set():
            msg = pubsub.get_message(timeout=self._poll_s)
            now = time.monotonic()
            if msg is not None:
                kind = _text(msg.get("type"))
                if kind == "subscribe":
                    self._backoff_s = self._reconnect_min_s
                    self._resync()  # before `subscribed`: a waiter then loads after the request
                    self._subscribed.set()
                elif kind == "message":
                    self._deliver(msg.get("data"))
                elif kind == "pong":
                    last_pong = now
            if now - last_ping >= self._ping_every_s:
                if now - last_pong > 2 * self._ping_every_s + self._poll_s:
                    raise redis.ConnectionError("no pong from redis")
                pubsub.ping()
                last_ping = now

    def _resync(self) -> None:
        if self._on_resync is None:
            return
        try:
            self._on_resync()
        except Exception:
            log.exception("list change resync callback failed", extra={"channel": self.channel})

    def _deliver(self, data: object) -> None:
        try:
            body = json.loads(_text(data))
            if isinstance(body, dict) and body.get("registry") is True:
                self._resync()
                return
            list_id, version = int(body["list_id"]), int(body["version"])
        except (ValueError, KeyError, TypeError):
            log.warning(
                "bad list change message ignored",
                extra={"channel": self.channel, "payload": _text(data)[:200]},
            )
            return
        try:
            self._callback(list_id, version)
        except Exception:
            log.exception(
                "list change callback failed",
                extra={"channel": self.channel, "list_id": list_id, "version": version},
            )


class PendingObservation:
    """Sightings sent to the cross-site state, their alerts not yet worked out (see
    `CrossSiteCorrelator.observe_sent`)."""

    def __init__(
        self,
        owner: CrossSiteCorrelator,
        events: Sequence[PlateRead],
        now: datetime,
        pending: PendingHistory,
    ) -> None:
        self._owner = owner
        self._events = events
        self._now = now
        self._pending = pending

    def alerts(self, hide: Callable[[str, str], bool] | None = None) -> list[list[Alert]]:
        """The cross-site alerts of each event, in order (waits for Redis; once). `hide(event
        id, other id)`: leave that other sighting out of the event's history."""
        return self._owner._alerts_of(self._events, self._pending.replies(), self._now, hide)

    def close(self) -> None:
        self._pending.close()

    def __enter__(self) -> PendingObservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CrossSiteCorrelator:
    """The consumer's cross-site port (`consumer.CrossSite`): the pure rules over the shared
    state.

    `observe` records a sighting and returns the alerts the cross-site rules raise for it;
    `admit` applies the cooldown and the incident policy to any alert (watch-list ones too):
    None when the alert is inside its cooldown, else the alert joined to its plate's incident,
    with the escalated severity and ``details["incident_hits"]``. Historical (retro-hunt) alerts
    have cooldowns of their own (``{kind}_historical``), so a retro-hunt never silences a live
    alert, and never join or escalate live incidents.
    """

    def __init__(
        self,
        state: CrossSiteState,
        locations: Mapping[str, SiteLocation],
        *,
        travel: TravelPolicy | None = None,
        repeat: RepeatPolicy | None = None,
        cooldown: CooldownPolicy | None = None,
        incident: IncidentPolicy | None = None,
        travel_severity: Severity = "medium",
        repeat_severity: Severity = "low",
    ) -> None:
        self._state = state
        self._locations = locations
        self._travel = travel or TravelPolicy()
        self._repeat = repeat or RepeatPolicy()
        self._cooldown = cooldown or CooldownPolicy()
        self._incident = incident or IncidentPolicy()
        self._travel_severity: Severity = travel_severity
        self._repeat_severity: Severity = repeat_severity
        self.window_s = history_window_s(locations.values(), self._travel, self._repeat)

    def observe(self, event: PlateRead, now: datetime) -> list[Alert]:
        """Record the sighting of `event`; the cross-site alerts it raises (not yet admitted)."""
        return self.observe_many([event], now)[0]

    def observe_many(self, events: Sequence[PlateRead], now: datetime) -> list[list[Alert]]:
        """`observe` for a batch, with one Redis round trip; alerts per event, in order."""
        with self.observe_sent(events, now) as pending:
            return pending.alerts()

    def observe_sent(self, events: Sequence[PlateRead], now: datetime) -> PendingObservation:
        """`observe_many` in two halves: the sightings are sent to Redis now, the alerts come
        from `alerts()` of what is returned (a context manager), so other work runs between."""
        items = [(e.plate, str(e.event_id), e.captured_at, e.site, e.camera) for e in events]
        return PendingObservation(
            self, events, now, self._state.record_items_sent(items, self.window_s)
        )

    def forget(self, events: Sequence[PlateRead]) -> None:
        """Take these sightings out of the shared history (they were recorded, then not stored)."""
        self._state.forget_sightings([(e.plate, str(e.event_id)) for e in events])

    def _alerts_of(
        self,
        events: Sequence[PlateRead],
        replies: Sequence[HistoryReply],
        now: datetime,
        hide: Callable[[str, str], bool] | None = None,
    ) -> list[list[Alert]]:
        results: list[list[Alert]] = [[] for _ in events]
        # Only sightings with a reply can raise anything: the others are their plate's only
        # sighting in the window, and both rules need another.
        for reply in replies:
            if hide is not None and reply.others:
                own = str(events[reply.index].event_id)
                kept = [o for o in reply.others if not hide(own, o[0])]
                if len(kept) != len(reply.others):
                    reply = dataclasses.replace(reply, others=kept)
            sighting = Sighting.from_read(events[reply.index])
            history = reply.history(sighting)
            alerts = results[reply.index]
            if all(h.event_id == sighting.event_id for h in history):
                continue
            travel = impossible_travel(sighting, history, self._locations, self._travel)
            if travel is not None:
                alerts.append(travel_alert(travel, sighting, now, self._travel_severity))
            repeat = repeated_sightings(sighting, history, self._repeat)
            if repeat is not None:
                alerts.append(repeat_alert(repeat, sighting, now, self._repeat_severity))
        return results

    def admit(self, alert: Alert) -> Alert | None:
        """The alert to raise after cooldown and incident policy, or None (in cooldown)."""
        return self.admit_many([alert])[0]

    def admit_many(self, alerts: Sequence[Alert]) -> list[Alert | None]:
        """`admit` for each alert in order, in one Redis round trip."""
        claims = []
        for alert in alerts:
            kind = f"{alert.kind}_historical" if alert.historical else alert.kind
            owner = str(alert.sighting_event_id or alert.event_id)
            claims.append(
                AdmitClaim(
                    plate=alert.plate,
                    cooldown=(kind, alert.site, self._cooldown.ttl_s(kind), owner),
                    new_incident_id=None if alert.historical else str(new_event_id()),
                )
            )
        out: list[Alert | None] = []
        answers = self._state.admit_alerts(claims, self._incident.window_s)
        for alert, claim, (granted, incident_id, hits) in zip(alerts, claims, answers, strict=True):
            if not granted:
                kind = claim.cooldown[0] if claim.cooldown else alert.kind
                log.debug(
                    "alert in cooldown",
                    extra={"kind": kind, "plate": alert.plate, "site": alert.site},
                )
                out.append(None)
            elif alert.historical:
                out.append(alert)
            else:
                out.append(
                    alert.model_copy(
                        update={
                            "incident_id": UUID(incident_id),
                            "severity": incident_severity(alert.severity, hits, self._incident),
                            "details": {**alert.details, "incident_hits": hits},
                        }
                    )
                )
        return out
