"""Ring the doorbell for a queued job: send its Celery task and record the task id.

Every sender (the study tracker, the reconciler, retries and re-routes from the CLI or
the admin API) goes through here, so the task carries the job's priority and the
reconciler can tell a job still waiting in the broker from one the broker lost.
"""

from __future__ import annotations

import threading

from celery import Celery
from sqlalchemy import update

from daemon.queue import send_job
from daemon.routing import redis_priority
from daemon.store.db import Database
from daemon.store.models import Job, JobState
from daemon.study_tracker import CompletedJob


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
