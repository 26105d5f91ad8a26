"""The reader trainer's small-plate augmentation (pure numpy/OpenCV, no torch)."""

from __future__ import annotations

import numpy as np
import pytest

from services.edge.training.reader_data import RealItem, augment_real, shrink_to_width

pytestmark = pytest.mark.edge


def _stripes(width: int = 200, height: int = 60) -> np.ndarray:
    img = np.zeros((height, width, 3), np.uint8)
    img[:, ::2] = 255  # one-pixel stripes: any shrink blurs them
    return img


def test_shrink_to_width_keeps_the_size_and_loses_the_detail_of_a_far_plate() -> None:
    img = _stripes()
    out = shrink_to_width(img, plate_width=200.0, target=50.0)
    assert out.shape == img.shape and out.dtype == np.uint8
    # at a quarter of the width, the stripes average to grey
    assert float(np.abs(out.astype(int) - 128).mean()) < 40


def test_shrink_to_width_leaves_a_plate_already_that_small() -> None:
    img = _stripes(width=40)
    assert shrink_to_width(img, plate_width=40.0, target=60.0) is img


def test_augment_real_tiny_p_zero_draws_nothing_more() -> None:
    """With tiny_p 0 the random stream is the one earlier recipes used: a tiny_p above 0 that
    does not shrink draws exactly one number more (its coin) and changes nothing else."""
    item = RealItem("us", "train", "ABC123", 1, "us", _stripes(240, 80), (20.0, 10.0, 220.0, 70.0))
    off, coin = np.random.default_rng(5), np.random.default_rng(5)
    a = augment_real(item, off, 0.2, 0.0)
    b = augment_real(item, coin, 0.2, 1e-12)
    assert np.array_equal(a, b)
    off.random()  # the coin tiny_p > 0 draws
    assert off.bit_generator.state == coin.bit_generator.state


def _detail(img: np.ndarray) -> float:
    return float(np.abs(np.diff(img.astype(int), axis=1)).mean())


def test_augment_real_tiny_p_one_always_shrinks() -> None:
    item = RealItem("us", "train", "ABC123", 1, "us", _stripes(240, 80), (20.0, 10.0, 220.0, 70.0))
    for seed in range(5):
        plain = augment_real(item, np.random.default_rng(seed), 0.0)
        tiny = augment_real(item, np.random.default_rng(seed), 0.0, 1.0)
        assert tiny.shape == plain.shape
        # the same warp, then at most 75 px of plate: less high-frequency detail
        assert _detail(tiny) < _detail(plain)


def test_augment_real_far_p_zero_draws_nothing_more() -> None:
    """As with tiny_p: far_p 0 keeps earlier recipes' random stream; a far_p above 0 that does
    not degrade draws exactly its coin."""
    item = RealItem("us", "train", "ABC123", 1, "us", _stripes(240, 80), (20.0, 10.0, 220.0, 70.0))
    off, coin = np.random.default_rng(5), np.random.default_rng(5)
    a = augment_real(item, off, 0.2, 0.0, 0.0)
    b = augment_real(item, coin, 0.2, 0.0, 1e-12)
    assert np.array_equal(a, b)
    off.random()
    assert off.bit_generator.state == coin.bit_generator.state


def test_degrade_small_blurs_at_the_small_size_and_keeps_the_shape() -> None:
    from services.edge.training.reader_data import degrade_small

    img = np.zeros((60, 200, 3), np.uint8)
    img[:, 100:] = 255  # one sharp edge: the clean shrink keeps it steep, a far camera does not

    def steepest(out: np.ndarray) -> float:  # the edge's largest step between two columns
        return float(np.abs(np.diff(out[:, 80:120].astype(int), axis=1)).max(axis=1).mean())

    clean = shrink_to_width(img, plate_width=200.0, target=50.0)
    worn = [degrade_small(img, 200.0, 50.0, np.random.default_rng(s)) for s in range(16)]
    assert all(w.shape == img.shape and w.dtype == np.uint8 for w in worn)
    assert np.mean([steepest(w) for w in worn]) < 0.8 * steepest(clean)
