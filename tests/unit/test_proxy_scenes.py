from __future__ import annotations

import math
import random
import statistics
from collections import Counter

import numpy as np
import pytest

from services.edge.dataset import CROP_MARGINS, FULL_CROP
from services.edge.training.paste import inner_box
from services.edge.training.proxy_scenes import (
    Lighting,
    distinct_first,
    fallback_centre,
    fit_inside,
    frame_layout,
    largest_box,
    match_photometric,
    pair_widths,
    plan_images,
    plate_quad,
    region_counts,
    sample_plate_width,
)

pytestmark = pytest.mark.edge

US_INNER = (
    CROP_MARGINS["us_openalpr_benchmarks_seg_ocr"][0],
    CROP_MARGINS["us_openalpr_benchmarks_seg_ocr"][1],
    1 - CROP_MARGINS["us_openalpr_benchmarks_seg_ocr"][2],
    1 - CROP_MARGINS["us_openalpr_benchmarks_seg_ocr"][3],
)
TEXTS = {
    "us": [f"US{i}" for i in range(9)],
    "br": ["AAA1111", "AAA1111", "BBB2222", "CCC3333"],
    "eu": ["E1", "E2", "E3"],
}


def test_sample_plate_width_stays_in_range_with_median_near_90() -> None:
    rng = random.Random(1)
    widths = [sample_plate_width(rng) for _ in range(4000)]
    assert all(45.0 <= w <= 200.0 for w in widths)
    assert 85.0 < statistics.median(widths) < 105.0
    # log-uniform: as many below the geometric midpoint as above it
    mid = math.sqrt(45.0 * 200.0)
    assert abs(sum(w < mid for w in widths) / len(widths) - 0.5) < 0.05


def test_largest_box_picks_biggest_area_and_none_when_empty() -> None:
    assert largest_box([]) is None
    assert largest_box([(0, 0, 10, 10), (0, 0, 30, 5), (5, 5, 20, 20)]) == 2


def test_frame_layout_scales_landscape_scene_to_1280_wide() -> None:
    layout = frame_layout(864, 486, None, focus_y=300, place=0.5)
    assert (layout.width, layout.height, layout.top) == (1280, 720, 0)
    assert layout.scale == pytest.approx(1280 / 864)


def test_frame_layout_pads_landscape_scene_to_square() -> None:
    layout = frame_layout(864, 486, 1280, focus_y=300, place=0.25)
    assert (layout.width, layout.height, layout.scene_height) == (1280, 1280, 720)
    assert layout.top == 140  # a quarter of the 560 rows of padding above


def test_frame_layout_crops_tall_scene_keeping_the_focus_inside() -> None:
    for place in (0.0, 0.5, 1.0):
        layout = frame_layout(400, 800, None, focus_y=700, place=place)
        assert (layout.width, layout.height, layout.scene_height) == (1280, 1280, 2560)
        assert layout.top <= 0 and layout.top >= 1280 - 2560
        focus = 700 * layout.scale + layout.top
        assert 0.15 * 1280 - 1 <= focus <= 0.85 * 1280 + 1


def test_fallback_centre_lies_in_lower_two_thirds() -> None:
    rng = random.Random(3)
    for _ in range(200):
        x, y = fallback_centre(rng, 1280, 720)
        assert 0 < x < 1280
        assert 720 / 3 <= y < 720


def test_inner_box_of_full_crop_is_quad_bounding_box() -> None:
    quad = np.array([[10, 20], [110, 25], [105, 60], [12, 55]], np.float32)
    assert inner_box(quad, FULL_CROP) == pytest.approx((10, 20, 110, 60), abs=1e-3)


def test_inner_box_with_us_margins_drops_the_crop_border() -> None:
    quad = np.array([[0, 0], [100, 0], [100, 50], [0, 50]], np.float32)
    assert inner_box(quad, US_INNER) == pytest.approx((3, 2, 97, 48), abs=1e-3)


