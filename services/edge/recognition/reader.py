"""Plate reader pre/post-processing (numpy + OpenCV only; no torch, no OpenVINO).

The reader is a small CTC recogniser. Its sidecar JSON (`models/reader.json`) is loaded into a
`ReaderSpec`; `preprocess` turns a BGR plate crop into the model input and `postprocess` decodes
the model's per-step class scores into a `PlateReading` with a CTC prefix beam search whose
candidates are re-ranked by per-region plate formats.

Two-line plates: the model's feature map keeps two rows (top and bottom half of the crop); its
output sequence is all top-row steps followed by all bottom-row steps (`sequence_rows: 2`), so a
two-line plate decodes in reading order without any crop splitting rule at run time.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from shared.plates import DEFAULT_FORMATS

FloatArray = npt.NDArray[np.float32]

# Per-region plate formats used to re-rank beam candidates. Extend by adding regexes; a region
# absent here (or None) means no re-ranking.
REGION_PATTERNS: dict[str, tuple[str, ...]] = {
    "br": (r"[A-Z]{3}[0-9]{4}", r"[A-Z]{3}[0-9][A-Z][0-9]{2}"),
    "us": (r"[A-Z0-9]{2,8}",),
    "eu": (r"[A-Z0-9]{4,10}",),
    "ro": (r"B[0-9]{2,3}[A-Z]{3}", r"(?!B)[A-Z]{2}[0-9]{2}[A-Z]{3}", r"[A-Z]{1,2}[0-9]{6}"),
    "gb": (r"[A-Z]{2}[0-9]{2}[A-Z]{3}",),
    "nl": (r"[A-Z0-9]{6}",),
    "in": (r"[A-Z]{2}[0-9]{1,2}[A-Z]{0,3}[0-9]{1,4}",),
}
REGION_PATTERNS["uk"] = REGION_PATTERNS["gb"]  # the same plates under their other common code
# score factor for a candidate that fits none of its region's formats
FORMAT_MISMATCH_PENALTY = 0.01
# Regions whose plates all follow a few fixed layouts (shared.plates.DEFAULT_FORMATS, L = letter,
# N = digit): postprocess adds the best reading of each layout (format-constrained CTC decoding)
# to the beam candidates, so an O/0, I/1, B/8 confusion the beam did not keep can still be
# corrected. US and EU formats vary too much to constrain.
FIXED_LAYOUT_REGIONS: dict[str, str] = {"br": "br", "ro": "ro", "gb": "gb", "uk": "gb"}


def region_layouts(region: str | None) -> tuple[str, ...]:
    """The fixed L/N layouts a region's plates follow; () when it has none."""
    fmt = DEFAULT_FORMATS.get(FIXED_LAYOUT_REGIONS.get(region or "", ""))
    if fmt is None:
        return ()
    return tuple(p for p in fmt.patterns if p and set(p) <= {"L", "N"})


_MIN_STEP_PROB = 0.01  # characters less likely than this at a step are not expanded by the beam
_MAX_STEP_CANDIDATES = 4  # at most this many classes per step are considered by the beam
_BEAM_LOG_FLOOR = math.log(1e-3)  # prefixes 1000x less likely than the best are dropped
_SUPPORTED_SPEC_VERSION = 1


