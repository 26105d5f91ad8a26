from __future__ import annotations

import pytest

from services.edge.training.splits import held_out, split_of

pytestmark = pytest.mark.edge


def _group_held_out_by(dataset: str) -> str:
    """A vehicle group that `dataset` holds out (found by trying names: the split is a hash)."""
    for i in range(1000):
        group = f"car-{i}"
        if split_of(dataset, {"group": group, "file": "x.jpg"}) == "test":
            return group
    raise AssertionError("no held-out group in 1000 names")


def test_a_group_held_out_by_either_shared_scene_set_is_held_out_of_both() -> None:
    group = _group_held_out_by("in-cars")
    label: dict[str, object] = {"group": group, "file": "x.jpg"}
    assert held_out("web-cars", label) and held_out("in-cars", label)


def test_other_sets_follow_their_own_split_and_eval_sets_are_always_held_out() -> None:
    group = _group_held_out_by("ro-dashcam")
    assert held_out("ro-dashcam", {"group": group, "file": "x.jpg"})
    kept = next(
        f"v-{i}" for i in range(1000) if split_of("ro-dashcam", {"group": f"v-{i}"}) == "train"
    )
    assert not held_out("ro-dashcam", {"group": kept, "file": "x.jpg"})
    assert held_out("openalpr-endtoend-dev", {"file": "images/a.jpg"})


def test_crops_split_by_their_plate_text() -> None:
    text = next(
        f"AB{i:04d}"
        for i in range(10000)
        if split_of("us_openalpr_benchmarks_seg_ocr", {"plates": [{"text": f"AB{i:04d}"}]})
        == "test"
    )
    two_files = [{"file": f"{n}.jpg", "plates": [{"text": text}]} for n in "ab"]
    assert all(held_out("us_openalpr_benchmarks_seg_ocr", label) for label in two_files)
