"""Fixtures for dicom_io tests: validators, SCPs (pynetdicom, DCMTK), Orthanc."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from orthanc import OrthancServer, free_port, orthanc_binary  # noqa: E402


def dciodvfy(path: Path | str) -> tuple[list[str], list[str]]:
    """(errors, warnings) lines printed by dicom3tools' dciodvfy."""
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stderr + proc.stdout).splitlines()
    errors = [line.strip() for line in lines if line.startswith("Error")]
    warnings = [line.strip() for line in lines if line.startswith("Warning")]
    return errors, warnings


requires_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools missing")
requires_dcmtk = pytest.mark.skipif(shutil.which("storescp") is None, reason="DCMTK missing")
requires_orthanc = pytest.mark.skipif(orthanc_binary() is None, reason="Orthanc missing")


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port}")


@dataclass
class PynetdicomSCP:
    ae_title: str
    port: int
    status: int = 0x0000
    received: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def pynetdicom_scp():
    """A pynetdicom Storage SCP on a free port; set ``.status`` to answer with."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification

    scp = PynetdicomSCP("TESTSCP", free_port())

    def on_store(event):
        with scp.lock:
            scp.received.append(event.dataset)
        if scp.status != 0x0000:
            from pydicom.dataset import Dataset

            rsp = Dataset()
            rsp.Status = scp.status
            rsp.ErrorComment = "test SCP refuses"
            return rsp
        return 0x0000

    ae = AE(ae_title=scp.ae_title)
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    ae.require_called_aet = True
    server = ae.start_server(
        ("127.0.0.1", scp.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    yield scp
    server.shutdown()


@pytest.fixture
def storescp(tmp_path):
    """Factory: start DCMTK storescp (TCP_NODELAY=1) with extra args; returns (aet, port, outdir)."""
    procs = []

    def start(*args: str):
        port = free_port()
        out = tmp_path / f"storescp-{port}"
        out.mkdir()
        env = dict(os.environ, TCP_NODELAY="1")
        proc = subprocess.Popen(
            ["storescp", "-aet", "STORESCP", "-od", str(out), *args, str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        wait_for_port(port)
        return "STORESCP", port, out

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def orthanc(tmp_path):
    """A running Orthanc (see tests/dicom_io/orthanc.py); stopped afterwards."""
    if orthanc_binary() is None:
        pytest.skip("Orthanc missing")
    server = OrthancServer(tmp_path / "orthanc")
    server.start()
    yield server
    server.stop()
