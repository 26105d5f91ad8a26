"""Watch-list matching: exact, OCR-confusion-aware fuzzy and wildcard (pure: no I/O, no clock).

A sighted plate (already normalised to ``A-Z0-9`` by `shared.plates`) is matched against every
`WatchEntry` held by a `WatchIndex`. The index never scans all entries; see ``docs/matching.md``.

Costs (in `COST_SCALE` units of 0.1 internally, so thresholds compare exactly):

- a substitution inside one OCR confusion class (`CONFUSION_CLASSES`: O/0/D/Q, I/1/L, B/8, S/5,
  Z/2, G/6; every pair inside a class) costs `CONFUSION_COST` = 0.3;
- any other substitution, an insertion or a deletion costs `EDIT_COST` = 1.0.

A fuzzy entry matches when the weighted edit distance from the plate to its pattern is at most
its ``max_cost`` (else the index's ``default_max_cost``, `DEFAULT_MAX_COST` = 1.0: one ordinary
error, or up to three confusions). Costs are counted in tenths, so a threshold of 0.95 acts as
0.9. ``max_cost`` is capped at `MAX_FUZZY_COST` = 2.0 (two ordinary errors) to keep the deletion
neighbourhood small.

Validity is half-open: an entry is live when ``valid_from <= now < valid_until`` (``None``: no
bound). Matches sort by ``priority`` ascending (0 is the most urgent), then cost, then entry id.
"""

from __future__ import annotations

import itertools
import math
import operator
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from shared.errors import FieldError

CONFUSION_CLASSES: Final[tuple[str, ...]] = ("O0DQ", "I1L", "B8", "S5", "Z2", "G6")
COST_SCALE: Final = 10  # internal integer cost units per 1.0
CONFUSION_COST: Final = 0.3
EDIT_COST: Final = 1.0
DEFAULT_MAX_COST: Final = 1.0
MAX_FUZZY_COST: Final = 2.0
MAX_PATTERN_LENGTH: Final = 32  # the watch_entry.pattern column is String(32)
WILDCARD_KEY_CHARS: Final = 4  # literal characters of a wildcard pattern used as its index key

_CONFUSION_UNITS: Final = 3
_EDIT_UNITS: Final = 10
_CANON: Final[dict[str, str]] = {ch: cls[0] for cls in CONFUSION_CLASSES for ch in cls}
_CANON_TABLE: Final = str.maketrans(_CANON)
_PLATE_RE: Final = re.compile(r"[A-Z0-9]+")
_WILDCARD_RE: Final = re.compile(r"[A-Z0-9?*]+")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)
_INT64: Final = -(1 << 63)
_NO_START: Final = np.iinfo(np.int64).min
_NO_END: Final = np.iinfo(np.int64).max
_CHUNK: Final = 65_536
_FILTER_BITS_PER_KEY: Final = 16
#: queries with at least this many keys (a batch of plates) are looked up with numpy
_VECTOR_QUERY_MIN: Final = 64
# Index keys: a text's hash below 2**50 (its ASCII bytes as a little-endian number modulo a prime,
# so numpy can compute it for a whole batch of plates with one matrix product) | kind << 50. The
# kind keeps exact (0), fuzzy (1) and each wildcard shape (2 and up) apart.
_KEY_PRIME: Final = (1 << 50) - 27
# Then mixed (multiplied by an odd constant, keeping the top 50 of 64 bits): short texts' bytes
# alone would fill the low bits unevenly, and the key table's filter reads the low bits.
_MIX: Final = 0x9E3779B97F4A7C15
_MASK64: Final = (1 << 64) - 1
_MIX_SHIFT: Final = 14
_KIND_SHIFT: Final = 50
_EXACT_KIND: Final = 0
_FUZZY_KIND: Final = 1
_KINDS: Final = 1 << 13  # bits 50-62: the key stays a positive int64
#: 256**j mod the prime: the weight of a text's j-th character
_WEIGHTS: Final = tuple(pow(256, j, _KEY_PRIME) for j in range(MAX_PATTERN_LENGTH))
#: batches of at least this many plates get their keys from numpy (`_batch_keys`)
_VECTOR_PLATES_MIN: Final = 2
#: character code -> code of its confusion class's representative (`canonical` for numpy)
_CANON_CODES: Final = np.array(
    [ord(_CANON.get(chr(c), chr(c))) if c < 128 else c for c in range(256)], dtype=np.uint8
)

Int64Array = npt.NDArray[np.int64]
SlotArray = npt.NDArray[np.int32]  # row numbers: 4 bytes each, up to 2**31 rows


class MatchingError(FieldError):
    """A watch entry or a query the matcher cannot accept: names the field and why."""


class WatchEntryError(MatchingError):
    """A `WatchEntry` field that is invalid."""


class MatchQueryError(MatchingError):
    """A `WatchIndex.match` argument (plate or now) that is invalid."""


class MatchMode(StrEnum):
    """How an entry's pattern is compared with a plate."""

    EXACT = "exact"
    FUZZY = "fuzzy"
    WILDCARD = "wildcard"


_MODES: Final[tuple[MatchMode, ...]] = (MatchMode.EXACT, MatchMode.FUZZY, MatchMode.WILDCARD)
_MODE_CODE: Final[dict[MatchMode, int]] = {m: i for i, m in enumerate(_MODES)}


