"""Run a real ``pacsai serve`` / ``pacsai listener`` process for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def echo(port: int, aet: str = "PACSAI", calling: str = "TESTSCU", timeout: float = 2.0) -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = timeout
    ae.network_timeout = timeout
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True once something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


class PacsaiProcess:
    """One pacsai process with its own data directory and ports."""

    def __init__(self, data_dir: Path, *, command: str = "serve", config: dict[str, str] | None = None,
                 database_url: str | None = None, port: int | None = None,
                 ready: Callable[[int], bool] | None = None) -> None:
        self.ready = ready or (lambda port: echo(port))
        self.data_dir = data_dir
        self.command = command
        self.port = port or free_port()
        self.log_path = data_dir.parent / f"{data_dir.name}-{command}.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PACSAI_")},
            "PACSAI_STORAGE__DATA_DIR": str(data_dir),
            "PACSAI_STORAGE__MIN_FREE_BYTES": "0",
            "PACSAI_LISTENER__HOST": "127.0.0.1",
            "PACSAI_LISTENER__PORT": str(self.port),
            "PACSAI_STUDY__QUIET_SECONDS": "1",
            "PACSAI_STUDY__POLL_SECONDS": "0.1",
            "PACSAI_ADMIN__PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
        if database_url:
            self.env["PACSAI_DATABASE__URL"] = database_url
        self.env.update(config or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> "PacsaiProcess":
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", self.command], cwd=REPO, env=self.env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            wait_until(lambda: self._alive() and self.ready(self.port), timeout, 0.2)
            # the admin HTTP service starts after the listener: wait for it as well
            admin_port = int(self.env.get("PACSAI_ADMIN__PORT", "0"))
            if admin_port:
                wait_until(lambda: self._alive() and port_open(admin_port), timeout, 0.2)
        except TimeoutError:
            raise RuntimeError(f"pacsai did not start; log:\n{self.log()[-4000:]}") from None
        return self

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"pacsai exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()

    def kill9(self, *, group: bool = True) -> None:
        """SIGKILL the process (and, with ``group``, its worker too)."""
        if self.proc is None:
            return
        try:
            if group:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.kill()
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def __enter__(self) -> "PacsaiProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
