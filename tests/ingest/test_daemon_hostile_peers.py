"""Hostile and broken peers, with real sockets: idle and half-open connections, stalled PDUs,
a flood from one address, garbage before association, a SOP class that is not the command's.

The attackers connect from 127.0.0.2 (all of 127/8 is loopback on Linux), so a valid peer on
127.0.0.1 is a different source address, as a PACS and an attacker would be.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]

from dicom_io.synthetic_study import ct_series, write_series
from pacsai_process import PacsaiProcess, echo, wait_until
from hostile import (ATTACKER, Fuzzer, associate_raw, association_request, c_store_command,
                     connect_from_attacker, held_connections, p_data)
from pki import certs, tls_echo  # noqa: F401 - fixture

def _threads(proc: PacsaiProcess) -> int:
    assert proc.proc is not None
    for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no thread count")


def _timed_echo(port: int) -> float:
    started = time.monotonic()
    out = subprocess.run(["echoscu", "-aec", "PACSAI", "-to", "10", "127.0.0.1", str(port)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    return time.monotonic() - started


LIMITS = {"PACSAI_LISTENER__MAX_ASSOCIATIONS": "4",
          "PACSAI_LISTENER__ASSOCIATION_REQUEST_TIMEOUT": "2",
          "PACSAI_LISTENER__MAX_CONNECTIONS_PER_ADDRESS": "10"}


def test_idle_and_half_sent_connections_do_not_lock_a_pacs_out(tmp_path: Path) -> None:
    half = association_request()[:40]  # a PDU header declaring the rest, then silence
    files = write_series(ct_series(2, 64, seed=5), tmp_path / "ct")
    with PacsaiProcess(tmp_path / "data", command="listener", config=LIMITS) as proc:
        baseline = _threads(proc)
        with held_connections(proc.port, 20) as idle, \
                held_connections(proc.port, 20, payload=half) as halves:
            wait_until(lambda: idle[0] >= 20 and halves[0] >= 20, 10)
            time.sleep(3)  # past the request timeout: closed ones have been replaced
            assert idle[0] > 20 and halves[0] > 20, "the listener never closed an idle connection"
            seconds = [_timed_echo(proc.port) for _ in range(3)]
            store = subprocess.run(["storescu", "-aec", "PACSAI", "127.0.0.1", str(proc.port),
                                    *map(str, files)], capture_output=True, text=True, timeout=30)
            threads = _threads(proc)
        assert max(seconds) < 5, seconds
        assert store.returncode == 0, store.stdout + store.stderr
        assert threads <= baseline + 6, (baseline, threads)  # held connections cost no thread
        log = proc.log()
    # one line per offender and reason (then a count once a minute), not one per socket
    assert log.count(f"refused a connection from {ATTACKER}") == 1, log[-3000:]
    assert log.count(f"closed a connection from {ATTACKER} that sent no complete") == 1
    assert "Local Limit Exceeded" not in log


def test_a_pdu_stalled_half_way_is_closed_after_the_network_timeout(tmp_path: Path) -> None:
    cfg = {**LIMITS, "PACSAI_LISTENER__NETWORK_TIMEOUT": "2"}
    with PacsaiProcess(tmp_path / "data", command="listener", config=cfg) as proc:
        s = connect_from_attacker(proc.port)
        s.sendall(association_request())
        head = s.recv(6, socket.MSG_WAITALL)
        assert head[0] == 0x02  # A-ASSOCIATE-AC
        s.recv(struct.unpack(">L", head[2:])[0], socket.MSG_WAITALL)
        s.sendall(struct.pack(">BBL", 0x04, 0, 1000) + b"\x00" * 10)  # 10 of 1000 bytes
        s.settimeout(15)
        started = time.monotonic()
        try:
            closed = s.recv(4096) == b""
        except ConnectionResetError:
            closed = True
        assert closed and time.monotonic() - started < 6
        s.close()
        wait_until(lambda: "stopped sending half-way through a PDU" in proc.log(), 5)
        assert echo(proc.port)


def test_garbage_before_association_is_dropped_and_counted(tmp_path: Path) -> None:
    with PacsaiProcess(tmp_path / "data", command="listener", config=LIMITS) as proc:
        for payload in (b"GET / HTTP/1.0\r\n\r\n", struct.pack(">BBL", 0x01, 0, 0xFFFF_FFFF)):
            s = connect_from_attacker(proc.port)
            s.sendall(payload)
            s.settimeout(5)
            data = s.recv(64)
            assert data in (b"", bytes.fromhex("07000000000400000201"))  # closed, maybe A-ABORT
            s.close()
        wait_until(lambda: "sent a PDU of type 0x47 before associating" in proc.log(), 5)
        wait_until(lambda: "declared 4294967295 bytes" in proc.log(), 5)
        assert echo(proc.port)


def test_a_tls_port_is_not_held_by_a_silent_handshake(tmp_path: Path, certs: Path) -> None:
    cfg = {**LIMITS,
           "PACSAI_LISTENER__TLS__CERT_FILE": str(certs / "server.pem"),
           "PACSAI_LISTENER__TLS__KEY_FILE": str(certs / "server.key"),
           "PACSAI_LISTENER__TLS__CA_FILE": str(certs / "ca.pem")}
    with PacsaiProcess(tmp_path / "data", command="listener", config=cfg,
                       ready=lambda port: tls_echo(port, certs)) as proc:
        silent = [connect_from_attacker(proc.port) for _ in range(5)]  # TCP up, no ClientHello
        started = time.monotonic()
        assert tls_echo(proc.port, certs)  # the accept loop did not wait on them
        assert time.monotonic() - started < 5
        for s in silent:
            s.close()


def test_a_data_set_of_another_sop_class_than_the_command_is_refused(tmp_path: Path) -> None:
    ds, = ct_series(1, 64, seed=9)
    path = write_series([ds], tmp_path / "one")[0]
    on_disk = dcmread(path)
    on_disk.SOPClassUID = MRImageStorage  # the data set says MR, the file meta (command) CT
    on_disk.save_as(path)
    with PacsaiProcess(tmp_path / "data", command="listener") as proc:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", proc.port, ae_title="PACSAI")
        assert assoc.is_established
        from pynetdicom import _config

        _config.STORE_SEND_CHUNKED_DATASET = True  # the command's SOP class from the file meta
        try:
            assert assoc.send_c_store(path).Status == 0xA900
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
        good, = ct_series(1, 64, seed=10)
        good.SOPInstanceUID = generate_uid()
        assert assoc.send_c_store(good).Status == 0
        assoc.release()
        assert "SOP Class UID 1.2.840.10008.5.1.4.1.1.4 differs" in proc.log()


def test_unfinished_data_sets_of_all_associations_share_one_memory_budget(tmp_path: Path) -> None:
    cfg = {"PACSAI_LISTENER__MAX_PDU_SIZE": "65536",
           "PACSAI_LISTENER__MAX_INFLIGHT_DATASET_BYTES": str(1 << 20)}  # 1 MiB, all together
    chunk = b"\x00" * 60000
    with PacsaiProcess(tmp_path / "data", command="listener", config=cfg) as proc:
        first = associate_raw(proc.port, CTImageStorage)
        first.sendall(c_store_command(CTImageStorage, generate_uid()))
        for _ in range(12):  # 720 kB of a data set that never ends
            first.sendall(p_data(0x00, chunk))
        time.sleep(0.5)
        second = associate_raw(proc.port, CTImageStorage)
        second.sendall(c_store_command(CTImageStorage, generate_uid()))
        second.settimeout(10)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):  # aborted at the budget
            for _ in range(12):
                second.sendall(p_data(0x00, chunk))
                time.sleep(0.02)
            assert second.recv(10)[:1] == b"\x07"  # A-ABORT
            second.recv(10)
            raise ConnectionResetError
        wait_until(lambda: "(listener.max_inflight_dataset_bytes)" in proc.log(), 5)
        first.close()  # its share is given back when its connection ends
        time.sleep(0.5)
        third = associate_raw(proc.port, CTImageStorage)
        third.sendall(c_store_command(CTImageStorage, generate_uid()))
        for _ in range(12):
            third.sendall(p_data(0x00, chunk))
        time.sleep(0.5)
        assert proc.log().count("aborting the association from HOSTILE (127.0.0.2): all "
                                "associations together hold") == 1
        third.close()
        second.close()
        assert echo(proc.port)


def _rss_mb(proc: PacsaiProcess) -> float:
    assert proc.proc is not None
    for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_after_a_fuzz_run_a_valid_peer_is_served_and_resources_come_back(tmp_path: Path) -> None:
    files = write_series(ct_series(3, 128, seed=11), tmp_path / "ct")
    with PacsaiProcess(tmp_path / "data", command="listener") as proc:
        threads, rss = _threads(proc), _rss_mb(proc)
        fuzz = Fuzzer(proc.port, files, tmp_path, seed=7)
        fuzz.run(12, 4)
        assert sum(fuzz.sent.values()) >= 50 and len(fuzz.sent) == len(Fuzzer.KINDS)  # every kind
        ended = time.monotonic()
        wait_until(lambda: echo(proc.port), 5)  # refused for 27 s after a fuzz run before
        assert time.monotonic() - ended < 5
        wait_until(lambda: _threads(proc) <= threads + 1, 10)
        assert _rss_mb(proc) - rss < 100
        spooled = {p.suffix for p in (proc.data_dir / "spool").rglob("*") if p.is_file()}
        assert spooled <= {".dcm", ".lock", ""}, spooled
