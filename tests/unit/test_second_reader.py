"""The second-opinion reader's pure parts: its spec, preprocessing, CTC decode and the rule."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.edge.recognition.reader import PlateReading
from services.edge.recognition.second_reader import (
    SecondReaderSpec,
    SecondReaderSpecError,
    SecondReading,
    SecondReadRule,
    choose,
    decode,
    preprocess,
)

SPEC_DICT: dict[str, Any] = {
    "input": {"height": 48, "min_width": 320, "max_width": 1280, "mean": 0.5, "std": 0.5},
    "num_classes": 6,
    "blank_index": 0,
    "chars": {"1": "A", "2": "B", "3": "7"},  # class 4 stands for '-', 5 for a CJK character
    "separators": [4],
}
SPEC = SecondReaderSpec.from_dict(SPEC_DICT)


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("input",), None, "input"),
        (("input", "height"), None, "input.height"),
        (("num_classes",), None, "num_classes"),
        (("input", "std"), 0.0, "input.std"),
        (("input", "max_width"), 100, "input.max_width"),
        (("blank_index",), 6, "blank_index"),
        (("chars",), {"0": "A"}, "chars.0"),
        (("chars",), {"2": "a"}, "chars.2"),
        (("chars",), {"9": "A"}, "chars.9"),
        (("separators",), [0], "separators.0"),
    ],
)
def test_spec_errors_name_the_field(path: tuple[str, ...], value: Any, field: str) -> None:
    data: dict[str, Any] = {**SPEC_DICT, "input": dict(SPEC_DICT["input"])}
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    with pytest.raises(SecondReaderSpecError) as err:
        SecondReaderSpec.from_dict(data)
    assert err.value.field == field


@pytest.mark.parametrize(
    ("shape", "width", "filled"),
    [
        ((40, 160, 3), 320, 192),  # 4:1 plate: 192 px of image, padded to 320
        ((20, 200, 3), 480, 480),  # 10:1: wider than the minimum, no padding
        ((40, 160), 320, 192),  # grey
        ((10, 2000, 3), 1280, 1280),  # capped at max_width
    ],
)
def test_preprocess_keeps_the_aspect_ratio_and_pads_right(
    shape: tuple[int, ...], width: int, filled: int
) -> None:
    crop = np.full(shape, 255, np.uint8)
    x = preprocess(crop, SPEC)
    assert x.shape == (1, 3, 48, width) and x.dtype == np.float32
    assert np.allclose(x[..., :filled], 1.0)  # (255 / 255 - 0.5) / 0.5
    assert np.all(x[..., filled:] == 0.0)


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 500, 3), (300, 2, 3)])
def test_preprocess_of_degenerate_crops_gives_a_valid_input(shape: tuple[int, ...]) -> None:
    x = preprocess(np.zeros(shape, np.uint8), SPEC)
    assert x.shape[:3] == (1, 3, 48) and 320 <= x.shape[3] <= 1280
    assert np.isfinite(x).all()


def _probs(steps: list[tuple[int, float]]) -> np.ndarray:
    p = np.full((1, len(steps), 6), 0.0, np.float32)
    for t, (cls, prob) in enumerate(steps):
        p[0, t, :] = (1 - prob) / 5
        p[0, t, cls] = prob
    return p


def test_decode_collapses_repeats_drops_blanks_and_non_plate_characters() -> None:
    steps = [(1, 0.9), (1, 0.9), (0, 0.99), (4, 0.5), (2, 0.8), (0, 0.9), (2, 0.7), (3, 1.0)]
    reading = decode(_probs(steps), SPEC)
    assert reading.text == "ABB7"
    assert reading.char_confidences == pytest.approx((0.9, 0.8, 0.7, 1.0))
    # the confidence is the mean peak over every kept step, '-' included
    assert reading.confidence == pytest.approx(np.mean([0.9, 0.5, 0.8, 0.7, 1.0]))


def test_decode_counts_characters_that_are_neither_plate_nor_separator() -> None:
    reading = decode(_probs([(1, 0.99), (0, 0.9), (5, 0.95), (2, 0.99)]), SPEC)
    assert (reading.text, reading.foreign) == ("AB", 1)
    assert decode(_probs([(1, 0.99), (4, 0.9), (2, 0.99)]), SPEC).foreign == 0


def test_a_reading_with_a_foreign_character_never_wins() -> None:
    first = PlateReading("ABC1234", 0.5, (), ())
    second = SecondReading("ABC234", 0.99, (0.99,) * 6, foreign=1)  # '1' read as a look-alike
    assert choose(first, second, None, RULE) is first


def test_the_winner_keeps_as_many_candidates_as_the_first_reading() -> None:
    got = choose(FIRST, SecondReading("XYZ1234", 0.99, (0.99,) * 7), None, RULE)
    assert got.candidates == (("XYZ1234", 0.99), ("ABC1234", 0.6))


def test_decode_of_blanks_only_is_empty() -> None:
    assert decode(_probs([(0, 0.9)] * 4), SPEC) == SecondReading("", 0.0, ())


FIRST = PlateReading("ABC1234", 0.6, (0.6,) * 7, (("ABC1234", 0.6), ("A8C1234", 0.2)))
RULE = SecondReadRule(min_confidence=0.9, min_length=2, max_length=10)


def test_a_surer_second_reading_wins_and_keeps_the_first_candidates() -> None:
    got = choose(FIRST, SecondReading("A8C1234", 0.95, (0.95,) * 7), "us", RULE)
    assert got.text == "A8C1234" and got.confidence == 0.95
    assert got.candidates == (("A8C1234", 0.95), ("ABC1234", 0.6))


def test_agreement_raises_the_first_reading_to_the_second_confidence() -> None:
    got = choose(FIRST, SecondReading("ABC1234", 0.97, (0.97,) * 7), "us", RULE)
    assert (got.text, got.confidence, got.candidates) == ("ABC1234", 0.97, FIRST.candidates)


@pytest.mark.parametrize(
    ("second", "region", "why"),
    [
        (SecondReading("A8C1234", 0.85, ()), "us", "below min_confidence"),
        (SecondReading("A", 0.99, ()), "us", "too short"),
        (SecondReading("ABCDEFGHIJK", 0.99, ()), "us", "too long"),
        (SecondReading("ABCD234", 0.99, ()), "br", "breaks br's format that the first fits"),
    ],
)
def test_the_first_reading_stays(second: SecondReading, region: str, why: str) -> None:
    first = PlateReading("ABC1234", 0.6, (), ())
    assert choose(first, second, region, RULE) is first, why


def test_an_unsure_second_reading_never_beats_a_surer_first() -> None:
    first = PlateReading("ABC1234", 0.96, (), ())
    assert choose(first, SecondReading("XYZ1234", 0.95, ()), None, RULE) is first


@pytest.mark.parametrize(
    ("text", "plate"),
    [
        ("AB12345", True),
        ("KINGS1", True),
        ("46914", True),
        ("AUTO", False),  # a word on a sign
        ("MAQARP", False),  # no digit
        ("KKT9", False),  # under five characters
        ("", False),
    ],
)
def test_a_reading_in_an_unsure_box_must_look_like_a_plate(text: str, plate: bool) -> None:
    from services.edge.recognition.second_reader import looks_like_a_plate

    assert looks_like_a_plate(text) is plate