class ReaderSpecError(ValueError):
    """The reader sidecar JSON is missing, malformed, or has an invalid field."""

    def __init__(self, path: Path, field: str, reason: str) -> None:
        super().__init__(f"{path}: {field}: {reason}")
        self.path = path
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class ReaderSpec:
    """What the runtime needs to know about a reader model (from its sidecar JSON)."""

    input_height: int
    input_width: int
    channels: int
    mean: float
    std: float
    charset: str
    blank_index: int
    sequence_rows: int = 2
    version: str = "0"
    trained: str = ""
    two_line_rule: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.charset) + 1

    def char_of(self, index: int) -> str:
        """Character of a non-blank class index."""
        return self.charset[index if index < self.blank_index else index - 1]

    @classmethod
    def from_file(cls, path: Path) -> ReaderSpec:
        """Read and validate a sidecar JSON; errors name the file and the field."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ReaderSpecError(path, "<file>", "not found") from exc
        except json.JSONDecodeError as exc:
            raise ReaderSpecError(path, "<file>", f"invalid JSON: {exc.msg}") from exc
        if not isinstance(raw, dict):
            raise ReaderSpecError(path, "<file>", "not a JSON object")
        return cls.from_dict(raw, path)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], path: Path = Path("<dict>")) -> ReaderSpec:
        """Validate a sidecar mapping (see `from_file`)."""
        schema = raw.get("schema_version", _SUPPORTED_SPEC_VERSION)
        if schema != _SUPPORTED_SPEC_VERSION:
            raise ReaderSpecError(path, "schema_version", f"unsupported {schema!r}")
        inp = raw.get("input")
        if not isinstance(inp, dict):
            raise ReaderSpecError(path, "input", "must be an object")
        height = _positive_int(inp.get("height"), "input.height", path)
        width = _positive_int(inp.get("width"), "input.width", path)
        channels = _positive_int(inp.get("channels"), "input.channels", path)
        if channels not in (1, 3):
            raise ReaderSpecError(path, "input.channels", "must be 1 or 3")
        mean = _number(inp.get("mean"), "input.mean", path)
        std = _number(inp.get("std"), "input.std", path)
        if std <= 0:
            raise ReaderSpecError(path, "input.std", "must be > 0")
        charset = raw.get("charset")
        if not isinstance(charset, str) or not charset or len(set(charset)) != len(charset):
            raise ReaderSpecError(path, "charset", "must be a non-empty string of unique chars")
        blank = raw.get("blank_index")
        if not isinstance(blank, int) or isinstance(blank, bool) or not 0 <= blank <= len(charset):
            raise ReaderSpecError(path, "blank_index", f"must be an int in 0..{len(charset)}")
        rows = _positive_int(raw.get("sequence_rows", 1), "sequence_rows", path)
        two_line = raw.get("two_line_rule", "")
        version = raw.get("version", "0")
        trained = raw.get("trained", "")
        for name, value in (
            ("two_line_rule", two_line),
            ("version", version),
            ("trained", trained),
        ):
            if not isinstance(value, str):
                raise ReaderSpecError(path, name, "must be a string")
        return cls(
            input_height=height,
            input_width=width,
            channels=channels,
            mean=mean,
            std=std,
            charset=charset,
            blank_index=blank,
            sequence_rows=rows,
            version=str(version),
            trained=str(trained),
            two_line_rule=str(two_line),
        )


def _positive_int(value: object, field: str, path: Path) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ReaderSpecError(path, field, "must be a positive integer")
    return value


def _number(value: object, field: str, path: Path) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ReaderSpecError(path, field, "must be a number")
    return float(value)


@dataclass(frozen=True)
class PlateReading:
    """A decoded plate: best text, its probability, per-character confidences, alternatives."""

    text: str
    confidence: float
    char_confidences: tuple[float, ...]
    candidates: tuple[tuple[str, float], ...]
    #: text lines the model saw: 2 when its best path has characters in both feature rows of a
    #: two-row model (`sequence_rows` 2), else 1
    lines: int = 1


# ------------------------------------------------------------------------- preprocess
def preprocess(crop_bgr: npt.NDArray[Any], spec: ReaderSpec) -> FloatArray:
    """BGR (or grey) uint8 plate crop -> float32 (1, C, H, W) model input.

    The crop is resized to the model's input size (stretched, not letter-boxed), converted to
    grey when the model has one channel, then normalised with the spec's mean/std.
    """
    if crop_bgr.size == 0 or crop_bgr.ndim not in (2, 3) or min(crop_bgr.shape[:2]) < 2:
        raise ValueError(f"crop_bgr: empty or degenerate plate crop of shape {crop_bgr.shape}")
    img = crop_bgr
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if spec.channels == 1 and img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    elif spec.channels == 3 and img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    h, w = img.shape[:2]
    shrink = h >= spec.input_height and w >= spec.input_width
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    img = cv2.resize(img, (spec.input_width, spec.input_height), interpolation=interp)
    x = img.astype(np.float32) * np.float32(1.0 / 255.0)
    x = (x - np.float32(spec.mean)) / np.float32(spec.std)
    x = x[None, None] if x.ndim == 2 else x.transpose(2, 0, 1)[None]
    return np.ascontiguousarray(x, dtype=np.float32)


# ------------------------------------------------------------------------- postprocess
def postprocess(
    logits: npt.NDArray[Any],
    spec: ReaderSpec,
    region: str | None = None,
    top_n: int = 5,
    beam_width: int = 10,
) -> PlateReading:
    """Decode model output (T, K) or (1, T, K) class scores (logits or probabilities)."""
    probs = _to_probs(logits, spec)
    beams = ctc_beam_search(probs, spec.blank_index, beam_width=max(beam_width, top_n))
    candidates = [(_label_text(p, spec), s) for p, s in beams]
    ranked = rerank(candidates, region)
    if ranked and not fits_region(ranked[0][0], region):
        extra = _layout_candidates(probs, spec, region, {text for text, _ in candidates})
        if extra:
            ranked = rerank(candidates + extra, region)
    if not ranked:
        return PlateReading(text="", confidence=0.0, char_confidences=(), candidates=())
    best_text, best_prob = ranked[0]
    segments = _best_path(probs, spec.blank_index)  # the greedy reading and its lines
    greedy_text, greedy_conf = _greedy_of(segments, probs, spec)
    if greedy_text == best_text:
        char_conf = list(greedy_conf)
    else:
        labels = [_class_of(c, spec) for c in best_text]
        char_conf = forced_alignment_confidences(probs, labels, spec.blank_index)
    return PlateReading(
        text=best_text,
        confidence=float(min(1.0, max(0.0, best_prob))),
        char_confidences=tuple(float(c) for c in char_conf),
        candidates=tuple((t, float(min(1.0, s))) for t, s in ranked[:top_n]),
        lines=_rows_used(segments, probs.shape[0], spec.sequence_rows),
    )


def _rows_used(segments: list[tuple[int, list[int]]], steps: int, rows: int) -> int:
    """How many of the model's feature rows hold characters of the best path `segments` (1 or
    more; a one-row model always gives 1). Row r covers steps [r*T/rows, (r+1)*T/rows); a
    character whose run of steps crosses a row boundary counts in both rows."""
    if rows < 2:
        return 1
    used = {t * rows // max(1, steps) for _, ts in segments for t in ts}
    return max(1, len(used))


def greedy_decode(logits: npt.NDArray[Any], spec: ReaderSpec) -> tuple[str, tuple[float, ...]]:
    """Best-path decoding: arg-max per step, collapse repeats, drop blanks.

    Returns the text and, per character, the highest probability along its run of steps."""
    return _greedy(_to_probs(logits, spec), spec)


def _best_path(probs: FloatArray, blank: int) -> list[tuple[int, list[int]]]:
    """The arg-max path's characters, collapsed: (class, the steps it spans) each."""
    segments: list[tuple[int, list[int]]] = []
    prev = -1
    for t, k in enumerate(probs.argmax(axis=1).tolist()):
        if k != blank:
            if k != prev:
                segments.append((k, []))
            segments[-1][1].append(t)
        prev = k
    return segments


