"""`platewatch eval`: end-to-end plate reading scored against any labels.jsonl folder.

    platewatch eval DATASET_DIR --out PRED.jsonl [--split test] [--crops] [--threads 1]
                    [--json SUMMARY.json] [--region label|none|XX] [--engine platewatch|rapidocr]

One image at a time; writes one JSON line per image {"file", "plates": [{"text", "confidence",
"box"}], "ms"} where ms is decoded image -> final plates. A labelled plate counts as read when a
prediction has exactly its text and the boxes overlap (intersection / smaller area >= 0.5, the
reference scoring of openalpr-endtoend-dev). Reads that overlap no labelled box are "extra reads";
reads on a labelled box with the wrong text are "wrong reads". The reader's plate-format hint is
each image's labelled region by default (`--region label`), as a camera is configured with its
site's country in production (docs/decisions.md); `--region none` reads without any hint.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from services.edge.dataset import LabelledImage, load_labels
from shared.machine import cpu_isa, cpu_model, git_sha

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class Prediction:
    text: str
    confidence: float
    box: Box


@dataclass(frozen=True, slots=True)
class ImageScore:
    labelled: int  # labelled plates with text
    read: int  # of those, read exactly with overlapping box
    extra: int  # predictions overlapping no labelled box
    wrong: int  # predictions on a labelled box with wrong text (not counted as extra)
    char_correct: float  # sum over labelled plates of (1 - edit distance / len), clipped at 0
    # each labelled plate with text: (its box width in image pixels, read exactly)
    plates: tuple[tuple[float, bool], ...] = ()


#: plate-width buckets of `recall_by_width`, in image pixels: where small plates are lost
WIDTH_EDGES: tuple[float, ...] = (70.0, 110.0)


# ----------------------------------------------------------------------------- scoring (pure)
def overlap(a: Box, b: Box) -> float:
    """Intersection over the smaller box's area (0 when either box is empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    smaller = min(area_a, area_b)
    return ix * iy / smaller if smaller > 0 else 0.0


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def score_image(
    labels: Sequence[tuple[str | None, Box]],
    predictions: Sequence[Prediction],
    min_overlap: float = 0.5,
) -> ImageScore:
    """Score one image's predictions against its labelled plates (text None = unreadable)."""
    used: set[int] = set()
    read = 0
    char_correct = 0.0
    labelled = 0
    plates: list[tuple[float, bool]] = []
    for text, box in labels:
        if not text:
            continue
        labelled += 1
        width = max(0.0, box[2] - box[0])
        hit = next(
            (
                i
                for i, p in enumerate(predictions)
                if i not in used and p.text == text and overlap(p.box, box) >= min_overlap
            ),
            None,
        )
        plates.append((width, hit is not None))
        if hit is not None:
            used.add(hit)
            read += 1
            char_correct += 1.0
            continue
        near = [p for p in predictions if overlap(p.box, box) >= min_overlap]
        if near:
            best = min(edit_distance(p.text, text) for p in near)
            char_correct += max(0.0, 1.0 - best / len(text))
    extra = wrong = 0
    for i, p in enumerate(predictions):
        if i in used:
            continue
        if any(overlap(p.box, box) >= min_overlap for _, box in labels):
            wrong += 1
        else:
            extra += 1
    return ImageScore(labelled, read, extra, wrong, char_correct, tuple(plates))


def recall_by_width(
    scores: Sequence[ImageScore], edges: Sequence[float] = WIDTH_EDGES
) -> dict[str, dict[str, float]]:
    """Exact-plate recall by labelled plate width (image pixels), in buckets cut at `edges`
    (ascending): {"<70": {"plates": n, "recall": r}, "70-110": ..., ">=110": ...}; empty
    buckets are left out."""
    names = [f"<{edges[0]:g}"] if edges else []
    names += [f"{a:g}-{b:g}" for a, b in itertools.pairwise(edges)]
    names += [f">={edges[-1]:g}"] if edges else ["all"]
    counts = {name: [0, 0] for name in names}
    for score in scores:
        for width, read in score.plates:
            name = names[sum(width >= edge for edge in edges)]
            counts[name][0] += 1
            counts[name][1] += int(read)
    return {name: {"plates": n, "recall": hits / n} for name, (n, hits) in counts.items() if n > 0}


