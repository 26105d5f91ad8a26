"""`platewatch bench recognition`: per-stage latency, throughput and memory of the recogniser.

    platewatch bench recognition [--models DIR] [--images DATASET_DIR] [--frames 40]
                                 [--threads 1,0] [--precisions fp32,int8] [--streams 2]
                                 [--passes 1] [--compare "FLAGS"] [--json OUT.json]

Frames are real scene images centre-cropped to 16:9 and resized to 1280x720 and 1920x1080, then
JPEG-encoded so that decoding is measured too. Threads 0 means all cores. FP32 / INT8 name the
IRs of the detector and our reader (the second reader runs at the pipeline's
`second_precision` in both). `--compare` times a
second pipeline configuration (the same pipeline flags and `--models DIR`, as one string) frame
by frame beside the first, alternating which goes first, so that a VM's drift in speed hits both
alike; it adds the median over frames of the compared / base ratio of detect + read. INT8 uses
`detector_int8.xml` / `reader_int8.xml` when present in the models folder. Prints a table and
writes JSON with the git sha, date, CPU model and the process's peak RSS. A benchmark is a
command, not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from services.edge.dataset import load_labels
from services.edge.eval import (
    add_pipeline_flags,
    pipeline_option_values,
    pipeline_overrides,
    positive_int_arg,
)
from services.edge.recognition.pipeline import (
    MODELS_DIR,
    STAGES,
    PipelineOptionError,
    PipelineOptions,
    PlateRecognizer,
    check_options,
)
from services.edge.recognition.runtime import RuntimeOptions
from shared.machine import cpu_isa, cpu_model, git_sha

DEFAULT_IMAGES = Path("/work/shared/data/openalpr-endtoend-dev")
RESOLUTIONS = {"720p": (1280, 720), "1080p": (1920, 1080)}


@dataclass(frozen=True, slots=True)
class Config:
    resolution: str
    threads: int
    precision: str


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def to_16_9(image: npt.NDArray[np.uint8], width: int, height: int) -> npt.NDArray[np.uint8]:
    """Centre-crop to 16:9 and resize to width x height."""
    h, w = image.shape[:2]
    if w * 9 > h * 16:
        cw = h * 16 // 9
        image = image[:, (w - cw) // 2 : (w - cw) // 2 + cw]
    else:
        ch = w * 9 // 16
        image = image[(h - ch) // 2 : (h - ch) // 2 + ch]
    return np.asarray(cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC))


def make_frames(images_dir: Path, count: int, width: int, height: int) -> list[bytes]:
    frames: list[bytes] = []
    for item in load_labels(images_dir)[:count]:
        raw = cv2.imread(str(item.file), cv2.IMREAD_COLOR)
        if raw is None:
            continue
        frame = to_16_9(np.asarray(raw, dtype=np.uint8), width, height)
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if ok:
            frames.append(buf.tobytes())
    return frames


def model_names(models: Path, precision: str) -> tuple[str, str]:
    if precision == "int8":
        det = "detector_int8" if (models / "detector_int8.xml").is_file() else "detector"
        rdr = "reader_int8" if (models / "reader_int8.xml").is_file() else "reader"
        return det, rdr
    return "detector", "reader"


def load(
    models: Path, precision: str, threads: int, options: PipelineOptions | None = None
) -> PlateRecognizer:
    det, rdr = model_names(models, precision)
    # INT8 IRs share the FP32 sidecar
    det_json = det if (models / f"{det}.json").is_file() else "detector"
    recognizer = PlateRecognizer.from_dir(
        models,
        RuntimeOptions(threads=threads),
        options or PipelineOptions(),
        detector_name=det,
        reader_name=rdr,
        detector_spec_name=det_json,
    )
    return recognizer


@dataclass(frozen=True, slots=True)
class Compared:
    """The configuration `--compare` sets: pipeline options that differ and, optionally, another
    models folder (a candidate model against the shipped one)."""

    overrides: dict[str, Any]
    models: Path | None = None


def compare_flags(text: str) -> Compared:
    """`--compare`'s string: pipeline flags, parsed as `platewatch eval` parses them, and
    `--models DIR`."""
    parser = argparse.ArgumentParser(prog="--compare", add_help=False, exit_on_error=False)
    add_pipeline_flags(parser)
    parser.add_argument("--models", type=Path, default=None)
    try:
        parsed, rest = parser.parse_known_args(shlex.split(text))
    except (argparse.ArgumentError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc
    if rest:
        raise argparse.ArgumentTypeError(f"{text!r}: not a pipeline flag: {rest[0]}")
    if parsed.models is not None and not parsed.models.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: --models {parsed.models}: not a folder")
    return Compared(pipeline_overrides(parsed), parsed.models)


def run_latency(
    recognizers: list[PlateRecognizer], frames: list[bytes], warmup: int, passes: int = 1
) -> list[dict[str, Any]]:
    """Each frame through every recogniser in turn, `passes` times; the recognisers take turns
    going first (frame by frame), so that a change in the machine's speed hits them alike. One
    row per recogniser; with two, the second's row adds the median over frames of its detect +
    read time over the first's (`paired_ratio`)."""
    for recognizer in recognizers:
        for data in frames[:warmup]:
            recognizer.recognize_bytes(data)
    count = len(recognizers)
    stages: list[dict[str, list[float]]] = [{s: [] for s in STAGES} for _ in recognizers]
    detect_read: list[list[float]] = [[] for _ in recognizers]
    plates = [0] * count
    for done in range(passes):
        for index, data in enumerate(frames):
            first = (done + index) % count  # each pass swaps who goes first on every frame
            for k in [(first + j) % count for j in range(count)]:
                result = recognizers[k].recognize_bytes(data)
                plates[k] += len(result.plates)
                timings = result.timings_ms
                for stage in STAGES:
                    stages[k][stage].append(timings.get(stage, 0.0))
                detect_read[k].append(timings.get("detect", 0.0) + timings.get("read", 0.0))
    rows = []
    for k in range(count):
        rows.append(
            {
                "frames": len(frames),
                "passes": passes,
                "plates_per_frame": plates[k] / max(1, len(frames) * passes),
                "stages_ms": {
                    s: {"p50": round(statistics.median(v), 3), "p95": round(percentile(v, 95), 3)}
                    for s, v in stages[k].items()
                },
                # the measure: detect + read of each frame, then the median over frames
                "detect_read_ms": {
                    "p50": round(statistics.median(detect_read[k]), 3),
                    "p95": round(percentile(detect_read[k], 95), 3),
                },
            }
        )
    if count == 2:
        ratios = [b / a for a, b in zip(detect_read[0], detect_read[1], strict=True) if a > 0]
        if ratios:
            rows[1]["paired_ratio"] = round(statistics.median(ratios), 3)
    return rows