def _greedy(probs: FloatArray, spec: ReaderSpec) -> tuple[str, tuple[float, ...]]:
    return _greedy_of(_best_path(probs, spec.blank_index), probs, spec)


def _greedy_of(
    segments: list[tuple[int, list[int]]], probs: FloatArray, spec: ReaderSpec
) -> tuple[str, tuple[float, ...]]:
    text = "".join(spec.char_of(k) for k, _ in segments)
    return text, tuple(float(probs[ts, k].max()) for k, ts in segments)


def rerank(candidates: list[tuple[str, float]], region: str | None) -> list[tuple[str, float]]:
    """Order candidates by probability, penalising those that fit none of the region's formats.

    Returned scores are the candidates' own probabilities (the penalty only changes the order);
    empty texts are dropped."""

    def score(item: tuple[str, float]) -> float:
        text, prob = item
        return prob if fits_region(text, region) else prob * FORMAT_MISMATCH_PENALTY

    kept = [c for c in candidates if c[0]]
    return sorted(kept, key=score, reverse=True)


def ctc_beam_search(
    probs: FloatArray, blank: int, beam_width: int = 16
) -> list[tuple[tuple[int, ...], float]]:
    """CTC prefix beam search over (T, K) probabilities.

    Returns up to `beam_width` (label tuple, probability) pairs, most probable first; the
    probability of a label sums over all its alignments. Per step only the few most likely
    characters above a small probability are expanded (exact for peaked outputs, and fast)."""
    # prefix -> [log p(ending in blank), log p(ending in non-blank)]
    beams: dict[tuple[int, ...], list[float]] = {(): [0.0, -math.inf]}
    # Only the steps with a likely character need their whole row; the others (most of a
    # plate's 64 steps) only log p(blank).
    likely = probs >= _MIN_STEP_PROB
    likely[:, blank] = False
    active = np.flatnonzero(likely.any(axis=1))
    sub = probs[active]
    n_top = min(_MAX_STEP_CANDIDATES, probs.shape[1])
    tops = np.argpartition(sub, -n_top, axis=1)[:, -n_top:]
    keep = (sub[np.arange(sub.shape[0])[:, None], tops] >= _MIN_STEP_PROB) & (tops != blank)
    blank_logp: list[float] = np.log(np.maximum(probs[:, blank], 1e-30)).tolist()
    active_rows: dict[int, tuple[list[float], list[int]]] = {
        t: (row, [int(k) for k, ok in zip(row_k, row_ok, strict=True) if ok])
        for t, row, row_k, row_ok in zip(
            active.tolist(),
            np.log(np.maximum(sub, 1e-30)).tolist(),
            tops.tolist(),
            keep.tolist(),
            strict=True,
        )
    }
    # A run of steps where only blank is likely ends every prefix in blank: the prefixes are
    # collapsed once and the run's log p(blank) is added once, at its end.
    in_run, blank_run = False, 0.0
    for t in range(probs.shape[0]):
        found = active_rows.get(t)
        if found is None:
            if not in_run:
                beams = {p: [_lse(pb, pnb), -math.inf] for p, (pb, pnb) in beams.items()}
                in_run, blank_run = True, 0.0
            blank_run += blank_logp[t]
            continue
        logp_t, cand = found
        if in_run:
            beams = {p: [pb + blank_run, pnb] for p, (pb, pnb) in beams.items()}
            in_run = False
        lp_blank = logp_t[blank]
        nxt: dict[tuple[int, ...], list[float]] = {}
        for prefix, (pb, pnb) in beams.items():
            total = _lse(pb, pnb)
            _add(nxt, prefix, total + lp_blank, -math.inf)  # blank keeps the prefix
            last = prefix[-1] if prefix else -1
            for k in cand:
                lpk = logp_t[k]
                if k == last:
                    _add(nxt, prefix, -math.inf, pnb + lpk)  # repeat collapses
                    _add(nxt, (*prefix, k), -math.inf, pb + lpk)  # needs a blank between
                else:
                    _add(nxt, (*prefix, k), -math.inf, total + lpk)
        totals = {p: _lse(v[0], v[1]) for p, v in nxt.items()}
        floor = max(totals.values()) + _BEAM_LOG_FLOOR
        ordered = sorted((p for p in nxt if totals[p] >= floor), key=totals.__getitem__)
        beams = {p: nxt[p] for p in ordered[-beam_width:]}
    if in_run:
        beams = {p: [pb + blank_run, pnb] for p, (pb, pnb) in beams.items()}
    out = [(p, math.exp(_lse(pb, pnb))) for p, (pb, pnb) in beams.items()]
    out.sort(key=lambda item: item[1], reverse=True)
    return out


