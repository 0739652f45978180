"""Real peer processes for tests: a private Redis server, Celery workers, a C-STORE SCP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from pynetdicom import AE, AllStoragePresentationContexts, evt

from dicom_io.scu_guard import guard_responses
from pacsai_process import REPO, PacsaiProcess, free_port, wait_until


class RedisServer:
    """A redis-server of our own on a free port, without persistence (like production's).

    With ``appendonly`` it logs every write to ``workdir`` (fsync always), so a server
    killed and started again comes back with what it held: queued and unacked tasks.
    """

    def __init__(self, workdir: Path, port: int | None = None, *, appendonly: bool = False) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, 10, 0.05)
        return self

    def ping(self) -> bool:
        r = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True)
        return r.stdout.strip() == "PONG"

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


class WorkerProcess:
    """``python -m worker`` sharing a pacsai process's configuration."""

    def __init__(self, like: PacsaiProcess, name: str, queues: str = "infer,cpu",
                 concurrency: int = 1, extra_env: dict[str, str] | None = None) -> None:
        self.name = name
        # INFO logging: readiness is read from the worker's "ready." line
        self.env = {**like.env, "PACSAI_LOGGING__LEVEL": "INFO", **(extra_env or {})}
        self.log_path = like.data_dir.parent / f"worker-{name}.log"
        self.cmd = [sys.executable, "-m", "worker", "-Q", queues, "--concurrency", str(concurrency),
                    "-n", f"{name}@%h", "--loglevel", "INFO"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "WorkerProcess":
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=self.env,
                                     stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_until(lambda: "ready." in self.log() or self._dead(), 60, 0.1)
        assert not self._dead(), self.log()[-3000:]
        return self

    def _dead(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        """SIGKILL the worker and its pool children at once."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()


class StoreSCP:
    """A C-STORE SCP (the PACS) that records every SOP Instance UID it receives."""

    def __init__(self, ae_title: str = "PACS", status: int = 0x0000) -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.received: list[str] = []
        self.status = status
        ae = AE(ae_title=ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: evt.Event) -> int:
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        return self.status

    def destination(self, name: str = "pacs") -> dict[str, object]:
        return {"name": name, "ae_title": self.ae_title, "host": "127.0.0.1", "port": self.port}

    def stop(self) -> None:
        self.server.shutdown()


def send_datasets(port: int, datasets: list, calling: str = "MODALITY") -> None:
    """One association from ``calling`` storing ``datasets``; every status must be Success."""
    ae = AE(ae_title=calling)
    for cx in AllStoragePresentationContexts[:120]:
        ae.add_requested_context(cx.abstract_syntax)
    from pydicom.uid import JPEG2000Lossless

    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1", [JPEG2000Lossless])
    assoc = guard_responses(ae.associate("127.0.0.1", port, ae_title="PACSAI"))
    assert assoc.is_established
    for ds in datasets:
        status = assoc.send_c_store(ds)
        assert status and status.Status == 0, status
    assoc.release()
