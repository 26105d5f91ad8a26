"""`platewatch registry`: sites, nodes and cameras, until the operator web app lands.

What the correlator needs to know about the places that report to it:
- a **site**'s location (impossible travel compares only sites with one), time zone, retention
  and privacy mode;
- a **node**'s site and Ed25519 public key (its events must then be signed), or that it must
  sign;
- a **camera**'s site, node and whether it guards a gate (its reads get a `GateDecision`).

`site`, `node` and `camera` create the record or change only the fields given. Every change is
written to the audit log with each changed field's old and new value, and announced on Redis,
so running correlators reload their registry at once (instead of at the hourly full reload).
"""

from __future__ import annotations

import argparse
import math
import sys
import zoneinfo
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.correlator.config import CorrelatorSettings
from services.correlator.state import CrossSiteState
from shared.errors import ConfigError, PayloadError, TopicError
from shared.events import utc_now
from shared.settings import load_settings
from shared.signing import load_public_key
from shared.store import models as m
from shared.store import repository as repo
from shared.store.db import make_engine, session_factory
from shared.topics import check_slug

PROG = "platewatch registry"


class RegistryError(PayloadError):
    """A bad value or a missing record: names the field."""


# -- pure checks (no I/O) ----------------------------------------------------------------------
def parse_location(text: str) -> tuple[float, float]:
    """'LAT,LON' in WGS 84 degrees -> (lat, lon); RegistryError naming `--location` otherwise."""
    parts = text.split(",")
    try:
        lat, lon = (float(p) for p in parts)
    except ValueError as exc:
        raise RegistryError("--location", text, "want LAT,LON in degrees") from exc
    if not (math.isfinite(lat) and -90.0 <= lat <= 90.0):
        raise RegistryError("--location", text, "latitude must be in -90..90")
    if not (math.isfinite(lon) and -180.0 <= lon <= 180.0):
        raise RegistryError("--location", text, "longitude must be in -180..180")
    return lat, lon


