"""The Celery application the workers run (``python -m worker`` / ``pacsai worker``)."""

from __future__ import annotations

import warnings

from celery.exceptions import CPendingDeprecationWarning

from daemon.config import load_settings
from daemon.logs import configure_logging
from daemon.dispatch.tasks import make_celery

settings = load_settings()
configure_logging(settings.logging.level, json_logs=settings.logging.json_logs)
app = make_celery(settings, name="pacsai-worker")
# We keep running tasks going on a connection loss on purpose (daemon.dispatch.tasks): no warning
warnings.filterwarnings("ignore", message=r"\s*In Celery 5\.1 we introduced",
                        category=CPendingDeprecationWarning)
# worker.control: signal handlers and the pacsai_info inspect command (imported by the worker
# at start, before it is ready; it imports this module, not the other way round)
app.conf.update(include=["worker.tasks", "worker.control"])
