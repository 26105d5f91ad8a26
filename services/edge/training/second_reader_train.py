"""Fine-tune PP-OCRv4's text recogniser into a plate reader (the second-opinion reader 2.x).

    python -m services.edge.training.second_reader_train --out work-data/second-reader

The generic recogniser (`second_reader_import`: rapidocr-openvino's ONNX file, pinned by
SHA-256) reads 6,625 classes of Chinese and Latin text. Here it becomes a plate reader:

1. The ONNX graph is converted to torch with onnx2torch (its weights are Constant nodes; they
   become initializers first, and the shapes onnx's inference leaves empty before a
   BatchNormalization are given their rank).
2. The classifier (features (N, T, 120) -> 6,625 classes, then softmax) is cut off and
   replaced by a 37-class head (CTC blank + 0-9A-Z) initialised from the matching rows of the
   old one, so the first step already reads plates as the generic model does.
3. Fine-tuned with CTC on the train split of the real one-line crops (`reader_data`; two-line
   plates cannot be read by one horizontal CTC sequence and are left out), the teacher
   pseudo-labels of reader 1.4.x, and one-line synthetic plates (`synth.PlateSynth`), all
   jittered like detector boxes (`augment_real`). Input: a fixed 48 x 224 canvas (height 48,
   aspect kept, padded right; wider plates squeezed), the runtime's `second_reader.preprocess`.
   BatchNorm statistics stay frozen (the network runs in eval mode; gradients still flow).
4. Exported (softmax output, fixed input 1x3x48x224) to ONNX and OpenVINO IR with FP16 weights,
   checked against torch, plus the sidecar `second_reader.json` that
   `second_reader.SecondReaderSpec` reads.

CPU only, fixed seed; the defaults are the 2.0.0 run that `make train` repeats (its `all`
recipe passes the same values).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from services.edge.recognition.second_reader import SecondReaderSpec, decode, preprocess
from services.edge.training.reader_data import (
    RealItem,
    augment_real,
    load_pseudo,
    load_real_cached,
)

log = logging.getLogger(__name__)

CHARSET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
HEIGHT, WIDTH = 48, 224
FEATURES = 120  # width of PP-OCRv4 rec's sequence features (its classifier's input)
HEAD_MATMUL, HEAD_ADD = "p2o/MatMul/24", "p2o/Add/276"  # the classifier in the converted graph


def _onnx2torch() -> Any:
    """onnx2torch, imported without torchvision: it imports torchvision only for its NMS and
    RoIAlign converters, which this graph does not use, and the torchvision wheels on the
    registry are not built for the CPU torch (`pip install torch==2.13.0`)."""
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError, OSError):
        stub = types.ModuleType("torchvision")
        ops = types.ModuleType("torchvision.ops")

        def missing(*_: object, **__: object) -> None:
            raise NotImplementedError("torchvision is not installed")

        ops.nms = ops.roi_align = missing  # type: ignore[attr-defined]
        stub.ops = ops  # type: ignore[attr-defined]
        sys.modules["torchvision"] = stub
        sys.modules["torchvision.ops"] = ops
    import onnx2torch

    return onnx2torch


def source_onnx() -> tuple[Any, Path, str]:
    """The pinned PP-OCRv4 recogniser, prepared for onnx2torch; its path and SHA-256."""
    import onnx

    from services.edge.training.second_reader_import import ONNX_NAME, ONNX_SHA256, package_dir

    path = package_dir() / ONNX_NAME
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    if sha != ONNX_SHA256:
        raise ValueError(f"{path}: SHA-256 {sha}, expected {ONNX_SHA256}")
    model = onnx.load(str(path))
    kept = []
    for node in model.graph.node:  # weights are Constant nodes: make them initializers
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    for dim, value in zip(
        model.graph.input[0].type.tensor_type.shape.dim, (1, 3, HEIGHT, WIDTH), strict=True
    ):
        dim.ClearField("dim_param")
        dim.dim_value = value
    model = onnx.shape_inference.infer_shapes(model)
    info = {v.name: v for v in model.graph.value_info}
    for node in model.graph.node:  # onnx2torch picks BatchNorm's class from the input's rank
        if node.op_type == "BatchNormalization" and node.input[0] in info:
            shape = info[node.input[0]].type.tensor_type.shape
            if not shape.dim:
                for _ in range(4):
                    shape.dim.add()
    return model, path, sha


class PlateOCR(nn.Module):
    """PP-OCRv4's recogniser body + a plate-character head. forward -> logits (N, T, classes)."""

    def __init__(self, body: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class WithSoftmax(nn.Module):
    def __init__(self, net: PlateOCR) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=-1)


