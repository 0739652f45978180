"""The reconciler: whatever the database says is pending gets a live task.

The broker may lose a message (Redis restarted without persistence, the embedded
broker's folder removed, a worker SIGKILLed while holding an unacked message of the
embedded transport). Every ``reconcile_seconds`` this asks the broker which tasks it
holds and re-sends every queued job whose task it no longer holds, whatever the job's
age; when the broker cannot be asked, a job queued for ``requeue_after_seconds`` is
re-sent on time alone. A job whose worker stopped sending heartbeats is re-sent too.
A re-sent job gets a new task id (recorded by daemon.dispatch.doorbell) and ``jobs.claim`` takes
only the recorded one, so an old message that comes back (a Redis restarted from its
data, a delivery restored after its visibility timeout) does nothing. Attempts are
counted here (Redis keeps no delivery count): a job that keeps killing its worker ends
failed after ``max_attempts``.

A broker restart is seen as a new Redis ``run_id`` (or a new embedded folder identity).
Deliveries the restarted Redis brought back from its data went to consumers of the
previous server and will never be acknowledged: they count as lost, not held.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import select

from daemon.store import timeline
from daemon.dispatch.broker import Holdings
from daemon.store import lifecycle
from daemon.store.db import Database
from daemon.store.models import Delivery, DeliveryState, Job, JobState, Study, utcnow
from daemon.routing.jobs import CompletedJob

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(
        self,
        db: Database,
        send: Callable[[CompletedJob], None],
        *,
        deliver: Callable[[str], None] | None = None,
        pending: Callable[[list[str]], Holdings | set[str] | None] | None = None,
        in_flight: Callable[[], set[int]] | None = None,
        interval: float,
        requeue_after: float,
        heartbeat_timeout: float,
        max_attempts: int,
        heartbeat_every: float | None = None,
        confirm_after: float = 0.0,
    ) -> None:
        self.db = db
        self.send = send
        self.deliver = deliver
        self.pending = pending
        self.in_flight = in_flight
        self.interval = interval
        self.requeue_after = dt.timedelta(seconds=requeue_after)
        self.heartbeat_timeout = dt.timedelta(seconds=heartbeat_timeout)
        # a running job whose task the broker lost is taken back once its worker missed
        # three beats, not after the whole heartbeat timeout
        self.silent_after = (dt.timedelta(seconds=3 * heartbeat_every)
                             if heartbeat_every else self.heartbeat_timeout)
        self.max_attempts = max_attempts
        self.confirm_after = confirm_after  # a task seen missing is looked for again this late
        self.identity: str | None = None  # the broker's, as last seen
        self.restarts = 0  # broker restarts seen
        self._stale: set[str] = set()  # unacked when a restart was seen: nobody can ack them
        self._resent: dict[int, str | None] = {}  # job -> its task id after our last re-send
        self._deliver_failing = False
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
        failed = False
        for destination in due:
            try:
                self.deliver(destination)
            except Exception as exc:  # noqa: BLE001 - due rows stay due: asked again next pass
                failed = True
                if not self._deliver_failing:
                    log.warning("could not ask for delivery to %s: %s (asked again every %g s)",
                                destination, exc, self.interval)
        self._deliver_failing = failed
        return due

    def _holdings(self, queues: list[str]) -> Holdings | None:
        if self.pending is None or not queues:
            return None
        held = self.pending(queues)
        if held is None or isinstance(held, Holdings):
            return held
        return Holdings(identity=None, waiting=frozenset(held), unacked={})

    def _note_identity(self, held: Holdings) -> None:
        """A new broker identity: what it holds unacked now was delivered by the old one."""
        if held.identity is None:
            return
        if self.identity is not None and held.identity != self.identity:
            self.restarts += 1
            self._stale = set(held.unacked)
            log.warning("the broker restarted or was replaced (identity %s, was %s): re-sending "
                        "every queued job whose task it no longer holds", held.identity,
                        self.identity)
        self.identity = held.identity
        self._stale &= set(held.unacked)

    def _observe(self) -> tuple[set[int], dict[int, tuple[str, str | None]], Holdings | None]:
        """What is being sent right now, then the jobs' task ids, then the broker, in that
        order: a task id recorded before the broker was asked was sent before it, so the
        broker's not holding it means lost. Asked outside any write transaction: a slow or
        unreachable broker must never hold SQLite's write lock, which the listener needs."""
        sending = self.in_flight() if self.in_flight is not None else set()
        with self.db.read() as session:
            rows = session.execute(select(Job.id, Job.state, Job.task_id, Job.queue)
                                   .where(Job.state.in_(JobState.ACTIVE))).all()
        seen = {r.id: (r.state, r.task_id) for r in rows}
        held = self._holdings(sorted({r.queue for r in rows}))
        if held is not None:
            self._note_identity(held)
        return sending, seen, held

    def run_once(self, *, resend_all_queued: bool = False) -> list[int]:
        """One pass; returns the ids of the jobs re-sent."""
        sending, seen, held = self._observe()
        confirmed: set[int] | None = None  # None: no second look was needed
        if held is not None and self.confirm_after > 0:
            wall = time.time()
            suspects = {job_id for job_id, (state, task_id) in seen.items()
                        if state == JobState.QUEUED and job_id not in sending
                        and self._queued_verdict(task_id, held, wall) is not None}
            if suspects:
                # A worker that has just taken a message holds it where the broker cannot
                # show it (the embedded broker keeps unacked messages in the worker's memory;
                # Redis moves it to the unacked set a moment after the pop) until its claim
                # moves the job on. Look again: only a task missing both times is lost.
                self._stop.wait(self.confirm_after)
                first = seen
                sending, seen, held = self._observe()
                confirmed = {job_id for job_id in suspects if seen.get(job_id) == first[job_id]}
        wall = time.time()
        now = utcnow()
        resend: list[CompletedJob] = []
        with self.db.session() as session:
            jobs = session.scalars(select(Job).where(Job.state.in_(JobState.ACTIVE))).all()
            for job in jobs:
                study = session.get(Study, job.study_id)
                if study is None:
                    continue
                if job.id in sending or seen.get(job.id) != (job.state, job.task_id):
                    continue  # being sent, or changed while the broker was asked: next pass
                previous = job.task_id
                if job.state == JobState.QUEUED:
                    waited = now - (job.queued_at or job.created_at)
                    if held is None:
                        if not resend_all_queued and waited < self.requeue_after:
                            continue
                        reason = "no worker took the task"
                    else:
                        reason = self._queued_verdict(job.task_id, held, wall)
                        if reason is None or (confirmed is not None and job.id not in confirmed):
                            continue
                else:
                    beat = job.heartbeat_at or job.started_at or job.created_at
                    silent = now - beat
                    if silent >= self.heartbeat_timeout:
                        reason = "worker lost (no heartbeat)"
                    elif (held is not None and held.knows_unacked and silent >= self.silent_after
                          and not self._holds(held, job.task_id)):
                        reason = "worker lost (no heartbeat, and the broker lost its task)"
                    else:
                        continue
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
                again = job.id in self._resent and self._resent[job.id] == previous
                job.task_id = None  # the new task's id is recorded when it is sent (dispatch)
                if not again:  # one event per lost task, not one per pass a send keeps failing
                    timeline.record(session, study, "requeued", version=job.version,
                                    job_id=job.id, reason=reason)
                self._resent[job.id] = None
                resend.append(CompletedJob(job.id, job.study_id, job.version, job.queue,
                                           job.priority))
            active = {j.id for j in jobs}
        self._resent = {k: v for k, v in self._resent.items() if k in active}
        for item in resend:
            log.warning("re-sending job %d (study %d v%d)", item.job_id, item.study_id, item.version)
            try:
                self.send(item)
            except Exception:  # noqa: BLE001
                log.exception("could not re-send job %d", item.job_id)
        return [r.job_id for r in resend]

    def _holds(self, held: Holdings, task_id: str | None) -> bool:
        """The broker holds ``task_id`` waiting, or delivered to a consumer that can ack it."""
        if not task_id:
            return False
        if task_id in held.waiting:
            return True
        return task_id in held.unacked and task_id not in held.stale and task_id not in self._stale

    def _queued_verdict(self, task_id: str | None, held: Holdings, wall: float) -> str | None:
        """Why a queued job must be re-sent, or None while its task is alive in the broker."""
        if task_id and task_id in held.waiting:
            return None  # still waiting in the broker: a resend would duplicate it
        if self._holds(held, task_id):
            delivered = held.unacked.get(task_id or "")
            limit = self.heartbeat_timeout.total_seconds()
            if delivered is None or wall - delivered < limit:
                return None  # a worker took it and is about to start it
            return f"a worker took the task {wall - delivered:.0f} s ago and never started it"
        if task_id and (task_id in held.stale or task_id in self._stale):
            return "the broker restarted: its delivery of the task can never be acknowledged"
        return "the broker lost the task"
