"""Train the plate reader (CTC) on real train-split crops + synthetic plates, export OpenVINO IR.

    python -m services.edge.training.reader_train --out services/edge/models

CPU only, one thread, fixed seed. The loop runs for at most --steps steps and --max-minutes
minutes (default 70); the cosine LR schedule follows whichever of the two is further along, so a
busy machine still finishes annealing. With --max-minutes 0 the schedule depends only on the step
count and a rerun reproduces the model up to floating-point non-determinism; the step count and
seconds of the shipped run are in the sidecar's "training" field. `--pseudo-labels FILE` adds the
teacher-read train-split boxes from reader_pseudo as extra real crops. Writes reader.onnx and
reader.pt (work dir), reader.xml/.bin (FP32 IR) and the sidecar reader.json to --out.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
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
    load_pseudo,
    load_real_cached,
    resize_bank,
    synth_bank,
)
from services.edge.training.reader_model import (
    DEFAULT_CHANNELS,
    PlateReaderNet,
    channels_of,
    conv_widths,
    count_macs,
    count_params,
    widen_from,
)
from services.edge.training.reader_quantize import remove_stale_int8

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


Rows = tuple[list[int], list[int]] | None  # (top-row, bottom-row) labels, None: not known
Batch = tuple[torch.Tensor, list[Rows], list[list[int]]]  # images, per-row labels, full labels


def synth_rows(seed: int, texts: list[str]) -> list[Rows]:
    """Per-row labels of the synthetic bank: one-line plates on row 0, two-line plates split
    into top line (row 0) and bottom line (row 1), from each sample's format."""
    from services.edge.training.synth import PlateSynth

    synth = PlateSynth(seed=seed)
    out: list[Rows] = []
    for i, text in enumerate(texts):
        fmt = synth.format_of(i)
        enc = encode_text(text, SPEC)
        if len(fmt.lines) == 1:
            out.append((enc, []))
        else:
            top = sum(c.isalnum() for c in fmt.lines[0])
            out.append((enc[:top], enc[top:]))
    return out


def make_batch(
    real: list[RealItem],
    real_weights: np.ndarray,
    synth_x: np.ndarray,
    synth_rows_: list[Rows],
    synth_weights: np.ndarray,
    batch: int,
    real_frac: float,
    rng: np.random.Generator,
    loose_p: float = 0.0,
    tiny_p: float = 0.0,
    far_p: float = 0.0,
) -> Batch:
    """Images, per-row labels (None where the line split is unknown) and full labels."""
    xs: list[np.ndarray] = []
    rows: list[Rows] = []
    full: list[list[int]] = []
    n_real = round(batch * real_frac)
    idx = rng.choice(len(real), size=n_real, p=real_weights)
    for i in idx:
        item = real[int(i)]
        xs.append(preprocess(augment_real(item, rng, loose_p, tiny_p, far_p), SPEC)[0])
        enc = encode_text(item.text, SPEC)
        rows.append((enc, []) if item.lines == 1 else None)
        full.append(enc)
    sidx = rng.choice(len(synth_rows_), size=batch - n_real, p=synth_weights)
    for i in sidx:
        xs.append(synth_x[int(i)].astype(np.float32))
        r = synth_rows_[int(i)]
        rows.append(r)
        full.append(r[0] + r[1] if r is not None else [])
    return torch.from_numpy(np.stack(xs)), rows, full


def ctc_loss(logits: torch.Tensor, rows: list[Rows], full: list[list[int]]) -> torch.Tensor:
    """CTC loss per label character. Items with a known line split are supervised per feature
    row (row 0: top line or the only line; row 1: bottom line or nothing); real two-line plates,
    whose split is unknown, are supervised on the joined 64-step sequence."""
    ctc = nn.CTCLoss(blank=SPEC.blank_index, reduction="sum", zero_infinity=True)
    logp = logits.float().log_softmax(2)  # N, T, K
    dev = logp.device
    _, t, _ = logp.shape
    half = t // 2
    total = logp.new_zeros(())
    known = [i for i, r in enumerate(rows) if r is not None]
    unknown = [i for i, r in enumerate(rows) if r is None]
    for row, (lo, hi) in enumerate(((0, half), (half, t))):
        if not known:
            break
        labels = [rows[i][row] for i in known]  # type: ignore[index]
        total = total + ctc(
            logp[known, lo:hi].transpose(0, 1),
            torch.tensor([c for lab in labels for c in lab], dtype=torch.long, device=dev),
            torch.full((len(known),), hi - lo, dtype=torch.long, device=dev),
            torch.tensor([len(lab) for lab in labels], dtype=torch.long, device=dev),
        )
    if unknown:
        labels = [full[i] for i in unknown]
        total = total + ctc(
            logp[unknown].transpose(0, 1),
            torch.tensor([c for lab in labels for c in lab], dtype=torch.long, device=dev),
            torch.full((len(unknown),), t, dtype=torch.long, device=dev),
            torch.tensor([len(lab) for lab in labels], dtype=torch.long, device=dev),
        )
    return total / max(1, sum(len(f) for f in full))


