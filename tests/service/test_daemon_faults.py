"""Fault paths with a real pacsai process: unknown callers, TLS, full disk, kill -9, PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from daemon.store.models import Instance
from dicom_io.synthetic_study import ct_series, write_series
from pacsai_process import PacsaiProcess, echo, wait_until
from pki import _tls_client, certs, tls_echo  # noqa: F401 - fixture
from test_daemon_e2e import ONE_PIPELINE, assert_indexed, db_of, storescu, study_row, wait_done


def test_unknown_calling_ae_is_rejected(tmp_path: Path) -> None:
    cfg = {"PACSAI_LISTENER__ALLOWED_CALLING_AETS": '["ORTHANC"]'}
    with PacsaiProcess(tmp_path / "data", command="listener", config=cfg,
                       ready=lambda port: echo(port, calling="ORTHANC")) as proc:
        ae = AE(ae_title="INTRUDER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", proc.port, ae_title="PACSAI")
        assert assoc.is_rejected
        rj = assoc.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)  # calling AE not recognized
        files = write_series(list(ct_series(1, 32)), tmp_path / "f")
        result = storescu(proc.port, files, calling="INTRUDER")
        assert result.returncode != 0 and "Calling AE Title Not Recognized" in result.stderr
        assert echo(proc.port, calling="ORTHANC")
        wait_until(lambda: "association rejected from INTRUDER" in proc.log(), 5)


def test_mutual_tls(tmp_path: Path, certs: Path) -> None:
    cfg = {
        "PACSAI_LISTENER__TLS__CERT_FILE": str(certs / "server.pem"),
        "PACSAI_LISTENER__TLS__KEY_FILE": str(certs / "server.key"),
        "PACSAI_LISTENER__TLS__CA_FILE": str(certs / "ca.pem"),
    }

    with PacsaiProcess(tmp_path / "data", command="serve", config={**cfg, **ONE_PIPELINE},
                       ready=lambda port: tls_echo(port, certs)) as proc:
        ae = AE(ae_title="TLSSCU")
        ae.add_requested_context(CTImageStorage)
        datasets = list(ct_series(2, 32))
        assoc = ae.associate("127.0.0.1", proc.port, ae_title="PACSAI",
                             tls_args=(_tls_client(certs, True), "localhost"))
        assert assoc.is_established
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0
        assoc.release()
        wait_done(db_of(proc), datasets[0].StudyInstanceUID)

        no_cert = ae.associate("127.0.0.1", proc.port, ae_title="PACSAI",
                               tls_args=(_tls_client(certs, False), "localhost"))
        assert not no_cert.is_established
        assert not echo(proc.port)  # plain TCP to a TLS port gets nowhere


def test_full_disk_answers_out_of_resources(tmp_path: Path) -> None:
    cfg = {"PACSAI_STORAGE__MIN_FREE_BYTES": str(1 << 60)}
    with PacsaiProcess(tmp_path / "data", command="listener", config=cfg) as proc:
        ae = AE(ae_title="SCU")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", proc.port, ae_title="PACSAI")
        ds = next(ct_series(1, 32))
        status = assoc.send_c_store(ds)
        assert status.Status == 0xA700
        assert "disk full" in status.ErrorComment
        assoc.release()
        spool = proc.data_dir / "spool"
        assert not list(spool.glob("studies/*/*/*")) and not any((spool / "tmp").iterdir())
        assert study_row(db_of(proc), ds.StudyInstanceUID) is None
        wait_until(lambda: "out of disk space" in proc.log(), 5)


def test_kill_9_mid_study_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    datasets = list(ct_series(300, 64, seed=11))
    acknowledged: list[str] = []
    proc = PacsaiProcess(data, command="serve", config=ONE_PIPELINE).start()
    port = proc.port

    def send() -> None:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="PACSAI")
        for ds in datasets:
            try:
                status = assoc.send_c_store(ds)
            except Exception:  # noqa: BLE001 - the peer died
                break
            if not status or status.Status != 0:
                break
            acknowledged.append(ds.SOPInstanceUID)
        if assoc.is_established:
            assoc.abort()

    sender = threading.Thread(target=send)
    sender.start()
    wait_until(lambda: len(acknowledged) >= 80, 60, 0.01)
    proc.kill9(group=False)  # the listener process only; its worker follows (PDEATHSIG)
    sender.join(30)
    assert 80 <= len(acknowledged) < 300

    restarted = PacsaiProcess(data, command="serve", port=port, config=ONE_PIPELINE).start()
    try:
        db = db_of(restarted)
        study = wait_done(db, datasets[0].StudyInstanceUID)
        with db.read() as s:
            rows = {i.sop_instance_uid: i.file_path for i in s.scalars(
                select(Instance).where(Instance.study_id == study.id))}
        missing = [uid for uid in acknowledged if uid not in rows]
        assert not missing, f"{len(missing)} acknowledged instances lost"
        for uid in acknowledged:
            assert (data / "spool" / rows[uid]).is_file()
        assert_indexed(db, study, len(rows), "CT")
        assert not any((data / "spool" / "tmp").iterdir())
    finally:
        restarted.stop()


def test_serve_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    with PacsaiProcess(tmp_path / "data", command="serve", database_url=pg_url,
                       config=ONE_PIPELINE) as proc:
        files = write_series(list(ct_series(20, 64, seed=12)), tmp_path / "ct")
        result = storescu(proc.port, files)
        assert result.returncode == 0, result.stderr
        db = db_of(proc)
        from pydicom import dcmread

        study = wait_done(db, dcmread(files[0]).StudyInstanceUID)
        assert_indexed(db, study, 20, "CT")
        assert not (tmp_path / "data" / "pacsai.db").exists()


def test_association_limit(tmp_path: Path) -> None:
    cfg = {"PACSAI_LISTENER__MAX_ASSOCIATIONS": "1"}
    with PacsaiProcess(tmp_path / "data", command="listener", config=cfg) as proc:
        ae = AE(ae_title="SCU")
        ae.add_requested_context(Verification)
        first = ae.associate("127.0.0.1", proc.port, ae_title="PACSAI")
        assert first.is_established
        second = ae.associate("127.0.0.1", proc.port, ae_title="PACSAI")
        assert second.is_rejected
        rj = second.acceptor.primitive
        assert (rj.result_source, rj.diagnostic) == (0x03, 0x02)  # local limit exceeded
        first.release()
        assert echo(proc.port)  # a slot is free again
