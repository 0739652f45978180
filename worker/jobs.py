"""Job claims, heartbeats and outcomes: how a task proves it holds its job.

A task holds its job by the attempt its claim started (:class:`Owner`); everything it
records about the job's outcome goes through :func:`finish` or :func:`outcome`, whose
transaction first moves the job out of ``running`` for that attempt only. A task
that lost its job (cancelled, or re-queued by the reconciler after a lost heartbeat)
records nothing: its transaction is rolled back and it says so in the log.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

from sqlalchemy.orm import Session

from daemon.store import timeline
from daemon.store import lifecycle
from daemon.store.db import Database
from daemon.store.lifecycle import Owner
from daemon.store.models import Job, JobState, Study, utcnow

log = logging.getLogger(__name__)


class LostOwnership(Exception):
    """The job is no longer this attempt's (cancelled, or re-queued and claimed again)."""

    def __init__(self, owner: Owner) -> None:
        super().__init__(f"job {owner.job_id} attempt {owner.attempt} no longer holds the job")
        self.owner = owner


def claim(db: Database, job_id: int, task_id: str, max_attempts: int,
          worker: str = "") -> tuple[Job, Owner] | None:
    """Move a queued job to running; ``None`` if another task holds it or it is finished.

    The claim is one conditional UPDATE, so a duplicate message (re-sent by the
    reconciler, redelivered by the broker) cannot run the same job twice at once.
    """
    now = utcnow()
    with db.session() as session:
        owner = lifecycle.claim(session, job_id, task_id, now)
        if owner is None:
            return None
        job = session.get(Job, job_id)  # loaded after the claim's UPDATE, in its transaction
        assert job is not None
        study = session.get(Study, job.study_id)
        assert study is not None
        if owner.attempt > max_attempts:
            reason = f"gave up after {max_attempts} attempt(s)"
            lifecycle.settle(session, owner, error=reason, now=now)
            session.refresh(job)
            lifecycle.follow_jobs(session, study)
            timeline.record(session, study, "failed", version=job.version, job_id=job.id,
                            reason=reason)
            return None
        lifecycle.follow_jobs(session, study)
        timeline.record(session, study, "started", version=job.version, job_id=job.id,
                        attempt=owner.attempt, task_id=task_id, worker=worker)
        return job, owner


@contextlib.contextmanager
def outcome(db: Database, owner: Owner, *, error: str | None = None,
            error_detail: str | None = None,
            detail: dict[str, object] | None = None) -> Iterator[tuple[Session, Study]]:
    """One transaction that settles ``owner``'s job and records what it produced.

    The body adds findings and outbox rows to the session (and may add to ``detail``,
    the timeline event's details); they are committed together with the job's final
    state, or not at all when the job is no longer ``owner``'s (:class:`LostOwnership`
    is raised and nothing is written).
    """
    detail = {} if detail is None else detail
    with db.session() as session:
        if not lifecycle.settle(session, owner, error=error, error_detail=error_detail):
            raise LostOwnership(owner)
        job = session.get(Job, owner.job_id)
        assert job is not None
        study = session.get(Study, job.study_id)
        assert study is not None
        yield session, study
        lifecycle.follow_jobs(session, study)
        kind = "failed" if error else "finished"
        extra = {"reason": error} if error else {}
        timeline.record(session, study, kind, version=job.version, job_id=job.id,
                        **extra, **detail)


def finish(db: Database, owner: Owner, *, error: str | None = None,
           error_detail: str | None = None, **detail: object) -> bool:
    """Settle ``owner``'s job with nothing else to record; False if it lost the job."""
    try:
        with outcome(db, owner, error=error, error_detail=error_detail, detail=dict(detail)):
            pass
    except LostOwnership:
        log.warning("job %d attempt %d: the job is no longer this attempt's (cancelled or "
                    "re-queued); its outcome is discarded", owner.job_id, owner.attempt)
        return False
    return True


def fail_running(db: Database, job_id: int, task_id: str, error: str) -> bool:
    """Fail the running job that task ``task_id`` holds (the pool killed that task)."""
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None or job.state != JobState.RUNNING or job.task_id != task_id:
            return False
        owner = Owner(job_id, job.attempts, task_id)
    return finish(db, owner, error=error)


@contextlib.contextmanager
def heartbeat(db: Database, owner: Owner, every: float) -> Iterator[threading.Event]:
    """Touch the job's heartbeat while the body runs (the reconciler watches it).

    Yields an event that is set once the job is no longer ``owner``'s, so long work can
    stop early; a stale attempt never keeps another attempt's job looking alive.
    """
    stop = threading.Event()
    lost = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            try:
                with db.session() as session:
                    if not lifecycle.beat(session, owner):
                        lost.set()
                        return
            except Exception:  # noqa: BLE001 - a missed beat is not fatal
                log.warning("heartbeat for job %d failed", owner.job_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"heartbeat-{owner.job_id}", daemon=True)
    thread.start()
    try:
        yield lost
    finally:
        stop.set()
        thread.join(every + 1)
