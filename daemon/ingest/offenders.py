"""Refusals logged once per peer and reason a minute, then as a count: a hostile or broken
peer cannot flood the log (the association gate, rejected associations, refused instances)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: How long a burst of refusals from one address is summarised before the next line.
OFFENDER_LOG_PERIOD = 60.0


class OffenderLog:
    """One warning per (address, reason) per period; what came between is counted, not logged."""

    def __init__(self, period: float = OFFENDER_LOG_PERIOD, limit: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.period, self.limit, self.clock = period, limit, clock
        self._seen: dict[tuple[str, str], list[Any]] = {}  # key -> [first_logged, count, text]
        self._lock = threading.Lock()

    def note(self, address: str, reason: str, text: str) -> None:
        now = self.clock()
        with self._lock:
            entry = self._seen.get((address, reason))
            if entry is None:
                if len(self._seen) >= self.limit:
                    self._flush_locked(now, force=True)
                self._seen[(address, reason)] = [now, 0, text]
                log.warning("%s; further ones from %s are counted once a minute", text, address)
            else:
                entry[1] += 1
                entry[2] = text

    def flush(self) -> None:
        with self._lock:
            self._flush_locked(self.clock())

    def _flush_locked(self, now: float, force: bool = False) -> None:
        for key, (since, count, text) in list(self._seen.items()):
            if not force and now - since < self.period:
                continue
            del self._seen[key]
            if count:
                log.warning("%d more in the last %.0f s from %s: %s", count, now - since,
                            key[0], text)
