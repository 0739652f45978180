"""Time limits where Celery's pool enforces none (thread-pool GPU workers).

The prefork pool kills a child at the hard limit and raises SoftTimeLimitExceeded in it
at the soft one; a thread pool does neither, so a hung engine call would hold its job
forever. The watchdog gives thread-pool workers the same contract:

- at the soft limit it raises :class:`~celery.exceptions.SoftTimeLimitExceeded` in the
  task's thread (delivered as soon as that thread runs Python code again);
- at the hard limit (a call stuck in native code never sees the soft one) it fails the
  job with the reason, fenced by the attempt that holds it, and ends the process with
  exit code 70 so that its supervisor (``pacsai serve`` or systemd) starts a fresh one.
  Other jobs of the same process stop sending heartbeats and are re-sent by the
  reconciler.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from celery.exceptions import SoftTimeLimitExceeded

log = logging.getLogger(__name__)

EXIT_HARD_LIMIT = 70


@dataclass
class _Watched:
    label: str
    thread_id: int
    started: float
    on_hard: Callable[[], None]
    soft_sent: bool = field(default=False)


class Watchdog:
    """Watches tasks running in threads of this process (see module docstring)."""

    def __init__(self, soft_seconds: float, hard_seconds: float, *, period: float = 0.5,
                 exit_process: Callable[[int], None] = os._exit) -> None:
        self.soft = soft_seconds
        self.hard = hard_seconds
        self.period = period
        self.exit_process = exit_process
        self._watched: dict[int, _Watched] = {}
        self._lock = threading.Lock()
        self._next = 0
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(self, label: str, on_hard: Callable[[], None]) -> Iterator[None]:
        """Watch the calling thread while the body runs; ``on_hard`` records the failure."""
        self._ensure_started()
        with self._lock:
            self._next += 1
            key = self._next
            self._watched[key] = _Watched(label, threading.get_ident(), time.monotonic(), on_hard)
        try:
            yield
        finally:
            with self._lock:
                self._watched.pop(key, None)

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="task-watchdog",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.period)
            now = time.monotonic()
            with self._lock:
                watched = list(self._watched.values())
            for w in watched:
                elapsed = now - w.started
                if elapsed >= self.hard:
                    self._hard_limit(w, elapsed)
                    return
                if elapsed >= self.soft and not w.soft_sent:
                    w.soft_sent = True
                    log.warning("%s: soft time limit (%g s) exceeded; interrupting it",
                                w.label, self.soft)
                    _raise_in_thread(w.thread_id, SoftTimeLimitExceeded)

    def _hard_limit(self, w: _Watched, elapsed: float) -> None:
        log.error("%s: hard time limit (%g s) exceeded after %.0f s: the call did not return; "
                  "failing the job and replacing this worker process", w.label, self.hard, elapsed)
        try:
            w.on_hard()
        except Exception:  # noqa: BLE001 - the process goes anyway; the reconciler re-sends
            log.exception("%s: could not record the hard time limit", w.label)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        sys.stderr.flush()
        self.exit_process(EXIT_HARD_LIMIT)


def _raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Ask the interpreter to raise ``exc_type`` in another thread (next bytecode it runs)."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                                      ctypes.py_object(exc_type))
    return done == 1
