"""Teacher pseudo-labels for train-split plate boxes that have no human text.

    python -m services.edge.training.reader_pseudo --out work-data/reader/pseudo.jsonl

The teacher is the PP-OCRv4 recogniser of `rapidocr-openvino` (reader_eval.PPOCRv4Reader, one
OpenVINO thread). Each unlabelled one-line box of the train split (scene sets and the eu crops
marked unreadable) is read on a few fixed jitters of its box; a text is kept only when every read
gives the same 4-8 alphanumerics with confidence >= MIN_CONFIDENCE (`accept_reading`). The same
filter is first measured on train-split boxes that do have human text (precision = teacher text
equal to the human one, among the accepted), and that measurement is printed and written next to
the labels. Deterministic: fixed jitters, no random numbers. Never touches 'test' or
`openalpr-endtoend-dev`. Output: JSON lines {"key", "text", "confidence", "dataset"}, the input
of `reader_train --pseudo-labels`.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from services.edge.training.reader_data import (
    DATA_ROOT,
    UNLABELLED_SETS,
    RealItem,
    load_real_cached,
    load_unlabelled,
)

log = logging.getLogger(__name__)

MIN_CONFIDENCE = 0.9
MIN_CHARS = 4
MAX_CHARS = 8
# box jitters, as (left, top, right, bottom) outward moves in fractions of the box width/height
JITTERS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, 0.0, 0.0),
    (0.05, 0.10, 0.05, 0.10),
    (-0.03, 0.0, -0.03, 0.0),
)

Teacher = Callable[[np.ndarray], tuple[str, float]]


def clean_text(text: str) -> str:
    """Upper-case ASCII letters and digits of a teacher reading (spaces, dashes, dots and
    non-Latin characters dropped)."""
    return "".join(c for c in text.upper() if c.isascii() and c.isalnum())


def accept_reading(
    readings: Sequence[tuple[str, float]],
    min_confidence: float = MIN_CONFIDENCE,
    min_chars: int = MIN_CHARS,
    max_chars: int = MAX_CHARS,
) -> str | None:
    """The pseudo-label for one plate from its teacher readings (raw text, confidence) on
    jittered crops, or None: every reading must agree after `clean_text`, have confidence >=
    `min_confidence`, and the text must have `min_chars`..`max_chars` characters."""
    if not readings:
        return None
    texts = {clean_text(t) for t, _ in readings}
    if len(texts) != 1:
        return None
    text = texts.pop()
    if not min_chars <= len(text) <= max_chars:
        return None
    if min(c for _, c in readings) < min_confidence:
        return None
    return text


def jittered_crops(item: RealItem) -> list[np.ndarray]:
    """`item`'s box cut from its context image with each of JITTERS (clipped to the image)."""
    x1, y1, x2, y2 = item.box
    bw, bh = x2 - x1, y2 - y1
    h, w = item.image.shape[:2]
    out = []
    for dl, dt, dr, db in JITTERS:
        a = int(max(0, round(x1 - dl * bw)))
        b = int(max(0, round(y1 - dt * bh)))
        c = int(min(w, round(x2 + dr * bw)))
        d = int(min(h, round(y2 + db * bh)))
        if c - a >= 4 and d - b >= 3:
            out.append(item.image[b:d, a:c])
    return out


def teacher_label(teacher: Teacher, item: RealItem) -> tuple[str | None, float]:
    """The accepted text for `item` (or None) and the lowest confidence of its readings."""
    readings = [teacher(crop) for crop in jittered_crops(item)]
    conf = min((c for _, c in readings), default=0.0)
    return accept_reading(readings), conf


def measure_filter(teacher: Teacher, items: Sequence[RealItem]) -> dict[str, object]:
    """Precision and yield of the filter on plates with human text, per dataset and overall."""
    stats: dict[str, dict[str, int]] = defaultdict(lambda: {"n": 0, "accepted": 0, "correct": 0})
    wrong: list[tuple[str, str]] = []
    for item in items:
        text, _ = teacher_label(teacher, item)
        for g in (item.dataset, "all"):
            s = stats[g]
            s["n"] += 1
            s["accepted"] += text is not None
            s["correct"] += text == item.text
        if text is not None and text != item.text and len(wrong) < 20:
            wrong.append((item.text, text))
    report: dict[str, object] = {
        g: {
            **s,
            "precision": round(s["correct"] / max(1, s["accepted"]), 4),
            "yield": round(s["accepted"] / max(1, s["n"]), 4),
        }
        for g, s in stats.items()
    }
    report["wrong_sample"] = wrong
    return report


def make_teacher() -> Teacher:
    import openvino as ov

    from services.edge.training.reader_eval import PPOCRv4Reader

    return PPOCRv4Reader(ov.Core()).read


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="work-data/reader/pseudo.jsonl")
    ap.add_argument("--work", default="work-data/reader")
    ap.add_argument("--data", default=str(DATA_ROOT))
    ap.add_argument(
        "--no-measure", action="store_true", help="skip the precision check on labelled plates"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    root = Path(args.data)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    teacher = make_teacher()
    if not args.no_measure:
        labelled = [
            r
            for r in load_real_cached(Path(args.work) / "real.pkl")
            if r.split == "train" and r.dataset in UNLABELLED_SETS and r.lines == 1
        ]
        report = measure_filter(teacher, labelled)
        print(json.dumps({"filter_on_labelled_train": report}), flush=True)
        out.with_suffix(".filter.json").write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    records = []
    for key, item in sorted(load_unlabelled(root).items()):
        text, conf = teacher_label(teacher, item)
        if text is not None:
            records.append(
                {"key": key, "text": text, "confidence": round(conf, 4), "dataset": item.dataset}
            )
    out.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    print(json.dumps({"pseudo_labels": len(records), "out": str(out)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
