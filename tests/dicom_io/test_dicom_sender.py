"""C-STORE sender against a pynetdicom SCP and DCMTK storescp."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest
from conftest import free_port, requires_dcmtk
import dicomio_samples as samples

from dicom_io.sc import SCOptions, write_heatmap_scs
from dicom_io.sender import Destination, categorise, open_association, send
from dicom_io.sr import write_sr
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.presentation import build_context


@pytest.fixture(scope="module")
def results():
    """One SR and two SCs for a small CT study."""
    sources = samples.ct_series(2)
    result = samples.result_for(sources)
    return [write_sr(result, sources),
            *write_heatmap_scs(result, sources, SCOptions(min_size=128, max_size=256))]


def _uids(items):
    return [ds.SOPInstanceUID for ds in items]


def test_categorise():
    assert categorise(0x0000) == "success"
    assert {categorise(s) for s in (0xB000, 0xB006, 0xB007, 0x0001)} == {"warning"}
    assert {categorise(s) for s in (0xA700, 0xA900, 0xC000, 0x0122, 0x0110, None)} == {"failure"}


def test_pynetdicom_success(pynetdicom_scp, results):
    dest = Destination(pynetdicom_scp.ae_title, "127.0.0.1", pynetdicom_scp.port)
    outcomes = send(results, dest, timeout=10)
    assert [o.sop_instance_uid for o in outcomes] == _uids(results)
    assert {(o.status, o.category, o.error) for o in outcomes} == {(0, "success", None)}
    assert sorted(d.SOPInstanceUID for d in pynetdicom_scp.received) == sorted(_uids(results))


def test_paths_are_sent(pynetdicom_scp, results, tmp_path):
    path = tmp_path / "sr.dcm"
    results[0].save_as(path, enforce_file_format=True)
    missing = tmp_path / "missing.dcm"
    dest = Destination(pynetdicom_scp.ae_title, "127.0.0.1", pynetdicom_scp.port)
    outcomes = send([path, missing], dest, timeout=10)
    assert outcomes[0].category == "success"
    assert outcomes[1].category == "failure" and "cannot read" in outcomes[1].error


@pytest.mark.parametrize("status,category", [(0xB000, "warning"), (0xA700, "failure"),
                                             (0xC123, "failure")])
def test_pynetdicom_status(pynetdicom_scp, results, status, category):
    pynetdicom_scp.status = status
    dest = Destination(pynetdicom_scp.ae_title, "127.0.0.1", pynetdicom_scp.port)
    outcomes = send(results[:2], dest, timeout=10)
    assert [o.status for o in outcomes] == [status, status]
    assert {o.category for o in outcomes} == {category}
    assert all(f"0x{status:04X}" in o.error and "test SCP refuses" in o.error for o in outcomes)


def test_pynetdicom_rejects_wrong_called_ae(pynetdicom_scp, results):
    outcomes = send(results, Destination("WRONG", "127.0.0.1", pynetdicom_scp.port), timeout=10)
    assert len(outcomes) == len(results)
    assert {o.category for o in outcomes} == {"failure"}
    assert all(o.status is None and "rejected" in o.error and "Called AE" in o.error
               for o in outcomes)
    assert pynetdicom_scp.received == []


def test_peer_down(results):
    port = free_port()  # nothing listens there
    started = time.monotonic()
    outcomes = send(results, Destination("NOBODY", "127.0.0.1", port), timeout=5)
    assert time.monotonic() - started < 5
    assert {o.category for o in outcomes} == {"failure"}
    assert all("could not connect" in o.error for o in outcomes)


def test_sender_socket_has_tcp_nodelay(pynetdicom_scp):
    dest = Destination(pynetdicom_scp.ae_title, "127.0.0.1", pynetdicom_scp.port)
    ctx = [build_context("1.2.840.10008.1.1", ExplicitVRLittleEndian)]
    with open_association(dest, ctx, timeout=10) as assoc:
        sock = assoc.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


@requires_dcmtk
def test_storescp_success(storescp, results):
    aet, port, outdir = storescp()
    started = time.monotonic()
    outcomes = send(results, Destination(aet, "127.0.0.1", port), timeout=10)
    elapsed = time.monotonic() - started
    assert {o.category for o in outcomes} == {"success"}
    assert len(list(outdir.iterdir())) == len(results)
    # With Nagle on, every DIMSE message waits ~40 ms for DCMTK's delayed ACK.
    assert elapsed < 2.0


@requires_dcmtk
def test_storescp_refuses(storescp, results):
    aet, port, _ = storescp("--refuse")
    outcomes = send(results, Destination(aet, "127.0.0.1", port), timeout=10)
    assert {o.category for o in outcomes} == {"failure"}
    assert all("rejected" in o.error for o in outcomes)


@requires_dcmtk
def test_storescp_aborts(storescp, results):
    aet, port, _ = storescp("--abort-after")
    outcomes = send(results, Destination(aet, "127.0.0.1", port), timeout=10)
    assert len(outcomes) == len(results)
    assert {o.category for o in outcomes} == {"failure"}
    assert outcomes[0].status is None
    assert all(o.error for o in outcomes)


@requires_dcmtk
def test_frozen_pacs_costs_one_timeout_then_delivers(storescp, results):
    """A PACS that accepts TCP but never answers (storescp under SIGSTOP, like a hung host)."""
    aet, port, outdir = storescp()
    found = subprocess.run(["pgrep", "-f", f"storescp -aet {aet} -od {outdir}"],
                           capture_output=True, text=True, check=True)
    pid = int(found.stdout.split()[0])
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        outcomes = send(results, Destination(aet, "127.0.0.1", port), timeout=2)
        elapsed = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    # one association timeout for the whole batch, not one per instance
    assert elapsed < 2 + 3, elapsed
    assert {o.category for o in outcomes} == {"failure"}
    assert all(o.status is None and o.error for o in outcomes)
    assert not list(outdir.iterdir())
    # thawed: the same objects go through (the outbox retries with backoff)
    again = send(results, Destination(aet, "127.0.0.1", port), timeout=10)
    assert {o.category for o in again} == {"success"}
    assert len(list(outdir.iterdir())) == len(results)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl missing")
def test_tls(tmp_path, results):
    import ssl
    import subprocess

    from pynetdicom import AE, AllStoragePresentationContexts, evt

    from dicom_io.sender import TLSParams

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    received = []
    ae = AE(ae_title="TLSSCP")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=server_ctx,
                             evt_handlers=[(evt.EVT_C_STORE,
                                            lambda e: received.append(e.dataset) or 0)])
    try:
        tls = TLSParams(ca_file=str(cert), server_hostname="localhost")
        outcomes = send(results[:1], Destination("TLSSCP", "127.0.0.1", port, tls=tls), timeout=10)
        assert [o.category for o in outcomes] == ["success"]
        # Without trusting the certificate the handshake fails: a clear failure.
        bad = send(results[:1], Destination("TLSSCP", "127.0.0.1", port,
                                            tls=TLSParams(server_hostname="localhost")), timeout=10)
        assert bad[0].category == "failure" and "could not connect" in bad[0].error
    finally:
        server.shutdown()
    assert len(received) == 1
