"""Engine and sessions; schema kept current by Alembic migrations.

Only the services' start (``serve``, ``listener``, ``worker``) and ``pacsai db
upgrade`` migrate. Read paths (``pacsai status``, ``studies``, the dashboard,
``/readyz``) use :meth:`Database.read` and :meth:`Database.pending_migrations`:
they take no write lock and report a schema that is behind instead of changing it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util.exc import CommandError
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

_MIGRATIONS = Path(__file__).with_name("migrations")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL: readers never block the writer; NORMAL: no fsync per commit (the spool
    # files are fsynced and the spool is re-indexed on start, see daemon.ingest.recovery).
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


class SchemaUnknown(RuntimeError):
    """The database carries a migration this code does not know."""


class Database:
    """One engine per process; ``session()`` is a unit of work that commits on exit."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if parsed.database:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # hide_parameters: error messages never quote a statement's values (UIDs, names)
            self.engine: Engine = create_engine(
                url, echo=echo, hide_parameters=True,
                connect_args={"timeout": 30, "check_same_thread": False}
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
                                        hide_parameters=True, connect_args=connect_args)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_engine = self.engine.execution_options(pacsai_read_only=True)
        self._readers = sessionmaker(self._read_engine, expire_on_commit=False)
        self._script: ScriptDirectory | None = None

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
        """Bring the schema to the newest migration (service start and ``pacsai db upgrade``)."""
        command.upgrade(self.alembic_config(), "head")

    def script(self) -> ScriptDirectory:
        if self._script is None:
            self._script = ScriptDirectory.from_config(self.alembic_config())
        return self._script

    def current_revisions(self) -> tuple[str, ...]:
        """The database's Alembic revision(s); () for a database with no schema yet."""
        with self._read_engine.connect() as conn:
            return tuple(MigrationContext.configure(conn).get_current_heads())

    def pending_migrations(self) -> list[str]:
        """Migrations not yet applied, oldest first ([] when current). Reads only: no
        write lock, nothing migrated. Raises :class:`SchemaUnknown` for a revision this
        code does not know (a database migrated by a newer pacsai)."""
        current = self.current_revisions()
        script = self.script()
        try:
            revisions = list(script.iterate_revisions(script.get_heads(), current or "base"))
        except (CommandError, RevisionError) as exc:
            raise SchemaUnknown(
                f"database schema revision {', '.join(current)} is unknown to this pacsai "
                f"(newest known: {', '.join(script.get_heads())}); is a newer version running?"
            ) from exc
        return [r.revision for r in reversed(revisions)]

    def schema_problem(self) -> str | None:
        """None when the schema is current; else what an operator should read and do."""
        try:
            pending = self.pending_migrations()
        except SchemaUnknown as exc:
            return str(exc)
        if not pending:
            return None
        current = self.current_revisions()
        at = f"at {', '.join(current)}" if current else "no schema yet"
        return (f"database schema is behind ({at}, newest {pending[-1]}, "
                f"{len(pending)} migration(s) pending): run `pacsai db upgrade`")

    def alembic_config(self) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        cfg.attributes["engine"] = self.engine
        return cfg

    def ping(self) -> None:
        """Raise unless the database answers (a read: no write lock on SQLite)."""
        with self._read_engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
