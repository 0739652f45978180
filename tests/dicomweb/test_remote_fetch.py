"""worker.remote's WADO-RS client against a real HTTP(S) server that misbehaves on purpose:
a body cut off half-way and a 503 are tried again (bounded, with a pause) and the instances
land byte for byte at their spool paths; a 404 or 403 fails at once; a silent server times
out; TLS is verified against the configured CA."""

from __future__ import annotations

import http.server
import os
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.config import load_settings
from dicom_io.multipart import FilePart, new_boundary, related_type, stream_parts
from pki import certs  # noqa: F401 - fixture
from worker.remote import ReceivingNode, RemoteError

STUDY = "1.2.826.0.1.3680043.10.1484.77"


class Server:
    """Answers each GET with the next behaviour in ``script``."""

    def __init__(self, files: dict[str, Path], script: list[str],
                 tls: ssl.SSLContext | None = None) -> None:
        self.files, self.script, self.requests = files, list(script), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                outer.requests.append((self.path, self.headers.get("Authorization")))
                how = outer.script.pop(0) if outer.script else "ok"
                if how.isdigit():
                    self.send_response(int(how))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if how == "silent":
                    time.sleep(3)
                    return
                boundary = new_boundary()
                body = b"".join(stream_parts([FilePart(p, {
                    "Content-Type": "application/dicom",
                    "Content-Location": f"/dicomweb/studies/{STUDY}/series/1/instances/{sop}"})
                    for sop, p in outer.files.items()], boundary, chunk_size=4096))
                if how == "cut":
                    body = body[: len(body) // 2]
                self.send_response(200)
                self.send_header("Content-Type", related_type(boundary))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                if how == "cut":
                    self.close_connection = True

        class Threaded(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.httpd = Threaded(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def instances(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "src"
    src.mkdir()
    out = {}
    for i in range(3):
        p = src / f"{i}.dcm"
        p.write_bytes(os.urandom(200_000 + i) + b"\r\n--pacsai-boundary-look-alike\r\n")
        out[f"1.2.3.{i}"] = p
    return out


def node(tmp_path: Path, url: str, **worker: Any) -> ReceivingNode:
    settings = load_settings(storage={"data_dir": tmp_path / "worker-host"}, worker={
        "listener_url": url, "listener_token": "secret", "fetch_timeout_seconds": 1,
        "fetch_attempts": 3, **worker},
        broker={"url": "redis://127.0.0.1:1/0"}, database={"url": "postgresql://x@127.0.0.1/x"})
    return ReceivingNode(settings)


@pytest.fixture
def serve(instances: dict[str, Path]) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(script: list[str], tls: ssl.SSLContext | None = None) -> Server:
        servers.append(Server(instances, script, tls))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def expected(instances: dict[str, Path]) -> dict[str, str]:
    return {sop: f"studies/ab/{'c' * 40}/{i}.dcm" for i, sop in enumerate(instances)}


def test_broken_transfers_are_tried_again(tmp_path: Path, instances: dict[str, Path],
                                          serve: Callable[..., Server]) -> None:
    server = serve(["cut", "503"])
    root = tmp_path / "copy"
    started = time.monotonic()
    report = node(tmp_path, f"http://127.0.0.1:{server.port}/dicomweb").fetch_study(
        STUDY, 2, expected(instances), root)
    assert report.attempts == 3 and report.instances == 3
    assert time.monotonic() - started >= 1.5  # 0.5 s, then 1 s between the tries
    for sop, rel in expected(instances).items():
        assert (root / rel).read_bytes() == instances[sop].read_bytes()
        assert (root / rel).stat().st_mode & 0o077 == 0  # patient data: owner only
    assert not list((root / "tmp").iterdir())  # the cut try left no partial file
    path, auth = server.requests[0]
    assert path == f"/dicomweb/studies/{STUDY}?version=2" and auth == "Bearer secret"


def test_bounded_tries_then_a_reason(tmp_path: Path, instances: dict[str, Path],
                                     serve: Callable[..., Server]) -> None:
    server = serve(["503", "cut", "503", "ok"])
    with pytest.raises(RemoteError, match="after 3 tries"):
        node(tmp_path, f"http://127.0.0.1:{server.port}/dicomweb").fetch_study(
            STUDY, 1, expected(instances), tmp_path / "copy")
    assert len(server.requests) == 3


@pytest.mark.parametrize("code", ["404", "403", "401"])
def test_final_answers_are_not_tried_again(tmp_path: Path, instances: dict[str, Path],
                                           serve: Callable[..., Server], code: str) -> None:
    server = serve([code])
    with pytest.raises(RemoteError, match=f"answered {code}"):
        node(tmp_path, f"http://127.0.0.1:{server.port}/dicomweb").fetch_study(
            STUDY, 1, expected(instances), tmp_path / "copy")
    assert len(server.requests) == 1


def test_missing_instances_and_silence(tmp_path: Path, instances: dict[str, Path],
                                       serve: Callable[..., Server]) -> None:
    server = serve(["ok", "ok"])
    want = {**expected(instances), "1.2.3.99": "studies/ab/x/99.dcm"}
    with pytest.raises(RemoteError, match="1 of 4 instances did not come"):
        node(tmp_path, f"http://127.0.0.1:{server.port}/dicomweb", fetch_attempts=2).fetch_study(
            STUDY, 1, want, tmp_path / "copy")
    silent = serve(["silent", "silent"])
    started = time.monotonic()
    with pytest.raises(RemoteError, match="timed out|broke off"):
        node(tmp_path, f"http://127.0.0.1:{silent.port}/dicomweb", fetch_attempts=2).fetch_study(
            STUDY, 1, expected(instances), tmp_path / "copy2")
    assert time.monotonic() - started < 5


def test_tls_is_verified_against_the_ca_file(tmp_path: Path, instances: dict[str, Path],
                                             serve: Callable[..., Server], certs: Path) -> None:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(certs / "server.pem"), str(certs / "server.key"))
    server = serve(["ok", "ok"], tls)
    url = f"https://127.0.0.1:{server.port}/dicomweb"
    with pytest.raises(RemoteError, match="CERTIFICATE_VERIFY_FAILED"):  # system CAs only
        node(tmp_path, url, fetch_attempts=1).fetch_study(STUDY, 1, expected(instances),
                                                          tmp_path / "untrusted")
    report = node(tmp_path, url, listener_ca_file=certs / "ca.pem").fetch_study(
        STUDY, 1, expected(instances), tmp_path / "copy")
    assert report.instances == 3 and report.attempts == 1