class BatchSource(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """Endless training batches from `draw(rng=...)` (`make_batch` with all but its generator
    bound). In the training process it draws from the run's own generator (`stream`); in
    DataLoader workers each worker draws from (seed, worker id)."""

    def __init__(self, draw: Callable[..., Batch], seed: int) -> None:
        super().__init__()
        self.draw = draw
        self.seed = seed

    def stream(self, rng: np.random.Generator) -> Iterator[Batch]:
        while True:
            yield self.draw(rng=rng)

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        return self.stream(np.random.default_rng([self.seed, 1 + worker]))


def _as_is(item: object) -> object:
    """The DataLoader's conversion step: batches come ready-made."""
    return item


def train(args: argparse.Namespace) -> nn.Module:
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    work = Path(args.work)
    real_all = load_real_cached(Path(args.real) if args.real else work / "real.pkl")
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
    for name, weight in args.dataset_weights.items():
        if name not in ds_weight:
            raise SystemExit(
                f"--dataset-weights: unknown dataset {name!r}; one of {sorted(ds_weight)}"
            )
        ds_weight[name] = weight
    w_list = [ds_weight[r.dataset] * (3.0 if r.lines == 2 else 1.0) for r in real]
    if args.pseudo_labels:
        # teacher-read train-split boxes without human text (reader_pseudo), as extra real crops
        pseudo = load_pseudo(Path(args.pseudo_labels))
        real = real + pseudo
        w_list += [ds_weight[r.dataset] * args.pseudo_weight for r in pseudo]
        args.pseudo_items = len(pseudo)
    w = np.array(w_list)
    w /= w.sum()
    log.info("train real", extra={"n": len(real), "two_line": sum(r.lines == 2 for r in real)})
    # the cache is keyed by seed too: synth_rows below recomputes the line split from the seed
    cache = work / f"synth_{args.synth}_seed{args.seed}.pkl"
    synth_x, synth_t = synth_bank(SPEC, args.synth, args.seed, cache, max(1, args.workers))
    if synth_x.shape[2:] != (SPEC.input_height, SPEC.input_width):
        synth_x = resize_bank(synth_x, SPEC)

    rows_bank = synth_rows(args.seed, synth_t)
    sw = np.array([1.0 if r is not None and not r[1] else args.two_line_weight for r in rows_bank])
    sw /= sw.sum()

    model = PlateReaderNet(SPEC.num_classes, channels=args.channels)
    if args.init:
        model.load_state_dict(torch.load(args.init, map_location="cpu"))
        log.info("initialised", extra={"from": args.init})
    elif args.widen_from:
        state = torch.load(args.widen_from, map_location="cpu")
        narrow = PlateReaderNet(SPEC.num_classes, channels=channels_of(state))
        narrow.load_state_dict(state)
        widen_from(narrow, model, seed=args.seed)
        log.info("widened", extra={"from": args.widen_from, "channels": args.channels})
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    log.info("model", extra={"params": count_params(model)})
    warm = args.warmup

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

    draw = functools.partial(
        make_batch, real=real, real_weights=w, synth_x=synth_x, synth_rows_=rows_bank,
        synth_weights=sw, batch=args.batch, real_frac=args.real_frac, loose_p=args.loose_p,
        tiny_p=args.tiny_p, far_p=args.far_p,
    )  # fmt: skip
    source = BatchSource(draw, args.seed)
    if args.workers > 0:
        # built in worker processes (a GPU machine's cores), each with its own random stream:
        # the batches differ from those of --workers 0, the one-process default
        loader = torch.utils.data.DataLoader(
            source,
            batch_size=None,
            num_workers=args.workers,
            collate_fn=_as_is,
            prefetch_factor=4,
            persistent_workers=True,
        )
        batches = iter(loader)
    else:
        batches = source.stream(rng)
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
        x, rows, full = next(batches)
        loss = ctc_loss(model(x.to(device, non_blocking=True)), rows, full)
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
    model.to("cpu")  # exported and saved from the CPU
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
    if remove_stale_int8(out):  # quantised from the previous reader
        print(
            f"removed {out}/reader_int8.* (made from the previous reader): the pipeline loads "
            f"reader.xml until `python -m services.edge.training reader_int8 --models {out}`",
            flush=True,
        )


def _channels(text: str) -> tuple[int, int, int, int, int]:
    parts = tuple(int(v) for v in text.split(","))
    if len(parts) != 5 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"five positive widths expected, got {text!r}")
    return parts  # type: ignore[return-value]


