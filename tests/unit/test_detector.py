from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.edge.recognition.detector import (
    PAD_VALUE,
    Detection,
    DetectorOutputError,
    DetectorSpec,
    DetectorSpecError,
    LetterboxMeta,
    box_iou,
    decode,
    fit_input,
    letterbox,
    nms,
    pick_refined,
    postprocess,
    preprocess,
    refine_window,
    to_frame,
    trim_input,
)

pytestmark = pytest.mark.edge

SPEC = DetectorSpec(input_width=64, input_height=64, stride=8, score_threshold=0.3, nms_iou=0.4)


def _outputs(cells: list[tuple[int, int, float, tuple[float, float, float, float]]]) -> dict:
    grid = SPEC.input_height // SPEC.stride
    heat = np.zeros((1, 1, grid, grid), np.float32)
    ltrb = np.zeros((1, 4, grid, grid), np.float32)
    for row, col, score, dist in cells:
        heat[0, 0, row, col] = score
        ltrb[0, :, row, col] = dist
    return {"heat": heat, "ltrb": ltrb}


def test_letterbox_keeps_aspect_and_pads_bottom_right() -> None:
    image = np.full((100, 200, 3), 7, np.uint8)
    canvas, meta = letterbox(image, 64, 64)
    assert canvas.shape == (64, 64, 3)
    assert meta.scale == pytest.approx(0.32)
    assert (canvas[:32, :64] == 7).all()
    assert (canvas[33:, :] == PAD_VALUE).all()


def test_letterbox_upscales_small_frames() -> None:
    canvas, meta = letterbox(np.zeros((16, 8, 3), np.uint8), 64, 64)
    assert meta.scale == pytest.approx(4.0)
    assert (canvas[:, 32:] == PAD_VALUE).all()


def test_letterbox_rejects_non_colour_image() -> None:
    with pytest.raises(ValueError, match="HxWx3"):
        letterbox(np.zeros((10, 10), np.uint8), 64, 64)


def test_preprocess_gives_nchw_float_in_unit_range() -> None:
    x, _ = preprocess(np.full((32, 32, 3), 255, np.uint8), SPEC)
    assert x.shape == (1, 3, 64, 64) and x.dtype == np.float32
    assert float(x.max()) == pytest.approx(1.0)
    assert float(x.min()) >= 0.0


def test_preprocess_u8_gives_the_letterboxed_image_itself_in_nhwc() -> None:
    image = np.random.default_rng(2).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    x, meta = preprocess(image, SPEC, u8=True)
    canvas, same = letterbox(image, SPEC.input_width, SPEC.input_height)
    assert x.shape == (1, 64, 64, 3) and x.dtype == np.uint8
    assert np.array_equal(x[0], canvas) and meta == same


def test_decode_builds_box_from_cell_centre_and_distances() -> None:
    outputs = _outputs([(2, 3, 0.9, (10.0, 4.0, 6.0, 2.0))])
    boxes, scores = decode(outputs["heat"], outputs["ltrb"], SPEC)
    # cell centre = ((3 + 0.5) * 8, (2 + 0.5) * 8) = (28, 20)
    np.testing.assert_allclose(boxes, [[18.0, 16.0, 34.0, 22.0]])
    np.testing.assert_allclose(scores, [0.9])


def test_decode_keeps_only_local_maxima_above_threshold() -> None:
    outputs = _outputs(
        [(2, 2, 0.9, (4, 4, 4, 4)), (2, 3, 0.8, (4, 4, 4, 4)), (6, 6, 0.2, (4, 4, 4, 4))]
    )
    _, scores = decode(outputs["heat"], outputs["ltrb"], SPEC)
    np.testing.assert_allclose(scores, [0.9])


def test_decode_rejects_wrong_output_shape() -> None:
    with pytest.raises(DetectorOutputError, match="heat"):
        decode(np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 4, 8, 8), np.float32), SPEC)


def test_nms_suppresses_overlapping_lower_scores() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.5, 0.9, 0.7], np.float32)
    assert nms(boxes, scores, 0.4, 10) == [1, 2]


def test_nms_respects_limit() -> None:
    boxes = np.array([[0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10]], np.float32)
    assert nms(boxes, np.array([0.1, 0.3, 0.2], np.float32), 0.5, 2) == [1, 2]


