from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.edge.recognition.reader import (
    _BEAM_LOG_FLOOR,
    _MAX_STEP_CANDIDATES,
    _MIN_STEP_PROB,
    PlateReading,
    ReaderSpec,
    ReaderSpecError,
    ctc_beam_search,
    ctc_label_probability,
    forced_alignment_confidences,
    greedy_decode,
    layout_classes,
    layout_decode,
    postprocess,
    preprocess,
    region_layouts,
    rerank,
)

pytestmark = pytest.mark.edge

CHARSET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _sidecar(**overrides: object) -> dict[str, object]:
    raw: dict[str, object] = {
        "schema_version": 1,
        "input": {"height": 48, "width": 128, "channels": 1, "mean": 0.5, "std": 0.25},
        "charset": CHARSET,
        "blank_index": 0,
        "sequence_rows": 2,
        "version": "1.0.0",
        "trained": "2026-11-25",
        "two_line_rule": "two feature rows",
    }
    raw.update(overrides)
    return raw


SPEC = ReaderSpec.from_dict(_sidecar())
BLANK = "-"


def _probs(steps: str, peak: float = 0.9) -> np.ndarray:
    """(T, K) probabilities from a string of per-step best classes ('-' is blank)."""
    k = SPEC.num_classes
    out = np.full((len(steps), k), (1.0 - peak) / (k - 1), dtype=np.float32)
    for t, ch in enumerate(steps):
        idx = SPEC.blank_index if ch == BLANK else CHARSET.index(ch) + 1
        out[t, idx] = peak
    return out


def test_spec_from_file_reads_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "reader.json"
    path.write_text(json.dumps(_sidecar()), encoding="utf-8")
    spec = ReaderSpec.from_file(path)
    assert (spec.input_height, spec.input_width, spec.channels) == (48, 128, 1)
    assert spec.num_classes == 37
    assert spec.char_of(1) == "0"
    assert spec.sequence_rows == 2


def test_spec_from_file_names_file_and_bad_field(tmp_path: Path) -> None:
    path = tmp_path / "reader.json"
    path.write_text(json.dumps(_sidecar(blank_index=99)), encoding="utf-8")
    with pytest.raises(ReaderSpecError) as info:
        ReaderSpec.from_file(path)
    assert info.value.field == "blank_index"
    assert str(path) in str(info.value)


def test_spec_from_file_rejects_missing_input_height(tmp_path: Path) -> None:
    raw = _sidecar(input={"width": 128, "channels": 1, "mean": 0.5, "std": 0.25})
    path = tmp_path / "reader.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(ReaderSpecError, match=r"input\.height"):
        ReaderSpec.from_file(path)


def test_spec_from_file_reports_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ReaderSpecError, match="not found"):
        ReaderSpec.from_file(tmp_path / "nope.json")


def test_greedy_decode_collapses_repeats_and_drops_blanks() -> None:
    text, confs = greedy_decode(_probs("--AA-A--11-2--"), SPEC)
    assert text == "AA12"
    assert len(confs) == 4
    assert all(c == pytest.approx(0.9) for c in confs)


def test_greedy_decode_accepts_batched_logits() -> None:
    logits = np.log(_probs("-B-7-"))[None]
    assert greedy_decode(logits, SPEC)[0] == "B7"


def test_beam_search_sums_alignments_over_greedy_path() -> None:
    # Greedy picks blank at every step ("" ), but "A" has more total probability over alignments.
    k = SPEC.num_classes
    probs = np.zeros((2, k), dtype=np.float32)
    a = CHARSET.index("A") + 1
    probs[:, SPEC.blank_index] = 0.5
    probs[:, a] = 0.4
    probs[:, a + 1] = 0.1
    assert greedy_decode(probs, SPEC)[0] == ""
    beams = ctc_beam_search(probs, SPEC.blank_index, beam_width=8)
    best_labels, best_p = beams[0]
    assert best_labels == (a,)
    # P("A") = 0.4*0.4 + 0.4*0.5 + 0.5*0.4 = 0.56
    assert best_p == pytest.approx(0.56, abs=1e-5)


