"""A pacsai deployment over the test hosts of :mod:`hosts` (issue 12).

The receiving host runs PostgreSQL, Redis, ``pacsai listener`` (DICOM on its address, the admin
service with ``/dicomweb`` on its address too), the delivery worker (queue ``cpu``: the result
files live there) and the PACS (a C-STORE SCP in this test process, listening in the receiving
host's namespace, that records every SOP Instance UID it is sent). A worker host runs
``pacsai worker --listener-url http://recv:8080/dicomweb --token …`` with its own data directory,
reaching only the receiver's PostgreSQL, Redis and HTTP ports. A worker may also run on the
receiving host itself (the local worker, which reads the spool), for comparison.

Used by ``tests/multihost`` and ``bench/remote_worker.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, evt

from hosts import Host, Postgres, Redis

DICOM_PORT, PACS_PORT, HTTP_PORT = 11112, 11113, 8080

# Short periods: a lost worker's job is re-sent within seconds (see [worker] in daemon/sections)
FAST = {
    "PACSAI_WORKER__HEARTBEAT_SECONDS": "0.5",
    "PACSAI_WORKER__HEARTBEAT_TIMEOUT_SECONDS": "4",
    "PACSAI_WORKER__RECONCILE_SECONDS": "0.5",
    "PACSAI_WORKER__REQUEUE_AFTER_SECONDS": "3",
    "PACSAI_STUDY__QUIET_SECONDS": "0.3",
    "PACSAI_STUDY__POLL_SECONDS": "0.05",
}

# Both demo models with their default outputs (SR, SC, and a Parametric Map where the source has a
# Frame of Reference), CT allowed (the models are meant for CR/DX; CT slices go through them
# here to exercise a many-instance study)
PIPELINES = [
    {"name": "cxr-classifier", "model": "chest-cxr-classifier", "modalities": ["CR", "DX", "CT"]},
    {"name": "cxr-anomaly", "model": "chest-cxr-anomaly", "modalities": ["CR", "DX", "CT"]},
]


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.1,
               what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        time.sleep(interval)


class Pacs:
    """A C-STORE SCP on ``host``'s address: the PACS results go back to. ``received`` holds
    (Study Instance UID, SOP Instance UID) for every C-STORE, duplicates included."""

    def __init__(self, host: Host, port: int = PACS_PORT, ae_title: str = "PACS") -> None:
        self.host, self.port, self.ae_title = host, port, ae_title
        self.received: list[tuple[str, str]] = []
        self.arrived: dict[str, float] = {}  # study UID -> monotonic time of its latest object
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax)
        with host.netns():  # the listening socket (and its threads) live in the host
            self.server = ae.start_server((host.address, port), block=False,
                                          evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: evt.Event) -> int:
        ds = event.dataset
        with self._lock:
            self.received.append((str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)))
            self.arrived[str(ds.StudyInstanceUID)] = time.monotonic()
        return 0x0000

    def of_study(self, study_uid: str) -> list[str]:
        with self._lock:
            return [sop for study, sop in self.received if study == study_uid]

    def duplicates(self) -> dict[str, int]:
        with self._lock:
            return {sop: n for (_, sop), n in Counter(self.received).items() if n > 1}

    def destination(self, name: str = "pacs") -> dict[str, object]:
        return {"name": name, "ae_title": self.ae_title, "host": self.host.address,
                "port": self.port}

    def stop(self) -> None:
        self.server.shutdown()


def send_study(host: Host, address: str, datasets: list, port: int = DICOM_PORT,
               calling: str = "MODALITY", called: str = "PACSAI") -> None:
    """A modality in ``host`` stores ``datasets`` to ``address:port`` on one association."""
    ae = AE(ae_title=calling)
    for cx in AllStoragePresentationContexts[:120]:
        ae.add_requested_context(cx.abstract_syntax)
    with host.netns():
        assoc = ae.associate(address, port, ae_title=called)
    assert assoc.is_established, f"no association with {address}:{port}"
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            assert status and status.Status == 0, status
    finally:
        assoc.release()


class PacsaiOnHost:
    """One ``python -m daemon.cli …`` process in a host, as the host's user."""

    def __init__(self, host: Host, args: list[str], env: dict[str, str], name: str) -> None:
        self.host, self.args, self.env, self.name = host, args, env, name
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready: Callable[[], bool], timeout: float = 90) -> "PacsaiOnHost":
        self.proc = self.host.start([sys.executable, "-m", "daemon.cli", *self.args],
                                    env=self.env, log=self.name)
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.host.name} {self.name} exited {self.proc.returncode}:"
                                   f"\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.host.name} {self.name} not ready:\n{self.log()[-4000:]}")
            time.sleep(0.1)
        return self

    def log(self) -> str:
        return self.host.log(self.name)

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with _suppress():
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with _suppress():
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, ProcessLookupError)


