"""Orthanc as a throw-away PACS for tests (Debian ``orthanc`` package).

Usage::

    with OrthancServer(tmp_path, modalities={"pacsai": ("PACSAI", "127.0.0.1", 11112)}) as pacs:
        pacs.upload(path); pacs.get("/studies")

or the ``orthanc`` pytest fixture from ``tests/dicom_io/conftest.py``.
Free ports are picked per instance, so tests can run in parallel.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.path.exists("/usr/sbin/Orthanc") else None)


class OrthancServer:
    """A running Orthanc with its own storage, DICOM and HTTP ports."""

    def __init__(
        self,
        workdir: Path,
        aet: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.modalities = modalities or {}
        self.extra_config = extra_config or {}
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict[str, Any]:
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        cfg = {
            "Name": "pacsai-test",
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "Plugins": [],
            "ConcurrentJobs": 1,
        }
        cfg.update(self.extra_config)
        return cfg

    def start(self, timeout: float = 30.0) -> "OrthancServer":
        binary = orthanc_binary()
        if binary is None:
            raise RuntimeError("Orthanc is not installed")
        path = self.workdir / "orthanc.json"
        self.workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.config(), indent=2))
        log = open(self.workdir / "orthanc.log", "ab")
        env = dict(os.environ, TCP_NODELAY="1")
        self.process = subprocess.Popen([binary, str(path)], stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: see {self.workdir / 'orthanc.log'}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("Orthanc did not start in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def request(self, method: str, path: str, body: bytes | str | None = None) -> Any:
        data = body.encode() if isinstance(body, str) else body
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=30) as rsp:
            payload = rsp.read()
        return json.loads(payload) if payload else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: bytes | str | dict) -> Any:
        if isinstance(body, dict):
            body = json.dumps(body)
        return self.request("POST", path, body)

    def upload(self, path: Path | str) -> dict:
        """``POST /instances`` of one DICOM file."""
        return self.post("/instances", Path(path).read_bytes())

    def study_id(self, study_instance_uid: str) -> str | None:
        found = self.post("/tools/lookup", study_instance_uid)
        for item in found or []:
            if item.get("Type") == "Study":
                return item["ID"]
        return None

    def series_of_study(self, study_instance_uid: str) -> list[dict]:
        sid = self.study_id(study_instance_uid)
        return [] if sid is None else self.get(f"/studies/{sid}/series")