def test_plate_quad_without_jitter_keeps_plate_width_and_crop_aspect() -> None:
    rng = random.Random(0)
    quad = plate_quad(
        rng, (640, 360), (240, 117), US_INNER, 90.0, (1280, 720), max_jitter=0, max_rotation=0
    )
    x1, y1, x2, y2 = inner_box(quad, US_INNER)
    assert x2 - x1 == pytest.approx(90.0, abs=1e-3)
    whole = inner_box(quad, FULL_CROP)
    assert (whole[3] - whole[1]) / (whole[2] - whole[0]) == pytest.approx(117 / 240, abs=1e-4)
    assert ((x1 + x2) / 2, (y1 + y2) / 2) == pytest.approx((640, 360), abs=1e-3)


def test_plate_quad_inner_box_lies_inside_frame_even_at_the_edges() -> None:
    rng = random.Random(7)
    for _ in range(300):
        width, height = rng.choice([(1280, 720), (1280, 1280), (1280, 960)])
        centre = (rng.uniform(-50, width + 50), rng.uniform(-50, height + 50))
        quad = plate_quad(
            rng, centre, (200, 50), FULL_CROP, sample_plate_width(rng), (width, height)
        )
        x1, y1, x2, y2 = inner_box(quad, FULL_CROP)
        assert 0 <= x1 < x2 <= width
        assert 0 <= y1 < y2 <= height


def test_plate_quad_jitter_and_rotation_stay_small() -> None:
    rng = random.Random(11)
    for _ in range(200):
        quad = plate_quad(rng, (640, 400), (200, 50), FULL_CROP, 100.0, (1280, 720))
        x1, y1, x2, y2 = inner_box(quad, FULL_CROP)
        # 8% corner jitter on each side plus 4 degrees of rotation of a 100x25 plate
        tilt = math.sin(math.radians(4))
        assert 100 * 0.84 - 1 <= x2 - x1 <= 100 * 1.16 + 25 * tilt + 1
        assert 25 * 0.84 - 1 <= y2 - y1 <= 25 * 1.16 + 100 * tilt + 1


def test_fit_inside_shifts_without_resizing() -> None:
    quad = np.array([[-30, 10], [70, 10], [70, 40], [-30, 40]], np.float32)
    fitted = fit_inside(quad, 1280, 720)
    assert float(fitted[:, 0].min()) == pytest.approx(2.0)
    assert np.ptp(fitted[:, 0]) == pytest.approx(100.0)
    assert np.array_equal(fitted[:, 1], quad[:, 1])


def test_distinct_first_covers_every_text_before_repeating_one() -> None:
    texts = ["A", "A", "A", "B", "C", "C"]
    order = distinct_first(texts, random.Random(2))
    assert sorted(order) == list(range(len(texts)))
    assert {texts[i] for i in order[:3]} == {"A", "B", "C"}


def test_region_counts_sum_to_count_and_follow_shares() -> None:
    counts = region_counts(301, {"us": 0.5, "br": 0.25, "eu": 0.25})
    assert sum(counts.values()) == 301
    assert counts["us"] in (150, 151) and abs(counts["br"] - counts["eu"]) <= 1


def test_pair_widths_keeps_the_widths_and_gives_larger_ones_to_larger_scene_plates() -> None:
    rng = random.Random(5)
    native = [float(rng.choice([60, 100, 400])) for _ in range(300)]
    drawn = [sample_plate_width(rng) for _ in range(300)]
    paired = pair_widths(native, drawn, rng)
    assert sorted(paired) == sorted(drawn)
    small = statistics.median(w for w, n in zip(paired, native, strict=True) if n == 60)
    large = statistics.median(w for w, n in zip(paired, native, strict=True) if n == 400)
    assert small < large


def test_plan_images_is_deterministic_for_a_seed() -> None:
    widths = [60.0, 90.0, 150.0, 300.0, 500.0]
    assert plan_images(40, widths, TEXTS, seed=9) == plan_images(40, widths, TEXTS, seed=9)
    assert plan_images(40, widths, TEXTS, seed=9) != plan_images(40, widths, TEXTS, seed=10)


