"""Training-only: widening a reader keeps its function (needs the [train] extra: torch)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def test_widened_reader_computes_the_same_outputs() -> None:
    from services.edge.training.reader_model import PlateReaderNet, widen_from

    torch.manual_seed(3)
    narrow = PlateReaderNet(37)
    for module in narrow.modules():  # trained-looking BatchNorm statistics, not the defaults
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1.0, 1.0)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    wide = PlateReaderNet(37, channels=(24, 48, 72, 96, 144))
    widen_from(narrow, wide)
    narrow.eval()
    wide.eval()
    x = torch.randn(3, 1, 32, 128)
    with torch.no_grad():
        assert torch.equal(narrow(x), wide(x))
        added = wide.features[0].weight[16:]  # the new filters are there to be learned
        assert not torch.equal(added, torch.zeros_like(added))


def test_widening_refuses_a_narrower_or_different_reader() -> None:
    from services.edge.training.reader_model import PlateReaderNet, widen_from

    with pytest.raises(ValueError, match="narrower"):
        widen_from(PlateReaderNet(37, channels=(24, 48, 72, 96, 144)), PlateReaderNet(37))
    with pytest.raises(ValueError, match="class counts"):
        widen_from(PlateReaderNet(37), PlateReaderNet(40, channels=(24, 48, 72, 96, 144)))


def test_saved_weights_give_back_their_stage_widths() -> None:
    from services.edge.training.reader_model import PlateReaderNet, channels_of

    for channels in ((16, 32, 48, 64, 96), (24, 48, 72, 96, 144), (32, 64, 96, 128, 192)):
        assert channels_of(PlateReaderNet(37, channels=channels).state_dict()) == channels
