"""The Celery application the workers run (``python -m worker`` / ``pacsai worker``)."""

from __future__ import annotations

import logging
import os
import warnings

from celery.exceptions import CPendingDeprecationWarning, SecurityWarning

from daemon.config import load_settings
from daemon.logs import configure_logging
from daemon.dispatch.tasks import make_celery

settings = load_settings()
configure_logging(settings.logging.level, json_logs=settings.logging.json_logs)
app = make_celery(settings, name="pacsai-worker")
if hasattr(os, "geteuid") and os.geteuid() == 0:
    # Celery's multi-line superuser warning, every start, says only "use --uid": say once
    # what a site does instead (its task payloads are JSON ids, never pickle).
    warnings.filterwarnings("ignore", message=r"(?s).*superuser privileges", category=SecurityWarning)
    logging.getLogger("worker").warning(
        "running as root: fine for a trial; in production run pacsai as its own service user "
        "(the systemd units in systemd/ use User=pacsai; see docs/operations.md)")
# We keep running tasks going on a connection loss on purpose (daemon.dispatch.tasks): no warning
warnings.filterwarnings("ignore", message=r"\s*In Celery 5\.1 we introduced",
                        category=CPendingDeprecationWarning)
# worker.control: signal handlers and the pacsai_info inspect command (imported by the worker
# at start, before it is ready; it imports this module, not the other way round)
app.conf.update(include=["worker.tasks", "worker.control"])