def run_streams(
    models: Path,
    precision: str,
    frames: list[bytes],
    streams: int,
    seconds: float,
    options: PipelineOptions | None = None,
) -> dict[str, Any]:
    """`streams` threads, each its own 1-thread recogniser, decoding+recognising frames for
    `seconds`; total frames/s over all streams."""
    recognizers = [load(models, precision, 1, options) for _ in range(streams)]
    counts = [0] * streams
    stop = threading.Event()

    def worker(index: int) -> None:
        i = index
        while not stop.is_set():
            recognizers[index].recognize_bytes(frames[i % len(frames)])
            counts[index] += 1
            i += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {
        "streams": streams,
        "seconds": round(elapsed, 2),
        "fps_total": round(sum(counts) / elapsed, 2),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux: VmHWM, the high-water mark of this program's
    own memory; `ru_maxrss` is not used there because a child spawned by a large process starts
    with its parent's figure (the kernel carries the maximum over fork and exec)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_probe(
    models: Path,
    images: Path,
    frames: int,
    precision: str = "fp32",
    overrides: dict[str, Any] | None = None,
) -> float:
    """Peak RSS (MB) of a fresh process running one 1-thread recogniser of `precision` on 720p
    frames (the edge node's footprint, without this benchmark's other recognisers)."""
    code = (
        "import sys;from pathlib import Path;from services.edge import bench as b;"
        f"fr=b.make_frames(Path({str(images)!r}),{frames},1280,720);"
        "import dataclasses;from services.edge.recognition.pipeline import PipelineOptions;"
        f"o=dataclasses.replace(PipelineOptions(),**{overrides or {}!r});"
        f"r=b.load(Path({str(models)!r}),{precision!r},1,o);"
        "[r.recognize_bytes(f) for f in fr];print(b.peak_rss_mb())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        return float(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return -1.0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="platewatch bench recognition", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--models", type=Path, default=MODELS_DIR)
    ap.add_argument(
        "--images",
        type=Path,
        default=DEFAULT_IMAGES,
        help="labels.jsonl folder whose images become the benchmark frames",
    )
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument(
        "--passes",
        type=positive_int_arg,
        default=1,
        help="times each frame is recognised in the latency rows (more samples)",
    )
    ap.add_argument(
        "--compare",
        type=compare_flags,
        default=None,
        metavar="FLAGS",
        help="pipeline flags (and --models DIR) of a second configuration, as one string (e.g. "
        "'--reader-precision auto'), timed frame by frame beside the first (latency rows only)",
    )
    ap.add_argument("--threads", default="1,0", help="comma list; 0 = all cores")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--resolutions", default="720p,1080p")
    ap.add_argument("--streams", type=int, default=2, help="concurrent streams for fps")
    ap.add_argument("--stream-seconds", type=float, default=10.0)
    add_pipeline_flags(ap)
    ap.add_argument("--json", type=Path, help="write the results here")
    return ap


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    cv2.setNumThreads(1)
    threads = [int(t) for t in args.threads.split(",") if t]
    precisions = [p for p in args.precisions.split(",") if p]
    resolutions = [r for r in args.resolutions.split(",") if r]
    unknown = [r for r in resolutions if r not in RESOLUTIONS]
    if unknown:
        print(f"platewatch bench: unknown resolution {unknown[0]}", file=sys.stderr)
        return 2
    overrides = pipeline_overrides(args)
    options = dataclasses.replace(PipelineOptions(), **overrides)
    frames = {r: make_frames(args.images, args.frames, *RESOLUTIONS[r]) for r in resolutions}
    if not all(frames.values()):
        print(f"platewatch bench: no readable images in {args.images}", file=sys.stderr)
        return 2
    results: list[dict[str, Any]] = []
    print(
        f"{'res':6} {'thr':>3} {'prec':5} " + " ".join(f"{s:>15}" for s in (*STAGES, "detect+read"))
    )
    compared = (
        dataclasses.replace(PipelineOptions(), **{**overrides, **args.compare.overrides})
        if args.compare is not None
        else None
    )
    try:
        for checked in (options, compared):
            if checked is not None:
                check_options(checked)
    except PipelineOptionError as exc:
        print(f"platewatch bench: {exc}", file=sys.stderr)
        return 2
    compared_models = args.models
    if args.compare is not None and args.compare.models is not None:
        compared_models = args.compare.models
    for precision in precisions:
        for thr in threads:
            recognizers = [load(args.models, precision, thr, options)]
            if compared is not None:
                recognizers.append(load(compared_models, precision, thr, compared))
            for res in resolutions:
                rows = run_latency(recognizers, frames[res], args.warmup, args.passes)
                for row, label in zip(rows, ("base", "compare"), strict=False):
                    row.update(
                        resolution=res,
                        threads=thr or os.cpu_count(),
                        precision=precision,
                        models=list(
                            model_names(
                                compared_models if label == "compare" else args.models, precision
                            )
                        ),
                    )
                    if compared is not None:
                        row["configuration"] = label
                    results.append(row)
                    cells = " ".join(
                        f"{row['stages_ms'][s]['p50']:7.2f}/{row['stages_ms'][s]['p95']:7.2f}"
                        for s in STAGES
                    )
                    both = row["detect_read_ms"]
                    cells += f" {both['p50']:7.2f}/{both['p95']:7.2f}"
                    tag = f" {label}" if compared is not None else ""
                    if "paired_ratio" in row:
                        tag += f" (x{row['paired_ratio']:.3f} of base, median of frames)"
                    print(f"{res:6} {row['threads']:>3} {precision:5} {cells}{tag}")
    streams = run_streams(
        args.models,
        precisions[0],
        frames[resolutions[0]],
        args.streams,
        args.stream_seconds,
        options,
    )
    print(
        f"streams={streams['streams']} {resolutions[0]} {precisions[0]}: "
        f"{streams['fps_total']} frames/s total"
    )
    probes = {
        p: rss_probe(args.models, args.images, min(args.frames, 20), p, overrides)
        for p in precisions
    }
    report = {
        "git_sha": git_sha(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_isa": cpu_isa(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "pipeline_options": pipeline_option_values(options),
        "compared_options": pipeline_option_values(compared) if compared is not None else None,
        "compared_models": str(compared_models) if compared is not None else None,
        "latency": results,
        "throughput": streams,
        "peak_rss_mb_this_process": round(peak_rss_mb(), 1),
        "peak_rss_mb_single_recognizer": {p: round(v, 1) for p, v in probes.items()},
        "note": "p50/p95 in ms per frame; stages: " + ", ".join(STAGES),
    }
    print(
        "peak RSS: one recogniser "
        + ", ".join(f"{p} {v:.0f} MB" for p, v in probes.items())
        + "; this benchmark process "
        f"{report['peak_rss_mb_this_process']:.0f} MB"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
