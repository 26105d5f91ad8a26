"""Train the plate reader (CTC) on real train-split crops + synthetic plates, export OpenVINO IR.

    python -m services.edge.training.reader_train --out services/edge/models

CPU only, one thread, fixed seed. The loop runs for at most --steps steps and --max-minutes
minutes (default 35); the cosine LR schedule follows whichever of the two is further along, so a
busy machine still finishes annealing. With --max-minutes 0 the schedule depends only on the step
count and a rerun reproduces the model up to floating-point non-determinism; the step count and
seconds of the shipped run are in the sidecar's "training" field. Writes reader.onnx and
reader.pt (work dir), reader.xml/.bin (FP32 IR) and the sidecar reader.json to --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.edge.recognition.reader import ReaderSpec, preprocess
from services.edge.training.reader_data import (
    RealItem,
    augment_real,
    encode_text,
    load_real_cached,
    resize_bank,
    synth_bank,
)
from services.edge.training.reader_model import PlateReaderNet, count_macs, count_params

log = logging.getLogger(__name__)

CHARSET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SPEC_DICT: dict[str, object] = {
    "schema_version": 1,
    "input": {
        "height": 32,
        "width": 128,
        "channels": 1,
        "mean": 0.5,
        "std": 0.25,
        "layout": "NCHW",
        "colour": "grey from BGR",
        "resize": "stretch",
    },
    "charset": CHARSET,
    "blank_index": 0,
    "sequence_rows": 2,
    "output": {"name": "logits", "shape": [1, 64, len(CHARSET) + 1], "kind": "logits"},
    "two_line_rule": (
        "no crop split: the network keeps two feature rows (top/bottom half of the crop) and "
        "emits row 0 then row 1 as one 64-step CTC sequence, so two-line plates read top line "
        "first"
    ),
}
SPEC = ReaderSpec.from_dict(SPEC_DICT)  # type: ignore[arg-type]


def make_batch(
    real: list[RealItem],
    real_weights: np.ndarray,
    synth_x: np.ndarray,
    synth_t: list[str],
    batch: int,
    real_frac: float,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xs: list[np.ndarray] = []
    targets: list[int] = []
    lengths: list[int] = []
    n_real = round(batch * real_frac)
    idx = rng.choice(len(real), size=n_real, p=real_weights)
    for i in idx:
        item = real[int(i)]
        xs.append(preprocess(augment_real(item, rng), SPEC)[0])
        enc = encode_text(item.text, SPEC)
        targets += enc
        lengths.append(len(enc))
    sidx = rng.integers(0, len(synth_t), size=batch - n_real)
    for i in sidx:
        xs.append(synth_x[int(i)].astype(np.float32))
        enc = encode_text(synth_t[int(i)], SPEC)
        targets += enc
        lengths.append(len(enc))
    return (
        torch.from_numpy(np.stack(xs)),
        torch.tensor(targets, dtype=torch.long),
        torch.tensor(lengths, dtype=torch.long),
    )


def train(args: argparse.Namespace) -> nn.Module:
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    work = Path(args.work)
    real_all = load_real_cached(work / "real.pkl")
    real = [r for r in real_all if r.split == "train"]
    # weight datasets so that small/rare sets (two-line, scenes) are seen often enough
    ds_weight = {
        "us_openalpr_benchmarks_seg_ocr": 1.0,
        "br_openalpr_train_detector": 0.6,
        "eu_openalpr_train_detector": 1.0,
        "cn_lprnet_sirius_test": 0.3,
        "ro-dashcam": 0.5,
        "web-cars": 2.0,
        "in-cars": 2.0,
    }
    w = np.array([ds_weight[r.dataset] * (3.0 if r.lines == 2 else 1.0) for r in real])
    w /= w.sum()
    log.info("train real", extra={"n": len(real), "two_line": sum(r.lines == 2 for r in real)})
    synth_x, synth_t = synth_bank(SPEC, args.synth, args.seed, work / f"synth_{args.synth}.pkl")
    if synth_x.shape[2:] != (SPEC.input_height, SPEC.input_width):
        synth_x = resize_bank(synth_x, SPEC)

    model = PlateReaderNet(SPEC.num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    log.info("model", extra={"params": count_params(model)})
    ctc = nn.CTCLoss(blank=SPEC.blank_index, zero_infinity=True)
    warm = 100

    budget_s = args.max_minutes * 60

    def progress(step: int, elapsed: float) -> float:
        """Fraction of training done: by steps, or by time when a time budget is set (so that
        the cosine schedule still anneals on a busy machine)."""
        p = (step - warm) / max(1, args.steps - warm)
        if budget_s > 0:
            p = max(p, elapsed / budget_s)
        return min(1.0, p)

    def lr_at(step: int, elapsed: float = 0.0) -> float:
        if step < warm:
            return args.lr * (step + 1) / warm
        p = progress(step, elapsed)
        return args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p)))

    model.train()
    t0 = time.time()
    running = 0.0
    steps_done = 0
    for step in range(args.steps):
        elapsed = time.time() - t0
        if budget_s > 0 and elapsed > budget_s:
            print(json.dumps({"stopped_at_step": step, "reason": "max_minutes"}), flush=True)
            break
        lr = lr_at(step, elapsed)
        for g in opt.param_groups:
            g["lr"] = lr
        x, tgt, lens = make_batch(real, w, synth_x, synth_t, args.batch, args.real_frac, rng)
        logits = model(x)  # N, T, K
        logp = logits.log_softmax(2).transpose(0, 1)  # T, N, K
        in_lens = torch.full((x.shape[0],), logp.shape[0], dtype=torch.long)
        loss = ctc(logp, tgt, in_lens, lens)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 50 == 0 or step == args.steps - 1:
            print(
                json.dumps(
                    {
                        "step": step,
                        "loss": round(running, 4),
                        "lr": round(lr, 6),
                        "elapsed_s": round(time.time() - t0, 1),
                    }
                ),
                flush=True,
            )
        steps_done = step + 1
    model.eval()
    args.steps_done = steps_done
    args.train_seconds = round(time.time() - t0, 1)
    return model


def export(model: nn.Module, out: Path, work: Path, meta: dict[str, object]) -> None:
    import openvino as ov

    out.mkdir(parents=True, exist_ok=True)
    onnx_path = work / "reader.onnx"
    dummy = torch.zeros(1, SPEC.channels, SPEC.input_height, SPEC.input_width)
    torch.onnx.export(
        model,
        (dummy,),
        str(onnx_path),
        input_names=["input"],
        output_names=["logits"],
        opset_version=17,
        dynamo=False,
    )
    ov_model = ov.convert_model(str(onnx_path))
    ov.save_model(ov_model, str(out / "reader.xml"), compress_to_fp16=False)
    sidecar = dict(SPEC_DICT)
    sidecar.update(meta)
    (out / "reader.json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="services/edge/models")
    ap.add_argument("--work", default="work-data/reader")
    ap.add_argument("--steps", type=int, default=9000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--real-frac", type=float, default=0.5)
    ap.add_argument("--synth", type=int, default=40000)
    ap.add_argument("--seed", type=int, default=20261125)
    ap.add_argument(
        "--max-minutes",
        type=float,
        default=35.0,
        help="time budget for the training loop; the LR schedule anneals by time or steps, "
        "whichever is further (0: steps only, so the schedule does not depend on machine speed)",
    )
    ap.add_argument("--version", default="1.0.0")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    model = train(args)
    torch.save(model.state_dict(), Path(args.work) / "reader.pt")
    shape = (1, SPEC.channels, SPEC.input_height, SPEC.input_width)
    meta: dict[str, object] = {
        "version": args.version,
        "trained": datetime.now(UTC).date().isoformat(),
        "architecture": "PlateReaderNet: 7 conv3x3+BN+ReLU (16-32-48-48-64-96-96), "
        "2 rows x 32 steps, CTC",
        "params": count_params(model),
        "macs": count_macs(model, shape),
        "precision": "FP32",
        "training": {k: v for k, v in vars(args).items() if k not in ("out", "work")},
    }
    export(model, Path(args.out), Path(args.work), meta)
    print(json.dumps({"exported": str(Path(args.out) / "reader.xml")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
