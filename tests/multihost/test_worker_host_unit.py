"""The worker host's systemd unit (systemd/pacsai-worker-host@.service) verifies and says what a
worker host needs: its GPU, the listener URL and token from the environment file, no local
PostgreSQL/Redis/listener to wait for."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "pacsai-worker-host@.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="Debian package systemd")
def test_worker_host_unit_verifies(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert "ExecStart=/opt/pacsai/venv/bin/pacsai worker --gpu %i" in text
    # verified with an executable that exists here, the rest unchanged
    for name in ("pacsai-worker-host@.service", "pacsai-worker-host@0.service"):
        (tmp_path / name).write_text(text.replace("/opt/pacsai/venv/bin/pacsai",
                                                  shutil.which("true") or "/bin/true"))
    run = subprocess.run(["systemd-analyze", "verify", "--man=no",
                          str(tmp_path / "pacsai-worker-host@0.service")],
                         capture_output=True, text=True, timeout=60,
                         env={"SYSTEMD_LOG_LEVEL": "notice", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    problems = [line for line in run.stderr.splitlines()
                if "pacsai-worker-host" in line or "Unknown" in line]
    assert problems == [], run.stderr


def test_worker_host_unit_needs_no_local_services() -> None:
    text = UNIT.read_text()
    lines = text.splitlines()
    for needed in ("Type=notify", "Restart=on-failure", "User=pacsai", "ProtectSystem=strict",
                   "ReadWritePaths=/var/lib/pacsai", "NoNewPrivileges=yes", "PrivateTmp=yes",
                   "Environment=CUDA_VISIBLE_DEVICES=%i", "WatchdogSec=",
                   # without the file there is no listener URL nor token: fail, do not guess
                   "EnvironmentFile=/etc/pacsai/pacsai.env"):
        assert any(line.startswith(needed) for line in lines), needed
    after = next(line for line in lines if line.startswith("After="))
    assert after == "After=network-online.target"  # nothing of the receiving host runs here
    assert "--token" not in text.split("[Service]")[1].split("ExecStart=")[1].splitlines()[0]
    assert "AmbientCapabilities=\n" in text and "CapabilityBoundingSet=\n" in text
    env = (REPO / "systemd" / "pacsai-worker-host.env.example").read_text()
    for key in ("PACSAI_WORKER__LISTENER_URL=", "PACSAI_WORKER__LISTENER_TOKEN=",
                "PACSAI_DATABASE__URL=", "PACSAI_BROKER__URL="):
        assert key in env, key
