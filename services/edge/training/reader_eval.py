"""Measure the reader alone on the held-out 'test' split of every crop source.

    python -m services.edge.training.reader_eval --models services/edge/models [--int8]

Reports exact-text accuracy, character accuracy (1 - edit distance / label length) and the
OpenVINO latency per crop on ONE thread, for our FP32 IR, the INT8 IR (NNCF post-training
quantisation, made here with --int8 from train-split crops only) and the PP-OCRv4 recogniser
shipped by the PyPI package `rapidocr-openvino`, all on the same crops in the same run.
Crops are the labelled boxes (crop sets: the whole image; scene sets: the box).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openvino as ov

from services.edge.recognition.reader import ReaderSpec, postprocess, preprocess
from services.edge.recognition.runtime import RuntimeOptions
from services.edge.training.reader_data import RealItem, exact_crop, load_real_cached
from services.edge.training.reader_quantize import quantize

Reader = Callable[[np.ndarray, str | None], str]


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def compile_1thread(
    core: ov.Core, model: ov.Model | str, precision: str = "f32"
) -> ov.CompiledModel:
    return core.compile_model(
        model,
        "CPU",
        # the runtime's settings: one thread, latency, f32 maths even where the CPU has bf16
        # (`precision` evaluates another inference precision hint, e.g. bf16)
        RuntimeOptions(threads=1, precision=precision).config(),
    )


class OurReader:
    def __init__(self, core: ov.Core, xml: Path, spec: ReaderSpec) -> None:
        self.spec = spec
        self.compiled = compile_1thread(core, str(xml))
        self.req = self.compiled.create_infer_request()
        self.infer_s: list[float] = []
        self.total_s: list[float] = []

    def __call__(self, crop: np.ndarray, region: str | None) -> str:
        t0 = time.perf_counter()
        x = preprocess(crop, self.spec)
        t1 = time.perf_counter()
        self.req.infer({0: x})
        out = self.req.get_output_tensor(0).data
        t2 = time.perf_counter()
        reading = postprocess(out, self.spec, region=region)
        t3 = time.perf_counter()
        self.infer_s.append(t2 - t1)
        self.total_s.append(t3 - t0)
        return reading.text


class PPOCRv4Reader:
    """rapidocr-openvino's PP-OCRv4 text recogniser (its ONNX file), or a second reader's IR
    (`xml`, with its sidecar beside it, e.g. the fine-tuned one), run with OpenVINO on one
    thread through the runtime's second-reader pre/post-processing."""

    def __init__(self, core: ov.Core, xml: Path | None = None, precision: str = "f32") -> None:
        from services.edge.recognition.second_reader import SecondReaderSpec
        from services.edge.training.second_reader_import import ONNX_NAME, package_dir, spec_dict

        if xml is None:
            pkg = package_dir()
            self.model_path = pkg / ONNX_NAME
            self.spec = SecondReaderSpec.from_dict(spec_dict(pkg))
        else:
            self.model_path = xml
            self.spec = SecondReaderSpec.from_file(xml.with_suffix(".json"))
        self.compiled = compile_1thread(core, str(self.model_path), precision)
        self.req = self.compiled.create_infer_request()
        self.infer_s: list[float] = []
        self.total_s: list[float] = []

    def __call__(self, crop: np.ndarray, region: str | None) -> str:
        return self.read(crop)[0]

    def read(self, crop: np.ndarray) -> tuple[str, float]:
        """Text (A-Z0-9) and its confidence (mean peak probability of the kept steps, as
        rapidocr)."""
        from services.edge.recognition.second_reader import decode
        from services.edge.recognition.second_reader import preprocess as second_preprocess

        t0 = time.perf_counter()
        x = second_preprocess(crop, self.spec)
        t1 = time.perf_counter()
        self.req.infer({0: x})
        out = self.req.get_output_tensor(0).data.copy()
        t2 = time.perf_counter()
        reading = decode(out, self.spec)
        t3 = time.perf_counter()
        self.infer_s.append(t2 - t1)
        self.total_s.append(t3 - t0)
        return reading.text, reading.confidence


def loose_crop(item: RealItem, grow_x: float, grow_y: float) -> np.ndarray:
    """The labelled box with each side moved out by grow_x / grow_y of its width / height
    (as far as the kept context allows): a detector box around the plate and its frame."""
    x1, y1, x2, y2 = item.box
    bw, bh = x2 - x1, y2 - y1
    h, w = item.image.shape[:2]
    nx1, nx2 = max(0, int(x1 - grow_x * bw)), min(w, int(np.ceil(x2 + grow_x * bw)))
    ny1, ny2 = max(0, int(y1 - grow_y * bh)), min(h, int(np.ceil(y2 + grow_y * bh)))
    return item.image[ny1:ny2, nx1:nx2]