def test_plan_images_follows_shares_and_cycles_scenes_and_crops() -> None:
    plan = plan_images(40, [100.0] * 7, TEXTS, seed=4)
    assert [p.index for p in plan] == list(range(40))
    assert Counter(p.region for p in plan) == {"us": 20, "br": 10, "eu": 10}
    assert sum(p.frame_height is not None for p in plan) == 12  # 30%
    assert {p.frame_height for p in plan} == {None, 960, 1280}
    assert (
        max(Counter(p.scene for p in plan).values()) - min(Counter(p.scene for p in plan).values())
        <= 1
    )
    us = Counter(p.crop for p in plan if p.region == "us")
    assert set(us) == set(range(9)) and max(us.values()) - min(us.values()) <= 1
    br_first = [TEXTS["br"][p.crop] for p in plan if p.region == "br"][:3]
    assert set(br_first) == {"AAA1111", "BBB2222", "CCC3333"}
    assert all(45.0 <= p.plate_width <= 200.0 for p in plan)


def test_plan_images_skips_a_region_without_crops() -> None:
    plan = plan_images(10, [80.0], {"us": ["A", "B"], "br": [], "eu": ["C"]}, seed=1)
    assert {p.region for p in plan} == {"us", "eu"}


def test_plan_images_rejects_no_scenes() -> None:
    with pytest.raises(ValueError, match="scene_widths"):
        plan_images(5, [], TEXTS, seed=1)


def test_match_photometric_moves_brightness_toward_scene_and_keeps_plate_colour() -> None:
    crop = np.full((20, 60, 3), 200, np.uint8)
    crop[5:15, 10:50] = 30  # dark characters on a white plate
    dark = match_photometric(crop, Lighting(80.0, 20.0, (1.0, 1.0, 1.0)))
    assert 80 < dark.mean() < crop.mean()
    # colour cast of the surroundings, not the colour of the replaced plate
    tinted = match_photometric(crop, Lighting(float(crop.mean()), 70.0, (1.2, 1.0, 0.8)))
    b, g, r = (float(tinted[..., c].mean()) for c in range(3))
    assert b > g > r


def test_match_photometric_does_not_flatten_a_low_contrast_crop() -> None:
    crop = np.full((20, 60, 3), 120, np.uint8)
    crop[5:15, 10:50] = 80  # already low contrast (std ~20)
    out = match_photometric(crop, Lighting(120.0, 2.0, (1.0, 1.0, 1.0)))
    assert out[..., 1].astype(float).std() >= crop[..., 1].astype(float).std() - 0.5


def test_a_crop_larger_than_its_quad_is_area_averaged_to_about_its_size() -> None:
    from services.edge.training.proxy_scenes import shrink_for

    crop = np.zeros((60, 240, 3), np.uint8)
    crop[:, ::2] = 255  # one-pixel stripes: a warp alone would alias them
    quad = np.array([[10, 10], [90, 12], [90, 32], [10, 30]], np.float32)
    small = shrink_for(crop, quad)
    assert small.shape[:2] == (20, 81)  # the quad's longest edges, rounded up
    assert 100 < float(small.mean()) < 155  # averaged to grey, not sampled black or white
    assert shrink_for(crop, quad * 4) is crop  # no larger than its quad: left alone


def test_far_camera_version_blurs_more_and_earlier_versions_replay() -> None:
    import cv2

    from services.edge.training.proxy_scenes import finish

    rng = np.random.default_rng(5)
    frame = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    v2 = finish(frame, random.Random(7), 2)
    assert np.array_equal(v2, finish(frame, random.Random(7), 2))  # deterministic per seed
    # version 2 draws exactly what the code before version 3 drew, in the same order
    old_rng = random.Random(7)
    soft = cv2.GaussianBlur(frame, (0, 0), old_rng.uniform(0.5, 0.9))
    noise = np.random.default_rng(old_rng.randrange(1 << 31)).normal(
        0, old_rng.uniform(1.5, 3.0), frame.shape
    )
    old = np.clip(np.asarray(soft, np.float64) + noise + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(v2, old)
    v3 = finish(frame, random.Random(7), 3)

    def sharpness(img: np.ndarray) -> float:
        return float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())

    assert sharpness(v3) < 0.7 * sharpness(v2)


def test_the_readme_says_which_version_degraded_the_frames() -> None:
    from services.edge.training.proxy_scenes import finish_text

    assert "80-92" in finish_text(2) and "55-80" in finish_text(3)
