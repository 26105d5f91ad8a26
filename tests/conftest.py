"""Shared fixtures: real broker, databases and Redis, isolated per test.

Services are never mocked. A test that needs one fails (never skips) when it is unreachable;
`make test` starts them first. Isolation: MQTT topic root and client ids per test, a PostgreSQL
schema (or SQLite file) per test, a Redis key prefix per test.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.settings import MqttSettings, RedisSettings

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--mqtt",
        default=os.environ.get("PW_TEST_MQTT", "127.0.0.1:1883"),
        help="host:port of the test MQTT 5 broker",
    )
    parser.addoption(
        "--redis-url",
        default=os.environ.get("PW_TEST_REDIS", "redis://127.0.0.1:6379/15"),
        help="Redis URL for tests (a database number of its own)",
    )
    parser.addoption(
        "--db-url",
        action="append",
        default=None,
        help="database URL(s) the db tests run on; default: SQLite and PostgreSQL",
    )


def _require_port(host: str, port: int, what: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        pytest.fail(
            f"{what} is not reachable at {host}:{port} ({exc}); run `make services`", pytrace=False
        )


@pytest.fixture(scope="session")
def broker(pytestconfig: pytest.Config) -> tuple[str, int]:
    host, _, port = str(pytestconfig.getoption("--mqtt")).rpartition(":")
    _require_port(host, int(port), "the MQTT broker")
    return host, int(port)


@pytest.fixture
def topic_root() -> str:
    return f"platewatch-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def mqtt_settings(broker: tuple[str, int], topic_root: str) -> MqttSettings:
    return MqttSettings(
        host=broker[0],
        port=broker[1],
        topic_root=topic_root,
        reconnect_min_s=0.5,
        reconnect_max_s=2.0,
    )


@pytest.fixture
def client_id() -> str:
    return f"pwtest-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def redis_url(pytestconfig: pytest.Config) -> str:
    url = str(pytestconfig.getoption("--redis-url"))
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {url} ({exc}); run `make services`", pytrace=False)
    return url


@pytest.fixture
def redis_settings(redis_url: str) -> Iterator[RedisSettings]:
    import redis

    prefix = f"pwtest:{uuid.uuid4().hex[:10]}:"
    yield RedisSettings(url=redis_url, key_prefix=prefix)
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _db_urls(config: pytest.Config) -> list[str]:
    urls: list[str] | None = config.getoption("--db-url")
    if urls:
        return urls
    env = os.environ.get("PW_TEST_DB_URLS")
    if env:
        return env.split(",")
    return ["sqlite", os.environ.get("PW_TEST_PG", DEFAULT_PG)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_url" in metafunc.fixturenames:
        urls = _db_urls(metafunc.config)
        ids = ["sqlite" if u.startswith("sqlite") else "postgresql" for u in urls]
        metafunc.parametrize("db_base_url", urls, ids=ids, indirect=False)


@pytest.fixture
def db_url(db_base_url: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database per test: an SQLite file, or a PostgreSQL schema of its own."""
    if db_base_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'platewatch.db'}"
        return
    yield from _pg_schema(db_base_url)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL schema of its own, for tests that only make sense on a server."""
    yield from _pg_schema(os.environ.get("PW_TEST_PG", DEFAULT_PG))


def _pg_schema(db_base_url: str) -> Iterator[str]:
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(db_base_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {db_base_url} ({exc}); run `make services`",
            pytrace=False,
        )
    admin.dispose()  # a test may restart the server: teardown connects afresh
    sep = "&" if "?" in db_base_url else "?"
    yield f"{db_base_url}{sep}options=-csearch_path%3D{schema}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()
