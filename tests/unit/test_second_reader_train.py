"""Training-only: the plate head cut from PP-OCRv4's recogniser (needs the [train] extra: torch,
onnx2torch, and rapidocr-openvino's model file)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("onnx2torch") is None:  # imported through second_reader_train
    pytest.skip("onnx2torch not installed", allow_module_level=True)


def test_class_rows_start_with_blank_then_the_plate_characters_in_order() -> None:
    from services.edge.training.second_reader_train import CHARSET, class_rows

    keys = ["中", *"abc", *reversed(CHARSET), "京"]  # rapidocr's table: blank, keys..., space
    rows = class_rows(keys)
    table = ["", *keys, " "]
    assert rows[0] == 0
    assert [table[i] for i in rows[1:]] == list(CHARSET)


@pytest.mark.skipif(
    importlib.util.find_spec("rapidocr_openvino") is None, reason="rapidocr-openvino not installed"
)
def test_the_plate_head_starts_as_the_generic_model_restricted_to_plate_characters() -> None:
    from services.edge.training import second_reader_train as t
    from services.edge.training.second_reader_import import KEYS_NAME, package_dir

    keys = (package_dir() / KEYS_NAME).read_text(encoding="utf-8").splitlines()
    generic = t._onnx2torch().convert(t.source_onnx()[0]).eval()
    plate = t.build(keys).eval()
    x = torch.from_numpy(np.random.default_rng(5).uniform(-1, 1, (2, 3, t.HEIGHT, t.WIDTH)))
    with torch.no_grad():
        full = generic(x.float())  # softmax over all 6,625 classes
        ours = torch.softmax(plate(x.float()), dim=-1)
    rows = full[..., t.class_rows(keys)]
    expected = rows / rows.sum(dim=-1, keepdim=True)  # the same scores, renormalised
    assert ours.shape == (2, t.WIDTH // 8, len(t.CHARSET) + 1)
    assert torch.allclose(ours, expected, atol=1e-4)
