"""Announcing a committed list or registry change to running correlators (the CLIs' side).

The change is already in the database when it is announced, so a Redis that is unset, down or
slow must not make the command fail or hang: it is told what happens instead (the correlators
pick the change up at their next full reload, `matching.reload_interval_s`, or restart).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import redis

from services.correlator.config import CorrelatorSettings
from services.correlator.state import CrossSiteState

TIMEOUT_S = 5.0


def announce(
    settings: CorrelatorSettings, prog: str, send: Callable[[CrossSiteState], int]
) -> bool:
    """`send(state)` on the configured Redis; False (with a note on stderr) when it could not."""
    later = (
        "running correlators pick it up at their next full reload "
        f"(every {settings.matching.reload_interval_s:g} s) or restart"
    )
    if not settings.redis.url:
        print(f"{prog}: no redis.url set: {later}", file=sys.stderr)
        return False
    client = redis.Redis.from_url(
        settings.redis.url, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S
    )
    try:
        send(CrossSiteState(client, settings.redis.key_prefix))
    except (redis.RedisError, OSError) as exc:
        print(f"{prog}: saved, but not announced ({exc}): {later}", file=sys.stderr)
        return False
    finally:
        client.close()
    return True
