"""The reconciler: whatever the database says is pending gets a live task.

The broker may lose a message (Redis restarted without persistence, a worker
SIGKILLed while holding an unacked message of the embedded transport). Every
``reconcile_seconds`` this re-sends jobs queued for longer than
``requeue_after_seconds`` and jobs whose worker stopped sending heartbeats; the
task claims its job atomically, so a duplicate message does nothing. Attempts are
counted here (Redis keeps no delivery count): a job that keeps killing its worker
ends failed after ``max_attempts``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable

from sqlalchemy import select

from daemon import timeline
from daemon.store import lifecycle
from daemon.store.db import Database
from daemon.store.models import Delivery, DeliveryState, Job, JobState, Study, utcnow
from daemon.study_tracker import CompletedJob

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(
        self,
        db: Database,
        send: Callable[[CompletedJob], None],
        *,
        deliver: Callable[[str], None] | None = None,
        pending: Callable[[list[str]], set[str] | None] | None = None,
        interval: float,
        requeue_after: float,
        heartbeat_timeout: float,
        max_attempts: int,
    ) -> None:
        self.db = db
        self.send = send
        self.deliver = deliver
        self.pending = pending
        self.interval = interval
        self.requeue_after = dt.timedelta(seconds=requeue_after)
        self.heartbeat_timeout = dt.timedelta(seconds=heartbeat_timeout)
        self.max_attempts = max_attempts
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
                self.ring_due_deliveries()
            except Exception:  # noqa: BLE001 - try again next round
                log.exception("reconciliation failed")

    def ring_due_deliveries(self) -> list[str]:
        """Ask for a delivery run for every destination with outbox rows due now."""
        if self.deliver is None:
            return []
        with self.db.read() as session:
            due = list(session.scalars(
                select(Delivery.destination).distinct()
                .where(Delivery.state == DeliveryState.PENDING, Delivery.next_attempt_at <= utcnow())
            ))
        for destination in due:
            try:
                self.deliver(destination)
            except Exception:  # noqa: BLE001
                log.exception("could not ask for delivery to %s", destination)
        return due

    def run_once(self, *, resend_all_queued: bool = False) -> list[int]:
        """One pass; returns the ids of the jobs re-sent."""
        # Ask the broker first, outside any write transaction: a slow or unreachable broker
        # must never hold SQLite's write lock, which the listener needs to record instances.
        held: set[str] | None = None
        if self.pending is not None:
            with self.db.read() as session:
                queued = set(session.scalars(
                    select(Job.queue).distinct().where(Job.state == JobState.QUEUED)))
            if queued:
                held = self.pending(sorted(queued))
        now = utcnow()
        resend: list[CompletedJob] = []
        with self.db.session() as session:
            jobs = session.scalars(select(Job).where(Job.state.in_(JobState.ACTIVE))).all()
            for job in jobs:
                study = session.get(Study, job.study_id)
                if study is None:
                    continue
                if job.state == JobState.QUEUED:
                    waited = now - (job.queued_at or job.created_at)
                    if not resend_all_queued and waited < self.requeue_after:
                        continue
                    if held is not None and job.task_id in held:
                        continue  # still waiting in the broker: a resend would duplicate it
                    reason = "no worker took the task" if held is None else "the broker lost the task"
                else:
                    beat = job.heartbeat_at or job.started_at or job.created_at
                    if now - beat < self.heartbeat_timeout:
                        continue
                    reason = "worker lost (no heartbeat)"
                    if job.attempts >= self.max_attempts:
                        lifecycle.move_job(job, JobState.FAILED)
                        job.finished_at = now
                        job.error = f"{reason} after {job.attempts} attempt(s)"
                        lifecycle.follow_jobs(session, study)
                        timeline.record(session, study, "failed", version=job.version,
                                        job_id=job.id, reason=job.error)
                        log.error("job %d failed: %s", job.id, job.error)
                        continue
                    # the stale attempt keeps nothing: its outcome is fenced by its attempt
                    lifecycle.move_job(job, JobState.QUEUED)
                    lifecycle.follow_jobs(session, study)
                job.queued_at = now
                timeline.record(session, study, "requeued", version=job.version, job_id=job.id,
                                reason=reason)
                resend.append(CompletedJob(job.id, job.study_id, job.version, job.queue, job.priority))
        for item in resend:
            log.warning("re-sending job %d (study %d v%d)", item.job_id, item.study_id, item.version)
            try:
                self.send(item)
            except Exception:  # noqa: BLE001
                log.exception("could not re-send job %d", item.job_id)
        return [r.job_id for r in resend]