def test_beam_probabilities_are_exact_across_runs_of_blank_only_steps() -> None:
    # Steps where only blank is likely are folded into one update per run; each returned
    # prefix must still carry its exact CTC probability (the forward pass over all alignments).
    # Blank-only steps: blank 0.9, every character 0.1 / 36 (under the beam's 1% cut). Character
    # steps: the character, blank and one other class, all expanded. The beam then misses only
    # alignments through the cut characters (under 10% here), while a mistake in folding the runs
    # (16 blank-only steps of log 0.9 each) would be off by a factor of up to 5.4.
    rng = np.random.default_rng(11)
    steps = "--A-B----7-----1-2---"
    k = SPEC.num_classes
    for _ in range(20):
        probs = np.full((len(steps), k), 0.1 / (k - 1), dtype=np.float64)
        for t, ch in enumerate(steps):
            if ch == BLANK:
                probs[t, SPEC.blank_index] = 0.9
                continue
            probs[t] = 0.0
            probs[t, SPEC.blank_index] = rng.uniform(0.05, 0.3)
            probs[t, int(rng.integers(1, k))] += rng.uniform(0.02, 0.2)
            probs[t, CHARSET.index(ch) + 1] += 1.0
            probs[t] /= probs[t].sum()
        p32 = probs.astype(np.float32)
        beams = ctc_beam_search(p32, SPEC.blank_index, beam_width=10_000)
        assert [labels for labels, _ in beams[:1]] == [tuple(CHARSET.index(c) + 1 for c in "AB712")]
        for labels, p in beams[:3]:
            exact = ctc_label_probability(p32, list(labels), SPEC.blank_index)
            assert p == pytest.approx(exact, rel=0.15)


def _reference_beam_search(
    probs: np.ndarray, blank: int, beam_width: int
) -> list[tuple[tuple[int, ...], float]]:
    """The beam search step by step, with no folding of blank-only runs (the test oracle)."""
    import math

    def lse(a: float, b: float) -> float:
        if a == -math.inf:
            return b
        if b == -math.inf:
            return a
        return max(a, b) + math.log1p(math.exp(-abs(a - b)))

    def add(d: dict[tuple[int, ...], list[float]], p: tuple[int, ...], b: float, nb: float) -> None:
        cur = d.setdefault(p, [-math.inf, -math.inf])
        cur[0], cur[1] = lse(cur[0], b), lse(cur[1], nb)

    beams: dict[tuple[int, ...], list[float]] = {(): [0.0, -math.inf]}
    logp = np.log(np.maximum(probs, 1e-30))
    tops = np.argpartition(probs, -_MAX_STEP_CANDIDATES, axis=1)[:, -_MAX_STEP_CANDIDATES:]
    for t in range(probs.shape[0]):
        cand = [int(k) for k in tops[t] if k != blank and probs[t, k] >= _MIN_STEP_PROB]
        lb = float(logp[t, blank])
        nxt: dict[tuple[int, ...], list[float]] = {}
        for prefix, (pb, pnb) in beams.items():
            add(nxt, prefix, lse(pb, pnb) + lb, -math.inf)
            for k in cand:
                lk = float(logp[t, k])
                if prefix and k == prefix[-1]:
                    add(nxt, prefix, -math.inf, pnb + lk)
                    add(nxt, (*prefix, k), -math.inf, pb + lk)
                else:
                    add(nxt, (*prefix, k), -math.inf, lse(pb, pnb) + lk)
        totals = {p: lse(*v) for p, v in nxt.items()}
        floor = max(totals.values()) + _BEAM_LOG_FLOOR
        kept = sorted((p for p in nxt if totals[p] >= floor), key=totals.__getitem__)
        beams = {p: nxt[p] for p in kept[-beam_width:]}
    out = [(p, math.exp(lse(*v))) for p, v in beams.items()]
    return sorted(out, key=lambda item: item[1], reverse=True)


def test_beam_search_equals_the_step_by_step_search() -> None:
    rng = np.random.default_rng(5)
    k = SPEC.num_classes
    for _ in range(50):
        logits = rng.normal(0.0, 1.0, (64, k)) * rng.uniform(1.0, 6.0)
        logits[:, SPEC.blank_index] += rng.choice([0.0, 12.0], size=64, p=[0.4, 0.6])
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
        got = ctc_beam_search(probs, SPEC.blank_index, beam_width=10)
        want = _reference_beam_search(probs, SPEC.blank_index, beam_width=10)
        assert [labels for labels, _ in got] == [labels for labels, _ in want]
        assert [p for _, p in got] == pytest.approx([p for _, p in want], rel=1e-9)


