"""The systemd units verify, and a real ``pacsai listener`` sends READY=1 and WATCHDOG=1."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from pacsai_process import REPO, PacsaiProcess

UNITS = REPO / "systemd"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="Debian package systemd")
@pytest.mark.parametrize("unit", ["pacsai-listener.service", "pacsai-worker@.service",
                                  "pacsai-worker-cpu.service", "pacsai-admin.service"])
def test_unit_verifies(unit: str, tmp_path: Path) -> None:
    text = (UNITS / unit).read_text()
    # The real ExecStart (/opt/pacsai/venv/bin/pacsai) is not installed here: verify the same
    # unit with an executable that exists, the rest unchanged.
    assert "ExecStart=/opt/pacsai/venv/bin/pacsai " in text
    name = unit.replace("@.", "@0.")
    (tmp_path / name).write_text(text.replace("/opt/pacsai/venv/bin/pacsai", shutil.which("true")))
    if "@" in unit:
        (tmp_path / unit).write_text((tmp_path / name).read_text())
    run = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / name)],
                         capture_output=True, text=True, timeout=60,
                         env={"SYSTEMD_LOG_LEVEL": "notice", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    problems = [line for line in run.stderr.splitlines() if name in line or "Unknown" in line]
    assert problems == [], run.stderr
    for needed in ("Type=notify", "Restart=on-failure", "User=pacsai", "ProtectSystem=strict",
                   "ReadWritePaths=/var/lib/pacsai", "NoNewPrivileges=yes", "PrivateTmp=yes",
                   "EnvironmentFile=-/etc/pacsai/pacsai.env", "WatchdogSec="):
        assert needed in text, needed
    active = [line for line in text.splitlines()
              if line.startswith("AmbientCapabilities=") and line.strip() != "AmbientCapabilities="]
    assert active == []  # CAP_NET_BIND_SERVICE only as the documented port-104 drop-in


def test_worker_template_binds_its_gpu() -> None:
    text = (UNITS / "pacsai-worker@.service").read_text()
    assert "Environment=CUDA_VISIBLE_DEVICES=%i" in text and "worker --gpu %i" in text


def test_listener_notifies_ready_and_watchdog(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.5)
    proc = PacsaiProcess(tmp_path / "data", command="listener",
                         config={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"})
    messages: list[str] = []
    with proc:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                messages.extend(sock.recv(4096).decode().splitlines())
            except TimeoutError:
                pass
            if "READY=1" in messages and messages.count("WATCHDOG=1") >= 2:
                break
    sock.close()
    assert "READY=1" in messages
    assert messages.count("WATCHDOG=1") >= 2  # keeps pinging (every WATCHDOG_USEC / 2)
    assert messages.index("READY=1") < len(messages) - 1
