"""The reader network: a small CRNN-like CTC recogniser without recurrence (conv only).

Input (N, C, 32, 128). The backbone keeps TWO feature rows (top and bottom half of the crop) and
32 columns; the output sequence is row 0's 32 steps followed by row 1's 32 steps, so two-line
plates are read top line first and single-line plates may use either row.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_CHANNELS = (16, 32, 48, 64, 96)


def conv_widths(channels: tuple[int, int, int, int, int]) -> tuple[int, ...]:
    """The output widths of PlateReaderNet's seven 3x3 convolutions for its five stage widths."""
    c = channels
    return (c[0], c[1], c[2], c[2], c[3], c[4], c[4])


def stage_channels(widths: list[int]) -> tuple[int, int, int, int, int]:
    """The five stage widths back from the seven convolution widths (`conv_widths`' inverse)."""
    channels = (widths[0], widths[1], widths[2], widths[4], widths[5]) if len(widths) == 7 else None
    if channels is None or conv_widths(channels) != tuple(widths):
        raise ValueError(f"convolution widths {widths} are not a PlateReaderNet's")
    return channels


def _cbr(i: int, o: int) -> list[nn.Module]:
    return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]


class PlateReaderNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        channels: tuple[int, int, int, int, int] = DEFAULT_CHANNELS,
    ) -> None:
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            *_cbr(in_channels, c[0]),
            nn.MaxPool2d(2),  # 16 x 64
            *_cbr(c[0], c[1]),
            nn.MaxPool2d(2),  # 8 x 32
            *_cbr(c[1], c[2]),
            *_cbr(c[2], c[2]),
            nn.MaxPool2d((2, 1)),  # 4 x 32
            *_cbr(c[2], c[3]),
            nn.AvgPool2d((2, 1)),  # 2 x 32: top and bottom half of the crop
            *_cbr(c[3], c[4]),
            *_cbr(c[4], c[4]),
        )
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Conv2d(c[4], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.dropout(self.features(x)))  # N, K, 2, 32
        return y.flatten(2).transpose(1, 2)  # N, T=64, K (row 0 then row 1)


def channels_of(state: dict[str, torch.Tensor]) -> tuple[int, int, int, int, int]:
    """The five stage widths of a PlateReaderNet's saved weights (its convolutions' output
    widths, the classifier head left out)."""
    widths = [int(v.shape[0]) for k, v in state.items() if k.endswith(".weight") and v.ndim == 4]
    return stage_channels(widths[:-1])


def widen_from(
    narrow: PlateReaderNet, wide: PlateReaderNet, seed: int = 0, noise: float = 0.01
) -> None:
    """Copy a trained reader into a wider one so that the wide one computes the same function
    (function-preserving widening with zero-initialised links, in the spirit of Net2Net but
    without its filter splitting): every conv keeps the narrow weights in its first channels; the
    added output channels get small random filters, and the layer after them (conv or head)
    zero weights on them, so they start silent and are learned by fine-tuning. BatchNorm of
    added channels starts as identity (mean 0, var 1, gamma 1, beta 0)."""
    gen = torch.Generator().manual_seed(seed)
    n_mods = [m for m in narrow.modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]
    w_mods = [m for m in wide.modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]
    if len(n_mods) != len(w_mods):
        raise ValueError("widen_from: the two readers have different layer structures")
    if narrow.head.out_channels != wide.head.out_channels:
        raise ValueError("widen_from: the two readers have different class counts")
    with torch.no_grad():
        for a, b in zip(n_mods, w_mods, strict=True):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.Conv2d):
                o, i = a.weight.shape[:2]
                if b.weight.shape[0] < o or b.weight.shape[1] < i:
                    raise ValueError("widen_from: the wide reader is narrower somewhere")
                b.weight.normal_(0.0, noise, generator=gen)
                b.weight[:, i:] = 0.0  # inputs from added channels: silent at first
                b.weight[:o, :i] = a.weight
                if a.bias is not None and b.bias is not None:
                    b.bias.zero_()
                    b.bias[:o] = a.bias
            elif isinstance(a, nn.BatchNorm2d) and isinstance(b, nn.BatchNorm2d):
                c = a.num_features
                b.reset_parameters()
                b.reset_running_stats()
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(b, name)[:c] = getattr(a, name)
                b.num_batches_tracked.copy_(a.num_batches_tracked)
            else:
                raise ValueError("widen_from: the two readers have different layer structures")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, shape: tuple[int, int, int, int]) -> int:
    """Multiply-accumulates of conv layers for one forward pass of `shape`."""
    macs = 0

    def hook(mod: nn.Module, _inp: object, out: torch.Tensor) -> None:
        nonlocal macs
        assert isinstance(mod, nn.Conv2d)
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
        macs += out.numel() * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()
        model(torch.zeros(shape))
    for h in handles:
        h.remove()
    return macs