def _lse(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) for Python floats."""
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


def _add(
    beams: dict[tuple[int, ...], list[float]], prefix: tuple[int, ...], pb: float, pnb: float
) -> None:
    """Accumulate log-probabilities (ending in blank, ending in non-blank) of `prefix`."""
    cur = beams.get(prefix)
    if cur is None:
        beams[prefix] = [pb, pnb]
    else:
        cur[0] = _lse(cur[0], pb)
        cur[1] = _lse(cur[1], pnb)


def fits_region(text: str, region: str | None) -> bool:
    """Whether a text fits one of the region's formats (True for a region without formats)."""
    patterns = REGION_PATTERNS.get(region or "", ())
    return not patterns or any(re.fullmatch(p, text) for p in patterns)


def _layout_candidates(
    probs: FloatArray, spec: ReaderSpec, region: str | None, known: set[str]
) -> list[tuple[str, float]]:
    """The best reading of each of the region's fixed layouts, with its probability, for the
    texts the beam did not already propose.

    Fast path: when the best path has as many characters as the layout, each character that
    breaks the layout is replaced by the allowed class with the most probability over its
    frames. Otherwise the full constrained Viterbi gives the labels. Either way the reading is
    scored with the CTC forward pass, so its probability is comparable with the beam's."""
    segments = _best_path(probs, spec.blank_index)
    out: list[tuple[str, float]] = []
    for layout in region_layouts(region):
        allowed = layout_classes(layout, spec)
        if len(segments) == len(allowed):
            labels = [
                k if k in classes else int(classes[probs[ts][:, classes].sum(axis=0).argmax()])
                for (k, ts), classes in zip(segments, allowed, strict=True)
            ]
        else:
            labels = layout_decode(probs, allowed, spec.blank_index)
        text = _label_text(tuple(labels), spec)
        if labels and text not in known and all(text != t for t, _ in out):
            out.append((text, ctc_label_probability(probs, labels, spec.blank_index)))
    return out


