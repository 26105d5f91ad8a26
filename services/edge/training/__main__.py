"""`python -m services.edge.training {detector,reader,all} [args...]`: reproduce the models."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    usage = "usage: python -m services.edge.training {detector,reader,all} [args...]"
    if not argv or argv[0] not in {"detector", "reader", "all"}:
        print(usage, file=sys.stderr)
        return 2
    what, rest = argv[0], argv[1:]
    rc = 0
    if what in {"detector", "all"}:
        from services.edge.training import detector_train

        rc = detector_train.main(rest if what == "detector" else [])
    if rc == 0 and what in {"reader", "all"}:
        from services.edge.training import reader_train  # written by the reader's owner

        rc = reader_train.main(rest if what == "reader" else [])
    return rc


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
