"""Job claims and heartbeats: how a task proves it holds its job."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from daemon import timeline
from daemon.store.db import Database
from daemon.store.models import Job, JobState, Study, StudyState, utcnow

log = logging.getLogger(__name__)


def refresh_study_state(session: Session, study: Study) -> None:
    """A study's state follows the jobs of its newest version (unless it is receiving again)."""
    if study.state in (StudyState.RECEIVING, StudyState.NOT_ROUTED):
        return
    states = set(session.scalars(select(Job.state).where(
        Job.study_id == study.id, Job.version == study.version)))
    if JobState.RUNNING in states:
        study.state = StudyState.PROCESSING
    elif JobState.QUEUED in states:
        study.state = StudyState.QUEUED
    elif JobState.FAILED in states:
        study.state = StudyState.FAILED
    elif states:
        study.state = StudyState.DONE


def claim(db: Database, job_id: int, task_id: str, max_attempts: int, worker: str = "") -> Job | None:
    """Move a queued job to running; ``None`` if another task holds it or it is finished.

    The claim is one conditional UPDATE, so a duplicate message (re-sent by the
    reconciler, redelivered by the broker) cannot run the same job twice at once.
    """
    now = utcnow()
    with db.session() as session:
        res = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.QUEUED)
            .values(state=JobState.RUNNING, task_id=task_id, started_at=now, heartbeat_at=now,
                    attempts=Job.attempts + 1, error=None)
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            return None
        job = session.get(Job, job_id)
        assert job is not None
        study = session.get(Study, job.study_id)
        assert study is not None
        if job.attempts > max_attempts:
            job.state = JobState.FAILED
            job.finished_at = now
            job.error = f"gave up after {max_attempts} attempt(s)"
            study.state = StudyState.FAILED
            timeline.record(session, study, "failed", version=job.version, job_id=job.id,
                            reason=job.error)
            return None
        refresh_study_state(session, study)
        timeline.record(session, study, "started", version=job.version, job_id=job.id,
                        attempt=job.attempts, task_id=task_id, worker=worker)
        return job


def finish(db: Database, job_id: int, *, error: str | None = None, **detail: object) -> None:
    """Mark a running job done (or failed with ``error``) and update its study."""
    now = utcnow()
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None or job.state != JobState.RUNNING:
            return
        study = session.get(Study, job.study_id)
        assert study is not None
        job.finished_at = now
        job.state = JobState.FAILED if error else JobState.DONE
        job.error = error
        session.flush()
        refresh_study_state(session, study)
        kind = "failed" if error else "finished"
        extra = {"reason": error} if error else {}
        timeline.record(session, study, kind, version=job.version, job_id=job.id,
                        **extra, **detail)


@contextlib.contextmanager
def heartbeat(db: Database, job_id: int, every: float) -> Iterator[None]:
    """Touch the job's heartbeat while the body runs (the reconciler watches it)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            try:
                with db.session() as session:
                    session.execute(update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING)
                                    .values(heartbeat_at=utcnow()))
            except Exception:  # noqa: BLE001 - a missed beat is not fatal
                log.warning("heartbeat for job %d failed", job_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(every + 1)
