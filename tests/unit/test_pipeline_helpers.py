from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from services.edge.recognition.detector import Detection
from services.edge.recognition.pipeline import (
    PipelineOptions,
    PlateRecognizer,
    as_bgr,
    crop_box,
    decode_image,
    image_size_from_header,
)
from services.edge.recognition.reader import ReaderSpec

pytestmark = pytest.mark.edge


class FakeModel:
    """An InferenceModel returning fixed outputs (no OpenVINO)."""

    def __init__(self, inputs: tuple[str, ...], outputs: dict[str, np.ndarray]) -> None:
        self._inputs = inputs
        self._outputs = outputs
        self.calls = 0

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._inputs

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self._outputs)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        return self._outputs


def _encode(ext: str, width: int, height: int) -> bytes:
    ok, buf = cv2.imencode(ext, np.zeros((height, width, 3), np.uint8))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_header_size_matches_encoded_image(ext: str) -> None:
    assert image_size_from_header(_encode(ext, 321, 123)) == (321, 123)


def test_header_size_is_none_for_unknown_format() -> None:
    assert image_size_from_header(b"BM not a jpeg") is None


def test_decode_reduces_large_jpeg_and_reports_factor() -> None:
    image, factor, error = decode_image(_encode(".jpg", 4000, 2000), 1000, 10**9)
    assert error is None and image is not None
    assert image.shape[:2] == (500, 1000)
    assert factor == pytest.approx(4.0)


def test_decode_keeps_small_image_full_size() -> None:
    image, factor, _ = decode_image(_encode(".png", 64, 32), 4096, 10**9)
    assert image is not None and image.shape == (32, 64, 3) and factor == 1.0


def test_as_bgr_converts_grey_and_bgra() -> None:
    grey, _ = as_bgr(np.zeros((4, 5), np.uint8))
    bgra, _ = as_bgr(np.zeros((4, 5, 4), np.uint8))
    assert grey is not None and grey.shape == (4, 5, 3)
    assert bgra is not None and bgra.shape == (4, 5, 3)


def test_as_bgr_rejects_float_frames() -> None:
    image, error = as_bgr(np.zeros((4, 5, 3), np.float32))
    assert image is None and error is not None and "uint8" in error


def test_crop_box_adds_margins_and_clips_to_frame() -> None:
    frame = np.zeros((100, 200, 3), np.uint8)
    crop = crop_box(frame, (10.0, 10.0, 110.0, 30.0), 0.1, 0.5)
    assert crop is not None and crop.shape[:2] == (40, 120)
    edge = crop_box(frame, (190.0, 90.0, 200.0, 100.0), 0.5, 0.5)
    assert edge is not None and edge.shape[:2] == (15, 15)


def test_crop_box_returns_none_for_tiny_box() -> None:
    assert crop_box(np.zeros((10, 10, 3), np.uint8), (1.0, 1.0, 2.0, 2.0), 0.0, 0.0) is None


def test_recognizer_without_reader_returns_boxes_and_times_each_stage() -> None:
    from services.edge.recognition.detector import DetectorSpec

    spec = DetectorSpec(input_width=64, input_height=64, stride=8, score_threshold=0.5)
    heat = np.zeros((1, 1, 8, 8), np.float32)
    heat[0, 0, 4, 4] = 0.9
    ltrb = np.full((1, 4, 8, 8), 8.0, np.float32)
    detector = FakeModel(("image",), {"heat": heat, "ltrb": ltrb})
    ticks = iter(float(i) for i in range(100))
    recognizer = PlateRecognizer(detector, spec, None, None, clock=lambda: next(ticks))
    result = recognizer.recognize(np.zeros((64, 64, 3), np.uint8))
    assert detector.calls == 1
    assert len(result.plates) == 1
    assert result.plates[0].box == pytest.approx((28.0, 28.0, 44.0, 44.0))
    assert result.plates[0].detector_score == pytest.approx(0.9)
    assert result.timings_ms == {
        "resize": 1000.0,
        "detect": 1000.0,
        "read": 1000.0,
        "total": 3000.0,
    }


