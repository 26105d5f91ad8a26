"""`platewatch registry`: sites, nodes and cameras, until the operator web app lands.

What the correlator needs to know about the places that report to it:
- a **site**'s location (impossible travel compares only sites with one), time zone, retention
  and privacy mode;
- a **node**'s site and Ed25519 public key (its events must then be signed), or that it must
  sign;
- a **camera**'s site, node and whether it guards a gate (its reads get a `GateDecision`).

`site`, `node` and `camera` create the record or change only the fields given. Every change is
written to the audit log with each changed field's old and new value (a camera's row is keyed by
its id and names it as SITE/CAMERA), and announced on Redis, so running correlators reload their
registry at once (instead of at the hourly full reload).

Edge nodes do not sign their events yet (the edge issue): register a node's key once it does.
`--public-key` makes the node's unsigned events refused.
"""

from __future__ import annotations

import argparse
import sys
import zoneinfo
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.correlator.announce import announce
from services.correlator.config import CorrelatorSettings
from services.correlator.rules import RuleConfigError, SiteLocation
from shared.errors import ConfigError, PayloadError, TopicError
from shared.events import utc_now
from shared.settings import load_settings
from shared.signing import load_public_key
from shared.store import models as m
from shared.store import repository as repo
from shared.store.db import make_engine, session_factory
from shared.topics import check_slug

PROG = "platewatch registry"
MAX_NAME = 128  # names and --actor (the columns' width; `platewatch lists` checks with it too)
MAX_RETENTION_DAYS = 36_500  # a century: more is a typo, and overflows date arithmetic
# Time zone names that are files of the host's zone database, not zones to configure.
_NOT_ZONES = ("localtime", "posixrules", "Factory")
# What a created record's audit row lists, besides the fields given.
_AUDITED = {
    "site": ("name", "latitude", "longitude", "timezone", "retention_days", "privacy_mode"),
    "node": ("site_id", "public_key", "require_signature"),
    "camera": ("site_id", "slug", "name", "node_id", "is_gate"),
}


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
    try:  # the impossible-travel rule's own check of a site's coordinates
        SiteLocation("", lat, lon)
    except RuleConfigError as exc:
        raise RegistryError("--location", text, exc.reason) from exc
    return lat, lon


def check_timezone(name: str) -> str:
    """An IANA time zone name (e.g. Europe/Berlin); RegistryError naming `--timezone`."""
    if (
        name in _NOT_ZONES
        or name.startswith(("posix/", "right/"))
        or name not in zoneinfo.available_timezones()
    ):
        raise RegistryError("--timezone", name, "not an IANA zone, e.g. Europe/Berlin")
    return name


def check_name(flag: str, value: str) -> str:
    """A display name or actor: at most MAX_NAME characters; RegistryError naming `flag`."""
    if len(value) > MAX_NAME:
        raise RegistryError(flag, value[:40] + "...", f"at most {MAX_NAME} characters")
    return value


def check_retention(days: int) -> int | None:
    """--retention-days: 0 is the global default (None), else 1..MAX_RETENTION_DAYS."""
    if not 0 <= days <= MAX_RETENTION_DAYS:
        raise RegistryError(
            "--retention-days", days, f"want 1..{MAX_RETENTION_DAYS}, or 0 for the default"
        )
    return days or None


def check_public_key(b64: str) -> str:
    """A base64 raw 32-byte Ed25519 public key; RegistryError naming `--public-key`."""
    try:
        load_public_key(b64, "--public-key")
    except ConfigError as exc:
        raise RegistryError("--public-key", b64, "not a base64 raw 32-byte Ed25519 key") from exc
    return b64


def slug(flag: str, value: str) -> str:
    """A site, node or camera slug as topics use them; RegistryError naming `flag`."""
    try:
        return check_slug(flag, value)
    except TopicError as exc:
        raise RegistryError(flag, value, exc.reason) from exc


def apply_changes(record: Any, changes: dict[str, Any]) -> dict[str, Any]:
    """Set `changes` on `record`; returns {field: [old, new]} for the fields that changed."""
    changed: dict[str, Any] = {}
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
        changes["name"] = check_name("--name", args.name)
    if args.location is not None:
        changes["latitude"], changes["longitude"] = parse_location(args.location)
    if args.no_location:
        changes["latitude"] = changes["longitude"] = None
    if args.timezone is not None:
        changes["timezone"] = check_timezone(args.timezone)
    if args.retention_days is not None:
        changes["retention_days"] = check_retention(args.retention_days)
    if args.privacy is not None:
        changes["privacy_mode"] = args.privacy
    return changes


def created(kind: str, record: Any) -> dict[str, list[Any]]:
    """The audit details of a new record: every audited field, from nothing to its value."""
    return {name: [None, getattr(record, name)] for name in _AUDITED[kind]}


Outcome = tuple[str, str, dict[str, Any]]  # created/updated, audit target id, audit details