def summarise(scores: Sequence[ImageScore], ms: Sequence[float]) -> dict[str, Any]:
    """Totals over images: recall, extra/wrong reads per image, char accuracy, latency."""
    labelled = sum(s.labelled for s in scores)
    images = len(scores)
    ordered = sorted(ms)
    return {
        "images": images,
        "labelled_plates": labelled,
        "read": sum(s.read for s in scores),
        "exact_plate_recall": sum(s.read for s in scores) / labelled if labelled else 0.0,
        "extra_reads_per_image": sum(s.extra for s in scores) / images if images else 0.0,
        "wrong_reads_per_image": sum(s.wrong for s in scores) / images if images else 0.0,
        "char_accuracy": sum(s.char_correct for s in scores) / labelled if labelled else 0.0,
        "median_ms": statistics.median(ordered) if ordered else 0.0,
        "p90_ms": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] if ordered else 0.0,
    }


def normalise_text(text: str) -> str:
    """Upper-case A-Z0-9 only (the label alphabet)."""
    return "".join(c for c in text.upper() if c.isascii() and c.isalnum())


# ----------------------------------------------------------------------------- engines
Engine = Callable[
    [np.ndarray, "str | None", bool, "list[Box] | None"], tuple[list[Prediction], float]
]


def platewatch_engine(
    models: Path, threads: int, detector: str, reader: str, options: Any = None
) -> Engine:
    from services.edge.recognition.pipeline import PipelineOptions, PlateRecognizer
    from services.edge.recognition.runtime import RuntimeOptions

    recognizer = PlateRecognizer.from_dir(
        models,
        RuntimeOptions(threads=threads),
        options or PipelineOptions(),
        detector_name=detector,
        reader_name=reader,
    )

    def run(
        frame: np.ndarray, region: str | None, crops: bool, boxes: list[Box] | None
    ) -> tuple[list[Prediction], float]:
        result = recognizer.recognize(frame, region=region, crops=crops, boxes=boxes)
        preds = [Prediction(p.text, p.confidence, p.box) for p in result.plates]
        return preds, result.timings_ms.get("total", 0.0)

    return run


def rapidocr_engine(threads: int) -> Engine:
    """Generic PP-OCRv4 (rapidocr-openvino) as a reference reader: every text line is a read."""
    import tempfile

    import openvino
    import yaml

    try:
        import openvino.runtime
    except ImportError:  # openvino >= 2025 dropped the alias rapidocr-openvino imports
        sys.modules["openvino.runtime"] = openvino
    import rapidocr_openvino
    import rapidocr_openvino.utils.infer_engine as infer_engine

    class _F32Core(openvino.Core):  # type: ignore[misc]
        """f32 maths as platewatch's runtime uses: OpenVINO would pick bf16 on CPUs with it."""

        def compile_model(self, model: Any, device_name: Any = None, config: Any = None) -> Any:
            settings = {"INFERENCE_PRECISION_HINT": "f32", **(config or {})}
            return super().compile_model(model, device_name, settings)

    infer_engine.Core = _F32Core
    cfg_path = Path(rapidocr_openvino.__file__).parent / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    for section in ("Global", "Det", "Cls", "Rec"):
        cfg[section]["inference_num_threads"] = threads
    for section in ("Det", "Cls", "Rec"):
        path = Path(cfg[section]["model_path"])
        if not path.is_absolute():
            cfg[section]["model_path"] = str(cfg_path.parent / path)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(cfg, handle)
    ocr = rapidocr_openvino.RapidOCR(config_path=handle.name)

    def run(
        frame: np.ndarray, region: str | None, crops: bool, boxes: list[Box] | None
    ) -> tuple[list[Prediction], float]:
        start = time.perf_counter()
        result, _ = ocr(frame, use_det=not crops)
        ms = (time.perf_counter() - start) * 1000.0
        preds: list[Prediction] = []
        height, width = frame.shape[:2]
        for item in result or []:
            if crops:
                text, conf = item[0], item[1]
                box: Box = (0.0, 0.0, float(width), float(height))
            else:
                points, text, conf = item
                xs = [float(p[0]) for p in points]
                ys = [float(p[1]) for p in points]
                box = (min(xs), min(ys), max(xs), max(ys))
            clean = normalise_text(str(text))
            if len(clean) >= 2:
                preds.append(Prediction(clean, float(conf), box))
        return preds, ms

    return run


