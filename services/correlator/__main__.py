"""`platewatch correlator`: the composition root of one correlator process."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from shared.errors import ConfigError
from shared.logs import configure_logging
from shared.settings import load_settings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="platewatch correlator",
        description="Consume plate reads on the MQTT 5 shared subscription, store each sighting "
        "once, match the watch-lists, correlate across sites and raise alerts. Run N processes "
        "with distinct `instance` names to share the load. Settings: PW_CORRELATOR_* or --config.",
    )
    parser.add_argument("--config", type=Path, help="YAML settings file.")
    parser.add_argument("--instance", help="Override `instance` (MQTT client id).")
    parser.add_argument(
        "--drain",
        action="store_true",
        help="Scale-down: take over the stopped instance's persistent session, store what it "
        "still holds, unsubscribe it from the shared group and end the session, then exit. "
        "Run it with the `--instance` of a correlator that was stopped for good.",
    )
    parser.add_argument(
        "--quiet-s",
        type=float,
        default=3.0,
        help="With --drain: finish once no message has arrived for this long.",
    )
    args = parser.parse_args(argv)
    overrides = {"instance": args.instance} if args.instance else {}
    from services.correlator.config import CorrelatorSettings

    try:
        settings = load_settings(CorrelatorSettings, args.config, **overrides)
    except ConfigError as exc:
        print(f"platewatch correlator: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log.level, settings.log.json_format)
    from services.correlator.service import Correlator

    if args.drain:
        from services.correlator.service import DrainError, drain_session

        try:
            stored = drain_session(settings, quiet_s=args.quiet_s)
        except ConfigError as exc:
            print(f"platewatch correlator: {exc}", file=sys.stderr)
            return 2
        except DrainError as exc:
            print(f"platewatch correlator: drain of {settings.instance}: {exc}", file=sys.stderr)
            return 1
        print(f"drained instance {settings.instance}: {stored} events stored, session ended")
        return 0
    try:
        correlator = Correlator(settings)
        correlator.start()
    except ConfigError as exc:
        print(f"platewatch correlator: {exc}", file=sys.stderr)
        return 2

    def _stop(signum: int, frame: FrameType | None) -> None:
        correlator.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    correlator.run_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
