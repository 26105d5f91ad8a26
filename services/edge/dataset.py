"""Typed loader for a `labels.jsonl` plate data folder (see /work/shared/data/README.md).

One JSON object per line:
    {"file": "images/x.jpg", "width": W, "height": H, "region": "us", "group": "...",
     "plates": [{"text": "ABC1234" | null, "box": [x1, y1, x2, y2], ...}], ...}

Pure parsing apart from reading the one file; no image decoding, no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LABELS_FILE = "labels.jsonl"


# Fraction of each side of a crop image that is plate frame / surroundings rather than plate
# (left, top, right, bottom), per crop set, estimated by looking at crops: where a crop is pasted
# into a scene (detector training, the HD proxy) the box target is the inner rectangle, so the
# detector is not taught boxes wider than the plate. Sets not listed: the whole crop.
CROP_MARGINS: dict[str, tuple[float, float, float, float]] = {
    "us_openalpr_benchmarks_seg_ocr": (0.03, 0.04, 0.03, 0.04),
}
#: The whole crop as its plate rectangle (fractions left, top, right, bottom).
FULL_CROP = (0.0, 0.0, 1.0, 1.0)


def crop_inner(dataset: str) -> tuple[float, float, float, float]:
    """The plate's rectangle inside a crop of `dataset` (fractions l, t, r, b): CROP_MARGINS
    taken off each side, or the whole crop."""
    left, top, right, bottom = CROP_MARGINS.get(dataset, (0.0, 0.0, 0.0, 0.0))
    return (left, top, 1.0 - right, 1.0 - bottom)


class LabelsError(ValueError):
    """A labels.jsonl file or one of its lines is malformed."""

    def __init__(self, path: Path, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


@dataclass(frozen=True, slots=True)
class LabelledPlate:
    """One boxed plate; `text` is None when unreadable or not given."""

    text: str | None
    box: tuple[float, float, float, float]
    lines: int = 1
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class LabelledImage:
    """One image of a data folder with its plates. `file` is absolute."""

    file: Path
    width: int
    height: int
    region: str
    group: str | None
    plates: tuple[LabelledPlate, ...]
    relative_file: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def split_label(self) -> dict[str, object]:
        """The dict shape `services.edge.training.splits.split_of` expects."""
        return {
            "file": self.relative_file,
            "group": self.group,
            "plates": [{"text": p.text} for p in self.plates],
        }


_IMAGE_KEYS = frozenset({"file", "width", "height", "region", "group", "plates"})
_PLATE_KEYS = frozenset({"text", "box", "lines"})


def _parse_plate(raw: object, path: Path, line: int, index: int) -> LabelledPlate:
    where = f"plates[{index}]"
    if not isinstance(raw, dict):
        raise LabelsError(path, line, f"{where} is not an object")
    text = raw.get("text")
    if text is not None and not isinstance(text, str):
        raise LabelsError(path, line, f"{where}.text must be a string or null")
    box = raw.get("box")
    if not isinstance(box, list) or len(box) != 4:
        raise LabelsError(path, line, f"{where}.box must be a list of 4 numbers")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box):
        raise LabelsError(path, line, f"{where}.box must be a list of 4 numbers")
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 < x1 or y2 < y1:
        raise LabelsError(path, line, f"{where}.box has x2<x1 or y2<y1: {box}")
    lines = raw.get("lines", 1)
    if not isinstance(lines, int) or isinstance(lines, bool) or lines < 1:
        raise LabelsError(path, line, f"{where}.lines must be a positive integer")
    extra = {k: v for k, v in raw.items() if k not in _PLATE_KEYS}
    return LabelledPlate(text=text or None, box=(x1, y1, x2, y2), lines=lines, extra=extra)


def _positive_int(value: object, name: str, path: Path, line: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise LabelsError(path, line, f"{name} must be a positive integer")
    return value


def parse_label_line(text: str, dataset_dir: Path, path: Path, line: int) -> LabelledImage:
    """Parse one JSON line of `path` (line numbers start at 1)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelsError(path, line, f"invalid JSON: {exc.msg}") from exc
    if not isinstance(raw, dict):
        raise LabelsError(path, line, "not a JSON object")
    file = raw.get("file")
    if not isinstance(file, str) or not file:
        raise LabelsError(path, line, "file must be a non-empty string")
    width = _positive_int(raw.get("width"), "width", path, line)
    height = _positive_int(raw.get("height"), "height", path, line)
    region = raw.get("region", "unknown")
    if not isinstance(region, str):
        raise LabelsError(path, line, "region must be a string")
    group = raw.get("group")
    if group is not None and not isinstance(group, str):
        raise LabelsError(path, line, "group must be a string or null")
    plates_raw = raw.get("plates", [])
    if not isinstance(plates_raw, list):
        raise LabelsError(path, line, "plates must be a list")
    plates = tuple(_parse_plate(p, path, line, i) for i, p in enumerate(plates_raw))
    extra = {k: v for k, v in raw.items() if k not in _IMAGE_KEYS}
    return LabelledImage(
        file=dataset_dir / file,
        width=width,
        height=height,
        region=region,
        group=group or None,
        plates=plates,
        relative_file=file,
        extra=extra,
    )


def load_labels(dataset_dir: Path) -> list[LabelledImage]:
    """Load `dataset_dir/labels.jsonl`; blank lines are skipped.

    Raises FileNotFoundError when the file is missing and LabelsError (naming file and line)
    on a malformed line.
    """
    path = dataset_dir / LABELS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {LABELS_FILE} in dataset folder")
    images: list[LabelledImage] = []
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if text.strip():
                images.append(parse_label_line(text, dataset_dir, path, number))
    return images
