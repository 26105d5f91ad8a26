"""Crop packs: the real crops JPEG-encoded, to carry them to a machine without ../shared."""

from __future__ import annotations

import pickle
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from services.edge.training.reader_data import (
    RealItem,
    load_pack,
    load_real_cached,
    main,
    save_pack,
)


def _items() -> list[RealItem]:
    rng = np.random.default_rng(0)
    out = []
    for i, (text, lines) in enumerate((("ABC1234", 1), ("KA04ME9869", 2), ("XY99", 1))):
        base = rng.integers(0, 255, size=(1, 1, 3), dtype=np.uint8)
        image = np.broadcast_to(base, (40 + i, 120, 3)).copy()  # flat: JPEG keeps it closely
        out.append(RealItem("us_set", "train", text, lines, "us", image, (5.0, 4.0, 110.0, 30.0)))
    return out


def test_a_pack_round_trips_every_field_and_the_crops_within_jpeg_loss(tmp_path: Path) -> None:
    items = _items()
    path = tmp_path / "crops.jpgpack"
    assert save_pack(items, path) == path.stat().st_size > 0
    back = load_real_cached(path)  # dispatched by the suffix
    assert [(b.dataset, b.split, b.text, b.lines, b.region, b.box) for b in back] == [
        (a.dataset, a.split, a.text, a.lines, a.region, a.box) for a in items
    ]
    for a, b in zip(items, back, strict=True):
        assert b.image.shape == a.image.shape and b.image.dtype == np.uint8
        assert np.abs(b.image.astype(int) - a.image.astype(int)).mean() < 3


def test_a_file_that_is_not_a_pack_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "other.jpgpack"
    path.write_bytes(pickle.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match=re.escape("other.jpgpack: not a crop pack")):
        load_pack(path)


def test_the_pack_command_keeps_the_asked_splits_only(tmp_path: Path) -> None:
    items = _items()
    items[1] = replace(items[1], split="test")
    work = tmp_path / "work"
    work.mkdir()
    (work / "real.pkl").write_bytes(pickle.dumps(items))
    out = tmp_path / "train.jpgpack"
    assert main(["pack", "--work", str(work), "--out", str(out)]) == 0
    assert [b.text for b in load_pack(out)] == ["ABC1234", "XY99"]  # the test split stays home
    with pytest.raises(SystemExit):
        main(["pack", "--work", str(work), "--out", str(tmp_path / "x.pkl")])


def test_fonts_carried_to_a_folder_render_the_same_plates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pack --fonts DIR` copies the synthetic plates' fonts; with $PW_SYNTH_FONTS naming DIR
    (a machine without the Debian font packages) the same seed renders the same plates."""
    from services.edge.training.synth import FONTS_ENV, PlateSynth, default_font_paths

    work = tmp_path / "work"
    work.mkdir()
    (work / "real.pkl").write_bytes(pickle.dumps(_items()))
    fonts = tmp_path / "fonts"
    assert main(["pack", "--work", str(work), "--out", str(tmp_path / "p.jpgpack"),
                 "--fonts", str(fonts)]) == 0  # fmt: skip
    here = [PlateSynth(seed=3).sample(i).image for i in range(3)]
    monkeypatch.setenv(FONTS_ENV, str(fonts))
    assert all(p.startswith(str(fonts)) for p in default_font_paths())
    there = [PlateSynth(seed=3).sample(i).image for i in range(3)]
    assert all(np.array_equal(a, b) for a, b in zip(here, there, strict=True))


def test_the_synthetic_bank_is_the_same_rendered_by_one_process_or_several(
    tmp_path: Path,
) -> None:
    """Each plate comes from (seed, index) alone: parts rendered by worker processes (a GPU
    machine's cores) join into the bank one process renders."""
    from services.edge.recognition.reader import ReaderSpec
    from services.edge.training.reader_data import synth_bank

    spec = ReaderSpec.from_file(Path("services/edge/models/reader.json"))
    one = synth_bank(spec, 12, 5, tmp_path / "one.pkl", workers=1, part=5)
    two = synth_bank(spec, 12, 5, tmp_path / "two.pkl", workers=2, part=5)
    assert one[1] == two[1] and len(one[1]) == 12
    assert one[0].shape == two[0].shape and np.array_equal(one[0], two[0])
    cached = synth_bank(spec, 12, 5, tmp_path / "two.pkl")  # read back from its cache
    assert np.array_equal(cached[0], two[0]) and cached[1] == two[1]
