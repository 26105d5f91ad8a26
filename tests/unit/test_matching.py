"""Watch-list matching: modes, confusions, validity, explanations, index vs brute force."""

from __future__ import annotations

import fnmatch
import itertools
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.correlator.matching import (
    CONFUSION_CLASSES,
    Distance,
    Edit,
    EditKind,
    Match,
    MatchingError,
    MatchMode,
    MatchQueryError,
    WatchEntry,
    WatchEntryError,
    WatchIndex,
    confusion_cost,
    deletion_variants,
    match_entry,
    weighted_distance,
    wildcard_match,
)

pytestmark = pytest.mark.correlator

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
CONFUSION_PAIRS = [pair for cls in CONFUSION_CLASSES for pair in itertools.permutations(cls, 2)]


def entry(
    entry_id: int,
    pattern: str,
    mode: MatchMode = MatchMode.EXACT,
    *,
    priority: int = 1,
    valid_from: datetime | None = None,
    valid_until: datetime | None = None,
    max_cost: float | None = None,
    list_id: int = 1,
) -> WatchEntry:
    return WatchEntry(
        entry_id=entry_id,
        list_id=list_id,
        pattern=pattern,
        mode=mode,
        category="stolen",
        priority=priority,
        valid_from=valid_from,
        valid_until=valid_until,
        max_cost=max_cost,
    )


def index_of(*entries: WatchEntry, pending_limit: int = 4096) -> WatchIndex:
    index = WatchIndex(pending_limit=pending_limit)
    index.add_many(entries)
    return index


def ids(matches: list[Match]) -> list[int]:
    return [m.entry.entry_id for m in matches]


# --- costs and distance ------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), CONFUSION_PAIRS)
def test_confusion_cost_is_low_for_every_listed_pair(a: str, b: str) -> None:
    assert confusion_cost(a, b) == pytest.approx(0.3)


def test_confusion_pairs_cover_the_issue_list() -> None:
    listed = {frozenset(p) for p in CONFUSION_PAIRS}
    for group in ("O0DQ", "I1L", "B8", "S5", "Z2", "G6"):
        for a, b in itertools.combinations(group, 2):
            assert frozenset((a, b)) in listed
    assert len(listed) == 13


def test_confusion_cost_is_zero_for_same_and_one_for_unrelated_characters() -> None:
    assert confusion_cost("A", "A") == 0.0
    assert confusion_cost("A", "B") == 1.0
    assert confusion_cost("0", "8") == 1.0  # different classes


@pytest.mark.parametrize(("a", "b"), CONFUSION_PAIRS)
def test_fuzzy_entry_matches_plate_with_each_confusion(a: str, b: str) -> None:
    index = index_of(entry(1, f"X{b}7", MatchMode.FUZZY))
    [match] = index.match(f"X{a}7", NOW)
    assert match.mode is MatchMode.FUZZY
    assert match.cost == pytest.approx(0.3)
    assert match.explanation == f"fuzzy: {a}->{b} at position 2"


def test_weighted_distance_reports_edits_and_explanation() -> None:
    found = weighted_distance("AB0CDE", "ABOCD")
    assert found == Distance(
        cost=1.3,
        edits=(
            Edit(EditKind.SUBSTITUTE, 3, "0", "O", 0.3),
            Edit(EditKind.DELETE, 6, "E", "", 1.0),
        ),
    )
    assert found.explanation == "0->O at position 3, delete E at position 6"


def test_weighted_distance_explains_insertion_at_end() -> None:
    found = weighted_distance("ABC", "ABCD")
    assert found is not None
    assert found.cost == 1.0
    assert found.explanation == "insert D at position 4"


def test_weighted_distance_identical_strings_cost_nothing() -> None:
    assert weighted_distance("AB12", "AB12") == Distance(0.0, ())
    assert Distance(0.0, ()).explanation == "identical"


