"""The reconciler: re-sends what the broker lost, never what it still holds; counts attempts."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from pathlib import Path

from sqlalchemy import select

from daemon.dispatch.broker import Broker
from daemon.config import Settings
from daemon.dispatch.doorbell import Dispatcher
from daemon.dispatch.tasks import embedded_broker_folders, make_celery, send_job
from daemon.dispatch.reconciler import Reconciler
from daemon.store.db import Database
from daemon.store.models import Job, Study, utcnow
from daemon.routing.jobs import CompletedJob
from daemon.store.timeline import timeline


def _job(db: Database, state: str, **kw: object) -> int:
    now = utcnow()
    with db.session() as s:
        study = Study(study_instance_uid=f"1.2.{os.urandom(4).hex()}", version=1, state="queued",
                      version_started_at=now, first_received_at=now, last_received_at=now)
        s.add(study)
        s.flush()
        job = Job(study_id=study.id, version=1, pipeline="p", state=state, queue="infer", **kw)
        s.add(job)
        s.flush()
        return job.id


def test_queued_jobs_resent_only_when_the_broker_lost_them(db: Database, db_url: str,
                                                          tmp_path: Path) -> None:
    settings = Settings(storage={"data_dir": tmp_path}, database={"url": db_url})
    celery = make_celery(settings)
    sent: list[CompletedJob] = []
    dispatch = Dispatcher(celery, db)

    def send(job: CompletedJob) -> None:
        sent.append(job)
        dispatch(job)

    reconciler = Reconciler(db, send, pending=Broker(settings, celery).pending_task_ids,
                            interval=1, requeue_after=60, heartbeat_timeout=30, max_attempts=3)
    long_ago = utcnow() - dt.timedelta(hours=1)
    job_id = _job(db, "queued", queued_at=long_ago)
    task_id = send_job(celery, job_id=job_id, study_id=1, version=1, queue="infer")
    with db.session() as s:
        s.get(Job, job_id).task_id = task_id
    assert reconciler.run_once() == []  # the message still waits in the broker: leave it
    assert reconciler.run_once(resend_all_queued=True) == []  # not even at start-up

    folder = Path(embedded_broker_folders(settings)["queue"])
    for f in folder.iterdir():  # the broker loses it (as a SIGKILLed consumer would)
        f.unlink()
    assert reconciler.run_once() == [job_id]
    assert [j.job_id for j in sent] == [job_id]
    with db.read() as s:
        job = s.get(Job, job_id)
    assert job.state == "queued" and job.queued_at > long_ago
    assert job.task_id not in (None, task_id)  # a new task, recorded: the old one is fenced off
    events = [e for e in timeline(db, job.study_id) if e.kind == "requeued"]
    assert events[0].detail["reason"] == "the broker lost the task"
    assert reconciler.run_once() == []  # the new task waits in the broker


def test_dead_workers_jobs_requeued_then_failed(db: Database, tmp_path: Path) -> None:
    sent: list[CompletedJob] = []
    reconciler = Reconciler(db, sent.append, interval=1, requeue_after=60, heartbeat_timeout=30,
                            max_attempts=2)
    stale = utcnow() - dt.timedelta(minutes=5)
    fresh = utcnow()
    lost = _job(db, "running", attempts=1, heartbeat_at=stale, started_at=stale)
    alive = _job(db, "running", attempts=1, heartbeat_at=fresh, started_at=fresh)
    exhausted = _job(db, "running", attempts=2, heartbeat_at=stale, started_at=stale)
    assert reconciler.run_once() == [lost]
    with db.read() as s:
        jobs = {j.id: j for j in s.scalars(select(Job))}
        studies = {st.id: st for st in s.scalars(select(Study))}
    assert jobs[lost].state == "queued" and jobs[alive].state == "running"
    assert jobs[exhausted].state == "failed" and "worker lost" in jobs[exhausted].error
    assert studies[jobs[exhausted].study_id].state == "failed"


def test_broker_is_asked_without_holding_the_write_lock(tmp_path: Path) -> None:
    """A slow broker must not stall the listener, which needs SQLite's write lock per instance."""
    url = f"sqlite:///{tmp_path / 'pacsai.db'}"
    db = Database(url)
    db.upgrade()
    job_id = _job(db, "queued", queued_at=utcnow() - dt.timedelta(hours=1))
    writes_while_asking: list[bool] = []

    def slow_broker(queues: list[str]) -> set[str]:
        other = sqlite3.connect(tmp_path / "pacsai.db", timeout=0.2, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # what the listener's tracker does per instance
            other.execute("ROLLBACK")
            writes_while_asking.append(True)
        except sqlite3.OperationalError:  # "database is locked"
            writes_while_asking.append(False)
        finally:
            other.close()
        assert queues == ["infer"]
        return set()  # the broker holds nothing: the job is re-sent

    sent: list[CompletedJob] = []
    reconciler = Reconciler(db, sent.append, pending=slow_broker, interval=1, requeue_after=60,
                            heartbeat_timeout=30, max_attempts=3)
    assert reconciler.run_once() == [job_id]
    assert writes_while_asking == [True]
    db.dispose()