def class_rows(keys: list[str]) -> list[int]:
    """Rows of the generic classifier that start the plate head: blank, then each character of
    CHARSET (rapidocr's table is blank, the keys file's lines, then a space)."""
    table = ["", *keys, " "]
    return [0, *(table.index(c) for c in CHARSET)]


def build(keys: list[str]) -> PlateOCR:
    """The converted generic model with its classifier replaced (same function on plate chars)."""
    import torch.fx as fx

    model, _, _ = source_onnx()
    graph_module: fx.GraphModule = _onnx2torch().convert(model)
    nodes = {n.target: n for n in graph_module.graph.nodes if n.op == "call_module"}
    matmul, add = nodes[HEAD_MATMUL], nodes[HEAD_ADD]
    weight = graph_module.get_buffer(str(matmul.args[1].target))  # (120, 6625)
    bias = graph_module.get_buffer(str(add.args[1].target))
    graph = graph_module.graph
    output = next(n for n in graph.nodes if n.op == "output")
    output.args = (matmul.args[0],)
    graph.eliminate_dead_code()
    graph_module.recompile()
    graph_module.delete_all_unused_submodules()
    rows = class_rows(keys)
    head = nn.Linear(FEATURES, len(rows))
    with torch.no_grad():
        head.weight.copy_(weight[:, rows].T)
        head.bias.copy_(bias[rows])
    return PlateOCR(graph_module, head)


def spec_dict(meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "name": "plate reader fine-tuned from PP-OCRv4's text recogniser",
        "role": "second-opinion reader of unsure plates (recognition/second_reader.py)",
        "input": {
            "height": HEIGHT,
            "min_width": WIDTH,
            "max_width": WIDTH,
            "mean": 0.5,
            "std": 0.5,
            "layout": "NCHW",
            "colour": "BGR",
        },
        "num_classes": len(CHARSET) + 1,
        "blank_index": 0,
        "chars": {str(i + 1): c for i, c in enumerate(CHARSET)},
        "separators": [],
        **meta,
    }


SPEC = SecondReaderSpec.from_dict(spec_dict({}))


def _encode(text: str) -> list[int]:
    return [CHARSET.index(c) + 1 for c in text]


class Batches:
    """Training batches: real one-line crops (with pseudo-labels) and one-line synthetic plates."""

    def __init__(
        self, real: list[RealItem], synth_seed: int, real_frac: float, loose_p: float, seed: int
    ) -> None:
        from services.edge.training.synth import PlateSynth

        self.real = [r for r in real if r.lines == 1 and all(c in CHARSET for c in r.text)]
        if real_frac > 0 and not self.real:
            raise ValueError(
                "second reader training: no one-line real plates with text (is the data folder "
                "reader_data.DATA_ROOT there?); or pass --real-frac 0"
            )
        self.synth = PlateSynth(seed=synth_seed)
        self.real_frac = real_frac
        self.loose_p = loose_p
        self.rng = np.random.default_rng(seed)
        self.synth_index = 0

    def _synthetic(self) -> tuple[np.ndarray, str]:
        while True:
            sample = self.synth.sample(self.synth_index)
            self.synth_index += 1
            if sample.lines == 1 and sample.text and all(c in CHARSET for c in sample.text):
                return sample.image, sample.text

    def __call__(self, size: int) -> tuple[torch.Tensor, list[list[int]]]:
        xs, labels = [], []
        n_real = round(size * self.real_frac)
        for i in range(size):
            if i < n_real:
                item = self.real[int(self.rng.integers(len(self.real)))]
                image, text = augment_real(item, self.rng, self.loose_p), item.text
            else:
                image, text = self._synthetic()
            xs.append(preprocess(image, SPEC)[0])
            labels.append(_encode(text))
        return torch.from_numpy(np.stack(xs)), labels


