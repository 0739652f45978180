"""Admin actions on jobs and deliveries: retry, cancel, re-send. Each one is audited.

Used by the admin API and the CLI alike; the caller passes who acts (``actor``)
and, for retry, how to ring the broker (``send``) once the job row is queued again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.orm import Session

from daemon.store import timeline
from daemon.store import lifecycle
from daemon.store.db import Database
from daemon.store.models import (
    AuditEntry,
    Delivery,
    DeliveryState,
    Job,
    JobState,
    Study,
    StudyState,
    utcnow,
)
from daemon.routing.rules import NotRouted, Router
from daemon.routing.jobs import CompletedJob, route_study

log = logging.getLogger(__name__)


class NotFound(LookupError):
    """No such job or delivery."""


class Conflict(ValueError):
    """The item is in a state the action does not apply to."""


def audit(session: Session, actor: str, action: str, target: str, **detail: object) -> None:
    session.add(AuditEntry(actor=actor[:64], action=action, target=target, detail=detail))


def retry_job(db: Database, job_id: int, actor: str,
              send: Callable[[CompletedJob], None]) -> CompletedJob:
    """Queue a failed or cancelled job again (attempts start over) and send its task."""
    now = utcnow()
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFound(f"job {job_id} does not exist")
        if job.state not in (JobState.FAILED, JobState.CANCELLED):
            raise Conflict(f"job {job_id} is {job.state}; only failed or cancelled jobs are retried")
        study = session.get(Study, job.study_id)
        assert study is not None
        previous = job.state
        lifecycle.move_job(job, JobState.QUEUED)
        job.attempts = 0
        job.error = job.error_detail = None
        job.queued_at = now
        job.started_at = job.finished_at = job.heartbeat_at = None
        lifecycle.follow_jobs(session, study)
        timeline.record(session, study, "requeued", version=job.version, job_id=job.id,
                        reason=f"retried by {actor}", previous=previous)
        audit(session, actor, "retry", f"job:{job_id}", previous=previous)
        item = CompletedJob(job.id, job.study_id, job.version, job.queue, job.priority)
    log.info("job %d re-queued by %s", job_id, actor)
    _send_now(send, item)
    return item


def _send_now(send: Callable[[CompletedJob], None], item: CompletedJob) -> None:
    try:
        send(item)
    except Exception:  # noqa: BLE001 - queued in the database: the reconciler re-sends it
        log.exception("could not send job %d now; the reconciler will", item.job_id)


def reroute_study(db: Database, study_id: int, actor: str, router: Router,
                  inference_queues: list[str], send: Callable[[CompletedJob], None]) -> list[CompletedJob]:
    """Apply the current routing rules to a study that was not routed, and queue its jobs."""
    now = utcnow()
    with db.session() as session:
        study = session.get(Study, study_id)
        if study is None:
            raise NotFound(f"study {study_id} does not exist")
        if study.state != StudyState.NOT_ROUTED:
            raise Conflict(f"study {study_id} is {study.state}; only not-routed studies are re-routed")
        jobs = route_study(session, study, router, inference_queues, now)
        if isinstance(jobs, NotRouted):  # still no rule: roll back, nothing changes
            raise Conflict(f"study {study_id} is still not routed: {jobs.reason}")
        audit(session, actor, "reroute", f"study:{study_id}", jobs=[j.job_id for j in jobs])
    log.info("study %d re-routed by %s: %d job(s) queued", study_id, actor, len(jobs))
    for item in jobs:
        _send_now(send, item)
    return jobs


def cancel_job(db: Database, job_id: int, actor: str) -> None:
    """Cancel a queued or running job (a running task's result is then discarded)."""
    now = utcnow()
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFound(f"job {job_id} does not exist")
        if job.state not in JobState.ACTIVE:
            raise Conflict(f"job {job_id} is {job.state}; only queued or running jobs are cancelled")
        study = session.get(Study, job.study_id)
        assert study is not None
        previous = job.state
        lifecycle.move_job(job, JobState.CANCELLED)  # a running attempt's outcome is fenced off
        job.finished_at = now
        job.error = f"cancelled by {actor}"
        lifecycle.follow_jobs(session, study)
        timeline.record(session, study, "cancelled", version=job.version, job_id=job.id,
                        reason=job.error)
        audit(session, actor, "cancel", f"job:{job_id}", previous=previous)
    log.info("job %d cancelled by %s", job_id, actor)


def resend_delivery(db: Database, delivery_id: int, actor: str) -> None:
    """Put a dead (or cancelled) delivery back in the outbox, due now."""
    with db.session() as session:
        d = session.get(Delivery, delivery_id)
        if d is None:
            raise NotFound(f"delivery {delivery_id} does not exist")
        if d.state not in (DeliveryState.DEAD, DeliveryState.CANCELLED):
            raise Conflict(f"delivery {delivery_id} is {d.state}; only dead or cancelled "
                           "deliveries are re-sent")
        previous = d.state
        d.state = DeliveryState.PENDING
        d.next_attempt_at = utcnow()
        study = session.get(Study, d.study_id)
        if study is not None:
            timeline.record(session, study, "resend", version=d.version, job_id=d.job_id,
                            delivery=d.id, destination=d.destination, reason=f"by {actor}")
        audit(session, actor, "resend", f"delivery:{delivery_id}", previous=previous,
              destination=d.destination)
    log.info("delivery %d re-sent by %s", delivery_id, actor)
