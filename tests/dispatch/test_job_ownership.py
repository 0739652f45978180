"""Who owns a job: a cancelled job, or a stale worker's attempt, records and delivers nothing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from daemon.ops.operations import cancel_job
from daemon.store import lifecycle
from daemon.store.db import Database
from daemon.store.models import Delivery, Event, Finding, Job, Study, utcnow
from dicom_io.synthetic_study import ct_series
from pacsai_process import wait_until
from peers import RedisServer, StoreSCP, WorkerProcess, send_datasets
from test_queue_redis import (  # type: ignore[import-not-found]  # noqa: F401 - fixtures
    ANOMALY, db_of, jobs_of, listener, redis, scp)

SLOW = {**ANOMALY, "modalities": ["CT"]}  # a long CT through the model: time to act mid-job


def _events(db: Database, kind: str) -> list[Event]:
    with db.read() as s:
        return list(s.scalars(select(Event).where(Event.kind == kind)))


def test_a_cancelled_job_records_and_delivers_nothing(tmp_path: Path, redis: RedisServer,
                                                      scp: StoreSCP) -> None:
    with listener(tmp_path, redis, scp, pipelines=[SLOW]) as proc:
        worker = WorkerProcess(proc, "w1").start()
        try:
            send_datasets(proc.port, list(ct_series(250, 256, seed=7)))
            db = db_of(proc)
            (job,) = wait_until(lambda: [j for j in jobs_of(db) if j.state == "running"], 60, 0.05)
            cancel_job(db, job.id, "test")
            wait_until(lambda: "results are discarded" in worker.log(), 120, 0.2)
            time.sleep(2)  # a reconciler round: it would ring for any delivery due
            (after,) = jobs_of(db)
            assert after.state == "cancelled"
            with db.read() as s:
                assert s.scalars(select(Delivery)).all() == []
                assert s.scalars(select(Finding)).all() == []
            assert _events(db, "results_written") == [] and _events(db, "finished") == []
            assert scp.received == []
        finally:
            worker.stop()


def test_a_stale_worker_after_requeue_delivers_nothing(tmp_path: Path, redis: RedisServer,
                                                       scp: StoreSCP) -> None:
    """w1 freezes mid-job (a paused VM), its heartbeat stops, the reconciler hands the job to
    w2; when w1 wakes and finishes, nothing it did is recorded: one result, delivered once."""
    with listener(tmp_path, redis, scp, pipelines=[SLOW]) as proc:
        w1 = WorkerProcess(proc, "w1").start()
        w2 = None
        try:
            send_datasets(proc.port, list(ct_series(250, 256, seed=8)))
            db = db_of(proc)
            wait_until(lambda: [j for j in jobs_of(db) if j.state == "running"], 60, 0.05)
            os.killpg(w1.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
            wait_until(lambda: _events(db, "requeued"), 30, 0.1)
            w2 = WorkerProcess(proc, "w2").start()
            wait_until(lambda: len(_events(db, "started")) == 2, 60, 0.1)
            os.killpg(w1.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
            wait_until(lambda: "results are discarded" in w1.log(), 120, 0.2)
            wait_until(lambda: jobs_of(db)[0].state == "done" and scp.received, 120, 0.2)
            time.sleep(2)  # let any second delivery show itself
            (job,) = jobs_of(db)
            assert job.state == "done" and job.attempts == 2
            assert len(_events(db, "results_written")) == 1
            assert len(_events(db, "finished")) == 1
            assert "w2" in _events(db, "started")[-1].detail["worker"]
            with db.read() as s:
                assert len(s.scalars(select(Finding)).all()) == 1
                assert len(s.scalars(select(Delivery)).all()) == 1
            assert len(scp.received) == 1
        finally:
            for w in (w1, w2):
                if w is not None and w.proc is not None:
                    try:
                        os.killpg(w.proc.pid, signal.SIGCONT)
                    except ProcessLookupError:
                        pass
                    w.stop()


def test_settle_is_fenced_by_the_attempt(db: Database) -> None:
    """The fence itself, on SQLite and PostgreSQL: only the attempt that holds the job settles it."""
    now = utcnow()
    with db.session() as s:
        study = Study(study_instance_uid="1.2.3", version=1, state="queued",
                      version_started_at=now, first_received_at=now, last_received_at=now)
        s.add(study)
        s.flush()
        job = Job(study_id=study.id, version=1, pipeline="p", state="queued", queue="infer")
        s.add(job)
        s.flush()
        job_id = job.id
    with db.session() as s:
        first = lifecycle.claim(s, job_id, "task-1")
    assert first is not None and first.attempt == 1
    with db.session() as s:  # the reconciler hands the job on
        j = s.get(Job, job_id)
        lifecycle.move_job(j, "queued")
    with db.session() as s:
        second = lifecycle.claim(s, job_id, "task-2")
    assert second is not None and second.attempt == 2
    with db.session() as s:
        assert not lifecycle.beat(s, first)
        assert not lifecycle.settle(s, first)
    with db.session() as s:
        assert lifecycle.settle(s, second)
    with db.read() as s:
        assert s.get(Job, job_id).state == "done"
    with pytest.raises(lifecycle.IllegalTransition):
        with db.session() as s:
            lifecycle.move_job(s.get(Job, job_id), "running")