def layout_classes(layout: str, spec: ReaderSpec) -> list[npt.NDArray[np.int64]]:
    """Model class indices allowed at each position of a layout ('L' letters, 'N' digits)."""
    letters = [_class_of(c, spec) for c in spec.charset if "A" <= c <= "Z"]
    digits = [_class_of(c, spec) for c in spec.charset if "0" <= c <= "9"]
    table = {"L": np.asarray(letters, np.int64), "N": np.asarray(digits, np.int64)}
    try:
        return [table[c] for c in layout]
    except KeyError as exc:
        raise ValueError(f"layout {layout!r}: unknown position class {exc.args[0]!r}") from exc


def layout_decode(probs: FloatArray, allowed: list[npt.NDArray[np.int64]], blank: int) -> list[int]:
    """The best label sequence with exactly one character per position, drawn from that
    position's allowed classes (format-constrained CTC decoding).

    A Viterbi pass over blank / position states finds the best alignment (each frame of a
    position scores its best allowed class); each position then takes the allowed class with
    the highest summed log-probability over its frames. [] when the sequence cannot fit."""
    n_t, n_pos = probs.shape[0], len(allowed)
    if n_pos == 0 or n_t < n_pos:
        return []
    logp = np.log(np.maximum(probs, 1e-30))
    # states: 0 = leading blank, 2i+1 = position i, 2i+2 = blank after position i
    n_s = 2 * n_pos + 1
    emit = np.empty((n_t, n_s))
    emit[:, 0::2] = logp[:, blank : blank + 1]
    for i, classes in enumerate(allowed):
        emit[:, 2 * i + 1] = logp[:, classes].max(axis=1)
    # skipping the blank between two positions is always allowed: the classes may differ
    can_skip = np.zeros(n_s, dtype=bool)
    can_skip[3::2] = True
    score = np.full(n_s, -np.inf)
    score[0], score[1] = emit[0, 0], emit[0, 1]
    back = np.zeros((n_t, n_s), dtype=np.int64)
    idx = np.arange(n_s)
    choices = np.full((3, n_s), -np.inf)
    for t in range(1, n_t):
        choices[0] = score
        choices[1, 1:] = score[:-1]
        choices[2, 2:] = np.where(can_skip[2:], score[:-2], -np.inf)
        arg = choices.argmax(axis=0)
        score = choices[arg, idx] + emit[t]
        back[t] = idx - arg
    state = n_s - 1 if score[n_s - 1] >= score[n_s - 2] else n_s - 2
    if not np.isfinite(score[state]):
        return []
    frames: list[list[int]] = [[] for _ in range(n_pos)]
    for t in range(n_t - 1, -1, -1):
        if state % 2 == 1:
            frames[state // 2].append(t)
        state = int(back[t, state]) if t > 0 else state
    labels = []
    for classes, ts in zip(allowed, frames, strict=True):
        if not ts:
            return []
        labels.append(int(classes[logp[np.asarray(ts)][:, classes].sum(axis=0).argmax()]))
    return labels


def ctc_label_probability(probs: FloatArray, labels: list[int], blank: int) -> float:
    """P(labels | probs) under CTC: the forward algorithm, summing over all alignments
    (in probability space, rescaled at every step so that it cannot underflow)."""
    if not labels:
        return float(np.prod(probs[:, blank], dtype=np.float64))
    ext = [blank]
    for k in labels:
        ext += [k, blank]
    ext_arr = np.asarray(ext)
    n_s = len(ext)
    emit = probs[:, ext_arr].astype(np.float64)  # (T, S)
    skip = np.zeros(n_s, dtype=bool)
    skip[2:] = (ext_arr[2:] != blank) & (ext_arr[2:] != ext_arr[:-2])
    alpha = np.zeros(n_s)
    alpha[0], alpha[1] = emit[0, 0], emit[0, 1]
    log_scale = 0.0
    nxt = np.empty(n_s)
    for t in range(1, emit.shape[0]):
        nxt[:] = alpha
        nxt[1:] += alpha[:-1]
        nxt[2:] += np.where(skip[2:], alpha[:-2], 0.0)
        nxt *= emit[t]
        total = nxt.sum()
        if total <= 0.0:
            return 0.0
        alpha = nxt / total
        log_scale += math.log(total)
    return float(math.exp(log_scale + math.log(max(alpha[-1] + alpha[-2], 1e-300))))


def forced_alignment_confidences(probs: FloatArray, labels: list[int], blank: int) -> list[float]:
    """Per-label confidence: the highest step probability of each label on the Viterbi path.

    The Viterbi pass runs over Python lists: its ~17 states a step are too few for numpy's
    per-call cost (three times faster, the same path: ties go to staying, then stepping)."""
    if not labels:
        return []
    n_t = probs.shape[0]
    ext = [blank]
    for k in labels:
        ext += [k, blank]
    n_s = len(ext)
    logp: list[list[float]] = np.log(np.maximum(probs, 1e-30))[:, np.asarray(ext)].tolist()
    # a skip from s-2 is allowed onto a non-blank that differs from the label two back
    can_skip = [s >= 2 and ext[s] != blank and ext[s] != ext[s - 2] for s in range(n_s)]
    states = range(n_s)
    prev = [-math.inf] * n_s
    prev[0] = logp[0][0]
    if n_s > 1:
        prev[1] = logp[0][1]
    back: list[list[int]] = []  # back[t - 1][s]: the state before s at step t
    for t in range(1, n_t):
        row = logp[t]
        cur = [0.0] * n_s
        came = list(states)
        for s in states:
            best = prev[s]
            if s and prev[s - 1] > best:
                best = prev[s - 1]
                came[s] = s - 1
            if can_skip[s] and prev[s - 2] > best:
                best = prev[s - 2]
                came[s] = s - 2
            cur[s] = best + row[s]
        back.append(came)
        prev = cur
    s = n_s - 1 if prev[n_s - 1] >= prev[n_s - 2] else n_s - 2
    conf = [0.0] * len(labels)
    for t in range(n_t - 1, -1, -1):
        if s % 2 == 1:
            i = s // 2
            conf[i] = max(conf[i], float(probs[t, ext[s]]))
        s = back[t - 1][s] if t > 0 else s
    return conf


def _to_probs(logits: npt.NDArray[Any], spec: ReaderSpec) -> FloatArray:
    x: FloatArray = np.asarray(logits, dtype=np.float32)
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2 or x.shape[1] != spec.num_classes:
        raise ValueError(
            f"logits: expected shape (T, {spec.num_classes}) or (1, T, {spec.num_classes}), "
            f"got {np.shape(logits)}"
        )
    sums = x.sum(axis=1)
    if x.min() >= 0.0 and np.allclose(sums, 1.0, atol=1e-3):
        return x.astype(np.float32, copy=False)
    e: FloatArray = np.exp(x - x.max(axis=1, keepdims=True))
    probs: FloatArray = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return probs


def probabilities(logits: npt.NDArray[Any], spec: ReaderSpec) -> FloatArray:
    """Model output (T, K) or (1, T, K), logits or probabilities -> (T, K) probabilities."""
    return _to_probs(logits, spec)


def class_index(char: str, spec: ReaderSpec) -> int:
    """The model class of a character of the charset (classes skip the blank's index)."""
    return _class_of(char, spec)


def _label_text(labels: tuple[int, ...], spec: ReaderSpec) -> str:
    return "".join(spec.char_of(k) for k in labels)


def _class_of(char: str, spec: ReaderSpec) -> int:
    i = spec.charset.index(char)
    return i if i < spec.blank_index else i + 1
