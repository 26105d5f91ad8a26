from __future__ import annotations

import numpy as np
import pytest

from services.edge.training.reader_data import RealItem
from services.edge.training.reader_pseudo import (
    JITTERS,
    accept_reading,
    clean_text,
    jittered_crops,
)

pytestmark = pytest.mark.edge


def test_clean_text_drops_separators_and_non_latin_and_uppercases() -> None:
    assert clean_text("mh 12-ab.345京") == "MH12AB345"


def test_accept_reading_keeps_agreeing_confident_reads() -> None:
    assert accept_reading([("AB 1234", 0.97), ("AB1234", 0.95), ("ab-1234", 0.92)]) == "AB1234"


def test_accept_reading_rejects_disagreeing_reads() -> None:
    assert accept_reading([("AB1234", 0.99), ("AB1284", 0.99), ("AB1234", 0.99)]) is None


def test_accept_reading_rejects_one_low_confidence_read() -> None:
    assert accept_reading([("AB1234", 0.99), ("AB1234", 0.89)]) is None


def test_accept_reading_rejects_too_short_or_too_long_text() -> None:
    assert accept_reading([("ABC", 0.99)]) is None
    assert accept_reading([("ABCD12345", 0.99)]) is None
    assert accept_reading([("ABCD1234", 0.99)]) == "ABCD1234"


def test_accept_reading_rejects_no_reads() -> None:
    assert accept_reading([]) is None


def test_jittered_crops_first_is_the_box_and_all_stay_inside_the_image() -> None:
    image = np.zeros((60, 200, 3), np.uint8)
    item = RealItem("web-cars", "train", "", 1, "in", image, (50.0, 20.0, 150.0, 40.0))
    crops = jittered_crops(item)
    assert len(crops) == len(JITTERS)
    assert crops[0].shape == (20, 100, 3)
    assert crops[1].shape == (24, 110, 3)
    assert crops[2].shape == (20, 94, 3)
