"""Every MQTT topic platewatch uses: one build_* / parse_* pair per topic and direction.

No other module writes a topic string. The scheme (root defaults to ``platewatch``):

    {root}/v1/{site}/{camera}/plate              PlateRead, edge -> correlator, QoS 1
    {root}/v1/{site}/{node}/status               NodeStatus, retained, last will, QoS 1
    {root}/v1/alerts/{site}/{severity}           Alert, correlator -> operators, QoS 1
    {root}/v1/{site}/{gate}/decision             GateDecision, correlator -> gate, QoS 1
    {root}/v1/{site}/{node}/command              commands to a node (reserved), QoS 1
    {root}/v1/deadletter/{service}               rejected payloads with the reason, QoS 1

Consumers that scale out use MQTT 5 shared subscriptions: ``$share/{group}/{filter}``.
A test or a tenant uses its own root (``platewatch-test-<uuid>``) so that nothing crosses.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Final

from shared.errors import TopicError

DEFAULT_ROOT: Final = "platewatch"
VERSION: Final = "v1"
SEVERITIES: Final = ("info", "low", "medium", "high", "critical")
RESERVED_SLUGS: Final = frozenset({"alerts", "deadletter", "+", "#"})
SLUG_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_SLUG = re.compile(SLUG_PATTERN)
_ROOT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_GROUP = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class PlateTopic:
    site: str
    camera: str


@dataclass(frozen=True)
class StatusTopic:
    site: str
    node: str


@dataclass(frozen=True)
class AlertTopic:
    site: str
    severity: str


@dataclass(frozen=True)
class DecisionTopic:
    site: str
    gate: str


@dataclass(frozen=True)
class CommandTopic:
    site: str
    node: str


def check_slug(kind: str, value: str) -> str:
    """A site, camera, node or gate id: lower case, digits, '-' and '_', not reserved."""
    if not _SLUG.fullmatch(value) or value in RESERVED_SLUGS:
        raise TopicError(value, f"{kind} must match {SLUG_PATTERN} and not be reserved")
    return value


def check_root(root: str) -> str:
    if not _ROOT.fullmatch(root):
        raise TopicError(root, "root must be one topic level of letters, digits, '_', '-', '.'")
    return root


def _split(topic: str, root: str, length: int, what: str) -> list[str]:
    parts = topic.split("/")
    if len(parts) != length or parts[0] != root or parts[1] != VERSION:
        raise TopicError(topic, f"not a {what} topic under {root}/{VERSION}")
    return parts


# -- plate reads ---------------------------------------------------------------------------
def plate_topic(site: str, camera: str, root: str = DEFAULT_ROOT) -> str:
    return "/".join(
        (check_root(root), VERSION, check_slug("site", site), check_slug("camera", camera), "plate")
    )


@functools.lru_cache(maxsize=4096)  # one topic per camera; each event's topic is checked
def parse_plate_topic(topic: str, root: str = DEFAULT_ROOT) -> PlateTopic:
    p = _split(topic, root, 5, "plate")
    if p[4] != "plate" or p[2] in RESERVED_SLUGS:
        raise TopicError(topic, "not a plate topic")
    return PlateTopic(site=check_slug("site", p[2]), camera=check_slug("camera", p[3]))


def plate_filter(root: str = DEFAULT_ROOT, site: str = "+") -> str:
    """Subscription filter for plate reads of one site, or all sites."""
    site_level = site if site == "+" else check_slug("site", site)
    return f"{check_root(root)}/{VERSION}/{site_level}/+/plate"


# -- node status ---------------------------------------------------------------------------
def status_topic(site: str, node: str, root: str = DEFAULT_ROOT) -> str:
    return "/".join(
        (check_root(root), VERSION, check_slug("site", site), check_slug("node", node), "status")
    )


def parse_status_topic(topic: str, root: str = DEFAULT_ROOT) -> StatusTopic:
    p = _split(topic, root, 5, "status")
    if p[4] != "status":
        raise TopicError(topic, "not a status topic")
    return StatusTopic(site=check_slug("site", p[2]), node=check_slug("node", p[3]))


def status_filter(root: str = DEFAULT_ROOT) -> str:
    return f"{check_root(root)}/{VERSION}/+/+/status"


# -- alerts --------------------------------------------------------------------------------
def alert_topic(site: str, severity: str, root: str = DEFAULT_ROOT) -> str:
    if severity not in SEVERITIES:
        raise TopicError(severity, f"severity must be one of {', '.join(SEVERITIES)}")
    return "/".join((check_root(root), VERSION, "alerts", check_slug("site", site), severity))


def parse_alert_topic(topic: str, root: str = DEFAULT_ROOT) -> AlertTopic:
    p = _split(topic, root, 5, "alert")
    if p[2] != "alerts" or p[4] not in SEVERITIES:
        raise TopicError(topic, "not an alert topic")
    return AlertTopic(site=check_slug("site", p[3]), severity=p[4])


def alert_filter(root: str = DEFAULT_ROOT, site: str = "+") -> str:
    site_level = site if site == "+" else check_slug("site", site)
    return f"{check_root(root)}/{VERSION}/alerts/{site_level}/+"


# -- gate decisions ------------------------------------------------------------------------
def decision_topic(site: str, gate: str, root: str = DEFAULT_ROOT) -> str:
    return "/".join(
        (check_root(root), VERSION, check_slug("site", site), check_slug("gate", gate), "decision")
    )


def parse_decision_topic(topic: str, root: str = DEFAULT_ROOT) -> DecisionTopic:
    p = _split(topic, root, 5, "decision")
    if p[4] != "decision":
        raise TopicError(topic, "not a decision topic")
    return DecisionTopic(site=check_slug("site", p[2]), gate=check_slug("gate", p[3]))


def decision_filter(root: str = DEFAULT_ROOT, site: str = "+") -> str:
    site_level = site if site == "+" else check_slug("site", site)
    return f"{check_root(root)}/{VERSION}/{site_level}/+/decision"


# -- node commands -------------------------------------------------------------------------
def command_topic(site: str, node: str, root: str = DEFAULT_ROOT) -> str:
    return "/".join(
        (check_root(root), VERSION, check_slug("site", site), check_slug("node", node), "command")
    )


def parse_command_topic(topic: str, root: str = DEFAULT_ROOT) -> CommandTopic:
    p = _split(topic, root, 5, "command")
    if p[4] != "command":
        raise TopicError(topic, "not a command topic")
    return CommandTopic(site=check_slug("site", p[2]), node=check_slug("node", p[3]))


# -- dead letters --------------------------------------------------------------------------
def deadletter_topic(service: str, root: str = DEFAULT_ROOT) -> str:
    return "/".join((check_root(root), VERSION, "deadletter", check_slug("service", service)))


def parse_deadletter_topic(topic: str, root: str = DEFAULT_ROOT) -> str:
    p = _split(topic, root, 4, "dead-letter")
    if p[2] != "deadletter":
        raise TopicError(topic, "not a dead-letter topic")
    return check_slug("service", p[3])


# -- shared subscriptions ------------------------------------------------------------------
def shared_subscription(group: str, topic_filter: str) -> str:
    """MQTT 5 shared subscription: the broker hands each message to one member of the group."""
    if not _GROUP.fullmatch(group):
        raise TopicError(group, "share group must be 1-64 letters, digits, '_' or '-'")
    return f"$share/{group}/{topic_filter}"


def parse_shared_subscription(subscription: str) -> tuple[str, str]:
    """(group, filter) of a ``$share/group/filter`` subscription."""
    parts = subscription.split("/", 2)
    if len(parts) != 3 or parts[0] != "$share" or not _GROUP.fullmatch(parts[1]) or not parts[2]:
        raise TopicError(subscription, "not a $share/{group}/{filter} subscription")
    return parts[1], parts[2]


#: Every topic the contract has, for the generated docs: (name, template, payload, qos, retained).
TOPIC_TABLE: Final = (
    ("plate", "{root}/v1/{site}/{camera}/plate", "PlateRead", 1, False),
    ("status", "{root}/v1/{site}/{node}/status", "NodeStatus", 1, True),
    ("alert", "{root}/v1/alerts/{site}/{severity}", "Alert", 1, False),
    ("decision", "{root}/v1/{site}/{gate}/decision", "GateDecision", 1, False),
    ("command", "{root}/v1/{site}/{node}/command", "(reserved for the edge issue)", 1, False),
    ("deadletter", "{root}/v1/deadletter/{service}", "DeadLetter", 1, False),
)


def deadletter_filter(root: str = DEFAULT_ROOT) -> str:
    """Subscription filter for the dead letters of every service."""
    return f"{check_root(root)}/{VERSION}/deadletter/+"