# ----------------------------------------------------------------------------- main
def select(images: Iterable[LabelledImage], dataset: str, split: str) -> list[LabelledImage]:
    if split == "all":
        return list(images)
    from services.edge.training.splits import split_of

    return [i for i in images if split_of(dataset, i.split_label) == split]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="platewatch eval", description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path, help="folder with labels.jsonl and images/")
    ap.add_argument("--out", type=Path, required=True, help="predictions, one JSON line per image")
    ap.add_argument("--split", choices=("all", "train", "test", "eval"), default="all")
    ap.add_argument("--crops", action="store_true", help="skip detection: image = one plate")
    ap.add_argument("--threads", type=int, default=1, help="OpenVINO inference threads")
    ap.add_argument("--json", type=Path, help="write the summary here too")
    ap.add_argument(
        "--region",
        default="label",
        help="reader format hint: 'label' (default: each image's labelled region, as the "
        "camera's site would be configured), 'none' or a region code",
    )
    ap.add_argument("--engine", choices=("platewatch", "rapidocr"), default="platewatch")
    ap.add_argument("--models", type=Path, default=None, help="models folder")
    ap.add_argument(
        "--detector",
        default="detector_int8",
        help="detector IR name in --models (sidecar: the same name without _int8)",
    )
    ap.add_argument(
        "--reader",
        default="reader_int8",
        help="reader IR name in --models (sidecar: the same name without _int8; the FP32 "
        "'reader' when the INT8 one is absent)",
    )
    ap.add_argument("--min-overlap", type=float, default=0.5)
    ap.add_argument(
        "--label-boxes",
        action="store_true",
        help="skip the detector: read the labelled boxes (a perfect detector); platewatch only",
    )
    ap.add_argument("--margin-x", type=float, default=None, help="reader crop margin (x)")
    ap.add_argument("--margin-y", type=float, default=None, help="reader crop margin (y)")
    ap.add_argument("--min-confidence", type=float, default=None, help="drop weaker reads")
    add_pipeline_flags(ap)
    ap.add_argument("--limit", type=int, default=0, help="only the first N images (0 = all)")
    return ap


def add_pipeline_flags(ap: argparse.ArgumentParser) -> None:
    """The pipeline options `platewatch eval` and `platewatch bench recognition` share."""
    ap.add_argument(
        "--score-threshold",
        type=score_arg,
        default=None,
        help="detector score threshold (default: the detector sidecar's)",
    )
    ap.add_argument(
        "--candidate-threshold",
        type=score_arg,
        default=None,
        help="detection cascade: boxes scored from this up to the detector's threshold are "
        "confirmed by the zoomed pass or dropped (0 = off; default: the pipeline's)",
    )
    ap.add_argument(
        "--max-candidates",
        type=positive_int_arg,
        default=None,
        help="detection cascade: at most this many candidate boxes a frame, best first "
        "(default: the pipeline's)",
    )
    ap.add_argument(
        "--detect-fit",
        choices=("aspect", "square", "trim"),
        default=None,
        help="detector input: the frame's aspect in the model's pixel budget, the square, or "
        "the square's scale with its padding trimmed (default: the pipeline's)",
    )
    ap.add_argument(
        "--refine-below",
        type=pixels_arg,
        default=None,
        help="zoomed refinement of boxes whose plate-shaped extent, max(width, 2 x height) in "
        "the square letterbox's pixels, is under this (0 = off; default: the pipeline's)",
    )
    ap.add_argument(
        "--refine-drops-unconfirmed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="drop a small box the zoomed pass does not confirm instead of reading its coarse "
        "box (default: the pipeline's, on)",
    )
    ap.add_argument(
        "--refine-batch",
        type=positive_int_arg,
        default=None,
        help="at most this many zoom windows of a frame in one detector call (1 = one call a "
        "window; default: the pipeline's)",
    )
    ap.add_argument(
        "--second-read-below",
        type=score_arg,
        default=None,
        help="second-opinion read of plates below this confidence (0: off; default: the "
        "pipeline's)",
    )
    ap.add_argument(
        "--second-min-detector",
        type=score_arg,
        default=None,
        help="second-opinion read only in boxes the detector scores at least this (0: every "
        "box; default: the pipeline's)",
    )
    ap.add_argument(
        "--second-low-detector",
        type=score_arg,
        default=None,
        help="also read again unsure plates in boxes scored from this up to "
        "--second-min-detector, keeping the second reading there only when it looks like a "
        "plate (0: off; default: the pipeline's)",
    )
    ap.add_argument(
        "--second-precision",
        choices=("f32", "auto"),
        default=None,
        help="second reader's inference precision: f32, or auto (BF16 where the CPU has it "
        "natively; default: the pipeline's)",
    )
    ap.add_argument(
        "--reader-precision",
        choices=("f32", "auto"),
        default=None,
        help="our reader's inference precision: f32, or auto (BF16 where the CPU has it "
        "natively; default: the pipeline's)",
    )
    ap.add_argument(
        "--rezoom-context",
        type=context_arg,
        default=None,
        help="zoom each refined small box again in a window this many times its extent "
        "(0 = off; default: the pipeline's)",
    )
    ap.add_argument(
        "--variants-below",
        type=score_arg,
        default=None,
        help="read a plate again with other crop margins when its confidence is below this "
        "(0 = never; default: the pipeline's)",
    )
    ap.add_argument(
        "--variants",
        dest="read_variants",
        type=_margin_pairs,
        default=None,
        help="the crop margins of those extra reads, 'X,Y;X,Y' (negative: inside the box; "
        "default: the pipeline's)",
    )


