"""A worker that stops consuming is replaced.

Celery reconnects to a restarted Redis by itself (tested here with celery/kombu 5.7), but
workers that reconnect and then take nothing from their queues are a known fault of some
Celery/kombu/redis-py versions (celery issues #8030, #8990, #10205). The database keeps
such jobs queued, so nothing is lost, but nothing runs either.

This watch runs in the worker's main process. Every ``period`` seconds it asks the broker
how many tasks wait in the queues this worker was started for. A worker that holds no task
(none reserved, none running), received nothing, and saw work waiting for it the whole of
``stall_seconds`` is not consuming: it says so in the log and ends with exit code 75
(EX_TEMPFAIL) so that its supervisor (``pacsai serve``, or systemd's ``Restart=``) starts a
fresh one, which connects and consumes anew. It asks Celery for a warm shutdown first (it
holds no task, so that is quick) and ends the process itself if that has not happened
within ``period`` more seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

EXIT_STALLED = 75


class ConsumerWatch:
    """Decides, from periodic samples, whether this worker stopped consuming."""

    def __init__(self, backlog: Callable[[], int | None], busy: Callable[[], bool], *,
                 stall_seconds: float, period: float,
                 on_stall: Callable[[float, int], None]) -> None:
        self.backlog = backlog
        self.busy = busy
        self.stall_seconds = stall_seconds
        self.period = period
        self.on_stall = on_stall
        self.received_at = time.monotonic()
        self._since: float | None = None  # since when idle with work waiting
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def received(self) -> None:
        """A task message reached this worker: it consumes."""
        self.received_at = time.monotonic()

    def check(self, now: float | None = None) -> bool:
        """One sample; True once the worker has been stalled for ``stall_seconds``."""
        now = time.monotonic() if now is None else now
        if self.busy():
            self._since = None
            return False
        try:
            waiting = self.backlog()
        except Exception as exc:  # noqa: BLE001 - the broker is away: nothing to judge
            log.debug("consumer watch: cannot read the queues: %s", exc)
            waiting = None
        if not waiting:
            self._since = None
            return False
        if self._since is None or self.received_at > self._since:
            self._since = now
            return False
        stalled = now - self._since
        if stalled >= self.stall_seconds:
            self.on_stall(stalled, waiting)
            return True
        return False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="consumer-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                if self.check():
                    return
            except Exception:  # noqa: BLE001 - the watch must not kill the worker by mistake
                log.exception("consumer watch failed")


def restart_process(stalled: float, waiting: int, *, grace: float) -> None:
    """Log why, ask Celery to stop with :data:`EXIT_STALLED`, and make sure it does."""
    from celery.worker import state

    log.error("this worker took no task for %.0f s while %d task(s) waited in its queues and "
              "it held none: its consumer has stopped (a known Celery/Redis fault after a "
              "reconnection); exiting with code %d so that a fresh worker takes over",
              stalled, waiting, EXIT_STALLED)
    state.should_stop = EXIT_STALLED  # the consumer loop ends the worker with this code

    def force() -> None:
        time.sleep(grace)
        log.error("the worker did not stop within %.0f s; ending the process", grace)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        sys.stderr.flush()
        os._exit(EXIT_STALLED)

    threading.Thread(target=force, name="consumer-watch-exit", daemon=True).start()
