"""The production deployment files under deploy/: they load, parse and say what they mean to.

The broker files also run on a real mosquitto in tests/integration/test_broker_acl.py; here a
small evaluator of mosquitto's ACL rules (as checked there against mosquitto 2.0) keeps the
intended grants and denials readable as a table.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from services.correlator.config import CorrelatorSettings
from shared.settings import load_settings
from shared.topics import alert_topic, decision_topic, plate_topic, status_topic

pytestmark = pytest.mark.shared

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
EXAMPLE = DEPLOY / "config" / "correlator.example.yaml"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
SYSTEMD = DEPLOY / "systemd"


@pytest.fixture(autouse=True)
def _no_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith("PW_CORRELATOR_"):
            monkeypatch.delenv(name)


# -- correlator.example.yaml -------------------------------------------------------------------
def _with_tls_uncommented(text: str, ca_file: Path) -> str:
    """The example with its commented `tls:` block switched on, pointing at a real CA file."""
    out: list[str] = []
    in_block = False
    for line in text.splitlines():
        if line.startswith("  # tls:"):
            in_block = True
            out.append("  tls:")
        elif in_block and line.startswith("  #   "):
            out.append("    " + line[len("  #   ") :])
        else:
            in_block = False
            out.append(line)
    assert in_block or "  tls:" in out, "the example lost its commented tls block"
    return "\n".join(out).replace("/etc/platewatch/certs/ca.crt", str(ca_file)) + "\n"


def _field_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for name, info in model.model_fields.items():
        paths.add(prefix + name)
        annotation = info.annotation
        nested = [a for a in getattr(annotation, "__args__", (annotation,)) if a is not None]
        for candidate in nested:
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                paths |= _field_paths(candidate, f"{prefix}{name}.")
    return paths


def _key_paths(data: dict[str, Any], prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for key, value in data.items():
        paths.add(prefix + key)
        if isinstance(value, dict):
            paths |= _key_paths(value, f"{prefix}{key}.")
    return paths


def test_example_config_loads_with_production_values() -> None:
    settings = load_settings(CorrelatorSettings, EXAMPLE)
    assert settings.mqtt.port == 8883
    assert settings.mqtt.protocol == "5"
    assert settings.mqtt.client_id == ""  # N processes: the client id must come from instance
    assert settings.mqtt.password is None  # secrets live in the environment file
    assert settings.mqtt.session_expiry_s >= 3600
    assert settings.db.url.startswith("postgresql+psycopg://")
    assert settings.redis.url.startswith("redis")
    assert settings.log.json_format


def test_example_config_names_every_setting_with_tls_commented_out(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text("placeholder\n")
    text = _with_tls_uncommented(EXAMPLE.read_text(), ca_file)
    assert _key_paths(yaml.safe_load(text)) == _field_paths(CorrelatorSettings)
    switched_on = tmp_path / "correlator.yaml"
    switched_on.write_text(text)
    settings = load_settings(CorrelatorSettings, switched_on)
    assert settings.mqtt.tls is not None
    assert settings.mqtt.tls.ca_file == ca_file
    assert not settings.mqtt.tls.insecure


def test_environment_file_adds_secrets_and_instance_over_the_example(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text("placeholder\n")
    monkeypatch.setenv("PW_CORRELATOR_MQTT__PASSWORD", "s3cret")
    monkeypatch.setenv("PW_CORRELATOR_MQTT__TLS__CA_FILE", str(ca_file))
    monkeypatch.setenv("PW_CORRELATOR_INSTANCE", "correlator-2")
    settings = load_settings(CorrelatorSettings, EXAMPLE)
    assert settings.mqtt.password is not None
    assert settings.mqtt.password.get_secret_value() == "s3cret"
    assert settings.mqtt.tls is not None and settings.mqtt.tls.ca_file == ca_file
    assert settings.mqtt.host == "broker.example.org"  # the rest of the block still from YAML
    assert settings.instance == "correlator-2"
    assert load_settings(CorrelatorSettings, EXAMPLE, instance="correlator-7").instance == (
        "correlator-7"
    )


def test_broker_inflight_limit_admits_a_correlator_batch() -> None:
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    found = re.search(r"(?m)^max_inflight_messages (\d+)$", conf)
    assert found is not None
    inflight = int(found.group(1))
    settings = load_settings(CorrelatorSettings, EXAMPLE)
    assert inflight == 0 or inflight >= settings.ingest.max_inflight >= (
        settings.ingest.batch_max_rows
    )


# -- mosquitto.conf ----------------------------------------------------------------------------
def _listener_blocks(conf: str) -> dict[str, list[str]]:
    blocks: dict[str, list[str]] = {"global": []}
    current = "global"
    for raw in conf.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("listener "):
            current = line
            blocks[current] = []
        else:
            blocks[current].append(line)
    return blocks


def test_broker_conf_has_tls_listener_and_loopback_health_listener() -> None:
    blocks = _listener_blocks((DEPLOY / "mosquitto" / "mosquitto.conf").read_text())
    assert set(blocks) == {"global", "listener 8883", "listener 1883 127.0.0.1"}
    tls = blocks["listener 8883"]
    for option in ("cafile", "certfile", "keyfile"):
        (path,) = [line.split()[1] for line in tls if line.startswith(option + " ")]
        assert path.startswith("/etc/mosquitto/certs/")
    assert "allow_anonymous false" in tls
    assert "password_file /etc/mosquitto/passwd" in tls
    assert "acl_file /etc/mosquitto/acl" in tls
    assert "acl_file /etc/mosquitto/acl.health" in blocks["listener 1883 127.0.0.1"]
    glob = blocks["global"]
    assert "per_listener_settings true" in glob
    assert "persistence true" in glob
    # per-listener options before the first listener would open a default 0.0.0.0:1883
    per_listener = ("password_file", "acl_file", "allow_anonymous", "allow_zero_length_clientid")
    assert not [line for line in glob if line.split()[0] in per_listener]


# -- acl: a small evaluator of mosquitto's rules -------------------------------------------------
@dataclass
class Acl:
    """mosquitto's default ACL check: a user's deny lines first, then its grants, then patterns
    (deny first); %u/%c replace a whole level. mosquitto 2.0 grants every SUBSCRIBE and applies
    `read` to each delivery, so read here means "receives messages on this topic"."""

    users: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    patterns: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Acl:
        acl = cls()
        user: str | None = None
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keyword, _, rest = line.partition(" ")
            if keyword == "user":
                user = rest.strip()
                acl.users.setdefault(user, [])
                continue
            access, _, topic = rest.strip().partition(" ")
            if access not in ("read", "write", "readwrite", "deny"):
                access, topic = "readwrite", rest.strip()
            if keyword == "pattern":
                acl.patterns.append((access, topic))
            elif keyword == "topic":
                assert user is not None, "topic line for anonymous clients"
                acl.users[user].append((access, topic))
            else:
                raise AssertionError(f"unknown ACL line: {line}")
        return acl

    @staticmethod
    def _matches(rule: str, topic: str) -> bool:
        r, t = rule.split("/"), topic.split("/")
        for i, level in enumerate(r):
            if level == "#":
                return True
            if i >= len(t) or (level != "+" and level != t[i]):
                return False
        return len(r) == len(t)

    @classmethod
    def _decide(cls, rules: list[tuple[str, str]], topic: str, access: str) -> bool | None:
        if any(a == "deny" and cls._matches(r, topic) for a, r in rules):
            return False
        if any(a in (access, "readwrite") and cls._matches(r, topic) for a, r in rules):
            return True
        return None

    def allows(self, user: str, client_id: str, access: str, topic: str) -> bool:
        decided = self._decide(self.users.get(user, []), topic, access)
        if decided is not None:
            return decided
        levels = {"%u": user, "%c": client_id}
        patterns = [
            (a, "/".join(levels.get(level, level) for level in rule.split("/")))
            for a, rule in self.patterns
        ]
        return bool(self._decide(patterns, topic, access))


@pytest.fixture(scope="module")
def acl() -> Acl:
    return Acl.parse((DEPLOY / "mosquitto" / "acl").read_text())


NODE, OTHER = "depot-north", "depot-south"
CASES = [
    # (user, access, topic, allowed)
    (NODE, "write", plate_topic(NODE, "cam1"), True),
    (NODE, "write", status_topic(NODE, "gw1"), True),
    (NODE, "read", decision_topic(NODE, "gate1"), True),
    (NODE, "read", f"platewatch/v1/{NODE}/gw1/command", True),
    (NODE, "write", plate_topic(OTHER, "cam1"), False),
    (NODE, "write", status_topic(OTHER, "gw1"), False),
    (NODE, "read", decision_topic(OTHER, "gate1"), False),
    (NODE, "read", f"platewatch/v1/{OTHER}/gw1/command", False),
    (NODE, "read", plate_topic(NODE, "cam1"), False),
    (NODE, "read", plate_topic(OTHER, "cam1"), False),
    (NODE, "write", decision_topic(NODE, "gate1"), False),
    (NODE, "write", alert_topic(NODE, "critical"), False),
    (NODE, "read", alert_topic(NODE, "critical"), False),
    (NODE, "write", "platewatch/v1/deadletter/correlator", False),
    ("svc.correlator", "read", plate_topic(NODE, "cam1"), True),
    ("svc.correlator", "read", status_topic(OTHER, "gw1"), True),
    ("svc.correlator", "write", alert_topic(NODE, "high"), True),
    ("svc.correlator", "write", decision_topic(OTHER, "gate2"), True),
    ("svc.correlator", "write", "platewatch/v1/deadletter/correlator", True),
    ("svc.correlator", "write", plate_topic(NODE, "cam1"), False),
    ("svc.correlator", "write", "platewatch/v1/svc.correlator/cam1/plate", False),
    ("op.alice", "read", alert_topic(NODE, "critical"), True),
    ("op.alice", "read", plate_topic(NODE, "cam1"), False),
    ("op.alice", "write", alert_topic(NODE, "critical"), False),
    ("op.alice", "write", "platewatch/v1/op.alice/cam1/plate", False),
    ("svc.api", "read", alert_topic(OTHER, "low"), True),
    ("svc.api", "read", status_topic(NODE, "gw1"), True),
    ("svc.api", "write", decision_topic(NODE, "gate1"), False),
]


@pytest.mark.parametrize(("user", "access", "topic", "allowed"), CASES)
def test_acl_grants_and_denies_as_intended(
    acl: Acl, user: str, access: str, topic: str, allowed: bool
) -> None:
    assert acl.allows(user, f"{user}-client", access, topic) is allowed


def test_acl_service_and_operator_users_cannot_be_sites(acl: Acl) -> None:
    site = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
    for user, rules in acl.users.items():
        assert not site.fullmatch(user), f"{user} looks like a site slug"
        assert rules[0] == ("deny", f"platewatch/v1/{user}/#"), f"{user} lacks its deny line"


# -- docker-compose.yml ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_compose_names_the_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "mosquitto",
        "postgres",
        "redis",
        "db-upgrade",
        "correlator-1",
        "correlator-2",
    }


def test_compose_correlators_are_distinct_instances_after_the_migration(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    correlators = [n for n in services if n.startswith("correlator-")]
    assert {services[n]["environment"]["PW_CORRELATOR_INSTANCE"] for n in correlators} == set(
        correlators
    )
    for name in correlators:
        svc = services[name]
        assert svc["command"][:2] == ["platewatch", "correlator"]
        assert svc["depends_on"]["db-upgrade"]["condition"] == "service_completed_successfully"
        assert svc["environment"]["PW_CORRELATOR_MQTT__PORT"] == "8883"
    assert services["db-upgrade"]["command"] == ["platewatch", "db", "upgrade"]


def test_compose_mounts_repository_files_that_exist(compose: dict[str, Any]) -> None:
    here = COMPOSE.parent
    for svc in compose["services"].values():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("../"):  # repository files (./ ones are the operator's)
                assert (here / source).is_file(), source
    build = compose["services"]["db-upgrade"]["build"]
    assert (here / build["context"] / build["dockerfile"]).is_file()


def test_compose_health_check_escapes_the_dollar(compose: dict[str, Any]) -> None:
    test = compose["services"]["mosquitto"]["healthcheck"]["test"]
    assert "$$SYS/broker/uptime" in test  # compose would interpolate a single $SYS


# -- systemd units -----------------------------------------------------------------------------
def _unit(name: str) -> dict[str, list[str]]:
    """Key -> values (systemd allows repeated keys) over all sections."""
    values: dict[str, list[str]] = {}
    for raw in (SYSTEMD / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        values.setdefault(key, []).append(value)
    return values


UNITS = [
    "platewatch-correlator@.service",
    "platewatch-edge.service",
    "platewatch-api.service",
    "platewatch-db-upgrade.service",
]


@pytest.mark.parametrize("name", UNITS)
def test_units_are_hardened(name: str) -> None:
    unit = _unit(name)
    assert unit["User"] == ["platewatch"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["CapabilityBoundingSet"] == [""]
    assert unit["EnvironmentFile"][0].startswith("/etc/platewatch/")
    assert unit["ExecStart"][0].startswith("/opt/platewatch/venv/bin/platewatch ")


@pytest.mark.parametrize("name", UNITS[:3])
def test_long_running_units_restart_always(name: str) -> None:
    assert _unit(name)["Restart"] == ["always"]


def test_correlator_instances_run_after_the_migration() -> None:
    unit = _unit("platewatch-correlator@.service")
    assert unit["ExecStart"][0].endswith("--instance %i")
    assert "platewatch-db-upgrade.service" in unit["Requires"][0].split()
    assert "platewatch-db-upgrade.service" in unit["After"][0].split()
    upgrade = _unit("platewatch-db-upgrade.service")
    assert upgrade["Type"] == ["oneshot"]
    assert upgrade["RemainAfterExit"] == ["yes"]
    assert upgrade["ExecStart"][0].split()[1:] == ["db", "upgrade"]


@pytest.mark.parametrize("name", UNITS)
def test_units_pass_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    for unit in UNITS:  # the platewatch binary is not installed here: point at one that is
        text = (SYSTEMD / unit).read_text()
        text = text.replace("/opt/platewatch/venv/bin/platewatch", shutil.which("true") or "")
        (tmp_path / unit).write_text(text)
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / name)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    assert done.stderr.strip() == "" and done.stdout.strip() == "", done.stderr + done.stdout
