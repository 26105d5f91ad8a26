"""What a new sighting means: watch-list alerts and, at a gate, the decision (pure: no I/O).

Cross-site rules (impossible travel, repeated sightings) live in `rules.py`/`state.py`; this
module turns list hits into `Alert` and `GateDecision` events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from services.correlator.lists import ListHit
from shared.events import Alert, AlertMatch, GateDecision, PlateRead

#: Categories whose hit keeps a gate closed even for a registered vehicle.
DENY_CATEGORIES: Final = frozenset({"wanted", "stolen", "banned"})
#: Categories that never raise an alert on their own (they inform gate decisions).
SILENT_CATEGORIES: Final = frozenset({"allow"})
TITLES: Final = {
    "wanted": "Wanted vehicle",
    "stolen": "Stolen vehicle",
    "banned": "Banned vehicle",
    "vip": "VIP vehicle",
    "custom": "Watch-list hit",
}


@dataclass(frozen=True)
class Evaluation:
    alerts: list[Alert] = field(default_factory=list)
    decision: GateDecision | None = None


def alert_match(hit: ListHit) -> AlertMatch:
    m = hit.match
    why = m.explanation
    return AlertMatch(
        list_id=hit.info.id,
        list_name=hit.info.name[:128],
        entry_id=m.entry.entry_id,
        pattern=m.entry.pattern,
        mode=m.mode.value,
        category=m.entry.category,
        cost=round(m.cost, 3),
        explanation=why[:256],
    )


def watchlist_alert(
    event: PlateRead, hit: ListHit, now: datetime, historical: bool = False
) -> Alert:
    match = alert_match(hit)
    title = f"{TITLES.get(match.category, 'Watch-list hit')} {event.plate} at {event.site}"
    reason = (
        f"{event.plate} read at {event.site}/{event.camera} matches {match.pattern!r} on list "
        f"{hit.info.name!r} ({match.explanation})"
    )
    return Alert(
        raised_at=now,
        site=event.site,
        camera=event.camera,
        severity=hit.info.severity,
        kind="watchlist",
        plate=event.plate,
        seen_at=event.captured_at,
        sighting_event_id=event.event_id,
        historical=historical,
        title=title[:200],
        reason=reason[:1000],
        match=match,
        details={"confidence": event.confidence, "list_category": hit.info.category},
    )


def evaluate(
    event: PlateRead,
    watch_hits: Sequence[ListHit],
    allow_hits: Sequence[ListHit],
    is_gate: bool,
    now: datetime,
    decision_ttl_s: int,
) -> Evaluation:
    """Alerts for the watch-list hits; at a gate, allow or deny (and alert on a deny)."""
    alerts = [
        watchlist_alert(event, hit, now)
        for hit in watch_hits
        if hit.match.entry.category not in SILENT_CATEGORIES
    ]
    if not is_gate:
        return Evaluation(alerts)
    banned = [h for h in watch_hits if h.match.entry.category in DENY_CATEGORIES]
    if banned:
        verdict, reason = (
            "deny",
            f"on list {banned[0].info.name!r} ({banned[0].match.entry.category})",
        )
    elif allow_hits:
        hit = allow_hits[0]
        verdict, reason = (
            "allow",
            f"registered on {hit.info.name!r} ({alert_match(hit).explanation})",
        )
    else:
        verdict, reason = "deny", "not on the site's allow-list"
        alerts.append(
            Alert(
                raised_at=now,
                site=event.site,
                camera=event.camera,
                severity="medium",
                kind="unregistered_gate",
                plate=event.plate,
                seen_at=event.captured_at,
                sighting_event_id=event.event_id,
                title=f"Unregistered vehicle {event.plate} at gate {event.site}/{event.camera}",
                reason=f"{event.plate} is not on any allow-list of site {event.site}; gate denied",
                details={"confidence": event.confidence},
            )
        )
    decision = GateDecision(
        decided_at=now,
        site=event.site,
        gate=event.camera,
        plate=event.plate,
        decision=verdict,
        reason=reason[:256],
        sighting_event_id=event.event_id,
        valid_until=now + timedelta(seconds=decision_ttl_s),
    )
    return Evaluation(alerts, decision)
