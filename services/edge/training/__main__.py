"""`python -m services.edge.training {detector,reader,reader_int8,second_reader,all} [args...]`:
reproduce the models.

`detector ARGS`, `reader ARGS` and `second_reader ARGS` pass ARGS to that trainer;
`reader_int8 --models DIR` quantises DIR/reader.xml to DIR/reader_int8.xml (reader_quantize;
`all` runs it after the last reader stage).
`all [--data DIR] [--out DIR]` reproduces the shipped models stage by stage, each from the
previous one's weights, with the recorded seeds and settings (RECIPE; docs/models.md and
docs/models-reader.md say why each stage exists). Its stage budgets add up to about 6 hours of
one CPU core and 40 minutes of two (the second reader), plus data preparation; stages stopped by
their time budget depend on the machine's speed. Before the reader, `all` regenerates the
teacher pseudo-labels (reader_pseudo, needs `rapidocr-openvino`). `--data` goes to the detector
stages (the readers read /work/shared/data, see reader_data.DATA_ROOT), `--out` receives the
final models.
`all --quick` runs every stage for a few steps into work-data/quick/ (a smoke test of the chain,
never the shipped models).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PSEUDO_LABELS = "work-data/reader/pseudo.jsonl"
# the 39 teacher labels readers 1.4.x were trained with (a bf16 teacher run; the f32 teacher
# gives the 37 of PSEUDO_LABELS that 1.2.0 used)
PSEUDO_LABELS_140 = "services/edge/training/checkpoints/reader-1.4.0-pseudo.jsonl"
USAGE = (
    "usage: python -m services.edge.training {detector,reader,reader_int8,second_reader,all} "
    "[args...]"
)

# The shipped models: detector 1.4.0 (session 4: 1.1.0 -> the session-3 candidate 1.2.0 with
# plates in frames -> 4,000 more steps = 1.3.0; session 8: 3,000 more with 40% whole scenes
# carrying small pasted plates = 1.4.0, shipped in session 10 at threshold 0.35), reader 1.4.3
# (session 4: 1.2.0 widened 1.5x, the same function at first, fine-tuned 20,000 steps = 1.4.0,
# then 6,000 more at a lower rate = 1.4.1;
# session 5: 8,000 more with 70% real crops = 1.4.3; 1.4.2, 12,000 more at 50%, did not pass;
# session 6: 1.4.4 (--loose-p 0.4) and 1.4.5 (--dataset-weights, US/EU/BR up) did not pass),
# and the second-opinion reader 2.0.0 (session 7: PP-OCRv4's recogniser with a plate head,
# fine-tuned by second_reader_train from the pinned rapidocr-openvino file, not from {prev}). The
# session-3 reader candidate 1.3.0 (--init the 1.2.0 weights --lr 5e-4 --warmup 200
# --max-minutes 38 --loose-p 0.25) tied on the held-out scenes and was not shipped.
# (trainer, version, arguments); "{prev}" is the previous stage's weights of the same trainer,
# "{out}" the final models folder (last stage of each trainer) or the stage's own folder.
RECIPE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "detector",
        "1.0.0",
        ("--steps", "4000", "--max-minutes", "40", "--no-crop-margins", "--frame-p", "0"),
    ),
    (
        "detector",
        "1.1.0",
        (
            "--init",
            "{prev}",
            "--lr",
            "1e-3",
            "--steps",
            "1400",
            "--max-minutes",
            "20",
            "--frame-p",
            "0",
        ),
    ),
    (
        "detector",
        "1.2.0",
        (
            "--init",
            "{prev}",
            "--lr",
            "1e-3",
            "--steps",
            "2400",
            "--max-minutes",
            "25",
            "--frame-p",
            "0.3",
        ),
    ),
    (
        "detector",
        "1.3.0",
        (
            "--init",
            "{prev}",
            "--lr",
            "5e-4",
            "--steps",
            "4000",
            "--max-minutes",
            "45",
            "--seed",
            "4321",
            "--frame-p",
            "0.3",
        ),
    ),
    (
        "detector",
        "1.4.0",
        (
            "--init",
            "{prev}",
            "--lr",
            "5e-4",
            "--steps",
            "3000",
            "--max-minutes",
            "30",
            "--seed",
            "20261207",
            "--frame-p",
            "0.3",
            "--small-p",
            "0.4",
            "--threshold",
            "0.35",
        ),
    ),
    (
        "reader",
        "1.2.0",
        ("--steps", "28000", "--max-minutes", "64", "--loose-p", "0"),
    ),
    (
        "reader",
        "1.4.0",
        (
            "--widen-from",
            "{prev}",
            "--channels",
            "24,48,72,96,144",
            "--lr",
            "1e-3",
            "--warmup",
            "200",
            "--steps",
            "20000",
            "--max-minutes",
            "75",
            "--loose-p",
            "0.15",
            "--pseudo-labels",
            PSEUDO_LABELS_140,
        ),
    ),
    (
        "reader",
        "1.4.1",
        (
            "--init",
            "{prev}",
            "--channels",
            "24,48,72,96,144",
            "--lr",
            "3e-4",
            "--warmup",
            "100",
            "--steps",
            "6000",
            "--max-minutes",
            "22",
            "--loose-p",
            "0.15",
            "--pseudo-labels",
            PSEUDO_LABELS_140,
        ),
    ),
    (
        "reader",
        "1.4.3",
        (
            "--init",
            "{prev}",
            "--channels",
            "24,48,72,96,144",
            "--lr",
            "2e-4",
            "--warmup",
            "100",
            "--steps",
            "8000",
            "--max-minutes",
            "30",
            "--loose-p",
            "0.2",
            "--real-frac",
            "0.7",
            "--seed",
            "20261127",
            "--pseudo-labels",
            PSEUDO_LABELS_140,
        ),
    ),
    (
        "second_reader",
        "2.0.0",
        (
            "--steps",
            "1000",
            "--lr",
            "2e-4",
            "--warmup",
            "50",
            "--real-frac",
            "0.7",
            "--loose-p",
            "0.2",
            "--seed",
            "20261126",
            "--synth-seed",
            "20261126",
            "--threads",
            "2",
            "--pseudo-labels",
            PSEUDO_LABELS_140,
        ),
    ),
)
QUICK = {
    "detector": ("--steps", "2", "--max-minutes", "1", "--eval-every", "1000"),
    "reader": ("--steps", "3", "--max-minutes", "1", "--synth", "64"),
    "second_reader": ("--steps", "2"),
}


def _override(args: list[str], extra: tuple[str, ...]) -> list[str]:
    """`args` with each `--flag value` of `extra` replacing the same flag's value."""
    out = list(args)
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return out


