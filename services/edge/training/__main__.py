"""`python -m services.edge.training {detector,reader,all} [args...]`: reproduce the models.

`detector ARGS` and `reader ARGS` pass ARGS to that trainer. `all [--data DIR] [--out DIR]`
trains both with their default (seeded) settings: `--out` goes to both, `--data` to the detector
(the reader reads /work/shared/data, see reader_data.DATA_ROOT). Before the reader, `all`
regenerates the teacher pseudo-labels (reader_pseudo, needs `rapidocr-openvino`) and trains the
reader with them.
"""

from __future__ import annotations

import argparse
import sys

PSEUDO_LABELS = "work-data/reader/pseudo.jsonl"
USAGE = "usage: python -m services.edge.training {detector,reader,all} [args...]"


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"detector", "reader", "all"}:
        print(USAGE, file=sys.stderr)
        return 2
    what, rest = argv[0], argv[1:]
    det_args, reader_args = rest, rest
    if what == "all":
        ap = argparse.ArgumentParser(prog="python -m services.edge.training all")
        ap.add_argument("--data", default=None, help="shared data folder (detector)")
        ap.add_argument("--out", default=None, help="models folder (both)")
        args = ap.parse_args(rest)
        det_args = (["--data", args.data] if args.data else []) + (
            ["--out", args.out] if args.out else []
        )
        reader_args = ["--out", args.out] if args.out else []
        reader_args += ["--pseudo-labels", PSEUDO_LABELS]
    rc = 0
    if what in {"detector", "all"}:
        from services.edge.training import detector_train

        rc = detector_train.main(det_args)
    if rc == 0 and what == "all":
        from services.edge.training import reader_pseudo  # teacher labels for unread train boxes

        rc = reader_pseudo.main(["--out", PSEUDO_LABELS])
    if rc == 0 and what in {"reader", "all"}:
        from services.edge.training import reader_train  # the reader's trainer (R)

        rc = reader_train.main(reader_args)
    return rc


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
