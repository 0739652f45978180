"""The CLI as a script sees it: output and exit codes (real processes, real databases)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from conftest import add_study, closed_port  # type: ignore[import-not-found]
from daemon.store.db import Database
from daemon.store.models import AuditEntry, Job

REPO = Path(__file__).resolve().parents[2]


def pacsai(tmp_path: Path, *args: str, db_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSAI_")}
    env.update({"PACSAI_STORAGE__DATA_DIR": str(tmp_path / "data"),
                "PACSAI_STORAGE__MIN_FREE_BYTES": "0", "PACSAI_LISTENER__HOST": "127.0.0.1",
                "PACSAI_LISTENER__PORT": str(closed_port()), "COLUMNS": "200"})
    if db_url:
        env["PACSAI_DATABASE__URL"] = db_url
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_status_degraded_and_unreadable_exit_codes(tmp_path: Path) -> None:
    degraded = pacsai(tmp_path, "status", "--json")
    assert degraded.returncode == 1, degraded.stderr
    report = json.loads(degraded.stdout)
    assert not report["healthy"]
    # a data dir no service has started yet: status migrates nothing, it says so
    failing = {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}
    assert list(failing) == ["database", "listener", "workers"], failing
    assert "schema is behind (no schema yet" in failing["database"]
    assert "run `pacsai db upgrade`" in failing["database"]
    table = pacsai(tmp_path, "status")
    assert table.returncode == 1 and "degraded" in table.stdout and "listener" in table.stdout

    url = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/x?connect_timeout=2"
    down = pacsai(tmp_path, "status", "--json", db_url=url)
    assert down.returncode == 3
    assert "cannot read the database" in json.loads(down.stdout)["error"]
    assert pacsai(tmp_path, "studies", "list", db_url=url).returncode == 3


def test_studies_retry_cancel_purge(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'data' / 'pacsai.db'}"
    db = Database(url)
    db.upgrade()
    sid = add_study(db, state="failed", uid="3.1", job_state="failed")
    with db.session() as s:
        job_id = s.scalar(select(Job.id).where(Job.study_id == sid))

    listed = pacsai(tmp_path, "studies", "list", "--json")
    assert listed.returncode == 0
    rows = json.loads(listed.stdout)
    assert [r["id"] for r in rows] == [sid] and "patient_name" not in rows[0]
    shown = pacsai(tmp_path, "studies", "show", str(sid))
    assert shown.returncode == 0 and "failed" in shown.stdout and "DOE" not in shown.stdout
    assert pacsai(tmp_path, "studies", "show", "999").returncode == 4
    assert "DOE" not in pacsai(tmp_path, "studies", "list").stdout

    assert pacsai(tmp_path, "retry", str(job_id)).returncode == 0
    assert pacsai(tmp_path, "retry", str(job_id)).returncode == 5  # queued now: not retryable
    assert pacsai(tmp_path, "cancel", str(job_id)).returncode == 0
    assert pacsai(tmp_path, "cancel", "999").returncode == 4
    with db.session() as s:
        assert s.get(Job, job_id).state == "cancelled"
        actions = [(a.action, a.actor.startswith("cli:")) for a in s.scalars(select(AuditEntry))]
    assert actions == [("retry", True), ("cancel", True)]

    purged = pacsai(tmp_path, "purge", "--json")
    assert purged.returncode == 0
    assert json.loads(purged.stdout)["rows_studies"] == []  # too recent to go
    db.dispose()


def test_reroute_a_not_routed_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'data' / 'pacsai.db'}"
    db = Database(url)
    db.upgrade()
    sid = add_study(db, state="not_routed", uid="3.2")
    done = add_study(db, state="done", uid="3.3", job_state="done")
    rerouted = pacsai(tmp_path, "reroute", str(sid))  # default configuration: every pipeline
    assert rerouted.returncode == 0, rerouted.stderr
    assert "queued job(s)" in rerouted.stdout
    assert pacsai(tmp_path, "reroute", str(sid)).returncode == 5  # queued now
    assert pacsai(tmp_path, "reroute", str(done)).returncode == 5
    assert pacsai(tmp_path, "reroute", "999").returncode == 4
    with db.session() as s:
        jobs = s.scalars(select(Job).where(Job.study_id == sid)).all()
        assert sorted(j.pipeline for j in jobs) == ["cxr-anomaly", "cxr-classifier"]
        assert all(j.state == "queued" and j.task_id for j in jobs)
    db.dispose()