def test_box_iou_of_identical_and_disjoint_boxes() -> None:
    box = np.array([0, 0, 10, 10], np.float32)
    others = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [5, 0, 15, 10]], np.float32)
    np.testing.assert_allclose(box_iou(box, others), [1.0, 0.0, 1 / 3], rtol=1e-5)


def test_to_frame_undoes_letterbox_scale_and_clips() -> None:
    meta = LetterboxMeta(scale=0.5, frame_width=100, frame_height=40)
    out = to_frame(np.array([[10, 5, 60, 30]], np.float32), meta)
    np.testing.assert_allclose(out, [[20, 10, 100, 40]])


def test_postprocess_maps_detections_to_frame_pixels_best_first() -> None:
    frame = np.zeros((128, 256, 3), np.uint8)  # scale 0.25 onto 64x64
    _, meta = preprocess(frame, SPEC)
    outputs = _outputs([(1, 1, 0.6, (4, 2, 4, 2)), (3, 5, 0.95, (8, 2, 8, 2))])
    dets = postprocess(outputs, meta, SPEC)
    assert [round(d.score, 2) for d in dets] == [0.95, 0.6]
    # second cell centre (44, 28) +- (8, 2) in input pixels -> x4 in frame pixels
    assert dets[0].box == pytest.approx((144.0, 104.0, 208.0, 120.0))


def test_postprocess_drops_boxes_smaller_than_min_size() -> None:
    _, meta = preprocess(np.zeros((64, 64, 3), np.uint8), SPEC)
    outputs = _outputs([(1, 1, 0.9, (1, 1, 1, 1))])
    assert postprocess(outputs, meta, SPEC) == []


def test_postprocess_names_missing_output() -> None:
    _, meta = preprocess(np.zeros((64, 64, 3), np.uint8), SPEC)
    with pytest.raises(DetectorOutputError, match="ltrb"):
        postprocess({"heat": np.zeros((1, 1, 8, 8), np.float32)}, meta, SPEC)


def test_spec_from_file_reads_sidecar_and_ignores_metrics(tmp_path: Path) -> None:
    path = tmp_path / "detector.json"
    path.write_text(
        json.dumps({"input_width": 320, "input_height": 320, "stride": 8, "metrics": {"x": 1}})
    )
    spec = DetectorSpec.from_file(path)
    assert (spec.input_width, spec.stride) == (320, 8)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"stride": 7}, "stride"),
        ({"score_threshold": 1.5}, "score_threshold"),
        ({"input_width": 0}, "input_width"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_spec_rejects_bad_field_naming_it(raw: dict, field: str) -> None:
    with pytest.raises(DetectorSpecError) as info:
        DetectorSpec.from_dict(raw, source="x.json")
    assert info.value.field == field


def test_spec_from_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DetectorSpecError, match=r"missing\.json"):
        DetectorSpec.from_file(tmp_path / "missing.json")


def test_refine_window_is_a_square_centred_on_the_box() -> None:
    # plate-shaped extent = max(width 40, 2 x height 10) = 40; side = 3 x 40 = 120
    assert refine_window((500.0, 300.0, 540.0, 310.0), 1280, 720, 3.0) == (460, 245, 580, 365)


def test_refine_window_uses_twice_the_height_for_tall_boxes() -> None:
    x1, y1, x2, y2 = refine_window((500.0, 300.0, 520.0, 330.0), 1280, 720, 2.0) or (0, 0, 0, 0)
    assert (x2 - x1, y2 - y1) == (120, 120)


def test_refine_window_shifts_inside_the_frame_and_clips_when_larger() -> None:
    assert refine_window((0.0, 0.0, 40.0, 10.0), 1280, 720, 3.0) == (0, 0, 120, 120)
    assert refine_window((1240.0, 710.0, 1280.0, 720.0), 1280, 720, 3.0) == (1160, 600, 1280, 720)
    assert refine_window((10.0, 10.0, 90.0, 30.0), 100, 60, 3.0) == (0, 0, 100, 60)


@pytest.mark.parametrize("box", [(5.0, 5.0, 5.0, 9.0), (5.0, 9.0, 8.0, 9.0), (0.0, 0.0, 1.0, 0.5)])
def test_refine_window_of_degenerate_box_is_none(box: tuple[float, float, float, float]) -> None:
    assert refine_window(box, 1280, 720, 3.0) is None