#: the PipelineOptions fields those flags set (each flag's destination has the field's name)
_PIPELINE_FIELDS = (
    "score_threshold",
    "candidate_threshold",
    "max_candidates",
    "detect_fit",
    "refine_below",
    "refine_drops_unconfirmed",
    "refine_batch",
    "rezoom_context",
    "second_read_below",
    "second_min_detector",
    "second_low_detector",
    "second_precision",
    "reader_precision",
    "variants_below",
    "read_variants",
)


def pipeline_option_values(options: Any) -> dict[str, Any]:
    """The PipelineOptions fields those flags can set, as `options` has them (for reports)."""
    return {field: getattr(options, field) for field in _PIPELINE_FIELDS}


def pipeline_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The PipelineOptions fields those flags set (only the ones given)."""
    given = {field: getattr(args, field) for field in _PIPELINE_FIELDS}
    return {name: value for name, value in given.items() if value is not None}


T = TypeVar("T")


def _checked_arg(text: str, parse: Callable[[str], T], ok: Callable[[T], bool], want: str) -> T:
    """`parse(text)` when it parses and `ok` accepts it; else argparse's error, saying `want`."""
    try:
        value = parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"want {want}, got {text!r}") from exc
    if not ok(value):
        raise argparse.ArgumentTypeError(f"want {want}, got {text!r}")
    return value


def positive_int_arg(text: str) -> int:
    """A whole number >= 1 (argparse type)."""
    return _checked_arg(text, int, lambda v: v >= 1, "a whole number >= 1")


def context_arg(text: str) -> float:
    """A zoom window's size in multiples of its box: 0 (off) or a finite number >= 1."""
    return _checked_arg(
        text, float, lambda v: v == 0 or (math.isfinite(v) and v >= 1), "0 or a number >= 1"
    )


