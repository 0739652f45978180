"""Running the admin app: in a thread of the listener service, or alone (``pacsai admin``)."""

from __future__ import annotations

import logging
import threading

import uvicorn
from fastapi import FastAPI

from daemon.config import Settings

log = logging.getLogger(__name__)


def uvicorn_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    a = settings.admin
    ssl = {}
    if a.cert_file is not None and a.key_file is not None:
        ssl = {"ssl_certfile": str(a.cert_file), "ssl_keyfile": str(a.key_file)}
    return uvicorn.Config(app, host=a.host, port=a.port, log_level="warning",
                          access_log=False, lifespan="off", **ssl)  # type: ignore[arg-type]


class AdminServer:
    """uvicorn in a daemon thread; ``stop()`` asks it to finish."""

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self.settings = settings
        self.server = uvicorn.Server(uvicorn_config(app, settings))
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self.server.run, name="admin-http", daemon=True)
        self._thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout / 0.05)):
            if self.server.started or not self._thread.is_alive():
                break
            deadline.wait(0.05)
        if not self.server.started:
            raise RuntimeError(f"admin service could not listen on "
                               f"{self.settings.admin.host}:{self.settings.admin.port}")
        scheme = "https" if self.settings.admin.cert_file else "http"
        log.info("admin service on %s://%s:%d/", scheme, self.settings.admin.host,
                 self.settings.admin.port)

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(5)
