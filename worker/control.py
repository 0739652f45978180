"""Worker-side operations hooks: systemd readiness/watchdog and a GPU remote-control query.

- ``worker_ready``: READY=1 to systemd (``Type=notify`` units) and a watchdog thread
  that pings while the worker's consumer is alive.
- ``worker_shutting_down`` (the moment SIGTERM/SIGINT arrives): STOPPING=1 and no more
  pings; ``worker_shutdown`` (seconds later, once the consumer stopped) only if the first
  did not fire.
- a consumer watch (worker.consumer_watch): a worker that holds no task, receives nothing
  and sees work waiting in its queues for ``heartbeat_timeout_seconds`` has stopped
  consuming, and exits with code 75 so that its supervisor starts a fresh one.
- ``inspect pacsai_info``: in one answer, the queues this worker consumes, its active
  tasks, the GPU it is bound to and the memory its process holds there (read by the
  admin service for /readyz, /api/workers and /metrics).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from celery.signals import task_received, worker_ready, worker_shutdown, worker_shutting_down
from celery.worker.control import inspect_command

from daemon.ops.notify import Notifier
from worker.consumer_watch import ConsumerWatch, restart_process

_notifier = Notifier()
_consumer: Any = None
_stopping = False
_watch: ConsumerWatch | None = None


@worker_ready.connect
def _ready(sender: Any = None, **_: Any) -> None:
    global _consumer
    _consumer = sender
    _notifier.ready("consuming")
    _notifier.start_watchdog(alive=_alive)
    _start_consumer_watch(sender)


def _start_consumer_watch(consumer: Any) -> None:
    """Watch that this worker keeps consuming the queues it was started for."""
    global _watch
    from celery.worker import state as worker_state

    from daemon.dispatch.broker import Broker
    from worker.celery_app import app, settings

    task_consumer = getattr(consumer, "task_consumer", None)
    queues = sorted({q.name for q in task_consumer.queues}) if task_consumer else []
    if not queues or _watch is not None:
        return
    broker = Broker(settings, app, timeout=settings.broker.socket_timeout_seconds)
    period = settings.worker.heartbeat_seconds
    _watch = ConsumerWatch(
        backlog=lambda: sum(broker.queue_lengths(queues).values()),
        busy=lambda: bool(worker_state.reserved_requests or worker_state.active_requests),
        stall_seconds=settings.worker.heartbeat_timeout_seconds, period=period,
        on_stall=lambda stalled, waiting: restart_process(stalled, waiting,
                                                          grace=max(period, 5.0)))
    _watch.start()


@task_received.connect
def _received(**_: Any) -> None:
    if _watch is not None:
        _watch.received()


def _alive() -> bool:
    blueprint = getattr(_consumer, "blueprint", None)
    state = getattr(blueprint, "state", None)
    return state is None or state == 1  # celery.bootsteps.RUN


@worker_shutting_down.connect
@worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    global _stopping
    if _stopping:
        return
    _stopping = True
    if _watch is not None:
        _watch.stop()
    _notifier.stop_watchdog()
    _notifier.stopping()


@inspect_command()
def pacsai_info(state: Any) -> dict[str, Any]:
    """Queues, active tasks and GPU of this worker, for the admin service."""
    from celery.worker import state as worker_state

    consumer = state.consumer
    queues = [q.name for q in consumer.task_consumer.queues] if consumer.task_consumer else []
    return {"queues": queues, "active": len(worker_state.active_requests), "gpu": _gpu()}


def _gpu() -> dict[str, Any]:
    """GPU binding and memory of this worker (no CUDA initialisation if none happened)."""
    info: dict[str, Any] = {"device": os.environ.get("CUDA_VISIBLE_DEVICES")}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        info["name"] = torch.cuda.get_device_name(0)
        info["memory_allocated"] = int(torch.cuda.memory_allocated(0))
        info["memory_reserved"] = int(torch.cuda.memory_reserved(0))
    return info
