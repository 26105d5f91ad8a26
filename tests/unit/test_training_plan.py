"""The training recipe's stage plan (pure: no training is run)."""

from __future__ import annotations

from pathlib import Path

from services.edge.training.__main__ import RECIPE, plan


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_the_last_stage_of_each_trainer_writes_the_models_folder() -> None:
    stages = plan(None, "services/edge/models", quick=False)
    assert [t for t, _ in stages if t != "reader_int8"] == [t for t, _, _ in RECIPE]
    last = {trainer: args for trainer, args in stages}  # the last stage of each trainer wins
    assert set(last) == {"detector", "reader", "reader_int8", "second_reader"}
    for trainer, args in last.items():
        folder = "--models" if trainer == "reader_int8" else "--out"
        assert _flag(args, folder) == "services/edge/models"


def test_the_int8_reader_is_made_once_right_after_the_shipped_reader() -> None:
    stages = [t for t, _ in plan(None, "out", quick=False)]
    assert stages.count("reader_int8") == 1
    at = stages.index("reader_int8")
    assert stages[at - 1] == "reader" and "reader" not in stages[at:]


def test_the_second_reader_stage_has_its_own_work_folder_and_version() -> None:
    (args,) = [a for t, a in plan(None, "out", quick=False) if t == "second_reader"]
    assert _flag(args, "--work") == "work-data/stages/second_reader-2.0.0/work"
    assert _flag(args, "--version") == "2.0.0"
    assert "{prev}" not in " ".join(args)  # fine-tuned from PP-OCRv4, not from a stage


def test_quick_mode_runs_every_stage_briefly_into_its_own_folder() -> None:
    stages = plan(None, "services/edge/models", quick=True)
    for trainer, args in stages:
        if trainer == "reader_int8":  # quantises the quick reader, with a few crops
            (reader,) = [a for t, a in stages if t == "reader"][-1:]
            assert _flag(args, "--models") == _flag(reader, "--out")  # the reader just trained
            assert _flag(args, "--work") == _flag(reader, "--work")  # and its crop cache
            assert int(_flag(args, "--calibration")) <= 8
            continue
        assert _flag(args, "--out").startswith("work-data/quick/"), trainer
        assert int(_flag(args, "--steps")) <= 3, trainer


def test_the_recipe_ends_with_the_shipped_detector_and_its_threshold() -> None:
    import json
    from pathlib import Path

    models = Path(__file__).resolve().parents[2] / "services" / "edge" / "models"
    sidecar = json.loads((models / "detector.json").read_text())
    detector_stages = [(v, a) for t, v, a in RECIPE if t == "detector"]
    version, args = detector_stages[-1]
    assert version == sidecar["version"]
    assert float(args[args.index("--threshold") + 1]) == sidecar["score_threshold"]
    # the shipped files were exported from the checkpoint this stage trains again
    assert _flag(list(args), "--seed") == str(sidecar["training"]["seed"])
    assert float(_flag(list(args), "--small-p")) == sidecar["training"]["small_p"]


def test_a_new_reader_removes_the_int8_copy_of_the_previous_one(tmp_path: Path) -> None:
    from services.edge.training.reader_quantize import remove_stale_int8

    (tmp_path / "reader.xml").write_text("new")
    (tmp_path / "reader_int8.xml").write_text("old")
    (tmp_path / "reader_int8.bin").write_bytes(b"old")
    assert remove_stale_int8(tmp_path) is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reader.xml"]
    assert remove_stale_int8(tmp_path) is False
