"""systemd notification (``Type=notify``): READY=1 once serving, WATCHDOG=1 while healthy.

Does nothing unless systemd (or a test) set ``NOTIFY_SOCKET``. The watchdog
interval is half of ``WATCHDOG_USEC`` when systemd sets it (``WatchdogSec=``),
else 10 s. The ping comes from the caller's own loop (``maybe_ping``) where it has
one, so a hung main loop stops the pings and systemd restarts the service; or
from :meth:`Notifier.start_watchdog`'s thread, which checks ``alive()`` first.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self) -> None:
        self.socket_path = os.environ.get("NOTIFY_SOCKET")
        usec = os.environ.get("WATCHDOG_USEC", "")
        self.interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else 10.0
        self._last_ping = 0.0
        self._notifier = None
        self._stop = threading.Event()
        if self.socket_path:
            import sdnotify

            self._notifier = sdnotify.SystemdNotifier()

    @property
    def enabled(self) -> bool:
        return self._notifier is not None

    def send(self, *lines: str) -> None:
        if self._notifier is None:
            return
        try:
            self._notifier.notify("\n".join(lines))
        except Exception as exc:  # noqa: BLE001 - never fatal
            log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))
        self.ping()

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def ping(self) -> None:
        self._last_ping = time.monotonic()
        self.send("WATCHDOG=1")

    def maybe_ping(self) -> None:
        """Ping if half the watchdog interval passed since the last one."""
        if self.enabled and time.monotonic() - self._last_ping >= self.interval:
            self.ping()

    def start_watchdog(self, alive: Callable[[], bool] = lambda: True) -> None:
        """Ping from a daemon thread while ``alive()`` holds (for processes without a loop)."""
        if not self.enabled:
            return

        def run() -> None:
            while not self._stop.wait(self.interval):
                if alive():
                    self.ping()

        threading.Thread(target=run, name="sd-watchdog", daemon=True).start()

    def stop_watchdog(self) -> None:
        self._stop.set()