def _set_site(s: Session, args: argparse.Namespace, now: Any) -> Outcome:
    site_id = slug("SITE", args.slug)
    changes = _site_changes(args)
    site = s.get(m.Site, site_id)
    if site is None:
        site = m.Site(id=site_id, name=site_id, timezone="UTC", privacy_mode=False, created_at=now)
        apply_changes(site, changes)
        s.add(site)
        return "created", site_id, created("site", site)
    return "updated", site_id, apply_changes(site, changes)


def _existing_site(s: Session, flag: str, value: str) -> str:
    site_id = slug(flag, value)
    if s.get(m.Site, site_id) is None:
        raise RegistryError(flag, value, f"no such site (add it with `{PROG} site {value}`)")
    return site_id


def _set_node(s: Session, args: argparse.Namespace, now: Any) -> Outcome:
    node_id = slug("NODE", args.slug)
    changes: dict[str, Any] = {}
    if args.site is not None:
        changes["site_id"] = _existing_site(s, "--site", args.site)
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
        node = m.Node(id=node_id, site_id=changes["site_id"], require_signature=False)
        apply_changes(node, changes)
        s.add(node)
        return "created", node_id, created("node", node)
    moved = changes.get("site_id", node.site_id)
    if moved != node.site_id:
        elsewhere = s.scalars(
            select(m.Camera).where(m.Camera.node_id == node_id, m.Camera.site_id != moved)
        ).all()
        if elsewhere:
            names = ", ".join(f"{c.site_id}/{c.slug}" for c in elsewhere)
            raise RegistryError(
                "--site", args.site, f"cameras of another site use this node: {names}"
            )
    return "updated", node_id, apply_changes(node, changes)


def _set_camera(s: Session, args: argparse.Namespace, now: Any) -> Outcome:
    """Audited by the camera's id (SITE/CAMERA can be longer than the audit's target column);
    the details name it."""
    site_id = _existing_site(s, "SITE", args.site)
    cam_slug = slug("CAMERA", args.slug)
    changes: dict[str, Any] = {}
    if args.name is not None:
        changes["name"] = check_name("--name", args.name)
    if args.no_node:
        changes["node_id"] = None
    if args.node is not None:
        node = s.get(m.Node, slug("--node", args.node))
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
        apply_changes(camera, changes)
        s.add(camera)
        s.flush()  # its id
        return "created", str(camera.id), created("camera", camera)
    changed = apply_changes(camera, changes)
    if changed:
        changed["camera"] = f"{site_id}/{cam_slug}"
    return "updated", str(camera.id), changed


def _show(s: Session) -> None:
    for site in repo.sites(s):
        where = (
            f"{site.latitude:.5f},{site.longitude:.5f}"
            if site.latitude is not None and site.longitude is not None
            else "no location"
        )
        keep = f"{site.retention_days} days" if site.retention_days else "default retention"
        privacy = ", privacy mode" if site.privacy_mode else ""
        print(
            f"site   {site.id:<20} {where:<22} {site.timezone:<20} {keep}{privacy}  {site.name!r}"
        )
    for node in s.scalars(select(m.Node).order_by(m.Node.id)):
        key = "key registered" if node.public_key else "no key"
        must = ", must sign" if node.require_signature else ""
        print(f"node   {node.id:<20} site {node.site_id:<15} {key}{must}  state {node.state}")
    for cam in s.scalars(select(m.Camera).order_by(m.Camera.site_id, m.Camera.slug)):
        gate = "guards a gate" if cam.is_gate else "-"
        print(
            f"camera {cam.site_id + '/' + cam.slug:<30} node {cam.node_id or '-':<15} {gate}"
            f"  {cam.name!r}"
        )


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
        help="Dead-letter this node's unsigned events (with no key registered, every event).",
    )
    camera = sub.add_parser("camera", help="Add a camera or change its fields.")
    camera.add_argument("site")
    camera.add_argument("slug")
    camera.add_argument("--name")
    which = camera.add_mutually_exclusive_group()
    which.add_argument("--node", help="The node that reads this camera (of the same site).")
    which.add_argument("--no-node", action="store_true", help="Forget the camera's node.")
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
        check_name("--actor", args.actor)
        settings = load_settings(CorrelatorSettings, args.config)
    except (ConfigError, RegistryError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    engine = make_engine(settings.db)
    sessions = session_factory(engine)
    now = utc_now()
    warning = ""
    try:
        with sessions.begin() as s:
            if args.action == "show":
                _show(s)
                return 0
            outcome, target, changed = _COMMANDS[args.action](s, args, now)
            name = f"{args.site}/{args.slug}" if args.action == "camera" else target
            if not changed:
                print(f"{args.action} {name}: nothing to change")
                return 0
            repo.audit(s, now, args.actor, f"registry.{args.action}", args.action, target, changed)
            if args.action == "node":
                node = s.get(m.Node, target)
                if node is not None and node.require_signature and not node.public_key:
                    warning = "it must sign but has no key: every event from it is refused"
    except RegistryError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    fields = sorted(k for k in changed if k != "camera")
    print(f"{outcome} {args.action} {name}: {', '.join(fields)}")
    if warning:
        print(f"{PROG}: warning: node {target}: {warning}", file=sys.stderr)
    announce(settings, PROG, lambda state: state.publish_registry_change())
    return 0
