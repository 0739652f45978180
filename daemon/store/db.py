"""Engine and sessions; schema kept current by Alembic migrations."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

_MIGRATIONS = Path(__file__).with_name("migrations")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL: readers never block the writer; NORMAL: no fsync per commit (the spool
    # files are fsynced and the spool is re-indexed on start, see daemon.recovery).
    dbapi_conn.isolation_level = None  # let us issue BEGIN IMMEDIATE ourselves
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    # Writers take the write lock at BEGIN (no SQLITE_BUSY on upgrade between processes);
    # readers begin deferred and never block anyone (WAL).
    if conn.get_execution_options().get("pacsai_read_only"):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """One engine per process; ``session()`` is a unit of work that commits on exit."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if parsed.database:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(
                url, echo=echo, connect_args={"timeout": 30, "check_same_thread": False}
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            # An unreachable server must fail in seconds, not after the OS's TCP timeout
            # (minutes), and a connection to a dead peer must be noticed; the URL may override.
            defaults = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30,
                        "keepalives_interval": 10, "keepalives_count": 3}
            connect_args = {k: v for k, v in defaults.items() if k not in parsed.query}
            self.engine = create_engine(url, echo=echo, pool_pre_ping=True, pool_size=5,
                                        connect_args=connect_args)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers = sessionmaker(
            self.engine.execution_options(pacsai_read_only=True), expire_on_commit=False
        )

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A read-write unit of work: commits on success, rolls back on error."""
        with self._sessions() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only unit of work (on SQLite it takes no write lock)."""
        with self._readers() as session, session.begin():
            yield session

    def upgrade(self) -> None:
        """Bring the schema to the newest migration."""
        command.upgrade(self.alembic_config(), "head")

    def alembic_config(self) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        cfg.attributes["engine"] = self.engine
        return cfg

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
