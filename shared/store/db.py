"""Engine and session factory: the database adapter, built in a composition root."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import DbSettings


def make_engine(settings: DbSettings, pre_ping: bool = True) -> Engine:
    """An engine for the URL; SQLite gets WAL, foreign keys and a busy timeout.

    `pre_ping` tests each pooled PostgreSQL connection with a round trip when it is checked
    out. A caller that retries every transaction on connection errors anyway (the correlator's
    ingest) can turn it off: SQLAlchemy drops the whole pool on the first disconnect error."""
    url = make_url(settings.url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=settings.echo, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(
        url, echo=settings.echo, pool_size=settings.pool_size, pool_pre_ping=pre_ping
    )


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