def make_pki(folder: Path, host: Host) -> dict[str, Path]:
    """A throw-away CA and a certificate for ``host`` (its name and address), EC keys (fast)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # the CA key: root's only

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-days", "2", "-subj", "/CN=pacsai-test-ca",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", *ec, "-subj", f"/CN={host.name}", "-keyout", "server.key",
            "-out", "server.csr")
    (folder / "server.ext").write_text(f"subjectAltName=DNS:{host.name},IP:{host.address}\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.pem")
    return {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}


def give(host: Host, source: Path, name: str, mode: int = 0o600) -> Path:
    """A copy of ``source`` in ``host``'s data directory, its user's only."""
    target = host.data_dir / name
    target.write_bytes(source.read_bytes())
    os.chown(target, host.uid, host.gid)
    target.chmod(mode)
    return target


class Receiver:
    """The receiving host: PostgreSQL, Redis, ``pacsai listener``, the delivery worker, the PACS.

    ``tls``: the admin service (and with it ``/dicomweb``) serves HTTPS with a certificate of a
    throw-away CA for the host's name; worker hosts verify it against that CA."""

    def __init__(self, host: Host, *, pipelines: list[dict] | None = None,
                 config: dict[str, str] | None = None, tls: bool = False) -> None:
        self.host = host
        self.tls = tls
        self.pki: dict[str, Path] = {}
        self.pipelines = pipelines or PIPELINES
        self.extra = config or {}
        self.pg = Postgres(host)
        self.redis = Redis(host)
        self.pacs: Pacs | None = None
        self.listener: PacsaiOnHost | None = None
        self.workers: list[PacsaiOnHost] = []
        self.data_dir = host.data_dir / "pacsai"
        self.database_url = ""

    @property
    def dicomweb_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host.name}:{HTTP_PORT}/dicomweb"

    @property
    def token(self) -> str:
        return (self.data_dir / "dicomweb-token").read_text().strip()

    def common_env(self) -> dict[str, str]:
        """What every pacsai process of the deployment is configured with."""
        assert self.pacs is not None
        return {
            **FAST,
            "PACSAI_DATABASE__URL": self.database_url,
            "PACSAI_BROKER__URL": self.redis.url,
            "PACSAI_DESTINATIONS": json.dumps([self.pacs.destination()]),
            "PACSAI_PIPELINES": json.dumps(self.pipelines),
            "PACSAI_STORAGE__MIN_FREE_BYTES": "0",
            "PACSAI_LOGGING__LEVEL": "INFO",
            **self.extra,
        }

    def start(self, *, delivery_worker: bool = True) -> "Receiver":
        self.pg.start()
        self.redis.start()
        self.database_url = self.pg.create_database("pacsai")
        self.pacs = Pacs(self.host)
        self.host.run(["mkdir", "-m", "0700", "-p", self.data_dir])
        env = {**self.common_env(), "PACSAI_STORAGE__DATA_DIR": str(self.data_dir),
               "PACSAI_LISTENER__HOST": self.host.address,
               "PACSAI_LISTENER__PORT": str(DICOM_PORT),
               "PACSAI_ADMIN__HOST": self.host.address, "PACSAI_ADMIN__PORT": str(HTTP_PORT)}
        if self.tls:
            self.pki = make_pki(self.host.network.base / "pki", self.host)
            env["PACSAI_ADMIN__CERT_FILE"] = str(give(self.host, self.pki["cert"], "tls.pem"))
            env["PACSAI_ADMIN__KEY_FILE"] = str(give(self.host, self.pki["key"], "tls.key"))
        self.env = env
        h = self.host
        self.listener = PacsaiOnHost(h, ["listener"], env, "listener").start(
            lambda: h.can_connect(h.address, DICOM_PORT, 0.5)
            and h.can_connect(h.address, HTTP_PORT, 0.5)
            and (self.data_dir / "dicomweb-token").exists())
        if delivery_worker:
            self.add_worker("cpu", "delivery")
        return self

    def add_worker(self, queues: str, name: str, concurrency: int = 1) -> PacsaiOnHost:
        """A worker on the receiving host itself (reads the spool: a local worker)."""
        worker = PacsaiOnHost(self.host, ["worker", "--queues", queues, "--concurrency",
                                          str(concurrency)], self.env, name)
        worker.start(lambda: "ready." in worker.log())
        self.workers.append(worker)
        return worker

    def query(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(session)`` in a read transaction on the receiver's database, from its namespace."""
        with self.host.netns():
            db = _database(self.database_url)
            try:
                with db.read() as session:
                    return fn(session)
            finally:
                db.dispose()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.listener is not None:
            self.listener.stop()
        if self.pacs is not None:
            self.pacs.stop()


def _database(url: str) -> Any:
    from daemon.store.db import Database

    return Database(url)


def remote_worker(host: Host, receiver: Receiver, *, queues: str = "infer", concurrency: int = 1,
                  name: str = "worker", restrict: bool = True) -> PacsaiOnHost:
    """``pacsai worker --listener-url … --token …`` on ``host`` with its own data directory;
    ``restrict``: the host may open connections to the receiver's PostgreSQL, Redis and HTTP
    ports only (nftables, where present)."""
    if restrict:
        from hosts import HostsUnavailable

        try:
            host.restrict_egress([(receiver.host.address, p)
                                  for p in (receiver.pg.port, receiver.redis.port, HTTP_PORT)])
        except HostsUnavailable:
            pass
    data_dir = host.data_dir / "pacsai"
    host.run(["mkdir", "-m", "0700", "-p", data_dir])
    env = {**receiver.common_env(), "PACSAI_STORAGE__DATA_DIR": str(data_dir),
           "PACSAI_ADMIN__PORT": "0"}
    args = ["worker", "--queues", queues, "--concurrency", str(concurrency),
            "--listener-url", receiver.dicomweb_url, "--token", receiver.token]
    if receiver.tls:
        args += ["--ca-file", str(give(host, receiver.pki["ca"], "receiver-ca.pem", 0o644))]
    worker = PacsaiOnHost(host, args, env, name)
    return worker.start(lambda: "ready." in worker.log())