def test_weighted_distance_stops_past_max_cost() -> None:
    assert weighted_distance("AAAAAA", "BBBBBB", max_cost=1.0) is None
    assert weighted_distance("A", "ABCD", max_cost=2.0) is None
    assert weighted_distance("O0DQ", "QDO0", max_cost=1.2) is not None
    assert weighted_distance("O0DQ", "QDO0", max_cost=1.1) is None


def test_deletion_variants_cover_up_to_k_deletions() -> None:
    assert deletion_variants("ABC", 0) == {"ABC"}
    assert deletion_variants("ABC", 1) == {"ABC", "BC", "AC", "AB"}
    assert deletion_variants("ABC", 2) == {"ABC", "BC", "AC", "AB", "A", "B", "C"}
    assert deletion_variants("AAB", 3) == {"AAB", "AB", "AA", "A", "B", ""}


# --- modes ---------------------------------------------------------------------------------------


def test_exact_entry_matches_only_the_identical_plate() -> None:
    index = index_of(entry(1, "AB123CD"))
    [match] = index.match("AB123CD", NOW)
    assert (match.mode, match.cost, match.explanation) == (MatchMode.EXACT, 0.0, "exact")
    assert index.match("AB123C0", NOW) == []
    assert index.match("AB123C", NOW) == []


def test_fuzzy_entry_matches_identical_plate_at_cost_zero() -> None:
    [match] = index_of(entry(1, "AB123CD", MatchMode.FUZZY)).match("AB123CD", NOW)
    assert (match.mode, match.cost, match.explanation) == (MatchMode.EXACT, 0.0, "exact")
    assert match.entry.mode is MatchMode.FUZZY


def test_fuzzy_default_allows_three_confusions_but_not_four() -> None:
    index = index_of(entry(1, "O0DQ15", MatchMode.FUZZY))
    [match] = index.match("Q0OD15", NOW)
    assert match.cost == pytest.approx(0.9)
    assert match.explanation == (
        "fuzzy: Q->O at position 1, O->D at position 3, D->Q at position 4"
    )
    assert index.match("Q0OD1S", NOW) == []  # four confusions: 1.2


def test_fuzzy_default_allows_one_ordinary_error_but_not_error_plus_confusion() -> None:
    index = index_of(entry(1, "AB123CD", MatchMode.FUZZY))
    [sub] = index.match("AB123XD", NOW)
    assert (sub.cost, sub.explanation) == (1.0, "fuzzy: X->C at position 6")
    [ins] = index.match("AB12CD", NOW)
    assert (ins.cost, ins.explanation) == (1.0, "fuzzy: insert 3 at position 5")
    [dele] = index.match("AB1234CD", NOW)
    assert (dele.cost, dele.explanation) == (1.0, "fuzzy: delete 4 at position 6")
    assert index.match("A8123XD", NOW) == []


def test_fuzzy_entry_max_cost_overrides_index_default() -> None:
    strict = entry(1, "AB123CD", MatchMode.FUZZY, max_cost=0.3)
    loose = entry(2, "AB123CD", MatchMode.FUZZY, max_cost=2.0)
    index = index_of(strict, loose)
    assert ids(index.match("A8123CD", NOW)) == [1, 2]
    assert ids(index.match("AB123XD", NOW)) == [2]
    assert ids(index.match("XB123XD", NOW)) == [2]
    assert ids(index.match("XB12XXD", NOW)) == []


def test_index_default_max_cost_applies_to_entries_without_override() -> None:
    index = WatchIndex(default_max_cost=0.0)
    index.add(entry(1, "AB123CD", MatchMode.FUZZY))
    assert index.match("AB123C0", NOW) == []
    assert ids(index.match("AB123CD", NOW)) == [1]


