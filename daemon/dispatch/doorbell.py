"""Ring the doorbell for a queued job: send its Celery task and record the task id.

Every sender (the study tracker, the reconciler, retries and re-routes from the CLI or
the admin API) goes through here, so the task carries the job's priority and the
reconciler can tell a job still waiting in the broker from one the broker lost.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from celery import Celery
from sqlalchemy import update

from daemon.dispatch.tasks import send_job
from daemon.routing.rules import redis_priority
from daemon.store.db import Database
from daemon.store.models import Job, JobState
from daemon.routing.jobs import CompletedJob

log = logging.getLogger(__name__)


class Dispatcher:
    """Sends jobs' tasks through one producer (thread-safe) and records their ids."""

    def __init__(self, celery: Celery, db: Database) -> None:
        self.celery = celery
        self.db = db
        self.lock = threading.Lock()

    def __call__(self, job: CompletedJob) -> str:
        with self.lock:  # one producer connection, shared by several threads
            task_id = send_job(self.celery, job_id=job.job_id, study_id=job.study_id,
                               version=job.version, queue=job.queue,
                               priority=redis_priority(job.priority))
        with self.db.session() as session:
            session.execute(update(Job).where(Job.id == job.job_id, Job.state == JobState.QUEUED)
                            .values(task_id=task_id))
        return task_id


class Doorbell:
    """Sends jobs' tasks from a thread of its own.

    Whoever queues a job (the study tracker, the reconciler, the admin API) has committed it
    to the database already; ringing only hands it over here. A slow or frozen broker thus
    never holds up the tracker, which the listener needs to acknowledge instances. A task that
    cannot be sent leaves its job queued in the database, and the reconciler sends it again.
    """

    def __init__(self, dispatch: Callable[[CompletedJob], str]) -> None:
        self.dispatch = dispatch
        self._inbox: queue.Queue[CompletedJob | None] = queue.Queue()
        self._waiting: set[int] = set()  # job ids handed over and not yet being sent
        self._sending: int | None = None  # the job whose task is being sent now
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="doorbell", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the jobs already handed over (or after ``timeout``: they stay queued)."""
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def ring(self, job: CompletedJob) -> None:
        """Hand a job over; one already waiting here is not queued twice (during a long broker
        outage the reconciler asks again and again for the same jobs)."""
        with self._lock:
            if job.job_id in self._waiting:
                return
            self._waiting.add(job.job_id)
        self._inbox.put(job)

    def waiting(self) -> int:
        """Jobs handed over whose task is not sent yet."""
        with self._lock:
            return len(self._waiting)

    def in_flight(self) -> set[int]:
        """Jobs handed over whose task is not sent and recorded yet (the reconciler leaves
        them alone: their task id is about to change)."""
        with self._lock:
            return self._waiting | ({self._sending} if self._sending is not None else set())

    def _run(self) -> None:
        while (job := self._inbox.get()) is not None:
            with self._lock:  # from now on a new ring is a new send (this one may fail)
                self._waiting.discard(job.job_id)
                self._sending = job.job_id
            try:
                self.dispatch(job)
            except Exception as exc:  # noqa: BLE001 - the job is safe in the database
                log.warning("could not send the task of job %d (study %d v%d): %s; the job "
                            "stays queued and the reconciler sends it again",
                            job.job_id, job.study_id, job.version, exc)
            finally:
                with self._lock:
                    self._sending = None
