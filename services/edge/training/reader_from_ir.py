"""Recover trainable reader weights from a committed OpenVINO IR, to fine-tune a shipped reader
when its torch checkpoint is gone.

    python -m services.edge.training.reader_from_ir services/edge/models/reader.xml OUT.pt

How: services/edge/training/ir_import.py (BatchNorm statistics from 256 train-split crops).
The result is checked against the IR and not saved when it differs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from services.edge.training.ir_import import import_folded, ir_convolutions, save_if_faithful
from services.edge.training.reader_model import PlateReaderNet, stage_channels


def crop_batch(n: int, seed: int, cache: Path) -> torch.Tensor:
    """Preprocessed real train-split plate crops (the statistics batch)."""
    from services.edge.recognition.reader import preprocess
    from services.edge.training.reader_data import exact_crop, load_real_cached
    from services.edge.training.reader_train import SPEC

    rng = np.random.default_rng(seed)
    real = [r for r in load_real_cached(cache) if r.split == "train"]
    picks = rng.choice(len(real), size=min(n, len(real)), replace=False)
    crops = [preprocess(exact_crop(real[i]), SPEC) for i in picks]
    return torch.from_numpy(np.concatenate(crops))


def ir_channels(xml: Path) -> tuple[int, int, int, int, int]:
    """The five stage widths of the PlateReaderNet an IR was exported from (1.4.0 is wider
    than the default), read from its convolutions' output channels (the last is the head)."""
    widths = [w.shape[0] for w, _ in ir_convolutions(xml)]
    try:
        return stage_channels(widths[:-1])
    except ValueError as exc:
        raise ValueError(f"{xml}: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("xml", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--work", type=Path, default=Path("work-data/reader"), help="cache folder")
    args = ap.parse_args(argv)
    from services.edge.training.reader_train import SPEC

    batch = crop_batch(args.batch, args.seed, args.work / "real.pkl")
    net = PlateReaderNet(SPEC.num_classes, channels=ir_channels(args.xml))
    model = import_folded(net, args.xml, batch)
    return save_if_faithful(model, args.xml, list(batch[:16]), args.out, tolerance=1e-3)


if __name__ == "__main__":
    raise SystemExit(main())
