"""`python -m services.edge.training reader_int8 --models DIR`: the INT8 reader.

NNCF post-training quantisation of `DIR/reader.xml` with real crops of the training split
(the labelled boxes, a fixed random choice), written as `DIR/reader_int8.{xml,bin}`; the
pipeline loads it by default and keeps `reader.json` as its sidecar (docs/models.md, session
14). Held-out crops are never used.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from services.edge.recognition.reader import ReaderSpec, preprocess
from services.edge.training.reader_data import RealItem, exact_crop, load_real_cached

if TYPE_CHECKING:  # imported where used: training a reader needs no OpenVINO (a GPU machine)
    import openvino as ov


def quantize(
    core: ov.Core,
    xml: Path,
    spec: ReaderSpec,
    train: list[RealItem],
    out: Path,
    calibration: int = 300,
    seed: int = 0,
) -> Path:
    """INT8 IR of `xml` at `out`, calibrated on `calibration` crops of `train` drawn with
    `seed` (the same crops, so the same file, on every run)."""
    import nncf  # a [train] dependency

    if any(item.split != "train" for item in train):
        raise ValueError("calibration crops must all come from the training split")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(train), size=min(calibration, len(train)), replace=False)
    calib = [preprocess(exact_crop(train[int(i)]), spec) for i in idx]
    model = core.read_model(str(xml))
    quantized = nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib))
    out.parent.mkdir(parents=True, exist_ok=True)
    import openvino as ov

    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out


def remove_stale_int8(models: Path) -> bool:
    """Remove `models/reader_int8.*` (after a new reader.xml was written there, the INT8 copy
    is of the previous reader and would be loaded instead of the new one); True if any was."""
    stale = [models / "reader_int8.xml", models / "reader_int8.bin"]
    found = any(p.exists() for p in stale)
    for p in stale:
        p.unlink(missing_ok=True)
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m services.edge.training reader_int8")
    ap.add_argument("--models", type=Path, required=True, help="folder with reader.xml/.json")
    ap.add_argument("--work", type=Path, default=Path("work-data/reader"), help="crop cache")
    ap.add_argument("--calibration", type=int, default=300, help="training crops to calibrate")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.calibration < 1:
        ap.error(f"--calibration: want at least 1 crop, got {args.calibration}")
    spec = ReaderSpec.from_file(args.models / "reader.json")
    train = [r for r in load_real_cached(args.work / "real.pkl") if r.split == "train"]
    if not train:
        ap.error(f"no training-split crops in {args.work / 'real.pkl'}")
    import openvino as ov

    out = quantize(
        ov.Core(),
        args.models / "reader.xml",
        spec,
        train,
        args.models / "reader_int8.xml",
        args.calibration,
        args.seed,
    )
    used = min(args.calibration, len(train))
    print(f"wrote {out} ({used} training crops, seed {args.seed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