def test_pick_refined_takes_best_candidate_centred_inside_the_coarse_box() -> None:
    coarse = (100.0, 100.0, 200.0, 140.0)
    candidates = [
        Detection(box=(0.0, 0.0, 20.0, 10.0), score=0.9),  # centre (110, 105) in frame: inside
        Detection(box=(30.0, 10.0, 70.0, 24.0), score=0.95),  # centre (150, 117): inside, best
        Detection(box=(200.0, 200.0, 240.0, 210.0), score=0.99),  # far outside
    ]
    best = pick_refined(coarse, candidates, (100, 100))
    assert best == Detection(box=(130.0, 110.0, 170.0, 124.0), score=0.95)


def test_pick_refined_without_candidate_inside_is_none() -> None:
    far = [Detection(box=(300.0, 300.0, 340.0, 310.0), score=0.9)]
    assert pick_refined((100.0, 100.0, 200.0, 140.0), far, (0, 0)) is None
    assert pick_refined((100.0, 100.0, 200.0, 140.0), [], (0, 0)) is None


@pytest.mark.parametrize(
    ("frame", "want"),
    [
        ((1280, 720), (512, 288)),  # 16:9: scale 0.40 instead of the square's 0.30
        ((720, 1280), (288, 512)),
        ((1280, 1280), (384, 384)),  # square frames keep the square input
        ((1280, 960), (448, 320)),
        ((400, 300), (416, 320)),  # smaller than the budget: never magnified, rounded up
    ],
)
def test_fit_input_keeps_the_frame_aspect_in_the_pixel_budget(
    frame: tuple[int, int], want: tuple[int, int]
) -> None:
    assert fit_input(*frame, 384 * 384) == want


@pytest.mark.parametrize("frame", [(1280, 720), (1920, 1080), (1024, 640), (10000, 100), (3, 7)])
def test_fit_input_is_within_budget_and_at_least_the_square_scale(frame: tuple[int, int]) -> None:
    width, height = fit_input(*frame, 384 * 384)
    assert width % 32 == 0 and height % 32 == 0
    assert width * height <= 384 * 384
    scale = min(width / frame[0], height / frame[1], 1.0)
    assert scale >= min(384 / frame[0], 384 / frame[1], 1.0)


def test_fit_input_refuses_what_cannot_fit() -> None:
    with pytest.raises(ValueError, match="frame size"):
        fit_input(0, 720, 384 * 384)
    with pytest.raises(ValueError, match="no input fits"):
        fit_input(1280, 720, 16 * 16)


@pytest.mark.parametrize(
    ("frame", "want"),
    [
        ((1280, 720), (384, 224)),  # 16:9 at the square's scale 0.30: 384x216, rounded up
        ((720, 1280), (224, 384)),
        ((1280, 1280), (384, 384)),
        ((1280, 960), (384, 288)),
        ((200, 100), (384, 192)),  # small frames are magnified, as the square letterbox does
        ((10000, 10), (384, 32)),  # at least one multiple
    ],
)
def test_trim_input_keeps_the_square_scale_without_its_padding(
    frame: tuple[int, int], want: tuple[int, int]
) -> None:
    assert trim_input(*frame, 384, 384) == want


@pytest.mark.parametrize("frame", [(1280, 720), (1920, 1080), (1024, 640), (640, 1000), (37, 23)])
def test_trimmed_letterbox_shows_the_frame_at_the_square_scale_in_the_same_place(
    frame: tuple[int, int],
) -> None:
    image = np.random.default_rng(1).integers(0, 255, (frame[1], frame[0], 3), dtype=np.uint8)
    width, height = trim_input(*frame, 384, 384)
    trimmed, meta = letterbox(image, width, height)
    square, square_meta = letterbox(image, 384, 384)
    assert meta.scale == pytest.approx(square_meta.scale)
    assert np.array_equal(trimmed, square[:height, :width])


def test_trim_input_refuses_what_cannot_fit() -> None:
    with pytest.raises(ValueError, match="frame size"):
        trim_input(0, 720, 384, 384)
    with pytest.raises(ValueError, match="no input fits"):
        trim_input(1280, 720, 16, 384)