def test_postprocess_reads_text_with_confidences() -> None:
    reading = postprocess(_probs("-A-B--C-1-2-3-"), SPEC)
    assert isinstance(reading, PlateReading)
    assert reading.text == "ABC123"
    assert 0.0 < reading.confidence <= 1.0
    assert len(reading.char_confidences) == 6
    assert reading.candidates[0][0] == "ABC123"
    assert len(reading.candidates) <= 5


def test_postprocess_reads_two_row_sequence_in_order() -> None:
    top = "-K-L--0-1---"
    bottom = "-A-B-1-2-3-4"
    assert postprocess(_probs(top + bottom), SPEC).text == "KL01AB1234"


def test_postprocess_treats_unnormalised_scores_as_logits() -> None:
    logits = np.log(_probs("-P-W-7-"))
    assert postprocess(logits * 3.0, SPEC).text == "PW7"


def test_postprocess_returns_empty_reading_for_all_blank_output() -> None:
    reading = postprocess(_probs("--------"), SPEC)
    assert reading.text == ""
    assert reading.confidence == 0.0
    assert reading.candidates == ()


def test_postprocess_rejects_wrong_class_count() -> None:
    with pytest.raises(ValueError, match="logits"):
        postprocess(np.zeros((10, 5), np.float32), SPEC)


def test_rerank_prefers_region_format_over_more_probable_misfit() -> None:
    cands = [("AB01234", 0.5), ("ABO1234", 0.3)]
    assert rerank(cands, "br")[0][0] == "ABO1234"
    assert rerank(cands, None)[0][0] == "AB01234"


def test_postprocess_reranks_ambiguous_char_by_brazil_format() -> None:
    probs = _probs("-A-B-C-0-1-2-3-")
    # at the step of '0' (t=7), make 'O' a close second
    o = CHARSET.index("O") + 1
    zero = CHARSET.index("0") + 1
    probs[7, zero], probs[7, o] = 0.5, 0.45
    probs /= probs.sum(axis=1, keepdims=True)
    plain = postprocess(probs, SPEC)
    br = postprocess(probs, SPEC, region="br")
    assert plain.text == "ABC0123"
    assert br.text == "ABC0123"  # already LLLNNNN
    probs2 = _probs("-A-B-0-1-2-3-4-")
    probs2[5, zero], probs2[5, o] = 0.5, 0.45
    probs2 /= probs2.sum(axis=1, keepdims=True)
    assert postprocess(probs2, SPEC).text == "AB01234"
    reading = postprocess(probs2, SPEC, region="br")
    assert reading.text == "ABO1234"
    assert [c for c, _ in reading.candidates][:2] == ["ABO1234", "AB01234"]


def test_preprocess_returns_normalised_nchw_float32() -> None:
    crop = np.full((30, 90, 3), 255, np.uint8)
    x = preprocess(crop, SPEC)
    assert x.shape == (1, 1, 48, 128)
    assert x.dtype == np.float32
    assert np.allclose(x, (1.0 - 0.5) / 0.25)


def test_preprocess_keeps_two_line_layout_top_and_bottom() -> None:
    # two-line plate: dark top line, bright bottom line -> the model input keeps them in order
    crop = np.zeros((100, 140, 3), np.uint8)
    crop[50:] = 255
    x = preprocess(crop, SPEC)[0, 0]
    assert x[:20].mean() < 0 < x[-20:].mean()


def test_preprocess_handles_three_channel_spec_and_grey_crop() -> None:
    spec3 = ReaderSpec.from_dict(
        _sidecar(input={"height": 24, "width": 94, "channels": 3, "mean": 0.5, "std": 0.5})
    )
    x = preprocess(np.zeros((20, 60), np.uint8), spec3)
    assert x.shape == (1, 3, 24, 94)


def test_preprocess_rejects_empty_crop() -> None:
    with pytest.raises(ValueError, match="empty"):
        preprocess(np.zeros((0, 10, 3), np.uint8), SPEC)


def test_shipped_reader_sidecar_loads_and_matches_two_row_output() -> None:
    path = Path(__file__).resolve().parents[2] / "services/edge/models/reader.json"
    if not path.is_file():
        pytest.skip("no shipped reader model")
    spec = ReaderSpec.from_file(path)
    assert spec.charset == CHARSET
    assert spec.sequence_rows == 2
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["output"]["shape"][-1] == spec.num_classes