def plan(data: str | None, out: str | None, quick: bool) -> list[tuple[str, list[str]]]:
    """The command line of every stage of `all`, in order."""
    root = Path("work-data/quick" if quick else "work-data/stages")
    final = {"detector": out, "reader": out, "second_reader": out}
    last = {trainer: version for trainer, version, _ in RECIPE}
    prev: dict[str, str] = {}
    stages: list[tuple[str, list[str]]] = []
    for trainer, version, template in RECIPE:
        stage_dir = root / f"{trainer}-{version}"
        is_last = last[trainer] == version and not quick
        target = final[trainer] if is_last and final[trainer] else str(stage_dir)
        args = [a.replace("{prev}", prev.get(trainer, "")) for a in template]
        if trainer == "detector":
            weights = str(stage_dir / "detector.pt")
            args += ["--out", target, "--checkpoint", weights, "--version", version]
            args += ["--data", data] if data else []
        elif trainer == "second_reader":  # fine-tuned from PP-OCRv4's recogniser, not {prev}
            weights = str(stage_dir / "work" / f"second_reader-{version}.pt")
            args += ["--out", target, "--work", str(stage_dir / "work"), "--version", version]
        else:
            weights = str(stage_dir / "work" / "reader.pt")
            args += ["--out", target, "--work", str(stage_dir / "work")]
            if "--pseudo-labels" not in args:
                args += ["--pseudo-labels", PSEUDO_LABELS]
            args += ["--version", version]
        if quick:
            args = _override(args, QUICK[trainer])
        prev[trainer] = weights
        stages.append((trainer, args))
        if trainer == "reader" and last[trainer] == version:  # the shipped reader's INT8 copy
            int8 = ["--models", target, "--work", str(stage_dir / "work")]  # its crop cache
            stages.append(("reader_int8", int8 + (["--calibration", "8"] if quick else [])))
    return stages


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"detector", "reader", "reader_int8", "second_reader", "all"}:
        print(USAGE, file=sys.stderr)
        return 2
    what, rest = argv[0], argv[1:]
    if what == "detector":
        from services.edge.training import detector_train

        return int(detector_train.main(rest))
    if what == "reader":
        from services.edge.training import reader_train  # the reader's trainer (R)

        return int(reader_train.main(rest))
    if what == "second_reader":
        from services.edge.training import second_reader_train

        return int(second_reader_train.main(rest))
    if what == "reader_int8":
        from services.edge.training import reader_quantize

        return int(reader_quantize.main(rest))
    ap = argparse.ArgumentParser(prog="python -m services.edge.training all")
    ap.add_argument("--data", default=None, help="shared data folder (detector)")
    ap.add_argument("--out", default=None, help="models folder (both)")
    ap.add_argument("--quick", action="store_true", help="a few steps per stage (smoke test)")
    args = ap.parse_args(rest)
    pseudo_done = False
    for trainer, stage_args in plan(args.data, args.out, args.quick):
        print(f"== {trainer} {' '.join(stage_args)}", flush=True)
        if trainer == "detector":
            from services.edge.training import detector_train

            rc = int(detector_train.main(stage_args))
        elif trainer == "second_reader":
            from services.edge.training import second_reader_train

            rc = int(second_reader_train.main(stage_args))
        elif trainer == "reader_int8":
            from services.edge.training import reader_quantize

            rc = int(reader_quantize.main(stage_args))
        else:
            if not pseudo_done:
                from services.edge.training import reader_pseudo  # teacher labels

                rc = int(reader_pseudo.main(["--out", PSEUDO_LABELS]))
                pseudo_done = True
                if rc:
                    return rc
            from services.edge.training import reader_train

            rc = int(reader_train.main(stage_args))
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
