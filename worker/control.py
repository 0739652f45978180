"""Worker-side operations hooks: systemd readiness/watchdog and a GPU remote-control query.

- ``worker_ready``: READY=1 to systemd (``Type=notify`` units) and a watchdog thread
  that pings while the worker's consumer is alive.
- ``worker_shutting_down`` (the moment SIGTERM/SIGINT arrives): STOPPING=1 and no more
  pings; ``worker_shutdown`` (seconds later, once the consumer stopped) only if the first
  did not fire.
- ``inspect pacsai_info``: in one answer, the queues this worker consumes, its active
  tasks, the GPU it is bound to and the memory its process holds there (read by the
  admin service for /readyz, /api/workers and /metrics).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from celery.signals import worker_ready, worker_shutdown, worker_shutting_down
from celery.worker.control import inspect_command

from daemon.notify import Notifier

_notifier = Notifier()
_consumer: Any = None
_stopping = False


@worker_ready.connect
def _ready(sender: Any = None, **_: Any) -> None:
    global _consumer
    _consumer = sender
    _notifier.ready("consuming")
    _notifier.start_watchdog(alive=_alive)


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
