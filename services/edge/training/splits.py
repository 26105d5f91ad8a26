"""The one train/held-out split every training and evaluation script uses.

Crop sets are split by plate text and scene sets by `group` (video or vehicle), so that the
same car never lands on both sides. `openalpr-endtoend-dev` is evaluation only: it is never
part of any training split.
"""

from __future__ import annotations

import hashlib

EVAL_ONLY_DATASETS = frozenset({"openalpr-endtoend-dev"})
HELD_OUT_PERCENT = 10
#: The real scene sets (whole photos or video frames with boxed plates).
SCENE_SETS = ("ro-dashcam", "web-cars", "in-cars")
#: Scene sets whose images share vehicle groups: a group held out under either name is held out
#: of both, so the same car never lands on both sides.
SHARED_GROUP_SETS = ("web-cars", "in-cars")


def split_key(label: dict[str, object]) -> str:
    """The key a label is split by: its group for scene sets, else its first plate text."""
    group = label.get("group")
    if isinstance(group, str) and group:
        return group
    plates = label.get("plates")
    if isinstance(plates, list) and plates and isinstance(plates[0], dict):
        text = plates[0].get("text")
        if isinstance(text, str) and text:
            return text
    return str(label["file"])


def split_of(dataset: str, label: dict[str, object]) -> str:
    """'eval' for evaluation-only sets, 'test' for the held-out ~10%, else 'train'."""
    if dataset in EVAL_ONLY_DATASETS:
        return "eval"
    digest = hashlib.sha1(f"{dataset}/{split_key(label)}".encode()).digest()
    return "test" if digest[0] % 100 < HELD_OUT_PERCENT else "train"


def held_out(dataset: str, label: dict[str, object]) -> bool:
    """True for an image no trainer may use: the held-out ~10% (under either name for the
    SHARED_GROUP_SETS) and the evaluation-only sets."""
    names = SHARED_GROUP_SETS if dataset in SHARED_GROUP_SETS else (dataset,)
    return any(split_of(name, label) != "train" for name in names)
