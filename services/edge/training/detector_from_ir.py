"""Recover trainable detector weights from a committed OpenVINO IR, to fine-tune the shipped
detector when its torch checkpoint is gone.

    python -m services.edge.training.detector_from_ir services/edge/models/detector.xml OUT.pt

How: services/edge/training/ir_import.py, with BatchNorm statistics from 48 letterboxed
train-split scenes. The export also folded the input scaling of `PlateDetector.forward`
((x - 0.45) * 4) into the first convolution, so its weight is divided by 4 again. The result is
checked against the IR and not saved when it differs.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch

from services.edge.recognition.detector import letterbox, to_input
from services.edge.training.detector_train import DATA, SIZE, PlateDetector, load_scenes
from services.edge.training.ir_import import import_folded, save_if_faithful

INPUT_GAIN = 4.0  # PlateDetector.forward multiplies its input by this before the stem


def scene_batch(n: int, seed: int, root: Path = DATA) -> torch.Tensor:
    scenes = load_scenes("train", None, root)
    picks = random.Random(seed).sample(range(len(scenes)), min(n, len(scenes)))
    inputs = [to_input(letterbox(scenes[i].image, SIZE, SIZE)[0]) for i in picks]
    return torch.from_numpy(np.concatenate(inputs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("xml", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    batch = scene_batch(args.batch, args.seed, args.data)
    model = import_folded(
        PlateDetector(), args.xml, batch, lambda i: 1.0 / INPUT_GAIN if i == 0 else 1.0
    )
    inputs = list(batch[:8])
    return save_if_faithful(model, args.xml, inputs, args.out, tolerance=1e-2, outputs=(0, 1))


if __name__ == "__main__":
    raise SystemExit(main())