def _cls(text: str) -> list[int]:
    return [CHARSET.index(c) + 1 for c in text]


def test_layout_decode_takes_the_best_allowed_class_per_position() -> None:
    probs = _probs("-0-Z-U-2-1-0-4-", peak=0.6)
    # 'O' is a weaker second at the first character: a letter position in LLLNNNN
    probs[1, CHARSET.index("O") + 1] = 0.3
    probs /= probs.sum(axis=1, keepdims=True)
    labels = layout_decode(probs, layout_classes("LLLNNNN", SPEC), SPEC.blank_index)
    assert labels == _cls("OZU2104")
    # a digit-only layout of the same length keeps the digits and maps letters to digits
    assert len(layout_decode(probs, layout_classes("NNNNNNN", SPEC), SPEC.blank_index)) == 7


def test_layout_decode_finds_repeated_characters_without_blank_between() -> None:
    probs = _probs("-A-A-A-1-1-1-1-")
    labels = layout_decode(probs, layout_classes("LLLNNNN", SPEC), SPEC.blank_index)
    assert labels == _cls("AAA1111")


def test_layout_decode_returns_nothing_when_the_layout_cannot_fit() -> None:
    assert layout_decode(_probs("-A-"), layout_classes("LLLNNNN", SPEC), SPEC.blank_index) == []
    assert layout_decode(_probs("-A-"), [], SPEC.blank_index) == []


def test_layout_classes_names_an_unknown_position_class() -> None:
    with pytest.raises(ValueError, match="X"):
        layout_classes("LLX", SPEC)


def test_ctc_label_probability_sums_every_alignment() -> None:
    rng = np.random.default_rng(7)
    probs = rng.random((4, 3)).astype(np.float64)
    probs /= probs.sum(axis=1, keepdims=True)
    # brute force over all 3^4 paths: collapse repeats, drop blanks (class 0)
    import itertools

    def collapse(path: tuple[int, ...]) -> tuple[int, ...]:
        out, prev = [], -1
        for k in path:
            if k != prev and k != 0:
                out.append(k)
            prev = k
        return tuple(out)

    for labels in ([1], [1, 2], [1, 1], [2, 1, 2]):
        want = sum(
            float(np.prod([probs[t, k] for t, k in enumerate(path)]))
            for path in itertools.product(range(3), repeat=4)
            if collapse(path) == tuple(labels)
        )
        assert ctc_label_probability(probs, labels, 0) == pytest.approx(want, rel=1e-6)


def test_postprocess_adds_the_layout_reading_for_a_region_with_fixed_layouts() -> None:
    probs = _probs("-A-D-1-9-3-7-1-", peak=0.9)
    i, one = CHARSET.index("I") + 1, CHARSET.index("1") + 1
    probs[5, one], probs[5, i] = 0.85, 0.1  # 'I' is 12x less likely than '1' at position 3
    probs /= probs.sum(axis=1, keepdims=True)
    assert postprocess(probs, SPEC).text == "AD19371"
    reading = postprocess(probs, SPEC, region="br")
    assert reading.text == "ADI9371"
    assert 0.0 < reading.confidence < 0.2  # its own probability, not the misfit's
    assert "AD19371" in [c for c, _ in reading.candidates]


def test_region_layouts_come_from_the_shared_formats_of_fixed_layout_regions() -> None:
    assert region_layouts("br") == ("LLLNNNN", "LLLNLNN")
    assert region_layouts("uk") == region_layouts("gb") == ("LLNNLLL",)
    assert region_layouts("us") == () and region_layouts(None) == ()


def test_gb_and_uk_plates_get_the_layout_reading() -> None:
    probs = _probs("-A-8-1-2-C-D-E-", peak=0.6)
    probs[3, CHARSET.index("B") + 1] = 0.3  # 'B' a weaker second to '8' at position 2
    probs /= probs.sum(axis=1, keepdims=True)
    assert postprocess(probs, SPEC).text == "A812CDE"
    assert postprocess(probs, SPEC, region="gb").text == "AB12CDE"
    assert postprocess(probs, SPEC, region="uk").text == "AB12CDE"