def pixels_arg(text: str) -> float:
    """A size in pixels: a finite number >= 0 (argparse type)."""
    return _checked_arg(text, float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")


def score_arg(text: str) -> float:
    """A score or confidence flag: a number in [0, 1) (argparse type); refuses nan."""
    return _checked_arg(text, float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")


def _margin_pairs(text: str) -> tuple[tuple[float, float], ...]:
    """'0.03,0.05;0.1,0.15' -> ((0.03, 0.05), (0.1, 0.15))."""
    try:
        pairs = tuple(
            (float(x), float(y)) for x, y in (part.split(",") for part in text.split(";"))
        )
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"want 'X,Y;X,Y', got {text!r}") from exc
    if any(not -0.4 <= v <= 1.0 for pair in pairs for v in pair):
        raise argparse.ArgumentTypeError(f"margins must lie in [-0.4, 1.0], got {text!r}")
    return pairs


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    cv2.setNumThreads(1)
    try:
        images = select(load_labels(args.dataset), args.dataset.resolve().name, args.split)
    except (FileNotFoundError, ValueError) as exc:
        print(f"platewatch eval: {exc}", file=sys.stderr)
        return 2
    if args.limit:
        images = images[: args.limit]
    if args.engine == "rapidocr" and args.label_boxes:
        print("platewatch eval: --label-boxes needs --engine platewatch", file=sys.stderr)
        return 2
    if args.engine == "rapidocr":
        engine = rapidocr_engine(args.threads)
    else:
        from dataclasses import replace

        from services.edge.recognition.pipeline import (
            MODELS_DIR,
            PipelineOptionError,
            PipelineOptions,
            check_options,
        )

        options = PipelineOptions()
        if args.margin_x is not None:
            options = replace(options, crop_margin_x=args.margin_x)
        if args.margin_y is not None:
            options = replace(options, crop_margin_y=args.margin_y)
        if args.min_confidence is not None:
            options = replace(options, min_read_confidence=args.min_confidence)
        options = replace(options, **pipeline_overrides(args))
        try:
            check_options(options)
        except PipelineOptionError as exc:
            print(f"platewatch eval: {exc}", file=sys.stderr)
            return 2
        engine = platewatch_engine(
            args.models or MODELS_DIR, args.threads, args.detector, args.reader, options
        )
    scores: list[ImageScore] = []
    times: list[float] = []
    by_region: dict[str, list[ImageScore]] = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as out:
        for item in images:
            frame = cv2.imread(str(item.file), cv2.IMREAD_COLOR)
            if frame is None:
                print(f"platewatch eval: {item.file}: cannot decode, skipped", file=sys.stderr)
                continue
            region = {"none": None, "label": item.region}.get(args.region, args.region)
            boxes = [p.box for p in item.plates] if args.label_boxes else None
            preds, ms = engine(frame, region, args.crops, boxes)
            labels = [(p.text, p.box) for p in item.plates]
            if args.crops:
                full: Box = (0.0, 0.0, float(item.width), float(item.height))
                labels = [(p.text, full) for p in item.plates]
            score = score_image(labels, preds, args.min_overlap)
            scores.append(score)
            times.append(ms)
            by_region.setdefault(item.region, []).append(score)
            row = {
                "file": item.relative_file,
                "plates": [
                    {
                        "text": p.text,
                        "confidence": round(p.confidence, 4),
                        "box": [round(v, 1) for v in p.box],
                    }
                    for p in preds
                ],
                "ms": round(ms, 3),
                "labels": [p.text for p in item.plates],
            }
            out.write(json.dumps(row) + "\n")
    summary = summarise(scores, times)
    summary["by_region"] = {
        r: summarise(s, [])["exact_plate_recall"] for r, s in sorted(by_region.items())
    }
    if not args.crops:  # a crop's "box" is the whole image
        summary["by_plate_width"] = recall_by_width(scores)
    summary.update(
        dataset=str(args.dataset),
        label_boxes=args.label_boxes,
        split=args.split,
        crops=args.crops,
        threads=args.threads,
        engine=args.engine,
        region=args.region,
        pipeline_options=pipeline_option_values(options) if args.engine == "platewatch" else None,
        # Reads near a threshold can change with the CPU's kernels (docs/models.md, session 6).
        machine={"cpu": cpu_model(), "cpu_isa": cpu_isa(), "cores": os.cpu_count()},
        git_sha=git_sha(),
    )
    print(
        f"{args.dataset.name} [{args.split}{', crops' if args.crops else ''}"
        f"{', label boxes' if args.label_boxes else ''}] "
        f"engine={args.engine} images={summary['images']} plates={summary['labelled_plates']}\n"
        f"  exact-plate recall {summary['exact_plate_recall']:.1%}  "
        f"extra reads/image {summary['extra_reads_per_image']:.3f}  "
        f"wrong reads/image {summary['wrong_reads_per_image']:.3f}  "
        f"char accuracy {summary['char_accuracy']:.1%}\n"
        f"  ms median {summary['median_ms']:.2f}  p90 {summary['p90_ms']:.2f}  "
        f"by region {json.dumps({k: round(v, 3) for k, v in summary['by_region'].items()})}"
    )
    if "by_plate_width" in summary:
        widths = {
            k: f"{v['recall']:.1%} of {v['plates']}" for k, v in summary["by_plate_width"].items()
        }
        print(f"  by plate width (px) {json.dumps(widths)}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
