"""Cross-site rules: impossible travel, repeated sightings, cooldown and incident policy."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.correlator.rules import (
    CooldownPolicy,
    IncidentPolicy,
    RepeatPolicy,
    RuleConfigError,
    Sighting,
    SiteLocation,
    TravelPolicy,
    check_travel,
    cooldown_over,
    format_duration,
    haversine_km,
    history_window_s,
    impossible_travel,
    incident_continues,
    incident_severity,
    locations_by_site,
    repeat_alert,
    repeated_sightings,
    travel_alert,
    travel_lookback_s,
)
from shared.events import Alert, decode_event, encode_event
from tests.factories import T0, plate_read

pytestmark = [pytest.mark.correlator]

LONDON = SiteLocation("london", 51.5074, -0.1278)
PARIS = SiteLocation("paris", 48.8566, 2.3522)
# Two gates of one campus, ~1 km apart, and a depot ~10 km from the campus.
CAMPUS_N = SiteLocation("campus-n", 52.0000, 0.0000)
CAMPUS_S = SiteLocation("campus-s", 51.9910, 0.0000)
DEPOT = SiteLocation("depot", 52.0900, 0.0000)
LOCS = locations_by_site([LONDON, PARIS, CAMPUS_N, CAMPUS_S, DEPOT])
POLICY = TravelPolicy()


def sighting(
    event_id: str, site: str, minutes: float, plate: str = "ABC1234", camera: str = "cam-1"
) -> Sighting:
    return Sighting(event_id, plate, site, camera, T0 + timedelta(minutes=minutes))


# -- geometry and references ------------------------------------------------------------------
def test_haversine_london_paris_is_about_344_km() -> None:
    assert haversine_km(LONDON, PARIS) == pytest.approx(343.6, abs=0.5)


def test_haversine_is_symmetric_and_zero_on_the_same_point() -> None:
    assert haversine_km(LONDON, PARIS) == pytest.approx(haversine_km(PARIS, LONDON))
    assert haversine_km(LONDON, SiteLocation("again", LONDON.lat, LONDON.lon)) == 0.0


def test_site_location_rejects_latitude_out_of_range() -> None:
    with pytest.raises(RuleConfigError) as info:
        SiteLocation("x", 91.0, 0.0)
    assert info.value.field == "lat"


def test_locations_by_site_rejects_a_site_given_twice() -> None:
    with pytest.raises(RuleConfigError) as info:
        locations_by_site([LONDON, SiteLocation("london", 0.0, 0.0)])
    assert info.value.field == "site"


def test_sighting_rejects_naive_time() -> None:
    with pytest.raises(RuleConfigError) as info:
        Sighting("e1", "ABC1234", "london", "cam-1", datetime(2026, 11, 25, 8, 0))
    assert info.value.field == "seen_at"


def test_sighting_from_read_is_timed_at_the_best_frame() -> None:
    read = plate_read(site="london", camera="cam-2")
    s = Sighting.from_read(read)
    assert (s.event_id, s.plate, s.site, s.camera) == (
        str(read.event_id),
        "ABC1234",
        "london",
        "cam-2",
    )
    assert s.seen_at == read.captured_at


# -- impossible travel ----------------------------------------------------------------------
def test_travel_between_far_sites_in_minutes_is_impossible() -> None:
    check = check_travel(sighting("e1", "london", 0), sighting("e2", "paris", 30), LOCS, POLICY)
    assert check is not None and check.impossible
    assert check.distance_km == pytest.approx(343.6, abs=0.5)
    assert check.elapsed_s == 1800
    # Speed uses elapsed + the 30 s skew tolerance: a lower bound.
    assert check.implied_speed_kmh == pytest.approx(check.distance_km / (1830 / 3600))
    assert "london" in check.reason and "paris" in check.reason and "km/h" in check.reason


def test_travel_at_plausible_speed_is_not_impossible() -> None:
    check = check_travel(sighting("e1", "london", 0), sighting("e2", "paris", 180), LOCS, POLICY)
    assert check is not None and not check.impossible
    assert check.implied_speed_kmh < POLICY.max_speed_kmh


def test_travel_result_does_not_depend_on_argument_order() -> None:
    a, b = sighting("e1", "london", 0), sighting("e2", "paris", 30)
    assert check_travel(a, b, LOCS, POLICY) == check_travel(b, a, LOCS, POLICY)
    check = check_travel(b, a, LOCS, POLICY)
    assert check is not None and check.earlier == a and check.later == b


def test_neighbouring_sites_never_trigger_even_at_the_same_instant() -> None:
    check = check_travel(sighting("e1", "campus-n", 0), sighting("e2", "campus-s", 0), LOCS, POLICY)
    assert check is not None
    assert check.distance_km < POLICY.min_distance_km
    assert not check.impossible
    assert "not compared" in check.reason


def test_clock_skew_tolerance_keeps_a_short_hop_from_triggering() -> None:
    a, b = sighting("e1", "campus-n", 0), sighting("e2", "depot", 2.0)  # 10 km in 2 min
    strict = TravelPolicy(clock_skew_s=0)
    assert check_travel(a, b, LOCS, strict).impossible  # type: ignore[union-attr]  # 300 km/h
    tolerant = check_travel(a, b, LOCS, TravelPolicy(clock_skew_s=120))
    assert tolerant is not None and not tolerant.impossible  # 10 km in 4 min: 150 km/h


def test_unknown_site_never_triggers_impossible_travel() -> None:
    far_unknown = sighting("e1", "atlantis", 0)
    current = sighting("e2", "london", 1)
    assert check_travel(far_unknown, current, LOCS, POLICY) is None
    assert impossible_travel(current, [far_unknown], LOCS, POLICY) is None


def test_same_site_is_not_compared() -> None:
    assert (
        check_travel(sighting("e1", "london", 0), sighting("e2", "london", 0), LOCS, POLICY) is None
    )


def test_impossible_travel_flags_current_against_history() -> None:
    current = sighting("e2", "paris", 20)
    found = impossible_travel(current, [sighting("e1", "london", 0)], LOCS, POLICY)
    assert found is not None
    assert (found.earlier.event_id, found.later.event_id) == ("e1", "e2")


def test_late_replay_is_compared_with_the_nearest_sighting_in_time_not_the_last() -> None:
    # London 08:00 and 10:00 are stored; a replay from Paris at 08:10 arrives after both.
    history = [sighting("e1", "london", 0), sighting("e3", "london", 120)]
    late = sighting("e2", "paris", 10)
    found = impossible_travel(late, history, LOCS, POLICY)
    assert found is not None and found.earlier.event_id == "e1"
    # Compared only with "the last one" (10:00, 110 min later) it would look plausible.
    last_only = check_travel(late, history[-1], LOCS, POLICY)
    assert last_only is not None and not last_only.impossible


def test_impossible_travel_compares_with_a_later_sighting_too() -> None:
    current = sighting("e1", "london", 0)
    found = impossible_travel(current, [sighting("e2", "paris", 15)], LOCS, POLICY)
    assert found is not None and found.later.event_id == "e2"


def test_impossible_travel_reports_the_fastest_move() -> None:
    current = sighting("e3", "depot", 10)
    history = [sighting("e1", "london", 0), sighting("e2", "paris", 5)]
    found = impossible_travel(current, history, LOCS, POLICY)
    assert found is not None and found.earlier.site == "paris"


def test_impossible_travel_ignores_other_plates_and_redeliveries() -> None:
    current = sighting("e2", "paris", 20)
    other_plate = sighting("e1", "london", 0, plate="XYZ999")
    assert impossible_travel(current, [other_plate, current], LOCS, POLICY) is None


def test_travel_lookback_covers_the_furthest_sites_and_is_capped() -> None:
    lookback = travel_lookback_s([LONDON, PARIS], POLICY)
    assert lookback == pytest.approx(343.6 / 250 * 3600 + 30, abs=10)
    assert travel_lookback_s([LONDON, PARIS], TravelPolicy(max_lookback_s=600)) == 600
    assert travel_lookback_s([], POLICY) == 30


def test_history_window_is_the_longer_of_both_rules() -> None:
    repeat = RepeatPolicy(window_s=3600)
    assert history_window_s([LONDON, PARIS], POLICY, repeat) == travel_lookback_s(
        [LONDON, PARIS], POLICY
    )
    assert history_window_s([CAMPUS_N, DEPOT], POLICY, repeat) == 3600


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("max_speed_kmh", {"max_speed_kmh": 0}),
        ("min_distance_km", {"min_distance_km": -1}),
        ("clock_skew_s", {"clock_skew_s": float("nan")}),
        ("max_lookback_s", {"max_lookback_s": 0}),
    ],
)
def test_travel_policy_rejects_out_of_range_settings(field: str, kwargs: dict[str, float]) -> None:
    with pytest.raises(RuleConfigError) as info:
        TravelPolicy(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


_SITES = [LONDON, PARIS, CAMPUS_N, CAMPUS_S, DEPOT]
_site_names = st.sampled_from([loc.site for loc in _SITES] + ["atlantis"])
_minutes = st.integers(min_value=0, max_value=600)


@st.composite
def _histories(draw: st.DrawFn) -> tuple[Sighting, list[Sighting]]:
    n = draw(st.integers(min_value=0, max_value=8))
    history = [sighting(f"h{i}", draw(_site_names), draw(_minutes)) for i in range(n)]
    current = sighting("cur", draw(_site_names), draw(_minutes))
    return current, history


@settings(max_examples=150, deadline=None)
@given(data=_histories(), order=st.randoms(use_true_random=False))
def test_impossible_travel_agrees_with_brute_force_in_any_arrival_order(
    data: tuple[Sighting, list[Sighting]], order: object
) -> None:
    current, history = data
    shuffled = list(history)
    order.shuffle(shuffled)  # type: ignore[attr-defined]
    found = impossible_travel(current, shuffled, LOCS, POLICY)
    pairs = [check_travel(current, s, LOCS, POLICY) for s in history]
    impossible = [c for c in pairs if c is not None and c.impossible]
    assert (found is None) == (not impossible)
    if found is not None:
        assert found.implied_speed_kmh == max(c.implied_speed_kmh for c in impossible)
        assert found.distance_km >= POLICY.min_distance_km
        assert found.implied_speed_kmh > POLICY.max_speed_kmh
        assert current in (found.earlier, found.later)
        assert found == impossible_travel(current, history, LOCS, POLICY)


@settings(max_examples=100, deadline=None)
@given(
    lat=st.floats(min_value=-60, max_value=60),
    lon=st.floats(min_value=-170, max_value=170),
    dlat=st.floats(min_value=-2, max_value=2),
    dlon=st.floats(min_value=-2, max_value=2),
    slack=st.floats(min_value=1.0, max_value=5.0),
)
def test_travel_at_or_under_the_speed_limit_is_never_impossible(
    lat: float, lon: float, dlat: float, dlon: float, slack: float
) -> None:
    a_loc, b_loc = SiteLocation("a", lat, lon), SiteLocation("b", lat + dlat, lon + dlon)
    locs: Mapping[str, SiteLocation] = MappingProxyType({"a": a_loc, "b": b_loc})
    policy = TravelPolicy(clock_skew_s=0)
    hours = haversine_km(a_loc, b_loc) / policy.max_speed_kmh * slack
    a = Sighting("e1", "ABC1234", "a", "cam-1", T0)
    b = Sighting("e2", "ABC1234", "b", "cam-1", T0 + timedelta(hours=hours, seconds=1))
    check = check_travel(a, b, locs, policy)
    assert check is not None and not check.impossible


# -- repeated sightings ---------------------------------------------------------------------
REPEAT = RepeatPolicy()  # 1 h, 3 sites or 10 passes, 60 s same pass


def test_three_sites_within_an_hour_trigger_by_sites() -> None:
    history = [sighting("e1", "london", 0), sighting("e2", "depot", 20)]
    result = repeated_sightings(sighting("e3", "paris", 50), history, REPEAT)
    assert result is not None
    assert result.by_sites and not result.by_passes
    assert (result.site_count, result.pass_count, result.sighting_count) == (3, 3, 3)
    assert result.sites == ("london", "depot", "paris")
    assert [s.event_id for s in result.sightings] == ["e1", "e2", "e3"]
    assert "3 sites" in result.reason


def test_two_sites_within_an_hour_do_not_trigger() -> None:
    history = [sighting("e1", "london", 0), sighting("e2", "depot", 20)]
    assert repeated_sightings(sighting("e3", "depot", 40), history, REPEAT) is None


def test_three_sites_spread_over_more_than_the_window_do_not_trigger() -> None:
    history = [sighting("e1", "london", 0), sighting("e2", "depot", 40)]
    assert repeated_sightings(sighting("e3", "paris", 61), history, REPEAT) is None


def test_ten_passes_at_one_site_trigger_by_passes_and_nine_do_not() -> None:
    passes = [sighting(f"e{i}", "depot", i * 5) for i in range(10)]
    assert repeated_sightings(passes[8], passes[:8], REPEAT) is None
    result = repeated_sightings(passes[9], passes[:9], REPEAT)
    assert result is not None and result.by_passes and not result.by_sites
    assert (result.site_count, result.pass_count) == (1, 10)


def test_several_cameras_reading_one_pass_count_once() -> None:
    history = []
    for i in range(9):  # nine passes, each read by an entry and an exit camera 30 s apart
        history.append(sighting(f"in{i}", "depot", i * 5, camera="entry"))
        history.append(sighting(f"out{i}", "depot", i * 5 + 0.5, camera="exit"))
    result = repeated_sightings(history[-1], history[:-1], REPEAT)
    assert result is None
    tenth = repeated_sightings(sighting("in9", "depot", 45), history, REPEAT)
    assert tenth is not None and tenth.pass_count == 10 and tenth.sighting_count == 19


def test_late_sighting_completes_a_pattern_after_the_fact() -> None:
    history = [sighting("e2", "depot", 30), sighting("e3", "paris", 50)]
    late = sighting("e1", "london", 0)  # arrives last, happened first
    result = repeated_sightings(late, history, REPEAT)
    assert result is not None and result.window_start == late.seen_at
    assert result.site_count == 3


def test_redelivered_sighting_is_counted_once() -> None:
    s1, s2 = sighting("e1", "london", 0), sighting("e2", "depot", 10)
    assert repeated_sightings(s2, [s1, s1, s2, s2], REPEAT) is None


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("window_s", {"window_s": 0}),
        ("min_sites", {"min_sites": 1}),
        ("min_passes", {"min_passes": 1}),
        ("same_pass_s", {"same_pass_s": 3600}),
    ],
)
def test_repeat_policy_rejects_out_of_range_settings(field: str, kwargs: dict[str, int]) -> None:
    with pytest.raises(RuleConfigError) as info:
        RepeatPolicy(**kwargs)
    assert info.value.field == field


@settings(max_examples=100, deadline=None)
@given(data=_histories(), order=st.randoms(use_true_random=False))
def test_repeated_sightings_does_not_depend_on_arrival_order(
    data: tuple[Sighting, list[Sighting]], order: object
) -> None:
    current, history = data
    shuffled = list(history)
    order.shuffle(shuffled)  # type: ignore[attr-defined]
    policy = RepeatPolicy(window_s=1800, min_sites=3, min_passes=4)
    result = repeated_sightings(current, shuffled, policy)
    assert result == repeated_sightings(current, history, policy)
    if result is not None:
        assert current in result.sightings
        assert (
            result.site_count == len(set(result.sites)) == len({s.site for s in result.sightings})
        )
        assert result.pass_count <= result.sighting_count == len(result.sightings)
        assert result.window_end - result.window_start <= timedelta(seconds=policy.window_s)
        assert result.by_sites or result.by_passes


# -- cooldown and incidents -----------------------------------------------------------------
def test_cooldown_policy_uses_per_kind_override_else_default() -> None:
    policy = CooldownPolicy(per_kind_s=MappingProxyType({"repeated_sightings": 3600}))
    assert policy.ttl_s("repeated_sightings") == 3600
    assert policy.ttl_s("watchlist") == 600


def test_cooldown_is_over_only_after_its_ttl() -> None:
    assert cooldown_over(None, T0, 600)
    assert not cooldown_over(T0, T0 + timedelta(seconds=599), 600)
    assert cooldown_over(T0, T0 + timedelta(seconds=600), 600)


def test_hit_within_the_window_of_the_last_hit_continues_the_incident() -> None:
    assert incident_continues(T0, T0 + timedelta(minutes=29), 1800)
    assert not incident_continues(T0, T0 + timedelta(minutes=30), 1800)
    assert not incident_continues(None, T0, 1800)


def test_incident_severity_escalates_at_hit_counts_and_caps_at_critical() -> None:
    policy = IncidentPolicy()  # escalate at 3 and 6 hits
    assert [incident_severity("medium", n, policy) for n in (1, 2, 3, 5, 6, 50)] == [
        "medium",
        "medium",
        "high",
        "high",
        "critical",
        "critical",
    ]
    assert incident_severity("critical", 9, policy) == "critical"


def test_incident_policy_rejects_unordered_escalation_steps() -> None:
    with pytest.raises(RuleConfigError) as info:
        IncidentPolicy(escalate_at=(6, 3))
    assert info.value.field == "escalate_at"


def test_format_duration_reads_like_a_human() -> None:
    assert [format_duration(s) for s in (45, 250, 600, 7500, 7200)] == [
        "45 s",
        "4 min 10 s",
        "10 min",
        "2 h 5 min",
        "2 h",
    ]


def test_reason_shows_times_in_utc_whatever_the_input_zone() -> None:
    plus2 = timezone(timedelta(hours=2))
    a = Sighting("e1", "ABC1234", "london", "cam-1", T0.astimezone(plus2))
    b = sighting("e2", "paris", 20)
    check = check_travel(a, b, LOCS, POLICY)
    assert check is not None and "08:00:00 UTC" in check.reason


def test_docs_correlation_snippets_run() -> None:
    text = (Path(__file__).parents[2] / "docs" / "correlation.md").read_text()
    snippets = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert snippets
    for snippet in snippets:
        exec(compile(snippet, "docs/correlation.md", "exec"), {})


# -- alerts -----------------------------------------------------------------------------------
def _read_sighting(site: str, minutes: float) -> Sighting:
    return Sighting.from_read(plate_read(site=site, seen_at=T0 + timedelta(minutes=minutes)))


def test_travel_alert_carries_distance_speed_and_the_other_sighting() -> None:
    london, paris = _read_sighting("london", 0), _read_sighting("paris", 30)
    check = impossible_travel(paris, [london], LOCS, POLICY)
    assert check is not None
    raised = T0 + timedelta(minutes=31)
    alert = travel_alert(check, paris, raised)
    assert (alert.kind, alert.severity, alert.site, alert.plate) == (
        "impossible_travel",
        "medium",
        "paris",
        "ABC1234",
    )
    assert alert.sighting_event_id == UUID(paris.event_id)
    assert alert.related_sightings == [UUID(london.event_id)]
    assert alert.seen_at == paris.seen_at and alert.raised_at == raised
    assert alert.details["distance_km"] == pytest.approx(343.6, abs=0.5)
    assert alert.details["other_site"] == "london"
    assert alert.reason == check.reason
    assert decode_event(encode_event(alert), Alert) == alert


def test_travel_alert_for_a_late_replay_points_at_the_later_sighting() -> None:
    london, paris = _read_sighting("london", 0), _read_sighting("paris", 30)
    check = impossible_travel(london, [paris], LOCS, POLICY)  # London arrives last
    assert check is not None
    alert = travel_alert(check, london, T0 + timedelta(hours=2), severity="high")
    assert alert.site == "london" and alert.severity == "high"
    assert alert.related_sightings == [UUID(paris.event_id)]


def test_repeat_alert_lists_at_most_50_related_sightings_newest_first() -> None:
    history = [_read_sighting(("london", "paris", "depot")[i % 3], i) for i in range(59)]
    current = _read_sighting("depot", 59)
    result = repeated_sightings(current, history, REPEAT)
    assert result is not None
    alert = repeat_alert(result, current, T0 + timedelta(hours=1))
    assert (alert.kind, alert.severity) == ("repeated_sightings", "low")
    assert len(alert.related_sightings) == 50
    assert alert.related_sightings[0] == UUID(history[-1].event_id)
    assert UUID(current.event_id) not in alert.related_sightings
    assert alert.details["site_count"] == 3 and alert.details["pass_count"] == 60
    assert "3 sites" in alert.title
    assert decode_event(encode_event(alert), Alert) == alert
