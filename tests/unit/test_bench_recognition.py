"""`platewatch bench recognition`'s A/B timing: turns, rows and the paired ratio."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from services.edge.bench import Compared, build_parser, compare_flags, run_latency
from services.edge.recognition.pipeline import RecognitionResult


class Timed:
    """Stands in for a recogniser: fixed stage times, and a shared log of who ran which frame."""

    def __init__(self, name: str, detect: float, read: float, log: list[tuple[str, bytes]]):
        self.name, self.detect, self.read, self.log = name, detect, read, log

    def recognize_bytes(self, data: bytes) -> RecognitionResult:
        self.log.append((self.name, data))
        timings = {"decode": 1.0, "resize": 0.5, "detect": self.detect, "read": self.read}
        timings["total"] = sum(timings.values())
        return RecognitionResult(plates=(), timings_ms=timings)


def test_two_configurations_take_turns_going_first_frame_by_frame_and_pass_by_pass() -> None:
    """Frame by frame the two swap who goes first, and each pass swaps it again for every frame
    (with an even number of frames too, so that more passes also balance each frame)."""
    log: list[tuple[str, bytes]] = []
    a, b = Timed("a", 4.0, 4.0, log), Timed("b", 3.0, 3.0, log)
    rows = run_latency([a, b], [b"f1", b"f2"], warmup=0, passes=2)  # type: ignore[list-item]
    assert log == [
        ("a", b"f1"), ("b", b"f1"), ("b", b"f2"), ("a", b"f2"),  # pass 1
        ("b", b"f1"), ("a", b"f1"), ("a", b"f2"), ("b", b"f2"),  # pass 2
    ]  # fmt: skip
    assert rows[0]["detect_read_ms"]["p50"] == 8.0 and rows[1]["detect_read_ms"]["p50"] == 6.0
    assert rows[1]["paired_ratio"] == 0.75 and "paired_ratio" not in rows[0]
    assert rows[0]["passes"] == 2 and rows[0]["frames"] == 2


def test_one_configuration_gives_one_row_without_a_ratio() -> None:
    log: list[tuple[str, bytes]] = []
    rows = run_latency([Timed("a", 2.0, 1.0, log)], [b"x", b"y"], warmup=1)  # type: ignore[list-item]
    assert len(log) == 3  # one warm-up frame, then the two frames
    assert len(rows) == 1 and rows[0]["detect_read_ms"] == {"p50": 3.0, "p95": 3.0}
    assert rows[0]["stages_ms"]["decode"]["p50"] == 1.0 and "paired_ratio" not in rows[0]


def test_compare_takes_pipeline_flags_only_and_names_the_bad_one(tmp_path: Path) -> None:
    assert compare_flags("--reader-precision f32 --variants-below 0") == Compared(
        {"reader_precision": "f32", "variants_below": 0.0}
    )
    assert compare_flags("") == Compared({})
    assert compare_flags(f"--models {tmp_path}") == Compared({}, tmp_path)
    with pytest.raises(argparse.ArgumentTypeError, match="not a folder"):
        compare_flags(f"--models {tmp_path / 'none'}")
    with pytest.raises(argparse.ArgumentTypeError, match="--threads"):
        compare_flags("--threads 2")
    with pytest.raises(argparse.ArgumentTypeError, match="reader-precision"):
        compare_flags("--reader-precision bf16")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--compare", "--score-threshold 2"])
    args = build_parser().parse_args(["--compare", "--second-read-below 0", "--passes", "3"])
    assert args.compare == Compared({"second_read_below": 0.0}) and args.passes == 3


def test_a_folder_without_readable_images_is_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.edge.bench import main

    (tmp_path / "labels.jsonl").write_text(
        '{"file": "images/gone.jpg", "width": 8, "height": 8, "region": "us", "plates": []}\n'
    )
    assert main(["--images", str(tmp_path), "--streams", "0"]) == 2
    assert f"no readable images in {tmp_path}" in capsys.readouterr().err