def evaluate(
    readers: dict[str, Reader], items: list[RealItem], loose: tuple[float, float] | None = None
) -> dict[str, object]:
    stats: dict[str, dict[str, dict[str, float]]] = defaultdict(
        lambda: defaultdict(lambda: {"n": 0, "exact": 0, "chars": 0, "char_err": 0})
    )
    examples: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for item in items:
        crop = exact_crop(item) if loose is None else loose_crop(item, *loose)
        region = item.region if item.region in ("br", "us", "ro", "in", "nl") else None
        groups = [item.dataset, "all"] + (["two-line"] if item.lines == 2 else [])
        for name, reader in readers.items():
            text = reader(crop, region)
            err = edit_distance(text, item.text)
            for g in groups:
                s = stats[name][g]
                s["n"] += 1
                s["exact"] += int(text == item.text)
                s["chars"] += len(item.text)
                s["char_err"] += min(err, len(item.text))
            if text != item.text and len(examples[name]) < 15:
                examples[name].append((item.text, text))
    result: dict[str, object] = {}
    for name, by_group in stats.items():
        result[name] = {
            g: {
                "n": int(s["n"]),
                "exact_acc": round(s["exact"] / s["n"], 4),
                "char_acc": round(1 - s["char_err"] / max(1, s["chars"]), 4),
            }
            for g, s in by_group.items()
        }
    result["errors_sample"] = dict(examples)
    return result


def synth_items(n: int, seed: int) -> list[RealItem]:
    """Held-out synthetic plates (a seed never used for training), for one- vs two-line."""
    from services.edge.training.synth import PlateSynth

    synth = PlateSynth(seed=seed)
    out = []
    for i in range(n):
        s = synth.sample(i)
        h, w = s.image.shape[:2]
        out.append(
            RealItem(
                dataset=f"synth-{s.lines}line",
                split="test",
                text=s.text,
                lines=1,  # keep real two-line figures separate
                region="",
                image=s.image,
                box=(0.0, 0.0, float(w), float(h)),
            )
        )
    return out


def latency(times: list[float]) -> dict[str, float]:
    a = np.array(times[5:] if len(times) > 20 else times) * 1000
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p95_ms": round(float(np.percentile(a, 95)), 3),
        "mean_ms": round(float(a.mean()), 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="services/edge/models")
    ap.add_argument("--work", default="work-data/reader")
    ap.add_argument("--int8", action="store_true", help="quantise to INT8 and compare")
    ap.add_argument("--no-ppocr", action="store_true")
    ap.add_argument("--json-out", default="")
    ap.add_argument("--synth", type=int, default=1000, help="held-out synthetic plates")
    ap.add_argument("--synth-seed", type=int, default=424242)
    ap.add_argument(
        "--loose",
        default="0.25,0.15",
        help="also read the test crops with each side grown by X,Y of the box (loose detector "
        "boxes); '' to skip",
    )
    ap.add_argument("--reader-xml", default="", help="evaluate this IR instead of MODELS/reader")
    ap.add_argument(
        "--precision",
        choices=("f32", "bf16"),
        default="f32",
        help="inference precision hint of the second readers (the runtime's is f32)",
    )
    ap.add_argument(
        "--second-reader-xml",
        action="append",
        default=[],
        help="also evaluate this second-reader IR (sidecar beside it); repeatable",
    )
    args = ap.parse_args(argv)

    models = Path(args.models)
    spec = ReaderSpec.from_file(models / "reader.json")
    items = load_real_cached(Path(args.work) / "real.pkl")
    test = [r for r in items if r.split == "test"]
    train = [r for r in items if r.split == "train"]
    core = ov.Core()
    xml = Path(args.reader_xml) if args.reader_xml else models / "reader.xml"
    readers: dict[str, Reader] = {"ours_fp32": OurReader(core, xml, spec)}
    if args.int8:
        int8_xml = quantize(core, xml, spec, train, Path(args.work) / "reader_int8.xml")
        readers["ours_int8"] = OurReader(core, int8_xml, spec)
    if not args.no_ppocr:
        readers["ppocr_v4_rec"] = PPOCRv4Reader(core)
    for extra in args.second_reader_xml:
        readers[f"second:{extra}"] = PPOCRv4Reader(core, Path(extra), args.precision)
    for reader in readers.values():  # warm-up
        reader(exact_crop(test[0]), None)
    for reader in readers.values():
        reader.infer_s.clear()  # type: ignore[attr-defined]
        reader.total_s.clear()  # type: ignore[attr-defined]
    acc = evaluate(readers, test)
    loose_acc: dict[str, object] = {}
    if args.loose:
        grow = [float(v) for v in args.loose.split(",")]
        if len(grow) != 2:
            ap.error(f"--loose: want X,Y (two numbers), got {args.loose!r}")
        loose_acc = evaluate(readers, test, (grow[0], grow[1]))
    synth_acc = evaluate(readers, synth_items(args.synth, args.synth_seed)) if args.synth else {}
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        sha = ""
    report = {
        "git_sha": sha,
        "machine": platform.processor() or platform.machine(),
        "openvino": ov.__version__,
        "threads": 1,
        "test_items": len(test),
        "accuracy": acc,
        "loose_box_accuracy": loose_acc,
        "loose_box_grow": args.loose,
        "synthetic_heldout_accuracy": synth_acc,
        "latency_infer": {n: latency(r.infer_s) for n, r in readers.items()},  # type: ignore[attr-defined]
        "latency_pre_infer_post": {n: latency(r.total_s) for n, r in readers.items()},  # type: ignore[attr-defined]
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
