from __future__ import annotations

import re

import numpy as np
import pytest

from services.edge.training.synth import FORMATS, PlateSynth, generate, label_of

pytestmark = pytest.mark.edge


def test_synth_same_seed_and_index_gives_identical_plate() -> None:
    a = PlateSynth(seed=3).sample(11)
    b = PlateSynth(seed=3).sample(11)
    assert a.text == b.text
    assert np.array_equal(a.image, b.image)


def test_synth_different_seeds_differ() -> None:
    texts_a = [p.text for p in generate(8, seed=1)]
    texts_b = [p.text for p in generate(8, seed=2)]
    assert texts_a != texts_b


def test_synth_returns_bgr_uint8_and_charset_text() -> None:
    for plate in generate(20, seed=5):
        assert plate.image.dtype == np.uint8
        assert plate.image.ndim == 3 and plate.image.shape[2] == 3
        assert plate.image.shape[0] >= 16 and plate.image.shape[1] >= 8
        assert re.fullmatch(r"[A-Z0-9]+", plate.text)
        assert plate.quad.shape == (4, 2)


def test_synth_two_line_format_gives_two_lines_in_reading_order() -> None:
    synth = PlateSynth(seed=9)
    plate = synth.sample(0, format_name="in_2line", text_lines=("KL 01", "AB 1234"))
    assert plate.lines == 2
    assert plate.text == "KL01AB1234"
    clean = synth.sample(0, format_name="in_2line", degrade=False).image
    assert clean.shape[1] / clean.shape[0] < 2.5  # taller than a one-line plate


def test_synth_clean_plate_matches_format_pattern() -> None:
    plate = PlateSynth(seed=4).sample(2, format_name="br_mercosur", degrade=False)
    assert re.fullmatch(r"[A-Z]{3}[0-9][A-Z][0-9]{2}", plate.text)
    assert plate.region == "br"


def test_synth_restricts_to_requested_formats() -> None:
    plates = generate(12, seed=0, formats=["eu_nl", "uk"])
    assert {p.format_name for p in plates} <= {"eu_nl", "uk"}


def test_synth_rejects_unknown_format() -> None:
    with pytest.raises(ValueError, match="formats"):
        PlateSynth(formats=["mars"])


def test_label_of_keeps_only_alphanumerics_top_first() -> None:
    assert label_of(("AB-12", "cd 3")) == "AB12CD3"


def test_every_format_renders() -> None:
    synth = PlateSynth(seed=1)
    for i, name in enumerate(FORMATS):
        plate = synth.sample(i, format_name=name)
        assert plate.text
        assert plate.image.size > 0


def test_format_of_predicts_the_sampled_format_without_rendering() -> None:
    synth = PlateSynth(seed=21)
    for i in range(10):
        assert synth.format_of(i).name == synth.sample(i, degrade=False).format_name