def _weights(text: str) -> dict[str, float]:
    """'a=2,b=0.5' -> {'a': 2.0, 'b': 0.5}."""
    out: dict[str, float] = {}
    for part in filter(None, text.split(",")):
        name, sep, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or weight < 0:
            raise argparse.ArgumentTypeError(f"want NAME=WEIGHT,... (weights >= 0), got {part!r}")
        out[name.strip()] = weight
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="services/edge/models")
    ap.add_argument("--work", default="work-data/reader")
    ap.add_argument("--steps", type=int, default=28000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--real-frac", type=float, default=0.5)
    ap.add_argument("--synth", type=int, default=40000)
    ap.add_argument("--seed", type=int, default=20261125)
    start = ap.add_mutually_exclusive_group()
    start.add_argument("--init", default="", help="start from these weights (fine-tuning)")
    ap.add_argument(
        "--two-line-weight", type=float, default=2.0, help="synthetic 2-line oversampling"
    )
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument(
        "--channels",
        type=_channels,
        default=DEFAULT_CHANNELS,
        help="the five stage widths, comma-separated (default 16,32,48,64,96)",
    )
    start.add_argument(
        "--widen-from",
        default="",
        help="start from these weights (any narrower widths), widened to --channels "
        "(function kept)",
    )
    ap.add_argument(
        "--loose-p",
        type=float,
        default=0.25,
        help="share of real crops cut from a loose box (plate with its frame; reader 1.3.0)",
    )
    ap.add_argument(
        "--tiny-p",
        type=float,
        default=0.0,
        help="share of real crops shrunk until the plate is 35-75 px wide, then stretched back "
        "(far plates of 1280 px frames; reader 1.5.0)",
    )
    ap.add_argument(
        "--far-p",
        type=float,
        default=0.0,
        help="share of real crops shrunk until the plate is 35-90 px wide and blurred, noised "
        "and JPEG-compressed at that size, then stretched back (a far camera; session 13)",
    )
    ap.add_argument(
        "--pseudo-labels",
        default="",
        help="JSON lines from reader_pseudo: teacher-read train boxes added as real crops",
    )
    ap.add_argument(
        "--pseudo-weight",
        type=float,
        default=1.0,
        help="sampling weight of a pseudo-labelled crop, relative to its dataset's weight",
    )
    ap.add_argument(
        "--max-minutes",
        type=float,
        default=70.0,
        help="time budget for the training loop; the LR schedule anneals by time or steps, "
        "whichever is further (0: steps only, so the schedule does not depend on machine speed)",
    )
    ap.add_argument(
        "--dataset-weights",
        type=_weights,
        default={},
        help="override sampling weights of real datasets, e.g. 'us_openalpr_benchmarks_seg_ocr=2'",
    )
    ap.add_argument("--version", default="1.0.0")
    ap.add_argument(
        "--real",
        default="",
        help="the real crops: a crop pack (reader_data pack, *.jpgpack) or a decoded cache; "
        "default WORK/real.pkl, built from ../shared/data when missing",
    )
    ap.add_argument(
        "--no-export",
        action="store_true",
        help="save WORK/reader.pt only (no OpenVINO needed); export it later with "
        "`--init WORK/reader.pt --steps 0`",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=0,
        help="build batches in this many worker processes (a GPU machine; their random "
        "streams differ from the default's); 0: in the training process, reproducible",
    )
    ap.add_argument(
        "--device",
        default="cpu",
        help="torch device for the training steps, e.g. cuda on a GPU machine (batches are "
        "still built on the CPU; the model is exported from the CPU). Default cpu: one thread.",
    )
    args = ap.parse_args(argv)
    for flag in ("tiny_p", "far_p"):
        value = getattr(args, flag)
        if not 0.0 <= value <= 1.0:  # also refuses nan
            ap.error(f"--{flag.replace('_', '-')} must be in [0, 1], got {value}")
    logging.basicConfig(level=logging.INFO)
    model = train(args)
    torch.save(model.state_dict(), Path(args.work) / "reader.pt")
    shape = (1, SPEC.channels, SPEC.input_height, SPEC.input_width)
    meta: dict[str, object] = {
        "version": args.version,
        "trained": datetime.now(UTC).date().isoformat(),
        "architecture": "PlateReaderNet: 7 conv3x3+BN+ReLU ({}-{}-{}-{}-{}-{}-{}), "
        "2 rows x 32 steps, CTC".format(*conv_widths(args.channels)),
        "params": count_params(model),
        "macs": count_macs(model, shape),
        "precision": "FP32",
        "training": {k: v for k, v in vars(args).items() if k not in ("out", "work")},
    }
    if args.no_export:  # e.g. on a GPU machine without OpenVINO: export here later
        print(json.dumps({"saved": str(Path(args.work) / "reader.pt")}), flush=True)
        return 0
    export(model, Path(args.out), Path(args.work), meta)
    print(json.dumps({"exported": str(Path(args.out) / "reader.xml")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
