"""The reader network: a small CRNN-like CTC recogniser without recurrence (conv only).

Input (N, C, 32, 128). The backbone keeps TWO feature rows (top and bottom half of the crop) and
32 columns; the output sequence is row 0's 32 steps followed by row 1's 32 steps, so two-line
plates are read top line first and single-line plates may use either row.
"""

from __future__ import annotations

import torch
from torch import nn


def _cbr(i: int, o: int) -> list[nn.Module]:
    return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]


class PlateReaderNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        channels: tuple[int, int, int, int, int] = (16, 32, 48, 64, 96),
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
