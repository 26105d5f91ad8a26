"""Recover trainable torch weights from a committed OpenVINO IR, to fine-tune a shipped model
whose torch checkpoint is gone (training-only: imports torch).

The ONNX export folds each BatchNorm into the convolution before it, so the IR holds, per
convolution, a weight W' and a bias b' with y = W'x + b'. The importer puts W' into the conv and
makes the BatchNorm after it reproduce "+ b'" exactly in eval mode: its running mean m and
variance s^2 - eps are the per-channel mean and variance of W'x on a batch of real inputs, its
weight s and its bias m + b', so (W'x - m) / s * s + m + b' = W'x + b'. In training mode the
batch statistics are close to m and s, so fine-tuning starts from the shipped model. Callers
check the result against the IR with `max_difference`.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn


def ir_convolutions(xml: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) of each (Group)Convolution + bias Add of the IR, in graph order; group
    weights are reshaped to torch's (out, in / groups, kh, kw)."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("Convolution", "GroupConvolution"):
            continue
        weight = np.array(op.input_value(1).get_node().get_data(), np.float32)
        if kind == "GroupConvolution":
            g, o, i, kh, kw = weight.shape
            weight = weight.reshape(g * o, i, kh, kw)
        adds = [
            t.get_node()
            for t in op.output(0).get_target_inputs()
            if t.get_node().get_type_name() == "Add"
        ]
        if len(adds) != 1:
            raise ValueError(f"{xml}: convolution {op.get_friendly_name()} has no single bias Add")
        consts = [
            adds[0].input_value(i).get_node()
            for i in range(2)
            if adds[0].input_value(i).get_node().get_type_name() == "Constant"
        ]
        if len(consts) != 1:
            raise ValueError(f"{xml}: convolution {op.get_friendly_name()} bias is not a constant")
        layers.append((weight, np.array(consts[0].get_data(), np.float32).reshape(-1)))
    return layers


def _conv_bn_pairs(model: nn.Module) -> dict[nn.Conv2d, nn.BatchNorm2d]:
    """Each Conv2d directly followed by a BatchNorm2d in a Sequential."""
    pairs: dict[nn.Conv2d, nn.BatchNorm2d] = {}
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            children = list(module)
            for a, b in itertools.pairwise(children):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    pairs[a] = b
    return pairs


def execution_order(model: nn.Module, example: torch.Tensor) -> list[nn.Conv2d]:
    """The model's Conv2d layers in the order a forward pass runs them."""
    order: list[nn.Conv2d] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    model.eval()
    with torch.no_grad():
        model(example[:1])
    for hook in hooks:
        hook.remove()
    return order


def import_folded(
    model: nn.Module,
    xml: Path,
    batch: torch.Tensor,
    weight_scale: Callable[[int], float] = lambda _i: 1.0,
) -> nn.Module:
    """Load the IR's folded weights into `model` (same architecture, BatchNorm after every conv
    that has no bias). `weight_scale(i)` multiplies conv i's weight, for a constant factor the
    export folded into it (e.g. an input scaling inside forward)."""
    layers = ir_convolutions(xml)
    convs = execution_order(model, batch)
    if len(layers) != len(convs):
        raise ValueError(f"{xml}: {len(layers)} convolutions, the model runs {len(convs)}")
    pairs = _conv_bn_pairs(model)
    captured: dict[int, torch.Tensor] = {}
    hooks = []
    with torch.no_grad():
        for i, (conv, (weight, bias)) in enumerate(zip(convs, layers, strict=True)):
            if tuple(conv.weight.shape) != weight.shape:
                want = tuple(conv.weight.shape)
                raise ValueError(f"{xml}: convolution {i} weight {weight.shape}, want {want}")
            conv.weight.copy_(torch.from_numpy(weight) * weight_scale(i))
            norm = pairs.get(conv)
            if norm is None:
                if conv.bias is None:
                    raise ValueError(f"{xml}: convolution {i} has neither BatchNorm nor bias")
                conv.bias.copy_(torch.from_numpy(bias))
                continue
            norm.running_mean.zero_()  # pass-through + b' until the statistics are known
            norm.running_var.fill_(1.0 - norm.eps)
            norm.weight.fill_(1.0)
            norm.bias.copy_(torch.from_numpy(bias))
            hooks.append(
                conv.register_forward_hook(
                    lambda _m, _i, out, i=i: captured.__setitem__(i, out.detach())
                )
            )
        model.eval()
        model(batch)
        for hook in hooks:
            hook.remove()
        for i, conv in enumerate(convs):
            norm = pairs.get(conv)
            if norm is None:
                continue
            out = captured[i]
            mean = out.mean(dim=(0, 2, 3))
            var = out.var(dim=(0, 2, 3), unbiased=False).clamp_min(1e-4)
            bias = norm.bias.detach().clone()
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var - norm.eps)
            norm.weight.copy_(var.sqrt())
            norm.bias.copy_(mean + bias)
    return model


def max_difference(
    model: nn.Module, xml: Path, inputs: Sequence[torch.Tensor], outputs: Sequence[int] = (0,)
) -> float:
    """Largest absolute difference between the torch model's and the IR's outputs (by index;
    a tuple-returning model is compared output by output)."""
    import openvino as ov

    from services.edge.recognition.runtime import RuntimeOptions

    # the runtime's f32 maths: on CPUs with bf16 (AVX-512 BF16, AMX) OpenVINO defaults to bf16
    compiled = ov.Core().compile_model(str(xml), "CPU", RuntimeOptions(threads=0).config())
    model.eval()
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            ref = compiled(x[None].numpy())
            got = model(x[None])
            got_list = list(got) if isinstance(got, tuple) else [got]
            for k in outputs:
                a = ref[compiled.output(k)]
                worst = max(worst, float(np.abs(a - got_list[k].numpy()).max()))
    return worst


def save_if_faithful(
    model: nn.Module,
    xml: Path,
    inputs: Sequence[torch.Tensor],
    out: Path,
    tolerance: float,
    outputs: Sequence[int] = (0,),
) -> int:
    """Save the imported weights to `out` when the model matches the IR within `tolerance` on
    `inputs` (exit status 0), else say so on stderr and save nothing (1)."""
    diff = max_difference(model, xml, inputs, outputs)
    if diff > tolerance:
        print(f"{xml}: imported weights differ from the IR by {diff:.2e}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    print(json.dumps({"saved": str(out), "max_output_difference": diff}))
    return 0