def check_timezone(name: str) -> str:
    """An IANA time zone name (e.g. Europe/Berlin); RegistryError naming `--timezone`."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise RegistryError("--timezone", name, "not an IANA zone, e.g. Europe/Berlin") from exc
    return name


def check_public_key(b64: str) -> str:
    """A base64 raw 32-byte Ed25519 public key; RegistryError naming `--public-key`."""
    try:
        load_public_key(b64, "--public-key")
    except ConfigError as exc:
        raise RegistryError("--public-key", b64, "not a base64 raw 32-byte Ed25519 key") from exc
    return b64


def slug(kind: str, value: str) -> str:
    """A site, node or camera slug as topics use them; RegistryError naming the kind."""
    try:
        return check_slug(kind, value)
    except TopicError as exc:
        raise RegistryError(kind, value, str(exc)) from exc


def apply_changes(record: Any, changes: dict[str, Any]) -> dict[str, list[Any]]:
    """Set `changes` on `record`; returns {field: [old, new]} for the fields that changed."""
    changed: dict[str, list[Any]] = {}
    for name, value in changes.items():
        old = getattr(record, name)
        if old != value:
            changed[name] = [old, value]
            setattr(record, name, value)
    return changed


# -- the commands --------------------------------------------------------------------------
def _site_changes(args: argparse.Namespace) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if args.name is not None:
        changes["name"] = args.name
    if args.location is not None:
        changes["latitude"], changes["longitude"] = parse_location(args.location)
    if args.no_location:
        changes["latitude"] = changes["longitude"] = None
    if args.timezone is not None:
        changes["timezone"] = check_timezone(args.timezone)
    if args.retention_days is not None:
        if args.retention_days < 0:
            raise RegistryError("--retention-days", args.retention_days, "want 0 or more")
        changes["retention_days"] = args.retention_days or None  # 0: the global default
    if args.privacy is not None:
        changes["privacy_mode"] = args.privacy
    return changes


def _set_site(s: Session, args: argparse.Namespace, now: Any) -> tuple[str, dict[str, Any]]:
    site_id = slug("site", args.slug)
    changes = _site_changes(args)
    site = s.get(m.Site, site_id)
    if site is None:
        site = m.Site(id=site_id, name=site_id, timezone="UTC", created_at=now)
        s.add(site)
        return "created", {"id": site_id, **apply_changes(site, changes)}
    return "updated", apply_changes(site, changes)


def _existing_site(s: Session, value: str) -> str:
    site_id = slug("site", value)
    if s.get(m.Site, site_id) is None:
        raise RegistryError("--site", value, f"no such site (add it with `{PROG} site {value}`)")
    return site_id


def _set_node(s: Session, args: argparse.Namespace, now: Any) -> tuple[str, dict[str, Any]]:
    node_id = slug("node", args.slug)
    changes: dict[str, Any] = {}
    if args.site is not None:
        changes["site_id"] = _existing_site(s, args.site)
    if args.public_key is not None:
        changes["public_key"] = check_public_key(args.public_key)
    if args.no_key:
        changes["public_key"] = None
    if args.require_signature is not None:
        changes["require_signature"] = args.require_signature
    elif args.public_key is not None:
        changes["require_signature"] = True  # a key is pointless if unsigned events still pass
    node = s.get(m.Node, node_id)
    if node is None:
        if "site_id" not in changes:
            raise RegistryError("--site", None, "a new node needs its site")
        node = m.Node(id=node_id, site_id=changes["site_id"])
        s.add(node)
        return "created", {"id": node_id, **apply_changes(node, changes)}
    return "updated", apply_changes(node, changes)


def _set_camera(s: Session, args: argparse.Namespace, now: Any) -> tuple[str, dict[str, Any]]:
    site_id = _existing_site(s, args.site)
    cam_slug = slug("camera", args.slug)
    changes: dict[str, Any] = {}
    if args.name is not None:
        changes["name"] = args.name
    if args.node is not None:
        node = s.get(m.Node, slug("node", args.node))
        if node is None:
            raise RegistryError("--node", args.node, f"no such node (add it with `{PROG} node`)")
        if node.site_id != site_id:
            raise RegistryError("--node", args.node, f"registered at site {node.site_id!r}")
        changes["node_id"] = node.id
    if args.gate is not None:
        changes["is_gate"] = args.gate
    camera = s.scalars(
        select(m.Camera).where(m.Camera.site_id == site_id, m.Camera.slug == cam_slug)
    ).first()
    if camera is None:
        camera = m.Camera(site_id=site_id, slug=cam_slug, name=cam_slug, is_gate=False)
        s.add(camera)
        return "created", {"site": site_id, "slug": cam_slug, **apply_changes(camera, changes)}
    return "updated", apply_changes(camera, changes)


def _show(s: Session) -> None:
    for site in repo.sites(s):
        where = (
            f"{site.latitude:.5f},{site.longitude:.5f}"
            if site.latitude is not None and site.longitude is not None
            else "no location"
        )
        keep = f"{site.retention_days} days" if site.retention_days else "default retention"
        privacy = ", privacy mode" if site.privacy_mode else ""
        print(f"site   {site.id:<20} {where:<22} {site.timezone:<20} {keep}{privacy}")
    for node in s.scalars(select(m.Node).order_by(m.Node.id)):
        key = "key registered" if node.public_key else "no key"
        must = ", must sign" if node.require_signature else ""
        print(f"node   {node.id:<20} site {node.site_id:<15} {key}{must}  state {node.state}")
    for cam in s.scalars(select(m.Camera).order_by(m.Camera.site_id, m.Camera.slug)):
        gate = "gate" if cam.is_gate else "-"
        print(f"camera {cam.site_id + '/' + cam.slug:<30} node {cam.node_id or '-':<15} {gate}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("--config", type=Path, help="Correlator YAML (for db and redis).")
    parser.add_argument("--actor", default="cli", help="Who makes the change (audit log).")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("show", help="List sites, nodes and cameras.")
    site = sub.add_parser("site", help="Add a site or change its fields.")
    site.add_argument("slug")
    site.add_argument("--name")
    where = site.add_mutually_exclusive_group()
    where.add_argument("--location", metavar="LAT,LON", help="WGS 84 degrees, e.g. 52.52,13.40")
    where.add_argument("--no-location", action="store_true", help="Forget the location.")
    site.add_argument("--timezone", help="IANA zone, e.g. Europe/Berlin (default UTC).")
    site.add_argument(
        "--retention-days", type=int, help="Keep sightings this long (0: the global default)."
    )
    site.add_argument(
        "--privacy",
        action=argparse.BooleanOptionalAction,
        help="Keep plates of sightings without a hit only as a keyed hash.",
    )
    node = sub.add_parser("node", help="Add an edge node or change its fields.")
    node.add_argument("slug")
    node.add_argument("--site", help="The node's site (required for a new node).")
    key = node.add_mutually_exclusive_group()
    key.add_argument(
        "--public-key",
        help="Base64 raw Ed25519 key its events are verified with; sets --require-signature "
        "unless --no-require-signature is given (a rollout while nodes still send unsigned).",
    )
    key.add_argument(
        "--no-key",
        action="store_true",
        help="Forget the node's key (a signature requirement stays: its events are then "
        "refused until a new key is registered).",
    )
    node.add_argument(
        "--require-signature",
        action=argparse.BooleanOptionalAction,
        help="Dead-letter this node's unsigned events.",
    )
    camera = sub.add_parser("camera", help="Add a camera or change its fields.")
    camera.add_argument("site")
    camera.add_argument("slug")
    camera.add_argument("--name")
    camera.add_argument("--node", help="The node that reads this camera.")
    camera.add_argument(
        "--gate",
        action=argparse.BooleanOptionalAction,
        help="Guards a gate: its reads get a GateDecision (allow-list or deny).",
    )
    return parser


_COMMANDS = {"site": _set_site, "node": _set_node, "camera": _set_camera}


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    try:
        settings = load_settings(CorrelatorSettings, args.config)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    sessions = session_factory(make_engine(settings.db))
    now = utc_now()
    try:
        with sessions.begin() as s:
            if args.action == "show":
                _show(s)
                return 0
            outcome, changed = _COMMANDS[args.action](s, args, now)
            target = args.slug if args.action != "camera" else f"{args.site}/{args.slug}"
            if not changed:
                print(f"{args.action} {target}: nothing to change")
                return 0
            repo.audit(s, now, args.actor, f"registry.{args.action}", args.action, target, changed)
    except RegistryError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    print(f"{outcome} {args.action} {target}: {', '.join(sorted(changed))}")
    if settings.redis.url:
        CrossSiteState(
            redis.Redis.from_url(settings.redis.url), settings.redis.key_prefix
        ).publish_registry_change()
    return 0