@pytest.mark.parametrize(
    ("pattern", "plate", "hit"),
    [
        ("AB?12*", "ABX12", True),  # star matches empty run
        ("AB?12*", "ABX12QQQ", True),
        ("AB?12*", "AB12", False),  # ? needs exactly one character
        ("AB?12", "ABX123", False),  # no star: fixed length
        ("*9Z", "QQ9Z", True),  # star-leading, keyed by suffix
        ("*9Z", "QQ9Y", False),
        ("?A?", "XAY", True),
        ("*X9*", "AX9B", True),  # keyed by a middle run: every substring looked up
        ("*X9*", "A9XB", False),
        ("A*XYZ", "AQQXYZ", True),  # tail holds more literals than head
        ("*AB?C*", "QABXCQ", True),
        ("*AB?C*", "QABXDQ", False),
        ("A*B*C", "AXXBYC", True),
        ("A*B*C", "AXXCYB", False),
    ],
)
def test_wildcard_entry_matches_question_mark_and_star(pattern: str, plate: str, hit: bool) -> None:
    index = index_of(entry(1, pattern, MatchMode.WILDCARD))
    matches = index.match(plate, NOW)
    assert bool(matches) is hit
    assert wildcard_match(pattern, plate) is hit
    if hit:
        assert matches[0].explanation == f"wildcard {pattern}"
        assert matches[0].mode is MatchMode.WILDCARD


# --- validity -------------------------------------------------------------------------------------


def test_match_ignores_expired_watchlist_entry() -> None:
    index = index_of(entry(1, "AB123CD", valid_until=NOW - timedelta(seconds=1)))
    assert index.match("AB123CD", NOW) == []


def test_match_ignores_not_yet_valid_entry() -> None:
    index = index_of(entry(1, "AB123CD", MatchMode.FUZZY, valid_from=NOW + timedelta(hours=1)))
    assert index.match("AB123CD", NOW) == []
    assert ids(index.match("AB123CD", NOW + timedelta(hours=1))) == [1]


def test_validity_window_is_half_open() -> None:
    index = index_of(entry(1, "AB1", valid_from=NOW, valid_until=NOW + timedelta(hours=1)))
    assert ids(index.match("AB1", NOW)) == [1]
    assert index.match("AB1", NOW + timedelta(hours=1)) == []


def test_validity_compares_instants_across_time_zones() -> None:
    cet = timezone(timedelta(hours=1))
    index = index_of(entry(1, "AB1", valid_until=NOW.astimezone(cet)))
    assert index.match("AB1", NOW - timedelta(microseconds=1)) != []
    assert index.match("AB1", NOW) == []


# --- ordering, updates, errors ------------------------------------------------------------------


def test_matches_sort_by_priority_then_cost() -> None:
    index = index_of(
        entry(1, "AB123CD", MatchMode.FUZZY, priority=2),
        entry(2, "AB123C0", MatchMode.FUZZY, priority=1),
        entry(3, "AB123CD", priority=1),
        entry(4, "AB1?3CD", MatchMode.WILDCARD, priority=0),
    )
    assert ids(index.match("AB123CD", NOW)) == [4, 3, 2, 1]


def test_match_many_answers_a_batch_as_plate_by_plate() -> None:
    """A batch large enough for the vectorised lookup: keys stored several times (the same
    pattern on three lists), entries in the sorted base and in the pending dict, misses."""
    index = WatchIndex(pending_limit=4)
    index.add_many(
        [entry(i, f"AB{i:03d}CD", list_id=1 + i % 3) for i in range(30)]  # base
        + [entry(100 + k, "SAME123", list_id=k) for k in (1, 2, 3)]
        + [entry(200, "AB0??CD", MatchMode.WILDCARD), entry(201, "XY777ZZ", MatchMode.FUZZY)]
    )
    index.add(entry(300, "PENDING1"))  # fewer than pending_limit: stays in the dict
    plates = [f"AB{i:03d}CD" for i in range(0, 40, 3)] + ["SAME123", "XY777Z2", "PENDING1", "NONE"]
    batch = plates * 5
    got = index.match_many(batch, NOW)
    assert got == [index.match(p, NOW) for p in batch]
    by_plate = dict(zip(batch, got, strict=True))
    assert sorted(ids(by_plate["SAME123"])) == [101, 102, 103]
    assert ids(by_plate["PENDING1"]) == [300]
    assert ids(by_plate["XY777Z2"]) == [201] and by_plate["NONE"] == []
    assert sorted(ids(by_plate["AB006CD"])) == [6, 200]


