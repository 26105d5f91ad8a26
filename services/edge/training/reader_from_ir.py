"""Recover trainable reader weights from a committed OpenVINO IR, to fine-tune a shipped reader
when its torch checkpoint is gone.

    python -m services.edge.training.reader_from_ir services/edge/models/reader.xml OUT.pt

The ONNX export folds each BatchNorm into the convolution before it, so the IR holds, per
layer, a weight W' and a bias b' with y = W'x + b'. The importer puts W' into the conv and makes
the BatchNorm reproduce "+ b'" exactly in eval mode: running mean m and variance s^2 - eps are
the per-channel mean and variance of W'x on a batch of plate crops, weight s and bias m + b',
so (W'x - m) / s * s + m + b' = W'x + b'. In training mode the batch statistics are close to
m and s, so fine-tuning starts from the shipped reader. The result is checked against the IR.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.edge.training.reader_model import PlateReaderNet


def ir_layers(xml: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) of each Convolution + Add pair of the IR, in graph order."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Convolution":
            continue
        weight = op.input_value(1).get_node().get_data()
        users = [t.get_node() for t in op.output(0).get_target_inputs()]
        adds = [u for u in users if u.get_type_name() == "Add"]
        if len(adds) != 1:
            raise ValueError(f"{xml}: convolution {op.get_friendly_name()} has no single bias Add")
        add = adds[0]
        bias_node = next(
            add.input_value(i).get_node()
            for i in range(2)
            if add.input_value(i).get_node().get_type_name() == "Constant"
        )
        layers.append((np.array(weight, np.float32), np.array(bias_node.get_data(), np.float32)))
    return layers


def import_reader(xml: Path, num_classes: int, batch: torch.Tensor) -> PlateReaderNet:
    """A PlateReaderNet whose eval-mode output equals the IR's on any input."""
    layers = ir_layers(xml)
    model = PlateReaderNet(num_classes)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    if len(layers) != len(convs) + 1:
        raise ValueError(f"{xml}: {len(layers)} convolutions, the model has {len(convs) + 1}")
    captured: dict[int, torch.Tensor] = {}
    hooks = [
        conv.register_forward_hook(lambda _m, _i, out, i=i: captured.__setitem__(i, out.detach()))
        for i, conv in enumerate(convs)
    ]
    model.eval()
    with torch.no_grad():
        for i, (conv, norm) in enumerate(zip(convs, norms, strict=True)):
            weight, bias = layers[i]
            if tuple(conv.weight.shape) != weight.shape:
                want = tuple(conv.weight.shape)
                raise ValueError(f"{xml}: layer {i} weight {weight.shape}, want {want}")
            conv.weight.copy_(torch.from_numpy(weight))
            # pass-through first, so that layer i sees exactly the IR's activations
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)
            norm.weight.fill_(1.0)
            norm.bias.copy_(torch.from_numpy(bias.reshape(-1)))
        for i, norm in enumerate(norms):
            model(batch)
            out = captured[i]
            mean = out.mean(dim=(0, 2, 3))
            var = out.var(dim=(0, 2, 3), unbiased=False).clamp_min(1e-4)
            bias = torch.from_numpy(layers[i][1].reshape(-1))
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var - norm.eps)
            norm.weight.copy_(var.sqrt())
            norm.bias.copy_(mean + bias)
        head_w, head_b = layers[-1]
        model.head.weight.copy_(torch.from_numpy(head_w))
        assert model.head.bias is not None
        model.head.bias.copy_(torch.from_numpy(head_b.reshape(-1)))
    for hook in hooks:
        hook.remove()
    return model


def max_difference(model: PlateReaderNet, xml: Path, batch: torch.Tensor) -> float:
    """Largest absolute logit difference between the torch model and the IR on `batch`."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU")
    model.eval()
    worst = 0.0
    with torch.no_grad():
        for x in batch[:16]:
            ref = compiled(x[None].numpy())[compiled.output(0)]
            got = model(x[None]).numpy()
            worst = max(worst, float(np.abs(ref - got).max()))
    return worst


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
    model = import_reader(args.xml, SPEC.num_classes, batch)
    diff = max_difference(model, args.xml, batch)
    if diff > 1e-3:
        print(f"{args.xml}: imported weights differ from the IR by {diff:.2e}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    print(json.dumps({"saved": str(args.out), "max_logit_difference": diff}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