def ctc_loss(logits: torch.Tensor, labels: list[list[int]]) -> torch.Tensor:
    log_probs = logits.log_softmax(-1).transpose(0, 1)  # (T, N, C)
    t, n = log_probs.shape[:2]
    targets = torch.tensor([c for lab in labels for c in lab], dtype=torch.long)
    lengths = torch.tensor([len(lab) for lab in labels], dtype=torch.long)
    return nn.functional.ctc_loss(
        log_probs,
        targets,
        torch.full((n,), t, dtype=torch.long),
        lengths,
        blank=0,
        reduction="mean",
        zero_infinity=True,
    )


def train(args: argparse.Namespace, keys: list[str]) -> tuple[PlateOCR, dict[str, Any]]:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model = build(keys)
    earlier: dict[str, Any] = {}
    if args.init:
        saved = torch.load(args.init, map_location="cpu", weights_only=True)
        earlier = dict(saved.get("facts", {})) if "state" in saved else {}
        model.load_state_dict(saved.get("state", saved))
    model.eval()  # frozen BatchNorm statistics; gradients still flow
    if args.steps == 0:  # export only
        return model, earlier
    real = load_real_cached(Path(args.work) / "real.pkl")
    train_items = [r for r in real if r.split == "train"]
    if args.pseudo_labels:
        train_items += load_pseudo(Path(args.pseudo_labels))
    batches = Batches(train_items, args.synth_seed, args.real_frac, args.loose_p, args.seed)
    log.info("second reader training data", extra={"real_one_line": len(batches.real)})
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    start = time.monotonic()
    smoothed = None
    step = 0
    for step in range(1, args.steps + 1):
        elapsed = time.monotonic() - start
        if args.max_minutes and elapsed > args.max_minutes * 60:
            step -= 1
            break
        progress = max(
            step / args.steps, elapsed / (args.max_minutes * 60) if args.max_minutes else 0
        )
        warm = min(1.0, step / max(1, args.warmup))
        lr = args.lr * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        for group in opt.param_groups:
            group["lr"] = lr
        x, labels = batches(args.batch)
        loss = ctc_loss(model(x), labels)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        value = float(loss.detach())
        smoothed = value if smoothed is None else 0.95 * smoothed + 0.05 * value
        if step % 25 == 0 or step == 1:
            print(
                json.dumps(
                    {
                        "step": step,
                        "loss": round(smoothed, 4),
                        "lr": round(lr, 6),
                        "s": round(time.monotonic() - start, 1),
                    }
                ),
                flush=True,
            )
    facts = {
        "steps": step,
        "seconds": round(time.monotonic() - start),
        "batch": args.batch,
        "lr": args.lr,
        "seed": args.seed,
        "synth_seed": args.synth_seed,
        "real_frac": args.real_frac,
        "loose_p": args.loose_p,
        "threads": args.threads,
        "pseudo_labels": args.pseudo_labels,
        "real_one_line_train_plates": len(batches.real),
        "final_smoothed_loss": round(smoothed or 0.0, 4),
    }
    if args.init:
        facts["init"] = {"file": args.init, **earlier}
    return model, facts


