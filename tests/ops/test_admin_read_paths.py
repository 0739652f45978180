"""Read paths (``pacsai status``, ``studies``, ``/readyz``) take no write lock and migrate
nothing: a busy writer does not hold them up, a schema behind is reported, not changed."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient

from conftest import add_study, closed_port, make_settings  # type: ignore[import-not-found]
from daemon.ops.admin import create_app
from daemon.store.db import Database

REPO = Path(__file__).resolve().parents[2]


def pacsai(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSAI_")}
    env.update({"PACSAI_STORAGE__DATA_DIR": str(tmp_path / "data"),
                "PACSAI_STORAGE__MIN_FREE_BYTES": "0", "PACSAI_LISTENER__HOST": "127.0.0.1",
                "PACSAI_LISTENER__PORT": str(closed_port()), "COLUMNS": "200"})
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "daemon.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - started


def _database(tmp_path: Path, revision: str = "head") -> Database:
    db = Database(f"sqlite:///{tmp_path / 'data' / 'pacsai.db'}")
    command.upgrade(db.alembic_config(), revision)
    return db


def _revision(db: Database) -> tuple[str, ...]:
    """The database's revision, read with a plain sqlite3 connection."""
    with sqlite3.connect(db.engine.url.database) as conn:
        return tuple(r[0] for r in conn.execute("SELECT version_num FROM alembic_version"))


def _one_behind(db: Database) -> tuple[str, str]:
    script = ScriptDirectory.from_config(db.alembic_config())
    head = script.get_current_head()
    below = script.get_revision(head).down_revision
    assert isinstance(below, str)
    return head, below


def test_status_and_studies_answer_while_a_writer_holds_the_lock(tmp_path: Path) -> None:
    db = _database(tmp_path)
    sid = add_study(db, state="failed", uid="7.1", job_state="failed")
    db.dispose()
    writer = sqlite3.connect(tmp_path / "data" / "pacsai.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a listener in the middle of a write
    try:
        status, took = pacsai(tmp_path, "status", "--json")
        assert status.returncode == 1, status.stderr  # degraded: no listener runs here
        assert took < 10, took  # (busy_timeout is 30 s: taking the lock would wait that long)
        report = json.loads(status.stdout)
        assert report["studies_by_state"] == {"failed": 1}
        assert report["database_schema"]["pending_migrations"] == []
        assert [c for c in report["checks"] if c["name"] == "database"][0]["ok"]

        listed, took = pacsai(tmp_path, "studies", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert took < 10, took
        assert [r["id"] for r in json.loads(listed.stdout)] == [sid]
        shown, took = pacsai(tmp_path, "studies", "show", str(sid), "--json")
        assert shown.returncode == 0 and took < 10, (shown.stderr, took)
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_status_reports_a_pending_migration_and_applies_none(tmp_path: Path) -> None:
    probe = Database(f"sqlite:///{tmp_path / 'probe.db'}")
    head, below = _one_behind(probe)
    probe.dispose()
    db = _database(tmp_path, below)
    add_study(db, state="done", uid="7.2")

    status, _ = pacsai(tmp_path, "status", "--json")
    assert status.returncode == 1, status.stderr
    report = json.loads(status.stdout)
    database = [c for c in report["checks"] if c["name"] == "database"][0]
    assert not database["ok"]
    assert f"database schema is behind (at {below}, newest {head}" in database["detail"]
    assert "run `pacsai db upgrade`" in database["detail"]
    assert report["database_schema"] == {"revisions": [below], "pending_migrations": [head],
                                         "problem": database["detail"]}
    table, _ = pacsai(tmp_path, "status")
    assert table.returncode == 1 and "pacsai db upgrade" in table.stdout
    assert _revision(db) == (below,)  # not upgraded

    listed, _ = pacsai(tmp_path, "studies", "list", "--json")
    assert listed.returncode == 0, listed.stderr  # what the old schema has, with a warning
    assert "schema is behind" in listed.stderr
    refused, _ = pacsai(tmp_path, "cancel", "1")  # actions do not write to an old schema
    assert refused.returncode == 3 and "pacsai db upgrade" in refused.stderr
    assert _revision(db) == (below,)

    upgraded, _ = pacsai(tmp_path, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert _revision(db) == (head,)
    again = json.loads(pacsai(tmp_path, "status", "--json")[0].stdout)
    assert [c for c in again["checks"] if c["name"] == "database"][0]["ok"]
    db.dispose()


def test_readyz_reports_a_pending_migration_and_applies_none(tmp_path: Path,
                                                            listening_port: int) -> None:
    probe = Database(f"sqlite:///{tmp_path / 'probe.db'}")
    head, below = _one_behind(probe)
    probe.dispose()
    db = _database(tmp_path, below)
    settings = make_settings(tmp_path, db.url, listener={"port": listening_port})
    r = TestClient(create_app(settings, db)).get("/readyz")
    assert r.status_code == 503
    failing = {c["name"]: c["detail"] for c in r.json()["failing"]}
    assert "database" in failing and "run `pacsai db upgrade`" in failing["database"]
    assert f"at {below}, newest {head}" in failing["database"]
    assert _revision(db) == (below,)
    db.dispose()