def _aspect_recognizer(
    detect_shapes: int, fail: bool = False, fit: str = "aspect"
) -> tuple[PlateRecognizer, FakeModel, list[tuple[int, int]]]:
    """A 128x128 detector with `detect_fit=fit`; returns it, the square model and the
    list of shapes compiled (each fitted detector sees a plate centred at (20, 12))."""
    from dataclasses import replace

    from services.edge.recognition.detector import DetectorSpec
    from services.edge.recognition.runtime import ModelLoadError

    spec = DetectorSpec(input_width=128, input_height=128, stride=8, score_threshold=0.5)
    square = FakeModel(
        ("image",),
        {
            "heat": np.zeros((1, 1, 16, 16), np.float32),
            "ltrb": np.zeros((1, 4, 16, 16), np.float32),
        },
    )
    compiled: list[tuple[int, int]] = []

    def detector_at(width: int, height: int) -> FakeModel:
        if fail:
            raise ModelLoadError(Path("detector.xml"), "OpenVINO failed: no memory")
        compiled.append((width, height))
        heat = np.zeros((1, 1, height // 8, width // 8), np.float32)
        heat[0, 0, 1, 2] = 0.9
        ltrb = np.full((1, 4, height // 8, width // 8), 4.0, np.float32)
        return FakeModel(("image",), {"heat": heat, "ltrb": ltrb})

    options = replace(
        PipelineOptions(),
        detect_fit=fit,  # type: ignore[arg-type]
        refine_below=0.0,
        detect_shapes=detect_shapes,
    )
    recognizer = PlateRecognizer(square, spec, None, None, options, detector_at=detector_at)
    return recognizer, square, compiled


def test_aspect_fit_compiles_one_detector_per_frame_shape() -> None:
    recognizer, square, compiled = _aspect_recognizer(detect_shapes=2)
    wide = recognizer.recognize(np.zeros((180, 320, 3), np.uint8))  # 16:9 -> 160x96 input
    recognizer.recognize(np.zeros((180, 320, 3), np.uint8))
    assert compiled == [(160, 96)] and square.calls == 0
    scale = 0.5  # min(160 / 320, 96 / 180): the box comes back in frame pixels
    assert wide.plates[0].box == pytest.approx((16 / scale, 8 / scale, 24 / scale, 16 / scale))
    recognizer.recognize(np.zeros((128, 128, 3), np.uint8))  # square frames: the square model
    assert square.calls == 1 and compiled == [(160, 96)]


def test_trim_fit_compiles_the_square_scale_without_padding() -> None:
    recognizer, square, compiled = _aspect_recognizer(detect_shapes=2, fit="trim")
    wide = recognizer.recognize(np.zeros((180, 320, 3), np.uint8))  # 16:9 -> 128x96 input
    assert compiled == [(128, 96)] and square.calls == 0
    scale = 0.4  # min(128 / 320, 128 / 180): the square's scale
    assert wide.plates[0].box == pytest.approx((16 / scale, 8 / scale, 24 / scale, 16 / scale))
    recognizer.recognize(np.zeros((128, 128, 3), np.uint8))  # square frames: the square model
    assert square.calls == 1 and compiled == [(128, 96)]


def test_aspect_fit_keeps_the_most_recently_used_shapes() -> None:
    recognizer, _, compiled = _aspect_recognizer(detect_shapes=2)
    for frame in [(180, 320), (320, 180), (180, 320), (200, 600), (180, 320), (320, 180)]:
        recognizer.recognize(np.zeros((*frame, 3), np.uint8))
    # 160x96 stays (used again before 192x64 came); 96x160 was the least recent and went
    assert compiled == [(160, 96), (96, 160), (192, 64), (96, 160)]


def test_aspect_fit_falls_back_to_the_square_detector_when_a_shape_fails_to_compile() -> None:
    recognizer, square, _ = _aspect_recognizer(detect_shapes=2, fail=True)
    result = recognizer.recognize(np.zeros((180, 320, 3), np.uint8))
    assert result.error is None and square.calls == 1


def test_detection_scored_exactly_at_the_threshold_is_kept() -> None:
    from services.edge.recognition.detector import DetectorSpec

    heat = np.zeros((1, 1, 8, 8), np.float32)
    heat[0, 0, 4, 4] = np.float32(0.35)  # float32(0.35) < 0.35 as Python floats
    detector = FakeModel(("image",), {"heat": heat, "ltrb": np.full((1, 4, 8, 8), 8.0, np.float32)})
    spec = DetectorSpec(input_width=64, input_height=64, stride=8, score_threshold=0.35)
    options = PipelineOptions(refine_below=0.0)
    recognizer = PlateRecognizer(detector, spec, None, None, options)
    assert len(recognizer.detect(np.zeros((64, 64, 3), np.uint8))) == 1


def _cascade_recognizer(
    refine_peak: float, candidate_threshold: float, **overrides: object
) -> PlateRecognizer:
    """A 64x64 frame with a plate scored 0.9 at (20, 20) and a candidate scored 0.3 at (44, 44);
    the zoomed pass (48 px window, scale 1) scores a box centred on the candidate `refine_peak`.
    `overrides`: more PipelineOptions fields, `reader`/`reader_spec` a reader."""
    from dataclasses import replace

    from services.edge.recognition.detector import DetectorSpec

    reader = overrides.pop("reader", None)
    reader_spec = overrides.pop("reader_spec", None)
    refine_at = overrides.pop("refine_at", None)

    heat = np.zeros((1, 1, 8, 8), np.float32)
    heat[0, 0, 2, 2], heat[0, 0, 5, 5] = 0.9, 0.3
    detector = FakeModel(("image",), {"heat": heat, "ltrb": np.full((1, 4, 8, 8), 4.0, np.float32)})
    zoom_heat = np.zeros((1, 1, 6, 6), np.float32)
    zoom_heat[0, 0, 3, 3] = refine_peak  # window (16, 16)-(64, 64): frame centre (44, 44)
    zoom = FakeModel(
        ("image",), {"heat": zoom_heat, "ltrb": np.full((1, 4, 6, 6), 3.0, np.float32)}
    )
    spec = DetectorSpec(input_width=64, input_height=64, stride=8, score_threshold=0.5)
    # the cascade's own rules: main boxes the zoomed pass does not confirm are kept, unless
    # `overrides` says otherwise
    overrides.setdefault("refine_drops_unconfirmed", False)
    overrides.setdefault("variants_below", 0.0)  # one read a box: the fake reader's sequence
    overrides.setdefault("rezoom_context", 0.0)  # one zoomed pass: the fake zoom's answers
    options = replace(
        PipelineOptions(),
        refine_input=48,
        candidate_threshold=candidate_threshold,
        candidate_confirm=0.5,
        **overrides,  # type: ignore[arg-type]
    )
    return PlateRecognizer(
        detector,
        spec,
        reader,  # type: ignore[arg-type]
        reader_spec,  # type: ignore[arg-type]
        options,
        refine_model=zoom,
        refine_at=refine_at,  # type: ignore[arg-type]
    )


def _cascade(refine_peak: float, candidate_threshold: float) -> list[Detection]:
    recognizer = _cascade_recognizer(refine_peak, candidate_threshold)
    return recognizer.detect(np.zeros((64, 64, 3), np.uint8))


def test_cascade_keeps_a_candidate_the_zoomed_pass_confirms_with_its_box() -> None:
    found = _cascade(refine_peak=0.8, candidate_threshold=0.2)
    assert [d.score for d in found] == pytest.approx([0.9, 0.3])
    assert found[0].box == pytest.approx((16.0, 16.0, 24.0, 24.0))  # not confirmed: coarse box
    assert found[1].box == pytest.approx((41.0, 41.0, 47.0, 47.0))  # the zoomed pass's box


class WindowZoom:
    """A zoomed detector whose answer depends on the window's place in the frame's sequence of
    windows: the n-th window gets `answers[n]` whether the windows come one a call (`batch`
    1) or together (then the batch must have `batch` windows). Records each call's batch."""

    def __init__(self, answers: list[dict[str, np.ndarray]], batch: int, log: list[int]) -> None:
        self.answers, self.batch, self.log, self.windows = answers, batch, log, 0

    @property
    def input_names(self) -> tuple[str, ...]:
        return ("image",)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self.answers[0])

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (x,) = inputs.values()
        assert x.shape[0] == self.batch
        self.log.append(self.batch)
        first = self.windows % len(self.answers)  # the frame's first window, frame after frame
        self.windows += self.batch
        picked = [self.answers[(first + i) % len(self.answers)] for i in range(self.batch)]
        return {k: np.concatenate([a[k] for a in picked]) for k in self.answers[0]}


@pytest.mark.parametrize("refine_batch", [1, 2, 4])
def test_zoom_windows_of_a_frame_share_one_call_with_the_same_outcome(refine_batch: int) -> None:
    """The frame's plate and the cascade's candidate are both small. The zoomed pass confirms
    the first window (the plate) and finds nothing in the second (the candidate): the plate
    takes the zoomed box and the candidate is dropped, whether the two windows take a call
    each or share one batched call (`refine_batch` >= 2); a mix-up of the batch's answers would
    keep the candidate instead. With 1, the batched model is never asked for."""
    base = _cascade_recognizer(refine_peak=0.8, candidate_threshold=0.2)
    zoom = base._refine_model
    assert isinstance(zoom, FakeModel)
    confirm = zoom.infer({})
    nothing = {k: np.zeros_like(v) for k, v in confirm.items()}
    answers = [confirm, nothing]
    log: list[int] = []
    compiled: list[int] = []

    def refine_at(batch: int) -> WindowZoom:
        compiled.append(batch)
        return WindowZoom(answers, batch, log)

    single = _cascade_recognizer(refine_peak=0.8, candidate_threshold=0.2)
    single._refine_model = WindowZoom(answers, 1, [])
    want = single.detect(np.zeros((64, 64, 3), np.uint8))
    assert [d.score for d in want] == pytest.approx([0.9])  # the candidate was dropped
    batched = _cascade_recognizer(
        refine_peak=0.8, candidate_threshold=0.2, refine_at=refine_at, refine_batch=refine_batch
    )
    batched._refine_model = WindowZoom(answers, 1, log)
    for _ in range(2):
        found = batched.detect(np.zeros((64, 64, 3), np.uint8))
        assert [(d.box, d.score) for d in found] == [(d.box, d.score) for d in want]
    if refine_batch == 1:
        assert log == [1, 1, 1, 1] and compiled == []
    else:
        # one call a frame; each batch size compiled once, with the recogniser
        assert log == [2, 2] and compiled == list(range(2, refine_batch + 1))


def test_cascade_drops_a_candidate_the_zoomed_pass_scores_too_low() -> None:
    found = _cascade(refine_peak=0.4, candidate_threshold=0.2)
    assert [d.score for d in found] == pytest.approx([0.9])


def test_cascade_off_ignores_boxes_under_the_detector_threshold() -> None:
    found = _cascade(refine_peak=0.8, candidate_threshold=0.0)
    assert [d.score for d in found] == pytest.approx([0.9])


@pytest.mark.parametrize(
    ("drop", "refine_peak", "kept"),
    [
        # both boxes are the detector's own (threshold 0.25); only the 0.3 one is confirmed
        (False, 0.8, [(0.9, (16.0, 16.0, 24.0, 24.0)), (0.3, (41.0, 41.0, 47.0, 47.0))]),
        (True, 0.8, [(0.3, (41.0, 41.0, 47.0, 47.0))]),
        # the zoomed pass scores under refine_min_score (0.3): nothing is confirmed
        (False, 0.2, [(0.9, (16.0, 16.0, 24.0, 24.0)), (0.3, (40.0, 40.0, 48.0, 48.0))]),
        (True, 0.2, []),
    ],
)
def test_refine_drops_unconfirmed_drops_small_boxes_the_zoomed_pass_does_not_confirm(
    drop: bool, refine_peak: float, kept: list[tuple[float, tuple[float, ...]]]
) -> None:
    recognizer = _cascade_recognizer(
        refine_peak, 0.0, score_threshold=0.25, refine_drops_unconfirmed=drop
    )
    found = recognizer.detect(np.zeros((64, 64, 3), np.uint8))
    assert [d.score for d in found] == pytest.approx([score for score, _ in kept])
    for detection, (_, box) in zip(found, kept, strict=True):
        assert detection.box == pytest.approx(box)


@pytest.mark.parametrize(
    ("candidate_read", "texts"),
    [
        # 0.45 sure: enough for a detected plate (0.3), not for a candidate (0.5)
        ({"C": 0.45, "0": 0.35, "O": 0.2}, ["AB"]),
        ({"C": 0.99}, ["AB", "CD"]),
    ],
)
def test_cascade_candidate_needs_a_surer_reading_than_a_detected_plate(
    candidate_read: dict[str, float], texts: list[str]
) -> None:
    _, spec = _reader_fake("A")
    plate = _probs_for(spec, [{"-": 1}, {"A": 0.99}, {"-": 1}, {"B": 0.99}, {"-": 1}])
    candidate = _probs_for(spec, [{"-": 1}, candidate_read, {"-": 1}, {"D": 1}, {"-": 1}])
    reader = SequenceModel(("crop",), [{"logits": plate[None]}, {"logits": candidate[None]}])
    recognizer = _cascade_recognizer(0.8, 0.2, reader=reader, reader_spec=spec)
    result = recognizer.recognize(np.zeros((64, 64, 3), np.uint8))
    assert reader.calls == 2
    assert [p.text for p in result.plates] == texts


def test_cascade_spends_no_zoomed_pass_on_candidates_that_could_not_be_read() -> None:
    recognizer = _cascade_recognizer(0.8, 0.2, max_plates=1)
    found = recognizer.detect(np.zeros((64, 64, 3), np.uint8))
    assert [d.score for d in found] == pytest.approx([0.9])
    assert recognizer._refine_model is not None
    assert recognizer._refine_model.calls == 1  # type: ignore[attr-defined]  # the plate only


def test_square_fit_never_compiles_another_detector() -> None:
    from services.edge.recognition.detector import DetectorSpec

    square = FakeModel(
        ("image",),
        {
            "heat": np.zeros((1, 1, 8, 8), np.float32),
            "ltrb": np.zeros((1, 4, 8, 8), np.float32),
        },
    )

    def detector_at(width: int, height: int) -> FakeModel:
        raise AssertionError("square fit compiled a detector")

    spec = DetectorSpec(input_width=64, input_height=64, stride=8, score_threshold=0.5)
    recognizer = PlateRecognizer(square, spec, None, None, detector_at=detector_at)
    assert recognizer.recognize(np.zeros((90, 160, 3), np.uint8)).plates == ()
    assert square.calls == 1


def test_score_threshold_option_replaces_the_sidecar_threshold() -> None:
    """The sidecar says 0.5; the option lowers it to 0.25 and the 0.3 box is found."""
    recognizer = _cascade_recognizer(0.8, 0.0)
    assert [d.score for d in recognizer.detect(np.zeros((64, 64, 3), np.uint8))] == pytest.approx(
        [0.9]
    )
    lower = _cascade_recognizer(0.8, 0.0, score_threshold=0.25, refine_below=0.0)
    found = lower.detect(np.zeros((64, 64, 3), np.uint8))
    assert [d.score for d in found] == pytest.approx([0.9, 0.3])


@pytest.mark.parametrize(
    ("field", "value"),
    [("score_threshold", 1.0), ("score_threshold", -0.1), ("score_threshold", float("nan")),
     ("second_precision", "bf16"), ("reader_precision", "f16"), ("detect_fit", "round"),
     ("refine_batch", 0), ("second_low_detector", 0.6), ("second_low_detector", -0.1),
     ("second_low_detector", float("nan"))],
)  # fmt: skip
def test_bad_pipeline_options_are_refused_by_name(field: str, value: object) -> None:
    from dataclasses import replace

    from services.edge.recognition.detector import DetectorSpec

    with pytest.raises(ValueError, match=field):
        PlateRecognizer(
            FakeModel(("image",), {}),
            DetectorSpec(),
            None,
            None,
            replace(PipelineOptions(), **{field: value}),  # type: ignore[arg-type]
        )


def test_recognizer_crops_mode_skips_detector() -> None:
    from services.edge.recognition.detector import DetectorSpec

    detector = FakeModel(("image",), {})
    recognizer = PlateRecognizer(detector, DetectorSpec(), None, None)
    result = recognizer.recognize(np.zeros((20, 60, 3), np.uint8), crops=True)
    assert detector.calls == 0
    assert result.plates[0].box == (0.0, 0.0, 60.0, 20.0)


def test_detection_is_a_value_object() -> None:
    assert Detection((0, 0, 1, 1), 0.5) == Detection((0, 0, 1, 1), 0.5)


def _reader_fake(text: str) -> tuple[FakeModel, ReaderSpec]:
    charset = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    spec = ReaderSpec.from_dict(
        {
            "input": {"height": 32, "width": 128, "channels": 1, "mean": 0.5, "std": 0.25},
            "charset": charset,
            "blank_index": 0,
            "sequence_rows": 1,
        }
    )
    steps = 2 * len(text) + 2
    logits = np.full((1, steps, len(charset) + 1), -10.0, np.float32)
    logits[0, :, 0] = 10.0  # blank everywhere ...
    for i, ch in enumerate(text):  # ... except one confident step per character
        logits[0, 2 * i, 0] = -10.0
        logits[0, 2 * i, charset.index(ch) + 1] = 10.0
    return FakeModel(("crop",), {"logits": logits}), spec


def test_recognizer_reads_given_boxes_without_running_the_detector() -> None:
    from services.edge.recognition.detector import DetectorSpec

    detector = FakeModel(("image",), {})
    reader, spec = _reader_fake("AB12")
    recognizer = PlateRecognizer(detector, DetectorSpec(), reader, spec)
    result = recognizer.recognize(np.zeros((100, 200, 3), np.uint8), boxes=[(10, 20, 90, 40)])
    assert detector.calls == 0 and reader.calls == 1
    assert [p.text for p in result.plates] == ["AB12"]
    assert result.plates[0].box == (10.0, 20.0, 90.0, 40.0)
    assert result.plates[0].confidence > 0.9
    assert len(result.plates[0].char_confidences) == 4


def _probs_for(spec: ReaderSpec, steps: list[dict[str, float]]) -> np.ndarray:
    """(T, K) probabilities; each step maps characters ('-' = blank) to probabilities."""
    k = spec.num_classes
    out = np.full((len(steps), k), 1e-4, np.float32)
    for t, step in enumerate(steps):
        for ch, p in step.items():
            out[t, spec.blank_index if ch == "-" else spec.charset.index(ch) + 1] = p
    out /= out.sum(axis=1, keepdims=True)
    return out


def test_combine_takes_the_text_with_the_highest_mean_probability_over_reads() -> None:
    from services.edge.recognition import reader as rdr
    from services.edge.recognition.pipeline import _combine

    _, spec = _reader_fake("A")
    first = _probs_for(spec, [{"-": 1}, {"A": 0.6, "4": 0.4}, {"-": 1}, {"B": 1}, {"-": 1}])
    second = _probs_for(spec, [{"-": 1}, {"A": 0.2, "4": 0.8}, {"-": 1}, {"B": 1}, {"-": 1}])
    reads = [(rdr.postprocess(p, spec), p) for p in (first, second)]
    assert [r.text for r, _ in reads] == ["AB", "4B"]
    combined = _combine(reads, spec, None, top_n=5)
    assert combined.text == "4B"  # mean 0.6 against 0.4
    assert combined.confidence == pytest.approx(0.6, abs=0.02)  # 1e-4 floor per class
    assert len(combined.char_confidences) == 2 and combined.char_confidences[0] > 0.7
    assert [t for t, _ in combined.candidates][:2] == ["4B", "AB"]


class SequenceModel(FakeModel):
    """Returns the next of several outputs on each call (the last one repeats)."""

    def __init__(self, inputs: tuple[str, ...], outputs: list[dict[str, np.ndarray]]) -> None:
        super().__init__(inputs, outputs[0])
        self._sequence = outputs

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self._sequence[min(self.calls, len(self._sequence) - 1)]
        self.calls += 1
        return out


def test_uncertain_read_is_read_again_with_the_variant_margins() -> None:
    from services.edge.recognition.detector import DetectorSpec
    from services.edge.recognition.pipeline import PipelineOptions

    _, spec = _reader_fake("A")
    unsure = _probs_for(spec, [{"-": 1}, {"A": 0.55, "4": 0.45}, {"-": 1}, {"B": 1}, {"-": 1}])
    sure = _probs_for(spec, [{"-": 1}, {"4": 0.99}, {"-": 1}, {"B": 1}, {"-": 1}])
    reader = SequenceModel(("crop",), [{"logits": unsure[None]}, {"logits": sure[None]}])
    options = PipelineOptions(read_variants=((0.0, 0.0), (0.2, 0.2)), variants_below=0.9)
    recognizer = PlateRecognizer(FakeModel(("image",), {}), DetectorSpec(), reader, spec, options)
    result = recognizer.recognize(np.zeros((100, 200, 3), np.uint8), boxes=[(10, 20, 90, 40)])
    assert reader.calls == 3
    assert [p.text for p in result.plates] == ["4B"]  # (0.45 + 0.99 + 0.99) / 3 beats 0.55 / 3


def test_confident_read_is_not_read_again() -> None:
    from services.edge.recognition.detector import DetectorSpec

    reader, spec = _reader_fake("AB12")
    recognizer = PlateRecognizer(FakeModel(("image",), {}), DetectorSpec(), reader, spec)
    result = recognizer.recognize(np.zeros((100, 200, 3), np.uint8), boxes=[(10, 20, 90, 40)])
    assert reader.calls == 1 and [p.text for p in result.plates] == ["AB12"]


def _det_outputs(cells: list[tuple[int, int, float, float]], grid: int = 8) -> dict:
    """heat/ltrb for a 64 px, stride-8 detector: (row, col, score, half-size) per peak."""
    heat = np.zeros((1, 1, grid, grid), np.float32)
    ltrb = np.zeros((1, 4, grid, grid), np.float32)
    for row, col, score, half in cells:
        heat[0, 0, row, col] = score
        ltrb[0, :, row, col] = (half, half / 2, half, half / 2)
    return {"heat": heat, "ltrb": ltrb}


def _refining(coarse: dict, zoomed: dict, **options: object) -> PlateRecognizer:
    from services.edge.recognition.detector import DetectorSpec
    from services.edge.recognition.pipeline import PipelineOptions

    spec = DetectorSpec(input_width=64, input_height=64, stride=8, score_threshold=0.5)
    options.setdefault("rezoom_context", 0.0)  # the first zoomed pass alone
    opts = PipelineOptions(refine_input=64, refine_below=64.0, refine_context=3.0, **options)  # type: ignore[arg-type]
    return PlateRecognizer(
        FakeModel(("image",), coarse),
        spec,
        None,
        None,
        opts,
        refine_model=FakeModel(("image",), zoomed),
    )


def test_small_box_takes_the_zoomed_pass_box_and_keeps_its_coarse_score() -> None:
    # 640 x 640 frame at scale 0.1: a coarse box of 16 x 8 model px = 160 x 80 frame px
    coarse = _det_outputs([(4, 4, 0.9, 8.0)])
    zoomed = _det_outputs([(4, 4, 0.8, 6.0)])
    recognizer = _refining(coarse, zoomed)
    detections = recognizer.detect(np.zeros((640, 640, 3), np.uint8))
    assert len(detections) == 1 and detections[0].score == pytest.approx(0.9)
    # coarse centre (360, 360), box 280-440 x 320-400; window side 3 x 160 = 480 from (120, 120)
    # zoomed: 12 x 6 model px (64 px model for the 480 px window) = 90 x 45 frame px, centred
    # at window (270, 270) = frame (390, 390), inside the coarse box
    x1, y1, x2, y2 = detections[0].box
    assert ((x1 + x2) / 2, (y1 + y2) / 2) == pytest.approx((390.0, 390.0))
    assert x2 - x1 == pytest.approx(90.0)


def _rezooming(zoomed: list[dict], **options: object) -> tuple[PlateRecognizer, SequenceModel]:
    from services.edge.recognition.detector import DetectorSpec
    from services.edge.recognition.pipeline import PipelineOptions

    spec = DetectorSpec(input_width=64, input_height=64, stride=8, score_threshold=0.5)
    opts = PipelineOptions(refine_input=64, refine_below=64.0, refine_context=3.0, **options)  # type: ignore[arg-type]
    zoom = SequenceModel(("image",), zoomed)
    coarse = FakeModel(("image",), _det_outputs([(4, 4, 0.9, 8.0)]))
    return PlateRecognizer(coarse, spec, None, None, opts, refine_model=zoom), zoom


def test_rezoom_takes_the_tighter_windows_box() -> None:
    # first zoom as above: box centred (390, 390), 90 x 45; the rezoom window is 2 x 90 = 180
    # px from about (300, 300), 64 model px for it: a peak at cell (4, 4) with half-size 4 is
    # centred near 300 + 36 * 180 / 64 = 401.25 and about 8 * 180 / 64 = 22.5 px wide (the
    # window's corners are whole pixels)
    first, second = _det_outputs([(4, 4, 0.8, 6.0)]), _det_outputs([(4, 4, 0.7, 4.0)])
    recognizer, zoom = _rezooming([first, second], rezoom_context=2.0)
    detections = recognizer.detect(np.zeros((640, 640, 3), np.uint8))
    assert zoom.calls == 2 and len(detections) == 1
    x1, y1, x2, y2 = detections[0].box
    assert ((x1 + x2) / 2, (y1 + y2) / 2) == pytest.approx((401.25, 401.25), abs=0.5)
    assert x2 - x1 == pytest.approx(22.5, abs=0.5) and detections[0].score == pytest.approx(0.9)


def test_rezoom_window_offsets_x_and_y_apart_and_skips_large_boxes() -> None:
    from services.edge.recognition.detector import DetectorSpec
    from services.edge.recognition.pipeline import PipelineOptions

    spec = DetectorSpec(input_width=64, input_height=64, stride=8, score_threshold=0.5)
    opts = PipelineOptions(
        refine_input=64, refine_below=64.0, refine_context=3.0, rezoom_context=2.0
    )
    # a small plate off the diagonal (row 2, col 5) and a large one (80 model px wide)
    coarse = FakeModel(("image",), _det_outputs([(2, 5, 0.9, 8.0), (6, 2, 0.8, 40.0)]))
    first, second = _det_outputs([(3, 4, 0.8, 6.0)]), _det_outputs([(4, 4, 0.7, 4.0)])
    zoom = SequenceModel(("image",), [first, second])
    recognizer = PlateRecognizer(coarse, spec, None, None, opts, refine_model=zoom)
    detections = recognizer.detect(np.zeros((640, 640, 3), np.uint8))
    assert zoom.calls == 2  # one zoom and one rezoom, both for the small plate only
    small = min(detections, key=lambda d: d.box[2] - d.box[0])
    x1, y1, x2, y2 = small.box
    # coarse box (360, 160)-(520, 240); the first zoom's window (160, 0)-(640, 480) puts its
    # box at (430, 210), 90 x 45; the rezoom window (340, 120)-(520, 300) puts the peak at
    # about (441.25, 221.25): x and y offsets apart (one for both would miss the box)
    assert (x1 + x2) / 2 - (y1 + y2) / 2 == pytest.approx(220.0, abs=1.0)
    assert x2 - x1 == pytest.approx(22.5, abs=0.5)


def test_rezoom_that_confirms_nothing_keeps_the_refined_box() -> None:
    recognizer, zoom = _rezooming(
        [_det_outputs([(4, 4, 0.8, 6.0)]), _det_outputs([])], rezoom_context=2.0
    )
    detections = recognizer.detect(np.zeros((640, 640, 3), np.uint8))
    assert zoom.calls == 2
    assert [d.box for d in detections] == [pytest.approx((345.0, 367.5, 435.0, 412.5))]


def test_rezoom_is_on_by_default_and_0_turns_it_off() -> None:
    assert PipelineOptions().rezoom_context == 2.0
    recognizer, zoom = _rezooming(
        [_det_outputs([(4, 4, 0.8, 6.0)]), _det_outputs([])], rezoom_context=0.0
    )
    assert len(recognizer.detect(np.zeros((640, 640, 3), np.uint8))) == 1 and zoom.calls == 1


def test_unconfirmed_small_box_keeps_its_coarse_box_when_not_dropped() -> None:
    recognizer = _refining(
        _det_outputs([(4, 4, 0.9, 8.0)]), _det_outputs([]), refine_drops_unconfirmed=False
    )
    detections = recognizer.detect(np.zeros((640, 640, 3), np.uint8))
    assert [d.box for d in detections] == [pytest.approx((280.0, 320.0, 440.0, 400.0))]


def test_unconfirmed_small_box_is_dropped_by_default() -> None:
    recognizer = _refining(_det_outputs([(4, 4, 0.9, 8.0)]), _det_outputs([]))
    assert recognizer.detect(np.zeros((640, 640, 3), np.uint8)) == []


def test_two_coarse_boxes_refined_to_one_plate_are_merged() -> None:
    # a plate and its recess: both small, both centred on the one zoomed detection
    coarse = _det_outputs([(4, 4, 0.9, 8.0), (4, 5, 0.7, 10.0)])
    zoomed = _det_outputs([(4, 4, 0.8, 6.0), (3, 3, 0.6, 6.0)])
    recognizer = _refining(coarse, zoomed)
    detections = recognizer.detect(np.zeros((640, 640, 3), np.uint8))
    assert len(detections) == 1 and detections[0].score == pytest.approx(0.9)


def test_detections_beyond_max_plates_are_kept_unrefined() -> None:
    coarse = _det_outputs([(1, 1, 0.9, 8.0), (6, 6, 0.8, 8.0)])
    recognizer = _refining(coarse, _det_outputs([]), max_plates=1, refine_drops_unconfirmed=False)
    assert len(recognizer.detect(np.zeros((640, 640, 3), np.uint8))) == 2
    # dropping unconfirmed boxes: when the first is dropped, the next one is checked for its
    # reading slot instead of taking it unchecked (here the zoomed pass confirms neither)
    dropping = _refining(coarse, _det_outputs([]), max_plates=1)
    assert dropping.detect(np.zeros((640, 640, 3), np.uint8)) == []
    assert dropping._refine_model.calls == 2  # type: ignore[union-attr]


def test_a_dropped_box_hands_its_slot_to_the_next_box_only_once_that_is_confirmed() -> None:
    # 640 x 640 frame: the 0.9 box at cell (1, 1) has no zoomed detection centred in it; the
    # 0.8 box at cell (4, 4) (frame centre (360, 360)) has one: window (120, 120)-(600, 600),
    # zoomed cell (4, 4) -> frame (390, 390), inside it. A third box is beyond max_plates.
    coarse = _det_outputs([(1, 1, 0.9, 8.0), (4, 4, 0.8, 8.0), (6, 1, 0.7, 8.0)])
    zoomed = _det_outputs([(4, 4, 0.8, 6.0)])
    recognizer = _refining(coarse, zoomed, max_plates=1)
    found = recognizer.detect(np.zeros((640, 640, 3), np.uint8))
    # the confirmed 0.8 box (zoomed box) first, then the unchecked rest for `detect` callers
    assert [d.score for d in found] == pytest.approx([0.8, 0.7])
    x1, y1, x2, y2 = found[0].box
    assert ((x1 + x2) / 2, (y1 + y2) / 2) == pytest.approx((390.0, 390.0))
