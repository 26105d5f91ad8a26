"""Cross-site correlation rules (pure: no I/O, no clock; callers pass times and history).

Two rules look at one plate's recent sightings across sites (the history comes from
`services.correlator.state.CrossSiteState.record_sighting`):

- **impossible travel** (`impossible_travel`): the plate was seen at two sites further apart than
  it could have driven in the time between, which points at a cloned plate or a misread;
- **repeated sightings** (`repeated_sightings`): the plate came by many distinct sites, or many
  times, within a window (scouting, loitering).

`travel_alert` and `repeat_alert` turn a rule's result into an `Alert`. Two policies decide how
many alerts operators get: a **cooldown** per kind, plate and site, and
**incidents** that group hits on one plate and escalate their severity (`incident_severity`).
Settings, defaults and the reasons for them: ``docs/correlation.md``.

Sightings may arrive out of order (edge outboxes replay late), so every rule compares against
the whole history, before and after the current sighting in time, never only "the last one".
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Final, TypeVar, get_args
from uuid import UUID

from shared.errors import FieldError
from shared.events import Alert, PlateRead, Severity

EARTH_RADIUS_KM: Final = 6371.0088  # mean Earth radius (IUGG)
MIN_ELAPSED_S: Final = 1.0  # floor of the time used for a speed, so it is never infinite
SEVERITY_ORDER: Final[tuple[Severity, ...]] = get_args(Severity)

K = TypeVar("K")

DEFAULT_MAX_SPEED_KMH: Final = 250.0
DEFAULT_MIN_DISTANCE_KM: Final = 2.0
DEFAULT_CLOCK_SKEW_S: Final = 30.0
DEFAULT_MAX_LOOKBACK_S: Final = 6 * 3600
DEFAULT_REPEAT_WINDOW_S: Final = 3600
DEFAULT_REPEAT_MIN_SITES: Final = 3
DEFAULT_REPEAT_MIN_PASSES: Final = 10
DEFAULT_SAME_PASS_S: Final = 60.0
DEFAULT_COOLDOWN_S: Final = 600
DEFAULT_INCIDENT_WINDOW_S: Final = 1800
DEFAULT_ESCALATE_AT: Final = (3, 6)


class RuleConfigError(FieldError):
    """A correlation setting out of range: names the field and why."""


# -- sites and sightings ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SiteLocation:
    """Where a site is (WGS 84 degrees)."""

    site: str
    lat: float
    lon: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lat) and -90.0 <= self.lat <= 90.0):
            raise RuleConfigError("lat", self.lat, "latitude must be in -90..90")
        if not (math.isfinite(self.lon) and -180.0 <= self.lon <= 180.0):
            raise RuleConfigError("lon", self.lon, "longitude must be in -180..180")


def haversine_km(a: SiteLocation, b: SiteLocation) -> float:
    """Great-circle distance in km: a lower bound of any road distance between the sites."""
    phi1, phi2 = math.radians(a.lat), math.radians(b.lat)
    dphi = phi2 - phi1
    dlmb = math.radians(b.lon - a.lon)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def locations_by_site(locations: Iterable[SiteLocation]) -> Mapping[str, SiteLocation]:
    """Index site locations by slug; a slug given twice is a configuration error."""
    out: dict[str, SiteLocation] = {}
    for loc in locations:
        if loc.site in out:
            raise RuleConfigError("site", loc.site, "location given twice")
        out[loc.site] = loc
    return MappingProxyType(out)


@dataclass(frozen=True, slots=True)
class Sighting:
    """A reference to one stored sighting: enough to correlate, not the whole PlateRead."""

    event_id: str
    plate: str
    site: str
    camera: str
    seen_at: datetime

    def __post_init__(self) -> None:
        if not self.event_id:
            raise RuleConfigError("event_id", self.event_id, "must not be empty")
        if self.seen_at.tzinfo is None or self.seen_at.utcoffset() is None:
            raise RuleConfigError("seen_at", self.seen_at, "must be timezone-aware")

    @classmethod
    def from_read(cls, read: PlateRead) -> Sighting:
        """The sighting of a PlateRead, timed at the frame its best read came from."""
        return cls(
            event_id=str(read.event_id),
            plate=read.plate,
            site=read.site,
            camera=read.camera,
            seen_at=read.captured_at,
        )


def _unique(current: Sighting, history: Iterable[Sighting]) -> list[Sighting]:
    """History plus the current sighting, one per event id (redeliveries), time-ordered."""
    by_id = {s.event_id: s for s in history if s.plate == current.plate}
    by_id[current.event_id] = current
    return sorted(by_id.values(), key=lambda s: (s.seen_at, s.event_id))


def _fmt_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_duration(seconds: float) -> str:
    """A short human duration: ``45 s``, ``4 min 10 s``, ``2 h 5 min``."""
    s = round(abs(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        m, rest = divmod(s, 60)
        return f"{m} min {rest} s" if rest else f"{m} min"
    h, rest = divmod(s, 3600)
    m = rest // 60
    return f"{h} h {m} min" if m else f"{h} h"


# -- impossible travel ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TravelPolicy:
    """When a move between two sites counts as impossible."""

    max_speed_kmh: float = DEFAULT_MAX_SPEED_KMH
    min_distance_km: float = DEFAULT_MIN_DISTANCE_KM
    clock_skew_s: float = DEFAULT_CLOCK_SKEW_S
    max_lookback_s: int = DEFAULT_MAX_LOOKBACK_S

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_speed_kmh) and self.max_speed_kmh > 0):
            raise RuleConfigError("max_speed_kmh", self.max_speed_kmh, "must be > 0")
        if not (math.isfinite(self.min_distance_km) and self.min_distance_km >= 0):
            raise RuleConfigError("min_distance_km", self.min_distance_km, "must be >= 0")
        if not (math.isfinite(self.clock_skew_s) and self.clock_skew_s >= 0):
            raise RuleConfigError("clock_skew_s", self.clock_skew_s, "must be >= 0")
        if self.max_lookback_s <= 0:
            raise RuleConfigError("max_lookback_s", self.max_lookback_s, "must be > 0")


@dataclass(frozen=True, slots=True)
class TravelCheck:
    """The move between two sightings of one plate at two located sites.

    `implied_speed_kmh` is a lower bound: straight-line distance over the elapsed time plus the
    clock-skew tolerance (clocks assumed off in the driver's favour).
    """

    earlier: Sighting
    later: Sighting
    distance_km: float
    elapsed_s: float
    implied_speed_kmh: float
    impossible: bool
    reason: str


def check_travel(
    a: Sighting,
    b: Sighting,
    locations: Mapping[str, SiteLocation],
    policy: TravelPolicy,
) -> TravelCheck | None:
    """Compare two sightings of one plate; None when they are not comparable.

    Not comparable: the same event, different plates, the same site, or a site without a known
    location (an unknown site never raises impossible travel). The order of `a` and `b` does not
    matter.
    """
    if a.event_id == b.event_id or a.plate != b.plate or a.site == b.site:
        return None
    loc_a, loc_b = locations.get(a.site), locations.get(b.site)
    if loc_a is None or loc_b is None:
        return None
    earlier, later = sorted((a, b), key=lambda s: (s.seen_at, s.event_id))
    distance = haversine_km(loc_a, loc_b)
    elapsed = (later.seen_at - earlier.seen_at).total_seconds()
    effective = max(elapsed + policy.clock_skew_s, MIN_ELAPSED_S)
    speed = distance / (effective / 3600.0)
    near = distance < policy.min_distance_km
    impossible = not near and speed > policy.max_speed_kmh
    facts = (
        f"{later.plate} seen at {earlier.site} ({_fmt_time(earlier.seen_at)}) and at "
        f"{later.site} ({_fmt_time(later.seen_at)}): {distance:.1f} km apart in "
        f"{format_duration(elapsed)}"
    )
    if near:
        reason = f"{facts}; sites closer than {policy.min_distance_km:g} km are not compared"
    elif impossible:
        reason = (
            f"{facts} needs at least {speed:.0f} km/h, over the {policy.max_speed_kmh:.0f} km/h "
            f"limit (allowing {policy.clock_skew_s:g} s clock skew): cloned plate or misread?"
        )
    else:
        reason = f"{facts}: at least {speed:.0f} km/h, within the {policy.max_speed_kmh:.0f} limit"
    return TravelCheck(
        earlier=earlier,
        later=later,
        distance_km=distance,
        elapsed_s=elapsed,
        implied_speed_kmh=speed,
        impossible=impossible,
        reason=reason,
    )


def impossible_travel(
    current: Sighting,
    history: Iterable[Sighting],
    locations: Mapping[str, SiteLocation],
    policy: TravelPolicy,
) -> TravelCheck | None:
    """The most impossible move between `current` and the plate's other sightings, or None.

    For each other site the sighting nearest in time to `current` (before or after it: late
    replays arrive out of order) gives that site's highest speed; the highest impossible one
    wins. Sightings of `current`'s own site, of other plates and duplicates are ignored.
    """
    nearest: dict[str, Sighting] = {}
    for s in _unique(current, history):
        if s.site == current.site:
            continue
        gap = abs(s.seen_at - current.seen_at)
        best = nearest.get(s.site)
        if best is None or gap < abs(best.seen_at - current.seen_at):
            nearest[s.site] = s
    worst: TravelCheck | None = None
    for other in nearest.values():
        check = check_travel(current, other, locations, policy)
        if check is None or not check.impossible:
            continue
        if worst is None or check.implied_speed_kmh > worst.implied_speed_kmh:
            worst = check
    return worst


def travel_lookback_s(locations: Iterable[SiteLocation], policy: TravelPolicy) -> int:
    """How far back history must reach to catch impossible travel between the furthest sites.

    A sighting older than ``max distance / max speed`` (plus the skew tolerance) can never be
    part of an impossible move; capped at `TravelPolicy.max_lookback_s`.
    """
    locs = list(locations)
    longest = max(
        (haversine_km(a, b) for i, a in enumerate(locs) for b in locs[i + 1 :]), default=0.0
    )
    needed = longest / policy.max_speed_kmh * 3600.0 + policy.clock_skew_s
    return min(policy.max_lookback_s, math.ceil(needed))


# -- repeated sightings -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RepeatPolicy:
    """When one plate coming by often counts as scouting or loitering.

    Sightings at one site less than `same_pass_s` apart are one pass (several cameras, or a
    camera reading a slow car twice), so a single drive-through is never counted as many.
    """

    window_s: int = DEFAULT_REPEAT_WINDOW_S
    min_sites: int = DEFAULT_REPEAT_MIN_SITES
    min_passes: int = DEFAULT_REPEAT_MIN_PASSES
    same_pass_s: float = DEFAULT_SAME_PASS_S

    def __post_init__(self) -> None:
        if self.window_s <= 0:
            raise RuleConfigError("window_s", self.window_s, "must be > 0")
        if self.min_sites < 2:
            raise RuleConfigError("min_sites", self.min_sites, "must be >= 2")
        if self.min_passes < 2:
            raise RuleConfigError("min_passes", self.min_passes, "must be >= 2")
        if not (math.isfinite(self.same_pass_s) and 0 <= self.same_pass_s < self.window_s):
            raise RuleConfigError("same_pass_s", self.same_pass_s, "must be in 0..window_s")


@dataclass(frozen=True, slots=True)
class RepeatResult:
    """A window in which one plate met a repeated-sightings threshold."""

    plate: str
    window_start: datetime
    window_end: datetime
    site_count: int
    pass_count: int
    sighting_count: int
    sites: tuple[str, ...]  # distinct sites, in order of first sighting
    sightings: tuple[Sighting, ...]  # every sighting in the window, time-ordered
    by_sites: bool  # met min_sites
    by_passes: bool  # met min_passes
    reason: str


def _pass_ids(ordered: Sequence[Sighting], same_pass_s: float) -> list[int]:
    """A pass number per sighting: one site's sightings < same_pass_s apart share it."""
    ids: list[int] = []
    last: dict[str, tuple[datetime, int]] = {}
    gap = timedelta(seconds=same_pass_s)
    for s in ordered:
        prev = last.get(s.site)
        pid = prev[1] if prev is not None and s.seen_at - prev[0] < gap else len(ids)
        last[s.site] = (s.seen_at, pid)
        ids.append(pid)
    return ids


def _drop(counter: Counter[K], key: K) -> None:
    counter[key] -= 1
    if counter[key] == 0:
        del counter[key]


def repeated_sightings(
    current: Sighting,
    history: Iterable[Sighting],
    policy: RepeatPolicy,
) -> RepeatResult | None:
    """The busiest window of `policy.window_s` around `current` that meets a threshold, or None.

    Windows considered are those that contain `current` (late sightings may complete a pattern
    after the fact). A window triggers with >= `min_sites` distinct sites or >= `min_passes`
    passes; the one with the most sites (then passes) is returned.
    """
    window = timedelta(seconds=policy.window_s)
    ordered = [s for s in _unique(current, history) if abs(s.seen_at - current.seen_at) <= window]
    passes = _pass_ids(ordered, policy.same_pass_s)
    sites: Counter[str] = Counter()
    pass_counts: Counter[int] = Counter()
    best: tuple[int, int, int, int] | None = None  # (sites, passes, start, end)
    end = 0
    for start, first in enumerate(ordered):
        if first.seen_at > current.seen_at:
            break
        while end < len(ordered) and ordered[end].seen_at - first.seen_at <= window:
            sites[ordered[end].site] += 1
            pass_counts[passes[end]] += 1
            end += 1
        if first.seen_at + window >= current.seen_at:
            n_sites, n_passes = len(sites), len(pass_counts)
            hit = n_sites >= policy.min_sites or n_passes >= policy.min_passes
            if hit and (best is None or (n_sites, n_passes) > best[:2]):
                best = (n_sites, n_passes, start, end)
        _drop(sites, first.site)
        _drop(pass_counts, passes[start])
    if best is None:
        return None
    n_sites, n_passes, lo, hi = best
    chosen = tuple(ordered[lo:hi])
    site_names = tuple(dict.fromkeys(s.site for s in chosen))
    by_sites, by_passes = n_sites >= policy.min_sites, n_passes >= policy.min_passes
    span = (chosen[-1].seen_at - chosen[0].seen_at).total_seconds()
    reason = (
        f"{current.plate} seen {n_passes} times at {n_sites} sites "
        f"({', '.join(site_names)}) within {format_duration(span)} "
        f"(thresholds: {policy.min_sites} sites or {policy.min_passes} passes "
        f"in {format_duration(policy.window_s)})"
    )
    return RepeatResult(
        plate=current.plate,
        window_start=chosen[0].seen_at,
        window_end=chosen[-1].seen_at,
        site_count=n_sites,
        pass_count=n_passes,
        sighting_count=len(chosen),
        sites=site_names,
        sightings=chosen,
        by_sites=by_sites,
        by_passes=by_passes,
        reason=reason,
    )


def history_window_s(
    locations: Iterable[SiteLocation], travel: TravelPolicy, repeat: RepeatPolicy
) -> int:
    """How much history per plate `CrossSiteState.record_sighting` must keep for both rules."""
    return max(repeat.window_s, travel_lookback_s(locations, travel))


# -- cooldown and incidents -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CooldownPolicy:
    """At most one alert per (kind, plate, site) per cooldown; per-kind overrides allowed."""

    default_s: int = DEFAULT_COOLDOWN_S
    per_kind_s: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.default_s <= 0:
            raise RuleConfigError("default_s", self.default_s, "must be > 0")
        for kind, ttl in self.per_kind_s.items():
            if ttl <= 0:
                raise RuleConfigError(f"per_kind_s.{kind}", ttl, "must be > 0")

    def ttl_s(self, kind: str) -> int:
        """The cooldown of one alert kind, in seconds."""
        return self.per_kind_s.get(kind, self.default_s)


def cooldown_over(last_raised_at: datetime | None, now: datetime, ttl_s: int) -> bool:
    """Whether a new alert may be raised (no earlier one, or it is at least `ttl_s` old).

    The in-memory twin of `CrossSiteState.cooldown`, for retro-hunts over stored sightings.
    """
    return last_raised_at is None or now - last_raised_at >= timedelta(seconds=ttl_s)


@dataclass(frozen=True, slots=True)
class IncidentPolicy:
    """Hits on one plate less than `window_s` after the previous hit join one incident.

    The window slides: every hit keeps the incident open for another `window_s`. Severity rises
    one level at each hit count in `escalate_at` (capped at critical).
    """

    window_s: int = DEFAULT_INCIDENT_WINDOW_S
    escalate_at: tuple[int, ...] = DEFAULT_ESCALATE_AT

    def __post_init__(self) -> None:
        if self.window_s <= 0:
            raise RuleConfigError("window_s", self.window_s, "must be > 0")
        if any(n < 2 for n in self.escalate_at) or list(self.escalate_at) != sorted(
            set(self.escalate_at)
        ):
            raise RuleConfigError(
                "escalate_at", self.escalate_at, "must be increasing hit counts >= 2"
            )


def incident_continues(last_hit_at: datetime | None, now: datetime, window_s: int) -> bool:
    """Whether a hit at `now` joins the incident whose last hit was at `last_hit_at`."""
    return last_hit_at is not None and now - last_hit_at < timedelta(seconds=window_s)


def incident_severity(base: Severity, hit_count: int, policy: IncidentPolicy) -> Severity:
    """The severity of the `hit_count`-th hit of an incident whose first hit was `base`."""
    steps = sum(1 for n in policy.escalate_at if hit_count >= n)
    index = min(SEVERITY_ORDER.index(base) + steps, len(SEVERITY_ORDER) - 1)
    return SEVERITY_ORDER[index]


# -- alerts ---------------------------------------------------------------------------------
MAX_RELATED: Final = 50  # Alert.related_sightings holds at most 50 ids


def _uuid(event_id: str) -> UUID | None:
    try:
        return UUID(event_id)
    except ValueError:
        return None


def _related(sightings: Iterable[Sighting], current: Sighting) -> list[UUID]:
    """Ids of the other sightings, newest first, at most `MAX_RELATED`."""
    others = [s for s in sightings if s.event_id != current.event_id]
    others.sort(key=lambda s: (s.seen_at, s.event_id), reverse=True)
    ids = [u for u in (_uuid(s.event_id) for s in others) if u is not None]
    return ids[:MAX_RELATED]


def travel_alert(
    check: TravelCheck, current: Sighting, raised_at: datetime, severity: Severity = "medium"
) -> Alert:
    """The impossible-travel `Alert` for `current` (one side of `check`)."""
    other = check.earlier if check.later.event_id == current.event_id else check.later
    return Alert(
        raised_at=raised_at,
        site=current.site,
        camera=current.camera,
        severity=severity,
        kind="impossible_travel",
        plate=current.plate,
        seen_at=current.seen_at,
        sighting_event_id=_uuid(current.event_id),
        title=f"Impossible travel: {current.plate} at {other.site} and {current.site}"[:200],
        reason=check.reason[:1000],
        related_sightings=_related([other], current),
        details={
            "distance_km": round(check.distance_km, 1),
            "elapsed_s": round(check.elapsed_s, 1),
            "implied_speed_kmh": round(check.implied_speed_kmh),
            "other_site": other.site,
            "other_camera": other.camera,
            "other_seen_at": other.seen_at.astimezone(UTC).isoformat(),
        },
    )


def repeat_alert(
    result: RepeatResult, current: Sighting, raised_at: datetime, severity: Severity = "low"
) -> Alert:
    """The repeated-sightings `Alert` for `current` (a sighting of `result`'s window)."""
    span = (result.window_end - result.window_start).total_seconds()
    return Alert(
        raised_at=raised_at,
        site=current.site,
        camera=current.camera,
        severity=severity,
        kind="repeated_sightings",
        plate=current.plate,
        seen_at=current.seen_at,
        sighting_event_id=_uuid(current.event_id),
        title=(
            f"Repeated sightings: {current.plate} {result.pass_count} times at "
            f"{result.site_count} sites in {format_duration(span)}"
        )[:200],
        reason=result.reason[:1000],
        related_sightings=_related(result.sightings, current),
        details={
            "site_count": result.site_count,
            "pass_count": result.pass_count,
            "sighting_count": result.sighting_count,
            "sites": ",".join(result.sites)[:500],
            "window_start": result.window_start.astimezone(UTC).isoformat(),
            "window_end": result.window_end.astimezone(UTC).isoformat(),
        },
    )
