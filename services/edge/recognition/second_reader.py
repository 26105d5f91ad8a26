"""The second-opinion reader: pre/post-processing of a CTC text-line recogniser (numpy + OpenCV).

platewatch's own reader reads every plate. When it is unsure (confidence below
`PipelineOptions.second_read_below`), the detector is sure there is a plate and the plate has
one text line, the crop is read again by a larger one-line CTC recogniser: PP-OCRv4's
(Apache-2.0 weights from the PyPI package rapidocr-openvino), fine-tuned for plates with a
37-class head by `services.edge.training.second_reader_train` and committed as OpenVINO IR
(session 7; sessions 5-6 used the generic model, which `second_reader_import` still converts
for comparisons). Nothing is downloaded at run time. `choose` keeps whichever reading is more
confident, within the rules below. Measured and decided in docs/models.md (sessions 5 and 7).

The model's sidecar (`models/second_reader.json`) is loaded into a `SecondReaderSpec`:
`preprocess` resizes a BGR crop to the model's height (keeping its aspect ratio, padded right to
at least `min_width`), `decode` is a greedy CTC decode whose confidence is the mean peak
probability of the kept steps; only ASCII letters and digits are kept in the text (upper-cased).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from services.edge.recognition.reader import PlateReading, ReaderSpecError, fits_region

FloatArray = npt.NDArray[np.float32]


class SecondReaderSpecError(ReaderSpecError):
    """The second reader's sidecar is missing a field or has a bad value (named)."""


@dataclass(frozen=True, slots=True)
class SecondReaderSpec:
    input_height: int
    min_width: int
    max_width: int
    mean: float
    std: float
    num_classes: int
    blank_index: int
    #: class index -> the plate character it stands for (letters upper-cased, digits; full-width
    #: forms too); the `separators` classes (space, dash, dot...) are left out of the text; any
    #: other class read (CJK, other symbols) makes the reading `foreign`
    chars: dict[int, str]
    separators: frozenset[int] = frozenset()

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], source: Path = Path("second_reader.json")
    ) -> SecondReaderSpec:
        def need(section: dict[str, Any], key: str, where: str) -> Any:
            if key not in section:
                raise SecondReaderSpecError(source, f"{where}{key}", "missing")
            return section[key]

        inp = need(data, "input", "")
        if not isinstance(inp, dict):
            raise SecondReaderSpecError(source, "input", "must be an object")
        spec = cls(
            input_height=int(need(inp, "height", "input.")),
            min_width=int(need(inp, "min_width", "input.")),
            max_width=int(need(inp, "max_width", "input.")),
            mean=float(need(inp, "mean", "input.")),
            std=float(need(inp, "std", "input.")),
            num_classes=int(need(data, "num_classes", "")),
            blank_index=int(need(data, "blank_index", "")),
            chars={int(k): str(v) for k, v in dict(need(data, "chars", "")).items()},
            separators=frozenset(int(i) for i in data.get("separators", [])),
        )
        if spec.input_height < 8 or spec.min_width < spec.input_height:
            raise SecondReaderSpecError(source, "input", "height >= 8 and min_width >= height")
        if spec.max_width < spec.min_width:
            raise SecondReaderSpecError(source, "input.max_width", "must be >= min_width")
        if spec.std <= 0:
            raise SecondReaderSpecError(source, "input.std", "must be > 0")
        if not 0 <= spec.blank_index < spec.num_classes:
            raise SecondReaderSpecError(source, "blank_index", "must be a class index")
        for index in spec.separators:
            if not (0 <= index < spec.num_classes and index != spec.blank_index):
                raise SecondReaderSpecError(source, f"separators.{index}", "not a non-blank class")
        for index, char in spec.chars.items():
            if not (0 <= index < spec.num_classes and index != spec.blank_index):
                raise SecondReaderSpecError(source, f"chars.{index}", "not a non-blank class")
            if len(char) != 1 or not (char.isascii() and (char.isdigit() or char.isupper())):
                raise SecondReaderSpecError(source, f"chars.{index}", "must be one of A-Z0-9")
        return spec

    @classmethod
    def from_file(cls, path: Path) -> SecondReaderSpec:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SecondReaderSpecError(path, "file", str(exc)) from exc
        if not isinstance(data, dict):
            raise SecondReaderSpecError(path, "file", "must hold a JSON object")
        return cls.from_dict(data, path)


