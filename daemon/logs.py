"""Structured logs: key=value lines for people, JSON lines for log shippers.

Library code logs through the standard ``logging`` module; this formats every
record with structlog. PHI rule: no patient name or ID is logged at INFO or above
(studies are named by their database id).

The DICOM libraries do not follow that rule: pydicom and highdicom quote header values
in their warnings (highdicom warns with the whole patient name when it has a single
component, pydicom with a date it cannot read). Python warnings are therefore routed
through logging (``py.warnings``), and every record of those libraries, of the warnings
and of a Celery worker's redirected stdout/stderr is scrubbed by
:func:`daemon.redact.scrub` (quoted values and UIDs removed) before it is written.
"""

from __future__ import annotations

import logging
import sys

import structlog

from daemon import redact

#: Loggers whose messages may quote DICOM header values: scrubbed before they are written.
SCRUBBED_LOGGERS = ("py.warnings", "celery.redirected", "pydicom", "highdicom")


class LibraryValuesFilter(logging.Filter):
    """Scrub records of :data:`SCRUBBED_LOGGERS` (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if any(name == n or name.startswith(n + ".") for n in SCRUBBED_LOGGERS):
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001 - a malformed record is still written
                message = str(record.msg)
            record.msg = redact.scrub(message)
            record.args = None
        return True


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
    handler.addFilter(LibraryValuesFilter())
    logging.captureWarnings(True)  # warnings quote values too: through the filter above
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy, lvl in (("pynetdicom", logging.WARNING), ("alembic", logging.WARNING),
                       ("celery", logging.INFO), ("kombu", logging.WARNING)):
        logging.getLogger(noisy).setLevel(max(lvl, logging.getLevelName(level)))
