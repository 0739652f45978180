"""The broker side of the queue: Celery configuration shared by daemon and workers.

The database is the truth, the broker a doorbell: a job row is written before its
task is sent, tasks carry only ids, and daemon.dispatch.reconciler re-sends whatever the
database says is pending but no worker holds. So the broker may lose messages
(Redis without persistence, the embedded transport on SIGKILL) without losing a
study.

Embedded broker: with no ``broker.url``, kombu's *filesystem* transport in
``<data_dir>/broker``. It needs no server and is real Celery (the same tasks,
acks and retries as with Redis); it serves one machine, which is what the
embedded default is for. Its unacked messages live in the worker's memory, which
the reconciler covers.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from daemon.config import Settings
from daemon.dispatch.embedded_broker import TRANSPORT as EMBEDDED_TRANSPORT
from daemon.dispatch.embedded_broker import broker_identity

TASK_PROCESS_STUDY = "pacsai.process_study"
TASK_DELIVER = "pacsai.deliver"
DEFAULT_QUEUE = "cpu"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for at-least-once delivery with the database as the truth."""
    hard = settings.worker.task_time_limit
    conf: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.worker.task_soft_time_limit,
        "task_time_limit": hard,
        "task_ignore_result": True,
        "task_default_queue": DEFAULT_QUEUE,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": int(hard * 2 + 60)},
        # A task running when the broker connection drops goes on and records its outcome in
        # the database (which needs no broker); Celery's default from 6.0 would kill it and
        # waste the work (its message can no longer be acknowledged, so it is redelivered or,
        # after a Redis restart, lost; either way jobs.claim drops what comes back).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }
    if settings.broker_url.startswith(("redis://", "rediss://", "redis+socket://")):
        # Priorities on Redis: one list per step, served 0 first (stat=0, routine=5, low=9).
        conf["broker_transport_options"].update({
            "queue_order_strategy": "priority",
            "priority_steps": list(range(10)),
            "sep": ":",
            # kombu's default is no timeout at all: one frozen Redis would block forever
            "socket_timeout": settings.broker.socket_timeout_seconds,
            "socket_connect_timeout": settings.broker.socket_timeout_seconds,
        })
        conf["task_default_priority"] = 5
        conf["broker_connection_max_retries"] = None  # keep reconnecting to a restarted Redis
    if settings.broker_url.startswith("filesystem://"):
        folders = embedded_broker_folders(settings)
        for folder in folders.values():
            os.makedirs(folder, mode=0o700, exist_ok=True)
        broker_identity(str(settings.embedded_broker_dir))
        conf["broker_transport"] = EMBEDDED_TRANSPORT  # kombu's, atomic and with priorities
        conf["task_default_priority"] = 5
        conf["broker_transport_options"] = {
            "data_folder_in": folders["queue"],
            "data_folder_out": folders["queue"],
            "control_folder": folders["control"],
            "processed_folder": folders["processed"],
            "store_processed": False,
            "polling_interval": 0.1,  # a directory listing every 100 ms; kombu's default is 1 s
        }
        # Events and remote control need a fanout exchange: supported via control_folder.
    return conf


def embedded_broker_folders(settings: Settings) -> dict[str, str]:
    base = settings.embedded_broker_dir
    return {
        "queue": str(base / "queue"),
        "control": str(base / "control"),
        "processed": str(base / "processed"),
        "tmp": str(base / "tmp"),
    }


def make_celery(settings: Settings, name: str = "pacsai") -> Celery:
    """A Celery app configured from ``settings`` (used to send tasks, and by workers)."""
    app = Celery(name)
    app.conf.update(celery_config(settings))
    return app


def send_job(app: Celery, *, job_id: int, study_id: int, version: int, queue: str,
             priority: int = 5) -> str:
    """Ring the doorbell for one job; returns the task id."""
    result = app.send_task(
        TASK_PROCESS_STUDY,
        kwargs={"job_id": job_id, "study_id": study_id, "version": version},
        queue=queue,
        priority=priority,
    )
    return result.id


def send_delivery(app: Celery, destination: str) -> str:
    """Ask a CPU worker to send what is due for ``destination``."""
    return app.send_task(TASK_DELIVER, kwargs={"destination": destination}, queue=DEFAULT_QUEUE).id
