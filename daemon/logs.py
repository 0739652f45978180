"""Structured logs: key=value lines for people, JSON lines for log shippers.

Library code logs through the standard ``logging`` module; this formats every
record with structlog. PHI rule: no patient name or ID is logged at INFO or above
(studies are named by their database id).
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str = "INFO", *, json_logs: bool = False) -> None:
    shared = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (
        structlog.processors.JSONRenderer()
        if json_logs
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy, lvl in (("pynetdicom", logging.WARNING), ("alembic", logging.WARNING),
                       ("celery", logging.INFO), ("kombu", logging.WARNING)):
        logging.getLogger(noisy).setLevel(max(lvl, logging.getLevelName(level)))