def test_layout_reading_over_multi_frame_segments_scores_its_true_ctc_probability() -> None:
    # '1' spans three frames with 'I' a distant second in each: the layout reading ADI9371 is
    # far less probable than the misfit; its score must be the exact CTC probability
    probs = _probs("-A-D-111-9-3-7-1-", peak=0.9)
    for t in (5, 6, 7):
        probs[t, CHARSET.index("1") + 1], probs[t, CHARSET.index("I") + 1] = 0.85, 0.1
    probs /= probs.sum(axis=1, keepdims=True)
    reading = postprocess(probs, SPEC, region="br")
    scores = dict(reading.candidates)
    exact = ctc_label_probability(probs, _cls("ADI9371"), SPEC.blank_index)
    assert scores["ADI9371"] == pytest.approx(exact, rel=1e-4)
    assert reading.text == "AD19371"  # 0.01 x the misfit still beats a 500x weaker fit


@pytest.mark.parametrize(
    ("top", "bottom", "lines"),
    [
        ("-A-B-C--", "--------", 1),  # one line: the top row only
        ("--KA04--", "-ME9869-", 2),  # a two-line plate: both rows
        ("--------", "-AB-----", 1),  # the bottom row only
        ("-------A", "B-------", 2),  # a character at each side of the row boundary
        ("-------A", "A-------", 2),  # one run of steps across the boundary
    ],
)
def test_postprocess_counts_the_feature_rows_the_best_path_uses(
    top: str, bottom: str, lines: int
) -> None:
    assert postprocess(_probs(top + bottom), SPEC).lines == lines


def test_a_one_row_model_always_reads_one_line() -> None:
    spec = ReaderSpec.from_dict(_sidecar(sequence_rows=1))
    assert postprocess(_probs("--KA04---ME9869-"), spec).lines == 1


def _reference_forced_alignment(probs: np.ndarray, labels: list[int], blank: int) -> list[float]:
    """The Viterbi alignment of `labels` over a (T, S) score table in numpy, one step at a time
    (the test oracle: the shipped pass runs over Python lists)."""
    ext = [blank]
    for k in labels:
        ext += [k, blank]
    n_t, n_s = probs.shape[0], len(ext)
    ext_arr = np.asarray(ext)
    logp = np.log(np.maximum(probs, 1e-30))[:, ext_arr]
    can_skip = np.zeros(n_s, dtype=bool)
    can_skip[2:] = (ext_arr[2:] != blank) & (ext_arr[2:] != ext_arr[:-2])
    score = np.full((n_t, n_s), -np.inf)
    back = np.zeros((n_t, n_s), dtype=np.int64)
    score[0, :2] = logp[0, :2]
    idx = np.arange(n_s)
    choices = np.full((3, n_s), -np.inf)  # stay, step from s-1, skip from s-2
    for t in range(1, n_t):
        choices[0] = score[t - 1]
        choices[1, 1:] = score[t - 1, :-1]
        choices[2, 2:] = np.where(can_skip[2:], score[t - 1, :-2], -np.inf)
        arg = choices.argmax(axis=0)  # ties: the first (stay, then step)
        score[t] = choices[arg, idx] + logp[t]
        back[t] = idx - arg
    s = n_s - 1 if score[-1, n_s - 1] >= score[-1, n_s - 2] else n_s - 2
    conf = [0.0] * len(labels)
    for t in range(n_t - 1, -1, -1):
        if s % 2 == 1:
            conf[s // 2] = max(conf[s // 2], float(probs[t, ext[s]]))
        s = int(back[t, s]) if t > 0 else s
    return conf


def test_forced_alignment_equals_the_numpy_viterbi() -> None:
    """Random peaked outputs and label sequences (repeats included, some longer than the
    output can align): the confidences are exactly the numpy oracle's."""
    rng = np.random.default_rng(7)
    k = SPEC.num_classes
    for _ in range(300):
        steps = int(rng.integers(4, 65))
        logits = rng.normal(0.0, 1.0, (steps, k))
        logits[:, SPEC.blank_index] += rng.uniform(0.0, 8.0, steps)
        for t in rng.choice(steps, size=int(rng.integers(0, steps // 2 + 1)), replace=False):
            logits[t, int(rng.integers(1, k))] += rng.uniform(0.0, 10.0)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
        labels = [int(v) for v in rng.integers(1, k, int(rng.integers(1, 12)))]
        if rng.random() < 0.2 and len(labels) > 1:
            labels[1] = labels[0]  # a repeat needs a blank between
        got = forced_alignment_confidences(probs, labels, SPEC.blank_index)
        assert got == _reference_forced_alignment(probs, labels, SPEC.blank_index)