@dataclass(frozen=True, slots=True)
class SecondReading:
    text: str
    confidence: float
    char_confidences: tuple[float, ...]
    #: characters read that are neither plate characters nor separators (left out of `text`):
    #: the text may be missing a character the model took for a look-alike symbol
    foreign: int = 0


def preprocess(crop_bgr: npt.NDArray[Any], spec: SecondReaderSpec) -> FloatArray:
    """BGR uint8 crop -> float32 (1, 3, H, W): height `input_height`, aspect ratio kept, padded
    with zeros on the right to at least `min_width` (rapidocr's arithmetic), at most
    `max_width` wide."""
    if crop_bgr.ndim == 2:
        crop_bgr = cv2.cvtColor(crop_bgr, cv2.COLOR_GRAY2BGR)
    h, w = crop_bgr.shape[:2]
    height = spec.input_height
    padded = min(spec.max_width, int(height * max(spec.min_width / height, w / max(h, 1))))
    width = max(1, min(padded, math.ceil(height * w / max(h, 1))))
    resized = cv2.resize(crop_bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    x = (resized.astype(np.float32).transpose(2, 0, 1) / 255.0 - spec.mean) / spec.std
    out = np.zeros((1, 3, height, padded), np.float32)
    out[0, :, :, :width] = x
    return out


def decode(probs: npt.NDArray[Any], spec: SecondReaderSpec) -> SecondReading:
    """Greedy CTC decode of (1, T, classes) or (T, classes) probabilities (softmax output)."""
    p = np.asarray(probs, np.float32).reshape(-1, spec.num_classes)
    if p.shape[0] == 0:
        return SecondReading("", 0.0, ())
    best = p.argmax(axis=1)
    peak = p.max(axis=1)
    keep = np.r_[True, best[1:] != best[:-1]] & (best != spec.blank_index)
    kept = best[keep].tolist()
    if not kept:
        return SecondReading("", 0.0, ())
    kept_peak = peak[keep]
    text: list[str] = []
    chars: list[float] = []
    foreign = 0
    for cls, prob in zip(kept, kept_peak.tolist(), strict=True):
        ch = spec.chars.get(int(cls))
        if ch is not None:
            text.append(ch)
            chars.append(float(prob))
        elif int(cls) not in spec.separators:
            foreign += 1
    return SecondReading("".join(text), float(kept_peak.mean()), tuple(chars), foreign)


@dataclass(frozen=True, slots=True)
class SecondReadRule:
    """When the second reading replaces the first (PipelineOptions carries the values)."""

    min_confidence: float = 0.9
    min_length: int = 2
    max_length: int = 10


def looks_like_a_plate(text: str) -> bool:
    """At least five characters with a digit among them: what a second reading must look like
    in a box the detector is unsure of, where words on signs and bodywork are read as surely as
    plates (docs/models.md, session 14). Pure."""
    return len(text) >= 5 and any(c.isdigit() for c in text)


def choose(
    first: PlateReading, second: SecondReading, region: str | None, rule: SecondReadRule
) -> PlateReading:
    """The second reading, when it is at least `rule.min_confidence` sure, more sure than the
    first, `min_length`..`max_length` characters long, has no foreign character, and does not
    break a region format that the first reading fits (the same text: the first reading with the
    second's confidence); otherwise the first reading unchanged. Pure.

    The two confidences are on different scales (ours: the text's CTC probability; the second:
    a mean of per-step peaks, which runs higher). The thresholds were chosen on held-out data
    with that as it is (docs/models.md, session 5)."""
    text = second.text
    if second.foreign or not (rule.min_length <= len(text) <= rule.max_length):
        return first
    if second.confidence < rule.min_confidence or second.confidence <= first.confidence:
        return first
    if text == first.text:  # two readers agree: the reading is as sure as the surer one
        return PlateReading(first.text, second.confidence, first.char_confidences, first.candidates)
    if region and not fits_region(text, region) and fits_region(first.text, region):
        return first
    others = tuple((t, p) for t, p in first.candidates if t != text)
    return PlateReading(
        text=text,
        confidence=second.confidence,
        char_confidences=second.char_confidences,
        candidates=((text, second.confidence), *others)[: max(1, len(first.candidates))],
    )