def test_removed_entry_no_longer_matches() -> None:
    index = index_of(entry(1, "AB123CD"), entry(2, "AB12*", MatchMode.WILDCARD))
    assert index.remove(1) is True
    assert ids(index.match("AB123CD", NOW)) == [2]
    assert index.remove(1) is False
    assert 1 not in index
    assert len(index) == 1


def test_wildcard_shapes_added_or_removed_between_queries_are_seen() -> None:
    """The compiled wildcard shapes follow adds and removes made after a query."""
    index = index_of(entry(1, "AB12*", MatchMode.WILDCARD))
    assert ids(index.match("AB123CD", NOW)) == [1]
    index.add(entry(2, "*3CD", MatchMode.WILDCARD))  # a new tail shape
    index.add(entry(3, "?B1?3CD", MatchMode.WILDCARD))  # a new head shape
    index.add(entry(4, "*B12*", MatchMode.WILDCARD))  # a new middle shape
    assert ids(index.match("AB123CD", NOW)) == [1, 2, 3, 4]
    assert index.remove(2) and index.remove(4)
    assert ids(index.match("AB123CD", NOW)) == [1, 3]
    index.add(entry(5, "*23CD", MatchMode.WILDCARD))
    assert ids(index.match("AB123CD", NOW)) == [1, 3, 5]


def test_add_with_known_id_replaces_the_entry() -> None:
    index = index_of(entry(1, "AB123CD"))
    index.add(entry(1, "ZZ999", priority=5))
    assert index.match("AB123CD", NOW) == []
    [match] = index.match("ZZ999", NOW)
    assert match.entry.priority == 5
    assert len(index) == 1


def test_get_round_trips_every_field() -> None:
    original = entry(
        7,
        "AB1*",
        MatchMode.WILDCARD,
        priority=3,
        valid_from=NOW,
        valid_until=NOW + timedelta(days=1),
    )
    fuzzy = entry(8, "AB1", MatchMode.FUZZY, max_cost=0.6)
    index = index_of(original, fuzzy)
    assert index.get(7) == original
    assert index.get(8) == fuzzy
    assert index.get(9) is None


def test_removals_survive_compaction() -> None:
    index = index_of(*(entry(i, f"AB{i}") for i in range(50)), pending_limit=2)
    for i in range(0, 50, 2):
        index.remove(i)
    index.compact()
    assert [ids(index.match(f"AB{i}", NOW)) for i in range(4)] == [[], [1], [], [3]]
    assert len(index) == 25


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"pattern": "ab12"}, "pattern"),
        ({"pattern": ""}, "pattern"),
        ({"pattern": "A" * 33}, "pattern"),
        ({"pattern": "AB?1"}, "pattern"),  # wildcard char in an exact entry
        ({"pattern": "?*", "mode": MatchMode.WILDCARD}, "pattern"),
        ({"valid_from": datetime(2026, 1, 1)}, "valid_from"),
        ({"valid_until": NOW, "valid_from": NOW}, "valid_until"),
        ({"max_cost": 2.5, "mode": MatchMode.FUZZY}, "max_cost"),
        ({"max_cost": -0.1, "mode": MatchMode.FUZZY}, "max_cost"),
        ({"priority": 1 << 63}, "priority"),
        ({"list_id": "7"}, "list_id"),
    ],
)
def test_invalid_entry_names_the_field(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"pattern": "AB12", "mode": MatchMode.EXACT} | kwargs
    with pytest.raises(WatchEntryError) as err:
        entry(1, **args)  # type: ignore[arg-type]
    assert err.value.field == field


