"""The study and job state machines: every state change goes through here.

A study's row keeps the state of its newest version; a job is one version through
one pipeline. The allowed moves are listed once, below; a move that is not listed
raises :class:`IllegalTransition` (a bug, never silently applied).

Job outcomes are *fenced*: a worker holds a job by its attempt number (and task id)
from its claim, and every write of the job's outcome (findings, outbox rows, the
final state) happens in the transaction whose conditional ``UPDATE … WHERE state =
'running' AND attempts = <its attempt>`` succeeded. A cancelled job, or one the
reconciler re-queued while a stale worker still ran it, therefore cannot be
finished, nor its results delivered, by the worker that lost it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from daemon.store.models import Job, JobState, Study, StudyState, utcnow

S, J = StudyState, JobState

#: study state -> the states it may move to
STUDY_MOVES: dict[str, frozenset[str]] = {
    S.RECEIVING: frozenset({S.QUEUED, S.NOT_ROUTED}),
    S.QUEUED: frozenset({S.PROCESSING, S.DONE, S.FAILED, S.RECEIVING}),
    S.PROCESSING: frozenset({S.QUEUED, S.DONE, S.FAILED, S.RECEIVING}),
    # a retried job of a finished study, or late instances opening a new version
    S.DONE: frozenset({S.QUEUED, S.PROCESSING, S.FAILED, S.RECEIVING}),
    S.FAILED: frozenset({S.QUEUED, S.PROCESSING, S.DONE, S.RECEIVING}),
    S.NOT_ROUTED: frozenset({S.QUEUED, S.RECEIVING}),
}

#: job state -> the states it may move to
JOB_MOVES: dict[str, frozenset[str]] = {
    J.QUEUED: frozenset({J.RUNNING, J.FAILED, J.CANCELLED}),
    J.RUNNING: frozenset({J.DONE, J.FAILED, J.QUEUED, J.CANCELLED}),
    J.DONE: frozenset(),
    J.FAILED: frozenset({J.QUEUED}),
    J.CANCELLED: frozenset({J.QUEUED}),
}


class IllegalTransition(RuntimeError):
    """A state change the machine does not allow."""


@dataclass(frozen=True)
class Owner:
    """Who holds a running job: the attempt that claimed it (and its task id)."""

    job_id: int
    attempt: int
    task_id: str = ""


def move_study(study: Study, to: str) -> None:
    """Set ``study.state`` to ``to`` if the machine allows it (staying put is allowed)."""
    if study.state == to:
        return
    if study.state is not None and to not in STUDY_MOVES.get(study.state, frozenset()):
        raise IllegalTransition(f"study {study.id}: {study.state} -> {to} is not allowed")
    study.state = to


def new_study_state() -> str:
    return S.RECEIVING


def open_version(study: Study, at: dt.datetime) -> int:
    """Late instances for a study no longer receiving: a new version starts receiving."""
    move_study(study, S.RECEIVING)
    study.version += 1
    study.version_started_at = at
    study.completed_at = None
    return study.version


def follow_jobs(session: Session, study: Study) -> None:
    """A study's state follows the jobs of its newest version (unless receiving/not routed)."""
    if study.state in (S.RECEIVING, S.NOT_ROUTED):
        return
    session.flush()
    states = set(session.scalars(select(Job.state).where(
        Job.study_id == study.id, Job.version == study.version)))
    if J.RUNNING in states:
        move_study(study, S.PROCESSING)
    elif J.QUEUED in states:
        move_study(study, S.QUEUED)
    elif J.FAILED in states or J.CANCELLED in states:
        move_study(study, S.FAILED)
    elif states:
        move_study(study, S.DONE)


def move_job(job: Job, to: str) -> None:
    """Set ``job.state`` to ``to`` on a loaded row (admin actions, the reconciler)."""
    if job.state == to:
        return
    if to not in JOB_MOVES.get(job.state, frozenset()):
        raise IllegalTransition(f"job {job.id}: {job.state} -> {to} is not allowed")
    job.state = to
    if to == J.QUEUED:
        job.task_id = None  # the next task sent records its id; until then any may claim it


def claim(session: Session, job_id: int, task_id: str, now: dt.datetime | None = None) -> Owner | None:
    """queued -> running for this task, as one conditional UPDATE; ``None``: not claimable.

    Only the task whose id is recorded on the job (or any, before one is recorded) may
    claim it: a job re-sent after its broker lost the task has a new id, and the old
    message, should it come back (a broker restarted from its data), is dropped.
    """
    now = now or utcnow()
    res = session.execute(
        update(Job).where(Job.id == job_id, Job.state == J.QUEUED,
                          or_(Job.task_id.is_(None), Job.task_id == task_id))
        .values(state=J.RUNNING, task_id=task_id, started_at=now, heartbeat_at=now,
                finished_at=None, attempts=Job.attempts + 1, error=None, error_detail=None)
        .returning(Job.attempts)
    )
    attempt = res.scalar_one_or_none()
    return None if attempt is None else Owner(job_id, attempt, task_id)


def settle(session: Session, owner: Owner, *, error: str | None = None,
           error_detail: str | None = None, now: dt.datetime | None = None) -> bool:
    """running -> done (or failed with ``error``), only for the attempt that holds the job.

    Call it first in the transaction that writes the job's outcome, and roll back that
    transaction when it returns False: the job was cancelled or handed to another attempt.
    """
    res = session.execute(
        update(Job).where(Job.id == owner.job_id, Job.state == J.RUNNING,
                          Job.attempts == owner.attempt)
        .values(state=J.FAILED if error else J.DONE, finished_at=now or utcnow(),
                error=error, error_detail=error_detail)
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1  # type: ignore[attr-defined]


def still_owned(session: Session, owner: Owner) -> bool:
    """True while ``owner``'s attempt is the one running the job."""
    return session.scalar(select(Job.id).where(
        Job.id == owner.job_id, Job.state == J.RUNNING, Job.attempts == owner.attempt)) is not None


def beat(session: Session, owner: Owner, now: dt.datetime | None = None) -> bool:
    """Touch the heartbeat of ``owner``'s attempt only; False once the job is no longer its."""
    res = session.execute(
        update(Job).where(Job.id == owner.job_id, Job.state == J.RUNNING,
                          Job.attempts == owner.attempt)
        .values(heartbeat_at=now or utcnow()).execution_options(synchronize_session=False))
    return res.rowcount == 1  # type: ignore[attr-defined]
