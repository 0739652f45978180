"""sd_notify from a real worker process: READY=1 once consuming, WATCHDOG=1 pings, and
STOPPING=1 as soon as it is asked to stop (then no more pings)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsai_process import REPO


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A unix datagram socket standing in for systemd's (short path: sun_path is 108 bytes)."""
    path = f"/tmp/pacsai-notify-{os.getpid()}-{time.monotonic_ns()}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()
        os.unlink(path)


def receive(sock: socket.socket, want: str, timeout: float, seen: list[str]) -> float:
    """Read messages until one has the line ``want``; the time it arrived."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            break
        seen.append(message)
        if want in message.splitlines():
            return time.monotonic()
    raise AssertionError(f"no {want} within {timeout} s; got {seen}")


def test_worker_sends_ready_watchdog_stopping(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PACSAI_", "CELERY_"))}
    env.update({
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": "1000000",  # pings every 0.5 s
        "PACSAI_STORAGE__DATA_DIR": str(tmp_path / "data"),
        "PYTHONUNBUFFERED": "1",
    })
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "worker", "-Q", "cpu", "--concurrency", "1"],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    seen: list[str] = []
    try:
        try:
            ready_at = receive(sock, "READY=1", 45, seen)
            ping_at = [receive(sock, "WATCHDOG=1", 5, seen) for _ in range(3)]
        except AssertionError as exc:
            tail = log.read_text(errors="replace")[-4000:]
            raise AssertionError(f"{exc}\nworker log:\n{tail}") from None
        assert proc.poll() is None
        assert ping_at[-1] - ready_at >= 0.8  # the watchdog thread keeps pinging, not one burst
        proc.send_signal(signal.SIGTERM)
        receive(sock, "STOPPING=1", 2, seen)  # at once, not after Celery's warm shutdown
        assert proc.wait(30) == 0
        sock.setblocking(False)
        after = []
        while True:
            try:
                after.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
        assert not any("WATCHDOG=1" in m.splitlines() for m in after), after
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