def test_match_rejects_unnormalised_plate_and_naive_now() -> None:
    index = index_of(entry(1, "AB12"))
    with pytest.raises(MatchQueryError) as err:
        index.match("ab 12", NOW)
    assert err.value.field == "plate"
    with pytest.raises(MatchQueryError) as err:
        index.match("AB12", datetime(2026, 11, 25))
    assert err.value.field == "now"
    with pytest.raises(MatchQueryError) as err:
        match_entry(entry(1, "AB12"), "AB12", datetime(2026, 11, 25))
    assert err.value.field == "now"


def test_index_rejects_default_max_cost_out_of_range() -> None:
    with pytest.raises(MatchingError) as err:
        WatchIndex(default_max_cost=3.0)
    assert err.value.field == "default_max_cost"


# --- properties ---------------------------------------------------------------------------------

# Small alphabets rich in confusable characters, so random plates and patterns collide often.
PLATE_CHARS = "AB8O0DQI1LS5Z2X"
plates = st.text(PLATE_CHARS, min_size=1, max_size=7)
wild_patterns = st.text(PLATE_CHARS + "??**", min_size=1, max_size=7).filter(
    lambda p: any(c not in "?*" for c in p)
)
offsets = st.one_of(st.none(), st.integers(-3, 3))


def _units(a: str, b: str) -> int:
    """Reference weighted Levenshtein in tenths, no early exit, no backtrace."""
    canon = {ch: cls[0] for cls in CONFUSION_CLASSES for ch in cls}

    def sub(x: str, y: str) -> int:
        return 0 if x == y else 3 if canon.get(x, x) == canon.get(y, y) else 10

    row = [10 * j for j in range(len(b) + 1)]
    for i, x in enumerate(a, 1):
        new = [10 * i]
        for j, y in enumerate(b, 1):
            new.append(min(row[j - 1] + sub(x, y), row[j] + 10, new[j - 1] + 10))
        row = new
    return row[-1]


def brute_force(
    entries: dict[int, WatchEntry], plate: str, now: datetime
) -> list[tuple[object, ...]]:
    found = []
    for e in entries.values():
        if (e.valid_from is not None and now < e.valid_from) or (
            e.valid_until is not None and now >= e.valid_until
        ):
            continue
        if e.mode is MatchMode.EXACT:
            if plate == e.pattern:
                found.append((e.priority, 0, e.entry_id, "exact"))
        elif e.mode is MatchMode.WILDCARD:
            if fnmatch.fnmatchcase(plate, e.pattern):
                found.append((e.priority, 0, e.entry_id, "wildcard"))
        else:
            units = _units(plate, e.pattern)
            limit = 10 if e.max_cost is None else round(e.max_cost * 10)
            if units <= limit:
                found.append((e.priority, units, e.entry_id, "exact" if units == 0 else "fuzzy"))
    return sorted(found)


@st.composite
def watch_entries(draw: st.DrawFn, entry_id: int) -> WatchEntry:
    mode = draw(st.sampled_from(list(MatchMode)))
    pattern = draw(wild_patterns if mode is MatchMode.WILDCARD else plates)
    start, end = draw(offsets), draw(offsets)
    if start is not None and end is not None and end <= start:
        start, end = end - 1, start
    return WatchEntry(
        entry_id=entry_id,
        list_id=draw(st.integers(1, 3)),
        pattern=pattern,
        mode=mode,
        category=draw(st.sampled_from(["stolen", "wanted", "allow"])),
        priority=draw(st.integers(0, 3)),
        valid_from=None if start is None else NOW + timedelta(hours=start),
        valid_until=None if end is None else NOW + timedelta(hours=end),
        max_cost=draw(st.sampled_from([None, 0.0, 0.3, 0.6, 1.0, 1.3, 2.0])),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[WatchEntry], list[int], list[str]]:
    n = draw(st.integers(1, 40))
    entries = [draw(watch_entries(draw(st.integers(0, n + 5)))) for _ in range(n)]
    removed = draw(st.lists(st.integers(0, n + 5), max_size=10))
    queries = draw(st.lists(plates, min_size=1, max_size=5))
    # Also query plates derived from entries (confused / edited), so hits are frequent.
    for e in entries[:5]:
        base = e.pattern.replace("?", "A").replace("*", "")
        queries.append(base.translate(str.maketrans("O0SB", "0O58")))
        queries.append(base)
    return entries, removed, queries