@dataclass(frozen=True, slots=True)
class WatchEntry:
    """One watch-list (or allow-list) entry.

    ``pattern``: ``A-Z0-9`` for exact and fuzzy entries; wildcard entries may also use ``?`` (one
    character) and ``*`` (any run, possibly empty) and need at least one literal character.
    ``max_cost`` overrides the index's fuzzy threshold (ignored by exact and wildcard entries).
    ``valid_from``/``valid_until`` must be timezone-aware; the entry is live in
    ``[valid_from, valid_until)``. ``priority``: lower sorts first (0 is the most urgent).
    """

    entry_id: int
    list_id: int
    pattern: str
    mode: MatchMode
    category: str
    priority: int
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    max_cost: float | None = None

    def __post_init__(self) -> None:
        for name, number in (
            ("entry_id", self.entry_id),
            ("list_id", self.list_id),
            ("priority", self.priority),
        ):
            if (
                isinstance(number, bool)
                or not isinstance(number, int)
                or not _INT64 <= number < -_INT64
            ):
                raise WatchEntryError(name, number, "must be an integer that fits in 64 bits")
        if not isinstance(self.mode, MatchMode):
            raise WatchEntryError("mode", self.mode, "not a MatchMode")
        if not 1 <= len(self.pattern) <= MAX_PATTERN_LENGTH:
            raise WatchEntryError("pattern", self.pattern, f"length not in 1..{MAX_PATTERN_LENGTH}")
        if self.mode is MatchMode.WILDCARD:
            if not _WILDCARD_RE.fullmatch(self.pattern):
                raise WatchEntryError("pattern", self.pattern, "wildcard allows A-Z, 0-9, ? and *")
            if not any(ch not in "?*" for ch in self.pattern):
                raise WatchEntryError("pattern", self.pattern, "needs a literal character")
        elif not _PLATE_RE.fullmatch(self.pattern):
            raise WatchEntryError("pattern", self.pattern, "only A-Z and 0-9 allowed")
        for name, value in (("valid_from", self.valid_from), ("valid_until", self.valid_until)):
            if value is not None and value.utcoffset() is None:
                raise WatchEntryError(name, value, "must be timezone-aware")
        if (
            self.valid_from is not None
            and self.valid_until is not None
            and self.valid_until <= self.valid_from
        ):
            raise WatchEntryError("valid_until", self.valid_until, "not after valid_from")
        if self.max_cost is not None and not 0.0 <= self.max_cost <= MAX_FUZZY_COST:
            raise WatchEntryError("max_cost", self.max_cost, f"not in 0..{MAX_FUZZY_COST}")


@dataclass(frozen=True, slots=True)
class Match:
    """An entry that matched a plate, how, at what cost and why (human-readable)."""

    entry: WatchEntry
    mode: MatchMode
    cost: float
    explanation: str


class EditKind(StrEnum):
    """One step turning the sighted plate into the listed pattern."""

    SUBSTITUTE = "substitute"
    INSERT = "insert"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Edit:
    """An edit at 1-based ``position`` of the sighted plate.

    ``observed`` is the plate's character ("" for an insertion), ``expected`` the pattern's
    ("" for a deletion). An insertion at position p puts ``expected`` before the plate's p-th
    character (p = len + 1: at the end).
    """

    kind: EditKind
    position: int
    observed: str
    expected: str
    cost: float

    def __str__(self) -> str:
        if self.kind is EditKind.SUBSTITUTE:
            return f"{self.observed}->{self.expected} at position {self.position}"
        if self.kind is EditKind.INSERT:
            return f"insert {self.expected} at position {self.position}"
        return f"delete {self.observed} at position {self.position}"


@dataclass(frozen=True, slots=True)
class Distance:
    """The weighted edit distance from a plate to a pattern and one cheapest edit script."""

    cost: float
    edits: tuple[Edit, ...]

    @property
    def explanation(self) -> str:
        """E.g. ``0->O at position 3, delete X at position 7``; ``identical`` when no edits."""
        return ", ".join(str(e) for e in self.edits) if self.edits else "identical"


def confusion_cost(a: str, b: str) -> float:
    """Cost of reading character ``a`` where the pattern has ``b``: 0, 0.3 or 1.0."""
    return _sub_units(a, b) / COST_SCALE


def canonical(text: str) -> str:
    """Replace each character by its confusion class's representative (``0``, ``D`` -> ``O``)."""
    return text.translate(_CANON_TABLE)


def cost_units(cost: float) -> int:
    """A cost in integer tenths, rounded down (0.95 -> 9)."""
    return math.floor(cost * COST_SCALE + 1e-9)


def _sub_units(a: str, b: str) -> int:
    if a == b:
        return 0
    if _CANON.get(a, a) == _CANON.get(b, b):
        return _CONFUSION_UNITS
    return _EDIT_UNITS


def weighted_distance(a: str, b: str, max_cost: float = math.inf) -> Distance | None:
    """Weighted edit distance from plate ``a`` to pattern ``b``, or None once it exceeds max_cost.

    Stops early as soon as every cell of a DP row is past ``max_cost``.
    """
    limit = cost_units(max_cost) if math.isfinite(max_cost) else 1 << 60
    found = _distance_units(a, b, limit)
    if found is None:
        return None
    units, edits = found
    return Distance(units / COST_SCALE, edits)


