from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.edge.dataset import LabelsError, load_labels

pytestmark = pytest.mark.edge


def _write(tmp_path: Path, lines: list[str]) -> Path:
    (tmp_path / "labels.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


def _line(**overrides: object) -> str:
    row: dict[str, object] = {
        "file": "images/a.jpg",
        "width": 640,
        "height": 480,
        "region": "ro",
        "group": "video1",
        "plates": [{"text": "B123ABC", "box": [10, 20, 110, 45], "country": "RO"}],
    }
    row.update(overrides)
    return json.dumps(row)


def test_load_labels_parses_fields_and_resolves_file_path(tmp_path: Path) -> None:
    images = load_labels(_write(tmp_path, [_line()]))
    assert len(images) == 1
    image = images[0]
    assert image.file == tmp_path / "images/a.jpg"
    assert (image.width, image.height, image.region, image.group) == (640, 480, "ro", "video1")
    assert image.plates[0].text == "B123ABC"
    assert image.plates[0].box == (10.0, 20.0, 110.0, 45.0)
    assert image.plates[0].extra == {"country": "RO"}


def test_load_labels_keeps_null_text_and_missing_group(tmp_path: Path) -> None:
    row = _line(plates=[{"text": None, "box": [0, 0, 5, 5], "unreadable": True}])
    row_dict = json.loads(row)
    del row_dict["group"]
    images = load_labels(_write(tmp_path, [json.dumps(row_dict)]))
    assert images[0].plates[0].text is None
    assert images[0].group is None


def test_load_labels_skips_blank_lines(tmp_path: Path) -> None:
    images = load_labels(_write(tmp_path, [_line(), "", _line(file="images/b.jpg")]))
    assert [i.relative_file for i in images] == ["images/a.jpg", "images/b.jpg"]


def test_load_labels_names_file_and_line_on_invalid_json(tmp_path: Path) -> None:
    folder = _write(tmp_path, [_line(), "{not json"])
    with pytest.raises(LabelsError) as info:
        load_labels(folder)
    assert info.value.line == 2
    assert str(folder / "labels.jsonl") in str(info.value)


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"width": 0}, "width"),
        ({"height": "x"}, "height"),
        ({"file": ""}, "file"),
        ({"plates": [{"text": "A", "box": [1, 2, 3]}]}, "box"),
        ({"plates": [{"text": "A", "box": [5, 5, 1, 1]}]}, "box"),
        ({"plates": [{"text": 7, "box": [1, 1, 2, 2]}]}, "text"),
        ({"plates": "nope"}, "plates"),
    ],
)
def test_load_labels_rejects_bad_field_naming_it(
    tmp_path: Path, override: dict[str, object], reason: str
) -> None:
    with pytest.raises(LabelsError, match=reason) as info:
        load_labels(_write(tmp_path, [_line(**override)]))
    assert info.value.line == 1


def test_load_labels_raises_file_not_found_for_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"labels\.jsonl"):
        load_labels(tmp_path / "missing")


def test_split_label_matches_splits_module_shape(tmp_path: Path) -> None:
    from services.edge.training.splits import split_of

    image = load_labels(_write(tmp_path, [_line()]))[0]
    assert split_of("ro-dashcam", image.split_label) in {"train", "test"}
    assert split_of("openalpr-endtoend-dev", image.split_label) == "eval"