@given(scenarios(), st.integers(1, 8))
@settings(max_examples=300, deadline=None)
def test_index_agrees_with_brute_force_scan(
    scenario: tuple[list[WatchEntry], list[int], list[str]], pending_limit: int
) -> None:
    entries, removed, queries = scenario
    index = WatchIndex(pending_limit=pending_limit)
    expected: dict[int, WatchEntry] = {}
    half = len(entries) // 2
    index.add_many(entries[:half])  # bulk, then one by one: both paths
    for e in entries[half:]:
        index.add(e)
    for e in entries:
        expected[e.entry_id] = e
    for entry_id in removed:
        assert index.remove(entry_id) is (expected.pop(entry_id, None) is not None)
    assert len(index) == len(expected)
    for plate in queries:
        for now in (NOW, NOW + timedelta(hours=2), NOW - timedelta(hours=2)):
            got = index.match(plate, now)
            assert [
                (m.entry.priority, round(m.cost * 10), m.entry.entry_id, m.mode.value) for m in got
            ] == brute_force(expected, plate, now)
            for m in got:
                assert m.entry == expected[m.entry.entry_id]
                assert m == match_entry(m.entry, plate, now)
    # A batch (repeated so that it takes the vectorised lookup) answers as plate by plate.
    batch = queries * 8
    for now in (NOW, NOW + timedelta(hours=2)):
        assert index.match_many(batch, now) == [index.match(p, now) for p in batch]


@given(plates, plates)
@settings(max_examples=300, deadline=None)
def test_weighted_distance_edits_rebuild_the_pattern_at_the_stated_cost(a: str, b: str) -> None:
    found = weighted_distance(a, b)
    assert found is not None
    assert round(found.cost * 10) == _units(a, b)
    assert found.cost == pytest.approx(sum(e.cost for e in found.edits))
    chars = list(a)
    for edit in reversed(found.edits):  # right to left keeps earlier positions valid
        at = edit.position - 1
        if edit.kind is EditKind.SUBSTITUTE:
            assert chars[at] == edit.observed
            chars[at] = edit.expected
        elif edit.kind is EditKind.DELETE:
            assert chars[at] == edit.observed
            del chars[at]
        else:
            chars.insert(at, edit.expected)
    assert "".join(chars) == b


@given(plates, plates, st.sampled_from([0.0, 0.3, 0.6, 0.9, 1.0, 1.3, 2.0]))
@settings(max_examples=300, deadline=None)
def test_weighted_distance_with_limit_agrees_with_unbounded_distance(
    a: str, b: str, max_cost: float
) -> None:
    found = weighted_distance(a, b, max_cost)
    units = _units(a, b)
    if units > round(max_cost * 10):
        assert found is None
    else:
        assert found is not None
        assert round(found.cost * 10) == units


def test_docs_matching_snippets_run() -> None:
    text = (Path(__file__).parents[2] / "docs" / "matching.md").read_text()
    snippets = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert snippets
    for snippet in snippets:
        exec(compile(snippet, "docs/matching.md", "exec"), {})


def test_bench_matching_command_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.correlator import bench_matching

    out = tmp_path / "bench.json"
    argv = ["--entries", "3000", "--queries", "300", "--updates", "50", "--json", str(out)]
    assert bench_matching.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["entries"] == 3000
    assert set(result["match"]) == {"p50_us", "p99_us", "max_us", "mean_us"}
    assert set(result["match_by_kind"]) == {"exact-hit", "fuzzy-variant", "random", "wildcard-hit"}
    assert result["match_by_kind"]["exact-hit"]["hit_rate"] > 0.5
    assert json.loads(capsys.readouterr().out) == result