def _distance_units(a: str, b: str, limit: int) -> tuple[int, tuple[Edit, ...]] | None:
    n, m = len(a), len(b)
    if abs(n - m) * _EDIT_UNITS > limit:
        return None
    ca, cb = a.translate(_CANON_TABLE), b.translate(_CANON_TABLE)
    if n == m and ca == cb:
        # Only confusions apart: the aligned substitutions cost 0.3 each, and any other alignment
        # needs an insertion and a deletion (2.0), so up to six confusions this is optimal.
        diff = [i for i in range(n) if a[i] != b[i]]
        units = _CONFUSION_UNITS * len(diff)
        if units <= 2 * _EDIT_UNITS:
            if units > limit:
                return None
            edits = (Edit(EditKind.SUBSTITUTE, i + 1, a[i], b[i], CONFUSION_COST) for i in diff)
            return units, tuple(edits)
    # Banded DP: a path within the limit never strays more than `band` cells off the diagonal.
    band = min(limit // _EDIT_UNITS, n + m)
    inf = 1 << 62
    prev = [j * _EDIT_UNITS if j <= band else inf for j in range(m + 1)]
    rows = [prev]
    for i in range(1, n + 1):
        x, cx = a[i - 1], ca[i - 1]
        cur = [inf] * (m + 1)
        if i <= band:
            cur[0] = i * _EDIT_UNITS
        best = cur[0]
        for j in range(max(1, i - band), min(m, i + band) + 1):
            y = b[j - 1]
            cost = prev[j - 1] + (
                0 if x == y else _CONFUSION_UNITS if cx == cb[j - 1] else _EDIT_UNITS
            )
            up = prev[j] + _EDIT_UNITS
            if up < cost:
                cost = up
            left = cur[j - 1] + _EDIT_UNITS
            if left < cost:
                cost = left
            cur[j] = cost
            if cost < best:
                best = cost
        if best > limit:
            return None
        rows.append(cur)
        prev = cur
    total = prev[m]
    if total > limit:
        return None
    return total, _backtrace(a, b, rows)


def _backtrace(a: str, b: str, rows: list[list[int]]) -> tuple[Edit, ...]:
    edits: list[Edit] = []
    i, j = len(a), len(b)
    while i > 0 or j > 0:
        here = rows[i][j]
        if i > 0 and j > 0:
            sub = _sub_units(a[i - 1], b[j - 1])
            if rows[i - 1][j - 1] + sub == here:
                if sub:
                    edits.append(Edit(EditKind.SUBSTITUTE, i, a[i - 1], b[j - 1], sub / COST_SCALE))
                i, j = i - 1, j - 1
                continue
        if i > 0 and rows[i - 1][j] + _EDIT_UNITS == here:
            edits.append(Edit(EditKind.DELETE, i, a[i - 1], "", EDIT_COST))
            i -= 1
            continue
        edits.append(Edit(EditKind.INSERT, i + 1, "", b[j - 1], EDIT_COST))
        j -= 1
    edits.reverse()
    return tuple(edits)


def wildcard_match(pattern: str, text: str) -> bool:
    """True when ``text`` fits ``pattern`` (``?`` one character, ``*`` any run, maybe empty)."""
    p = t = 0
    star = -1
    mark = 0
    np_, nt = len(pattern), len(text)
    while t < nt:
        if p < np_ and (pattern[p] == "?" or pattern[p] == text[t]):
            p += 1
            t += 1
        elif p < np_ and pattern[p] == "*":
            star, mark = p, t
            p += 1
        elif star >= 0:
            p = star + 1
            mark += 1
            t = mark
        else:
            return False
    while p < np_ and pattern[p] == "*":
        p += 1
    return p == np_


def _verify(
    mode: MatchMode, pattern: str, plate: str, limit: int
) -> tuple[MatchMode, float, str] | None:
    """How ``plate`` matches ``pattern`` in ``mode`` (limit: fuzzy threshold in units), or None."""
    if mode is MatchMode.EXACT:
        return (MatchMode.EXACT, 0.0, "exact") if plate == pattern else None
    if mode is MatchMode.WILDCARD:
        return (
            (MatchMode.WILDCARD, 0.0, f"wildcard {pattern}")
            if wildcard_match(pattern, plate)
            else None
        )
    if plate == pattern:
        return MatchMode.EXACT, 0.0, "exact"
    found = _distance_units(plate, pattern, limit)
    if found is None:
        return None
    units, edits = found
    return MatchMode.FUZZY, units / COST_SCALE, "fuzzy: " + ", ".join(str(e) for e in edits)


def _to_us(when: datetime, field: str, error: type[MatchingError]) -> int:
    if when.utcoffset() is None:
        raise error(field, when, "must be timezone-aware")
    return (when - _EPOCH) // _US


def is_live(entry: WatchEntry, now: datetime) -> bool:
    """True when ``valid_from <= now < valid_until`` (missing bounds are open)."""
    if entry.valid_from is not None and now < entry.valid_from:
        return False
    return entry.valid_until is None or now < entry.valid_until


def match_entry(
    entry: WatchEntry, plate: str, now: datetime, default_max_cost: float = DEFAULT_MAX_COST
) -> Match | None:
    """Check one entry against one plate (the brute-force reference the index must agree with).

    A fuzzy entry equal to the plate matches with mode ``exact`` and cost 0.
    """
    _to_us(now, "now", MatchQueryError)
    if not is_live(entry, now):
        return None
    limit = cost_units(entry.max_cost if entry.max_cost is not None else default_max_cost)
    found = _verify(entry.mode, entry.pattern, plate, limit)
    if found is None:
        return None
    return Match(entry, found[0], found[1], found[2])


def sort_matches(matches: list[Match]) -> list[Match]:
    """Order by priority (ascending, 0 first), then cost, then entry id."""
    return sorted(matches, key=lambda m: (m.entry.priority, m.cost, m.entry.entry_id))


def deletion_variants(text: str, k: int) -> set[str]:
    """``text`` and every string left after deleting up to ``k`` of its characters."""
    n = len(text)
    out = {text}
    if k >= 1:
        out.update([text[:i] + text[i + 1 :] for i in range(n)])
    if k >= 2:
        out.update([text[:i] + text[i + 1 : j] + text[j + 1 :] for j in range(n) for i in range(j)])
    for d in range(3, min(k, n) + 1):
        for gone in itertools.combinations(range(n), d):
            out.add("".join(ch for i, ch in enumerate(text) if i not in gone))
    return out


# A wildcard entry is keyed by up to WILDCARD_KEY_CHARS literal characters, whichever anchor holds
# the most of them (ties: head, tail, middle):
# - ("H", positions from the start) inside the part before the first "*" (the whole pattern when
#   it has no "*");
# - ("T", offsets from the end) inside the part after the last "*";
# - ("M", (n,)): the first n characters of the longest literal run between two "*"; a plate then
#   looks up each of its n-character substrings.
# Every wildcard pattern has a literal character, so every one has an anchor: no pattern is
# checked for every plate.
_Shape = tuple[str, tuple[int, ...]]


def _wildcard_key(pattern: str) -> tuple[_Shape, str]:
    star = pattern.find("*")
    head = pattern if star < 0 else pattern[:star]
    positions = tuple(i for i, ch in enumerate(head) if ch != "?")[:WILDCARD_KEY_CHARS]
    best: tuple[_Shape, str] = (("H", positions), "".join(head[i] for i in positions))
    if star < 0:
        return best
    last = pattern.rfind("*")
    tail = pattern[last + 1 :]
    offsets = tuple(len(tail) - i for i in range(len(tail) - 1, -1, -1) if tail[i] != "?")
    offsets = offsets[:WILDCARD_KEY_CHARS]
    if len(offsets) > len(best[1]):
        best = (("T", offsets), "".join(tail[len(tail) - o] for o in offsets))
    runs = pattern[star + 1 : last].replace("*", "?").split("?")
    run = max(runs, key=len)[:WILDCARD_KEY_CHARS]
    if len(run) > len(best[1]):
        best = (("M", (len(run),)), run)
    return best


def _text_key(kind: int, text: str) -> int:
    """The table key of `text` (A-Z0-9) for an entry or query kind (see `_KEY_PRIME`)."""
    h = int.from_bytes(text.encode("ascii"), "little") % _KEY_PRIME
    return ((h * _MIX) & _MASK64) >> _MIX_SHIFT | kind << _KIND_SHIFT


#: A shape compiled for queries: (anchor, character getter or substring length, the smallest
#: plate length it fits, its key kind, the shape's positions or offsets).
_ShapePlan = tuple[str, Any, int, int, tuple[int, ...]]


def _compile_shapes(shapes: dict[_Shape, int]) -> list[_ShapePlan]:
    """The query plan of the wildcard shapes in use (`shapes`: shape -> key kind)."""
    plan: list[_ShapePlan] = []
    for shape, kind in shapes.items():
        anchor, where = shape
        if anchor == "H":  # characters at these positions from the start
            plan.append(("H", operator.itemgetter(*where), where[-1] + 1, kind, where))
        elif anchor == "T":  # at these offsets from the end
            getter = operator.itemgetter(*(-o for o in where))
            plan.append(("T", getter, where[-1], kind, where))
        else:  # every substring of this length
            plan.append(("M", where[0], where[0], kind, where))
    return plan


def _wildcard_query_texts(
    plan: Sequence[_ShapePlan], plate: str, texts: list[str], kinds: list[int]
) -> None:
    """Append the (text, kind) of each wildcard key a plate looks up: one per head/tail shape
    that fits, every distinct substring for M."""
    size = len(plate)
    for anchor, how, min_size, kind, _ in plan:
        if size < min_size:
            continue
        if anchor == "M":
            found = {plate[i : i + how] for i in range(size - how + 1)}
            texts += found
            kinds += [kind] * len(found)
        else:
            texts.append("".join(how(plate)))
            kinds.append(kind)


def _plate_keys(plate: str, max_k: int, plan: Sequence[_ShapePlan]) -> list[int]:
    """Every key one plate looks up: exact, fuzzy (its canonical deletion neighbourhood up to
    `max_k` deletions; none when negative) and wildcard: the one-plate query path."""
    texts = [plate]
    kinds = [_EXACT_KIND]
    if max_k >= 0:
        variants = deletion_variants(canonical(plate), max_k)
        texts += variants
        kinds += [_FUZZY_KIND] * len(variants)
    _wildcard_query_texts(plan, plate, texts, kinds)
    return [_text_key(k, t) for t, k in zip(texts, kinds, strict=True)]


def _key_matrix(
    size: int, max_k: int, plan: Sequence[_ShapePlan]
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """For plates of `size` characters: weights (2 x size rows: the plate's codes, then its
    canonical codes; one column per key `_plate_keys` gives) and each column's kind bits. The
    product of a plate's codes with the weights, modulo the prime, is its keys' hashes."""
    columns: list[tuple[int, list[int]]] = [(_EXACT_KIND, list(range(size)))]
    if max_k >= 0:
        for gone in range(min(max_k, size) + 1):
            for dropped in itertools.combinations(range(size), gone):
                kept = [size + j for j in range(size) if j not in dropped]
                columns.append((_FUZZY_KIND, kept))
    for anchor, how, min_size, kind, where in plan:
        if size < min_size:
            continue
        if anchor == "H":
            columns.append((kind, list(where)))
        elif anchor == "T":
            columns.append((kind, [size - o for o in where]))
        else:
            columns += [(kind, list(range(i, i + how))) for i in range(size - how + 1)]
    weights = np.zeros((2 * size, len(columns)), dtype=np.uint64)
    for col, (_, rows) in enumerate(columns):
        weights[rows, col] = _WEIGHTS[: len(rows)]
    kinds = np.array([kind << _KIND_SHIFT for kind, _ in columns], dtype=np.uint64)
    return weights, kinds


class _KeyTable:
    """A multimap int64 key -> int32 slot: a sorted numpy base plus a small dict of recent adds.

    A one-bit-per-position filter over the base keys (8 to `_FILTER_BITS_PER_KEY` bits a key,
    6-12% false positives) drops most query keys before the binary search, which is the costly part
    (a cache miss per level). Stale slots (removed entries) stay until `compact`; callers filter
    them by liveness.
    """

    def __init__(self, pending_limit: int) -> None:
        self._keys: Int64Array = np.empty(0, dtype=np.int64)
        self._slots: SlotArray = np.empty(0, dtype=np.int32)
        self._filter_bytes = bytearray(1)  # read from Python: cheaper than numpy for ~50 keys
        self._filter: npt.NDArray[np.uint8] = np.frombuffer(self._filter_bytes, dtype=np.uint8)
        self._mask = 7
        self._pending: dict[int, list[int]] = {}
        self._n_pending = 0
        self._pending_keys: Int64Array | None = None  # sorted keys of `_pending`, made on demand
        self._pending_limit = pending_limit

    @property
    def nbytes(self) -> int:
        return int(self._keys.nbytes + self._slots.nbytes + self._filter.nbytes)

    def _rebuild_filter(self) -> None:
        bits = 1 << max(6, (self._keys.size * _FILTER_BITS_PER_KEY).bit_length())
        flags = np.zeros(bits, dtype=np.bool_)
        flags[self._keys & (bits - 1)] = True
        self._filter_bytes = bytearray(np.packbits(flags, bitorder="little").tobytes())
        self._filter = np.frombuffer(self._filter_bytes, dtype=np.uint8)
        self._mask = bits - 1

    def _add_to_filter(self, keys: Int64Array) -> None:
        if self._keys.size * _FILTER_BITS_PER_KEY > 2 * (self._mask + 1):
            self._rebuild_filter()
            return
        at = keys & self._mask
        np.bitwise_or.at(self._filter, at >> 3, np.left_shift(1, at & 7).astype(np.uint8))

    def extend(self, keys: Sequence[int], slots: Sequence[int]) -> None:
        if len(keys) >= self._pending_limit:
            self._merge_arrays(np.asarray(keys, dtype=np.int64), np.asarray(slots, dtype=np.int32))
            return
        for key, slot in zip(keys, slots, strict=True):
            self._pending.setdefault(key, []).append(slot)
        self._n_pending += len(keys)
        self._pending_keys = None
        if self._n_pending > max(self._pending_limit, self._keys.size // 8):
            self.flush()

    def flush(self) -> None:
        """Merge the pending dict into the sorted base (O(n) copy)."""
        if not self._pending:
            return
        keys = np.fromiter(
            (k for k, v in self._pending.items() for _ in v), dtype=np.int64, count=self._n_pending
        )
        slots = np.fromiter(
            (s for v in self._pending.values() for s in v), dtype=np.int32, count=self._n_pending
        )
        self._pending = {}
        self._n_pending = 0
        self._pending_keys = None
        self._merge_arrays(keys, slots)

    def _merge_arrays(self, keys: Int64Array, slots: SlotArray) -> None:
        if keys.size * 4 >= self._keys.size:
            all_keys = np.concatenate((self._keys, keys))
            all_slots = np.concatenate((self._slots, slots))
            order = np.argsort(all_keys, kind="stable")
            self._keys, self._slots = all_keys[order], all_slots[order]
            self._rebuild_filter()
            return
        order = np.argsort(keys, kind="stable")
        keys, slots = keys[order], slots[order]
        at = np.searchsorted(self._keys, keys, side="right")
        self._keys = np.insert(self._keys, at, keys)
        self._slots = np.insert(self._slots, at, slots)
        self._add_to_filter(keys)

    def lookup(self, keys: Sequence[int]) -> list[int]:
        """Every slot stored under any of `keys` (repeats possible)."""
        return [slot for _, slot in self.lookup_many(keys)]

    def lookup_many(self, keys: Sequence[int] | Int64Array) -> list[tuple[int, int]]:
        """(index in `keys`, slot) for every slot stored under each key: one vectorised filter
        test and one binary search for the whole query (a batch of plates' keys at once)."""
        out: list[tuple[int, int]] = []
        if self._pending and isinstance(keys, np.ndarray):
            # A batch: find its keys among the few recent adds with numpy, then read them
            if self._pending_keys is None:
                self._pending_keys = np.array(sorted(self._pending), dtype=np.int64)
            for i in np.flatnonzero(np.isin(keys, self._pending_keys)).tolist():
                out.extend((i, slot) for slot in self._pending[int(keys[i])])
        elif self._pending:
            for i, key in enumerate(keys):
                hit = self._pending.get(key)
                if hit:
                    out.extend((i, slot) for slot in hit)
        size = self._keys.size
        if not size or not len(keys):
            return out
        if isinstance(keys, np.ndarray):
            query = keys
        elif len(keys) < _VECTOR_QUERY_MIN:  # one plate: numpy's per-call costs outweigh it
            return self._lookup_few(keys, out)
        else:
            query = np.fromiter(keys, dtype=np.int64, count=len(keys))
        at = query & self._mask
        passed = np.flatnonzero((self._filter[at >> 3] >> (at & 7)) & 1)
        if not passed.size:
            return out
        table = self._keys
        start = np.searchsorted(table, query[passed])
        inside = start < size
        passed, start = passed[inside], start[inside]
        found = table[start] == query[passed]
        passed, start = passed[found], start[found]
        if not passed.size:
            return out
        slots = self._slots
        out.extend(zip(passed.tolist(), slots[start].tolist(), strict=True))
        # A key stored more than once (several entries share a key): the rest of its run.
        nxt = start + 1
        more = nxt < size
        more[more] = table[nxt[more]] == table[start[more]]
        for i, first in zip(passed[more].tolist(), start[more].tolist(), strict=True):
            stop = int(np.searchsorted(table, table[first], side="right"))
            out.extend((i, slot) for slot in slots[first + 1 : stop].tolist())
        return out

    def _lookup_few(self, keys: Sequence[int], out: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """`lookup_many` key by key in Python (a filter read per key, one binary search)."""
        bits, mask = self._filter_bytes, self._mask
        query = [(i, k) for i, k in enumerate(keys) if bits[(k & mask) >> 3] >> (k & 7) & 1]
        if not query:
            return out
        table, slots, size = self._keys, self._slots, self._keys.size
        starts = np.searchsorted(table, [k for _, k in query]).tolist()
        for (i, key), start in zip(query, starts, strict=True):
            if start < size and table.item(start) == key:
                stop = start + 1
                if stop < size and table.item(stop) == key:
                    stop = int(np.searchsorted(table, key, side="right"))
                out.extend((i, slot) for slot in slots[start:stop].tolist())
        return out

    def may_contain(self, keys: Int64Array) -> npt.NDArray[np.bool_]:
        """Per key: True when some slot (live or stale) is stored under it."""
        found = np.zeros(keys.size, dtype=np.bool_)
        if self._keys.size:
            at = np.searchsorted(self._keys, keys, side="left")
            inside = at < self._keys.size
            found[inside] = self._keys[at[inside]] == keys[inside]
        if self._pending:
            found |= np.fromiter((int(k) in self._pending for k in keys), np.bool_, keys.size)
        return found

    def compact(self, live: npt.NDArray[np.bool_], remap: Int64Array) -> None:
        """Drop stale slots and renumber the rest (``remap[old] = new``)."""
        self.flush()
        keep = live[self._slots]
        self._keys = self._keys[keep]
        self._slots = remap[self._slots[keep]].astype(np.int32)
        self._rebuild_filter()


class _EntryStore:
    """Entries as numpy columns (about 86 bytes each), one row per slot, append-only."""

    def __init__(self) -> None:
        self.size = 0
        self.entry_id: Int64Array = np.empty(0, dtype=np.int64)
        self.list_id: Int64Array = np.empty(0, dtype=np.int64)
        self.priority: Int64Array = np.empty(0, dtype=np.int64)
        self.valid_from: Int64Array = np.empty(0, dtype=np.int64)
        self.valid_until: Int64Array = np.empty(0, dtype=np.int64)
        self.max_cost: npt.NDArray[np.float64] = np.empty(0, dtype=np.float64)
        self.limit: npt.NDArray[np.int16] = np.empty(0, dtype=np.int16)
        self.mode: npt.NDArray[np.int8] = np.empty(0, dtype=np.int8)
        self.category: npt.NDArray[np.int32] = np.empty(0, dtype=np.int32)
        self.pattern: npt.NDArray[np.bytes_] = np.empty(0, dtype=f"S{MAX_PATTERN_LENGTH}")
        self.live: npt.NDArray[np.bool_] = np.empty(0, dtype=np.bool_)
        self.categories: list[str] = []
        self._category_code: dict[str, int] = {}

    _COLUMNS: Final = (
        "entry_id", "list_id", "priority", "valid_from", "valid_until",
        "max_cost", "limit", "mode", "category", "pattern", "live",
    )  # fmt: skip

    @property
    def nbytes(self) -> int:
        return sum(int(getattr(self, name).nbytes) for name in self._COLUMNS)

    def _reserve(self, extra: int) -> None:
        need = self.size + extra
        if need <= self.live.size:
            return
        capacity = max(need, self.live.size * 2 if self.size else need, 1024)
        for name in self._COLUMNS:
            old = getattr(self, name)
            new = np.zeros(capacity, dtype=old.dtype)
            new[: self.size] = old[: self.size]
            setattr(self, name, new)

    def append(self, entries: Sequence[WatchEntry], default_limit: int) -> range:
        start = self.size
        self._reserve(len(entries))
        end = start + len(entries)
        codes = self._category_code
        cats = []
        for e in entries:
            code = codes.get(e.category)
            if code is None:
                code = codes[e.category] = len(self.categories)
                self.categories.append(e.category)
            cats.append(code)
        self.entry_id[start:end] = [e.entry_id for e in entries]
        self.list_id[start:end] = [e.list_id for e in entries]
        self.priority[start:end] = [e.priority for e in entries]
        self.valid_from[start:end] = [
            _NO_START if e.valid_from is None else (e.valid_from - _EPOCH) // _US for e in entries
        ]
        self.valid_until[start:end] = [
            _NO_END if e.valid_until is None else (e.valid_until - _EPOCH) // _US for e in entries
        ]
        self.max_cost[start:end] = [math.nan if e.max_cost is None else e.max_cost for e in entries]
        self.limit[start:end] = [
            default_limit if e.max_cost is None else cost_units(e.max_cost) for e in entries
        ]
        self.mode[start:end] = [_MODE_CODE[e.mode] for e in entries]
        self.category[start:end] = cats
        self.pattern[start:end] = [e.pattern.encode("ascii") for e in entries]
        self.live[start:end] = True
        self.size = end
        return range(start, end)

    def entry(self, slot: int) -> WatchEntry:
        vf, vu, mc = int(self.valid_from[slot]), int(self.valid_until[slot]), self.max_cost[slot]
        return WatchEntry(
            entry_id=int(self.entry_id[slot]),
            list_id=int(self.list_id[slot]),
            pattern=self.pattern[slot].decode("ascii"),
            mode=_MODES[int(self.mode[slot])],
            category=self.categories[int(self.category[slot])],
            priority=int(self.priority[slot]),
            valid_from=None if vf == _NO_START else _EPOCH + timedelta(microseconds=vf),
            valid_until=None if vu == _NO_END else _EPOCH + timedelta(microseconds=vu),
            max_cost=None if math.isnan(mc) else float(mc),
        )

    def compact(self) -> tuple[npt.NDArray[np.bool_], Int64Array]:
        """Drop dead rows; returns (live mask, old->new slot map) for the key tables."""
        live = self.live[: self.size].copy()
        remap = np.cumsum(live, dtype=np.int64) - 1
        for name in self._COLUMNS:
            setattr(self, name, getattr(self, name)[: self.size][live].copy())
        self.size = int(live.sum())
        return live, remap


class WatchIndex:
    """In-memory index of watch entries answering `match` without scanning them all.

    - exact entries: keyed by the pattern;
    - fuzzy entries: keyed by the deletion neighbourhood (up to ``floor(max_cost)`` deletions) of
      the confusion-canonical pattern; a plate looks up its own neighbourhood, candidates are
      verified with `weighted_distance`;
    - wildcard entries: keyed by up to `WILDCARD_KEY_CHARS` (4) literal characters at fixed
      positions (see `_wildcard_key`): from the start, from the end, or anywhere for ``*AB*``.

    Keys are Python string hashes (per-process, never persisted) in sorted numpy arrays; `add`
    buffers keys in a small dict merged in O(n); `remove` marks the row dead and rows are
    compacted once a quarter are dead. Not thread-safe: one index per correlator process, updated
    by the thread that matches (or swapped whole after a rebuild).
    """

    def __init__(
        self, default_max_cost: float = DEFAULT_MAX_COST, *, pending_limit: int = 4096
    ) -> None:
        if not 0.0 <= default_max_cost <= MAX_FUZZY_COST:
            raise MatchingError("default_max_cost", default_max_cost, f"not in 0..{MAX_FUZZY_COST}")
        if pending_limit < 1:
            raise MatchingError("pending_limit", pending_limit, "must be at least 1")
        self._default_limit = cost_units(default_max_cost)
        self._pending_limit = pending_limit
        self._store = _EntryStore()
        self._keys = _KeyTable(pending_limit)
        self._ids = _KeyTable(pending_limit)
        self._shapes: dict[_Shape, int] = {}  # wildcard shape -> live entries of that shape
        # shape -> its key kind, assigned once and kept (stored keys carry it)
        self._shape_kinds: dict[_Shape, int] = {}
        self._plan: list[_ShapePlan] | None = []  # compiled `_shapes`; None: to recompile
        # `_key_matrix` by (plate length, max_k), for the current plan
        self._matrices: dict[
            tuple[int, int], tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]
        ] = {}
        self._fuzzy_k = [0] * (int(MAX_FUZZY_COST) + 1)
        self._n_live = 0
        self._n_dead = 0

    @classmethod
    def from_entries(
        cls, entries: Iterable[WatchEntry], default_max_cost: float = DEFAULT_MAX_COST
    ) -> WatchIndex:
        """A fresh index holding ``entries`` (the fast full rebuild)."""
        index = cls(default_max_cost)
        index.add_many(entries)
        return index

    def __len__(self) -> int:
        return self._n_live

    def __contains__(self, entry_id: object) -> bool:
        return isinstance(entry_id, int) and self._slot_of(entry_id) is not None

    @property
    def nbytes(self) -> int:
        """Bytes held by the numpy columns and key tables (not the small dicts)."""
        return self._store.nbytes + self._keys.nbytes + self._ids.nbytes

    def get(self, entry_id: int) -> WatchEntry | None:
        """The live entry with this id (datetimes come back in UTC), or None."""
        slot = self._slot_of(entry_id)
        return None if slot is None else self._store.entry(slot)

    def add(self, entry: WatchEntry) -> None:
        """Add an entry, replacing any entry with the same ``entry_id``."""
        self.add_many((entry,))

    def add_many(self, entries: Iterable[WatchEntry]) -> None:
        """Add entries in bulk (later duplicates of an ``entry_id`` win)."""
        chunk: list[WatchEntry] = []
        for entry in entries:
            chunk.append(entry)
            if len(chunk) >= _CHUNK:
                self._add_chunk(chunk)
                chunk = []
        if chunk:
            self._add_chunk(chunk)

    def _add_chunk(self, chunk: list[WatchEntry]) -> None:
        by_id = {e.entry_id: e for e in chunk}
        entries = list(by_id.values())
        ids = np.fromiter(by_id, dtype=np.int64, count=len(by_id))
        for known in ids[self._ids.may_contain(ids)].tolist():
            self.remove(known)
        slots = self._store.append(entries, self._default_limit)
        keys: list[int] = []
        key_slots: list[int] = []
        for slot, entry in zip(slots, entries, strict=True):
            mode = entry.mode
            if mode is MatchMode.EXACT:
                keys.append(_text_key(_EXACT_KIND, entry.pattern))
                key_slots.append(slot)
            elif mode is MatchMode.FUZZY:
                k = int(self._store.limit[slot]) // _EDIT_UNITS
                self._fuzzy_k[k] += 1
                for variant in deletion_variants(canonical(entry.pattern), k):
                    keys.append(_text_key(_FUZZY_KIND, variant))
                    key_slots.append(slot)
            else:
                shape, chars = _wildcard_key(entry.pattern)
                if shape not in self._shapes:
                    self._plan = None
                self._shapes[shape] = self._shapes.get(shape, 0) + 1
                kind = self._shape_kinds.get(shape)
                if kind is None:  # kinds 2..: shapes beyond that share kinds (still verified)
                    kind = 2 + len(self._shape_kinds) % (_KINDS - 2)
                    self._shape_kinds[shape] = kind
                keys.append(_text_key(kind, chars))
                key_slots.append(slot)
        self._keys.extend(keys, key_slots)
        self._ids.extend(ids.tolist(), list(slots))
        self._n_live += len(entries)

    def remove(self, entry_id: int) -> bool:
        """Remove the entry with this id; False when there is none."""
        slot = self._slot_of(entry_id)
        if slot is None:
            return False
        store = self._store
        store.live[slot] = False
        mode = _MODES[int(store.mode[slot])]
        if mode is MatchMode.FUZZY:
            self._fuzzy_k[int(store.limit[slot]) // _EDIT_UNITS] -= 1
        elif mode is MatchMode.WILDCARD:
            shape = _wildcard_key(store.pattern[slot].decode("ascii"))[0]
            left = self._shapes[shape] - 1
            if left:
                self._shapes[shape] = left
            else:
                del self._shapes[shape]
                self._plan = None
        self._n_live -= 1
        self._n_dead += 1
        if self._n_dead > max(self._pending_limit, self._n_live // 4):
            self.compact()
        return True

    def compact(self) -> None:
        """Drop removed rows and their keys now (also done automatically)."""
        live, remap = self._store.compact()
        self._keys.compact(live, remap)
        self._ids.compact(live, remap)
        self._n_dead = 0

    def _slot_of(self, entry_id: int) -> int | None:
        store = self._store
        for slot in self._ids.lookup((entry_id,)):
            if store.live[slot] and store.entry_id[slot] == entry_id:
                return slot
        return None

    def match(self, plate: str, now: datetime) -> list[Match]:
        """Every live entry matching ``plate`` at ``now``, by priority, then cost, then id."""
        return self.match_many((plate,), now)[0]

    def match_many(self, plates: Sequence[str], now: datetime) -> list[list[Match]]:
        """`match` for each plate, in order: the keys of all the plates are looked up together
        (one vectorised filter test and one binary search for a whole batch of sightings)."""
        for plate in plates:
            if not _PLATE_RE.fullmatch(plate):
                raise MatchQueryError("plate", plate, "expected a normalised plate (A-Z, 0-9)")
        now_us = _to_us(now, "now", MatchQueryError)
        max_k = max((k for k, n in enumerate(self._fuzzy_k) if n), default=-1)
        plan = self._plan
        if plan is None:
            plan = self._plan = _compile_shapes({s: self._shape_kinds[s] for s in self._shapes})
            self._matrices = {}
        owner: Sequence[int]  # keys[i] belongs to plates[owner[i]]
        keys: Sequence[int] | Int64Array
        if len(plates) >= _VECTOR_PLATES_MIN and max(map(len, plates)) <= MAX_PATTERN_LENGTH:
            keys, owners = self._batch_keys(plates, max_k, plan)
            owner = owners.tolist()
        else:
            keys, owner = [], []
            for n, plate in enumerate(plates):
                mine = _plate_keys(plate, max_k, plan)
                keys.extend(mine)
                owner.extend([n] * len(mine))
        found: dict[int, set[int]] = {}
        for i, slot in self._keys.lookup_many(keys):
            found.setdefault(owner[i], set()).add(slot)
        out: list[list[Match]] = [[] for _ in plates]
        for n, slots in found.items():
            out[n] = self._verified(plates[n], slots, now_us)
        return out

    def _batch_keys(
        self, plates: Sequence[str], max_k: int, plan: Sequence[_ShapePlan]
    ) -> tuple[Int64Array, npt.NDArray[np.intp]]:
        """`_plate_keys` of every plate (and the plate each key belongs to), computed by numpy:
        the plates of one length as a matrix of character codes, times `_key_matrix`."""
        lengths = np.fromiter(map(len, plates), dtype=np.intp, count=len(plates))
        keys: list[Int64Array] = []
        owners: list[npt.NDArray[np.intp]] = []
        for size in np.unique(lengths).tolist():
            which = np.flatnonzero(lengths == size)
            text = "".join([plates[i] for i in which.tolist()]).encode("ascii")
            codes = np.frombuffer(text, dtype=np.uint8).reshape(which.size, size)
            both = np.concatenate((codes, _CANON_CODES[codes]), axis=1).astype(np.uint64)
            matrix = self._matrices.get((size, max_k))
            if matrix is None:
                matrix = self._matrices[(size, max_k)] = _key_matrix(size, max_k, plan)
            weights, kinds = matrix
            # codes < 2**7 times weights < 2**50, at most MAX_PATTERN_LENGTH of them: no overflow
            hashes = (both @ weights) % np.uint64(_KEY_PRIME)
            found = (hashes * np.uint64(_MIX)) >> np.uint64(_MIX_SHIFT) | kinds
            keys.append(found.ravel().view(np.int64))
            owners.append(np.repeat(which, weights.shape[1]))
        return np.concatenate(keys), np.concatenate(owners)

    def _verified(self, plate: str, slots: Iterable[int], now_us: int) -> list[Match]:
        """The candidate slots' entries that are live at `now_us` and match `plate`, sorted."""
        store = self._store
        live, start, end = store.live, store.valid_from, store.valid_until
        matches: list[Match] = []
        for slot in slots:
            if not (live.item(slot) and start.item(slot) <= now_us < end.item(slot)):
                continue
            found = _verify(
                _MODES[store.mode.item(slot)],
                store.pattern.item(slot).decode("ascii"),
                plate,
                store.limit.item(slot),
            )
            if found is not None:
                matches.append(Match(store.entry(slot), found[0], found[1], found[2]))
        return sort_matches(matches)