def export(model: PlateOCR, out: Path, meta: dict[str, Any], fp16: bool) -> float:
    """ONNX -> OpenVINO IR (FP16 or FP32 weights) + sidecar, checked against torch on the
    16 synthetic plates: class probabilities within 0.2 (FP16) or 0.001 (FP32) at every step,
    and the same text wherever torch is at least 0.9 sure. Returns the largest difference."""
    import openvino as ov

    from services.edge.recognition.runtime import RuntimeOptions
    from services.edge.training.synth import PlateSynth

    out.mkdir(parents=True, exist_ok=True)
    wrapped = WithSoftmax(model).eval()
    onnx_path = out / "second_reader.onnx"
    example = torch.zeros(1, 3, HEIGHT, WIDTH)
    torch.onnx.export(
        wrapped,
        (example,),
        str(onnx_path),
        input_names=["x"],
        output_names=["probs"],
        opset_version=17,
        dynamo=False,
    )
    core = ov.Core()
    xml = out / "second_reader.xml"
    ov.save_model(core.read_model(str(onnx_path)), str(xml), compress_to_fp16=fp16)
    onnx_path.unlink()
    (out / "second_reader.json").write_text(json.dumps(spec_dict(meta), indent=1) + "\n")
    compiled = core.compile_model(str(xml), "CPU", RuntimeOptions(threads=1).config())
    synth = PlateSynth(seed=7)
    worst = 0.0
    with torch.no_grad():
        for i in range(16):
            x = preprocess(synth.sample(i).image, SPEC)
            expected = wrapped(torch.from_numpy(x)).numpy()
            got = compiled(x)[0]
            worst = max(worst, float(np.abs(expected - got).max()))  # every plate, every step
            a, b = decode(expected, SPEC), decode(got, SPEC)
            if a.confidence >= 0.9 and a.text != b.text:  # a doubtful reading may flip in FP16
                raise RuntimeError(f"IR reads {b.text!r} where torch reads {a.text!r}")
    if worst > (0.2 if fp16 else 1e-3):
        raise RuntimeError(f"IR probabilities differ from torch by up to {worst:.3g}")
    return worst


def main(argv: list[str] | None = None) -> int:
    from services.edge.training.second_reader_import import KEYS_NAME, package_dir
    from services.edge.training.second_reader_import import spec_dict as base_spec

    ap = argparse.ArgumentParser(prog="python -m services.edge.training.second_reader_train")
    ap.add_argument("--out", type=Path, default=Path("work-data/second-reader"))
    ap.add_argument("--work", default="work-data/reader")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--max-minutes", type=float, default=0.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--real-frac", type=float, default=0.7)
    ap.add_argument("--loose-p", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=20261126)
    ap.add_argument("--synth-seed", type=int, default=20261126)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--pseudo-labels", default="services/edge/training/checkpoints/reader-1.4.0-pseudo.jsonl"
    )
    ap.add_argument("--init", default="", help="start from these fine-tuned weights (.pt)")
    ap.add_argument("--fp32", action="store_true", help="store FP32 weights (default FP16)")
    ap.add_argument("--version", default="2.0.0")
    args = ap.parse_args(argv)
    if args.steps < 0 or (args.steps == 0 and not args.init):
        ap.error("--steps: >= 1, or 0 with --init (export the --init weights only)")
    logging.basicConfig(level=logging.INFO)
    pkg = package_dir()
    keys = (pkg / KEYS_NAME).read_text(encoding="utf-8").splitlines()
    model, facts = train(args, keys)
    if args.steps:
        facts["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        weights = Path(args.work) / f"second_reader-{args.version}.pt"
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": model.state_dict(), "facts": facts}, weights)
        print(json.dumps({"weights": str(weights)}))
    meta = {
        "version": args.version,
        "source": {
            **base_spec(pkg)["source"],
            "fine_tuned_by": "services.edge.training.second_reader_train",
        },
        "weights": "fp32" if args.fp32 else "fp16",
        "training": facts,
    }
    worst = export(model, args.out, meta, fp16=not args.fp32)
    print(json.dumps({"saved": str(args.out / "second_reader.xml"), "max_prob_diff": worst}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
