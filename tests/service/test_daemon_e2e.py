"""End to end against a running ``pacsai serve``: DCMTK and pynetdicom peers, real worker."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import func, select

from daemon.store.db import Database
from daemon.store.models import Instance, Job, Series, Study
from daemon.store.timeline import timeline
from dicom_io.synthetic_study import ct_series, write_series
from pacsai_process import PacsaiProcess, wait_until

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
QUIET = 1.0
# One pipeline keeps these listener tests about the listener: CT slices are skipped by the
# CR/DX demo model (recorded), so the job only indexes.
ONE_PIPELINE = {"PACSAI_PIPELINES": '[{"name": "anomaly", "model": "chest-cxr-anomaly"}]'}


def storescu(port: int, files: list[Path], *, calling: str = "STORESCU", extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["storescu", "-aet", calling, "-aec", "PACSAI", *extra, "127.0.0.1", str(port),
         *map(str, files)],
        env=DCMTK_ENV, capture_output=True, text=True, timeout=120,
    )


def db_of(proc: PacsaiProcess) -> Database:
    return Database(proc.env.get("PACSAI_DATABASE__URL") or f"sqlite:///{proc.data_dir / 'pacsai.db'}")


def study_row(db: Database, study_uid: str) -> Study | None:
    with db.read() as s:
        return s.scalar(select(Study).where(Study.study_instance_uid == study_uid))


def wait_done(db: Database, study_uid: str, version: int = 1, timeout: float = 60) -> Study:
    def done() -> Study | None:
        row = study_row(db, study_uid)
        if row is not None and row.version == version and row.state in ("done", "failed"):
            return row
        return None

    try:
        row = wait_until(done, timeout, 0.1)
    except TimeoutError:
        last = study_row(db, study_uid)
        state = None if last is None else (last.version, last.state)
        raise AssertionError(f"study not done within {timeout} s; (version, state) = {state}") from None
    assert row.state == "done", f"study ended {row.state}"
    return row


def assert_indexed(db: Database, study: Study, n: int, modality: str) -> None:
    with db.read() as s:
        instances = s.scalars(select(Instance).where(Instance.study_id == study.id)).all()
        assert len(instances) == n
        assert all(i.indexed_at is not None and i.series_id is not None for i in instances)
        series = s.scalars(select(Series).where(Series.study_id == study.id)).all()
        assert [x.modality for x in series] == [modality]
        assert series[0].num_instances == n
        st = s.get(Study, study.id)
        assert st.patient_id and st.modalities == modality
        job = s.scalar(select(Job).where(Job.study_id == study.id, Job.version == study.version))
        assert job.state == "done" and job.attempts == 1 and job.pipeline == "anomaly"


def scu(calling: str = "PYNETDICOM") -> AE:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage)
    return ae


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("serve")
    with PacsaiProcess(root / "data", config={"PACSAI_STUDY__QUIET_SECONDS": str(QUIET),
                                              "PACSAI_LOGGING__JSON": "true",
                                              **ONE_PIPELINE}) as proc:
        yield proc
    log = proc.log()
    # PHI: the synthetic patients' names and IDs never reach the log at INFO
    assert "Synthetic" not in log and "SYN-PID" not in log
    import json

    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(r.get("logger") == "daemon.ingest.tracker" and r.get("level") == "info"
               for r in records), "structured JSON log lines expected"


@pytest.fixture(scope="module")
def ct300(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_series(ct_series(300, 128, seed=3), tmp_path_factory.mktemp("ct300"))


def test_storescu_300_instances_complete_and_indexed(serve: PacsaiProcess, ct300: list[Path]) -> None:
    echo = subprocess.run(["echoscu", "-aec", "PACSAI", "127.0.0.1", str(serve.port)],
                          env=DCMTK_ENV, capture_output=True, text=True)
    assert echo.returncode == 0, echo.stderr
    result = storescu(serve.port, ct300)
    released = dt.datetime.now(dt.UTC)
    assert result.returncode == 0, result.stderr
    study_uid = dcmread(ct300[0], stop_before_pixels=True).StudyInstanceUID
    db = db_of(serve)
    study = wait_done(db, study_uid)
    complete = [e for e in timeline(db, study.id) if e.kind == "complete"][0]
    assert (complete.at - released).total_seconds() <= QUIET + 1.0
    assert_indexed(db, study, 300, "CT")
    kinds = [e.kind for e in timeline(db, study.id)]
    assert kinds == ["receiving", "received", "complete", "queued", "started", "finished"]
    received = [e for e in timeline(db, study.id) if e.kind == "received"][0]
    assert received.detail["instances"] == 300
    # byte for byte as sent, under our own file names
    with db.read() as s:
        paths = s.scalars(select(Instance.file_path).where(Instance.study_id == study.id)).all()
    sent = {dcmread(p).SOPInstanceUID: p.read_bytes()[132:] for p in ct300[:5]}
    for rel in paths:
        stored = dcmread(serve.data_dir / "spool" / rel)
        if stored.SOPInstanceUID in sent:
            raw = (serve.data_dir / "spool" / rel).read_bytes()
            assert raw.endswith(sent[stored.SOPInstanceUID][-30_000:])  # pixel data
        assert (serve.data_dir / "spool" / rel).stat().st_mode & 0o077 == 0
    meta = dcmread(serve.data_dir / "spool" / paths[0], stop_before_pixels=True).file_meta
    assert (meta.SendingApplicationEntityTitle, meta.ReceivingApplicationEntityTitle) == \
        ("STORESCU", "PACSAI")  # so recovery after a crash knows the calling AE too


@pytest.mark.parametrize(("syntax", "option"), [
    (JPEG2000Lossless, "--propose-j2k-lossless"),
    (JPEGLSLossless, "--propose-jls-lossless"),
    (RLELossless, "--propose-rle"),
    (DeflatedExplicitVRLittleEndian, "--propose-deflated"),
    (JPEGBaseline8Bit, "--propose-jpeg8"),
])
def test_compressed_study_stored_as_received(serve: PacsaiProcess, tmp_path: Path, syntax: str,
                                             option: str) -> None:
    datasets = list(ct_series(3, 64, seed=4))
    for ds in datasets:
        ds.PixelRepresentation = 0
        if syntax == JPEGBaseline8Bit:
            _jpeg_baseline(ds)
        elif syntax == DeflatedExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = syntax
        else:
            ds.compress(syntax)
    files = write_series(datasets, tmp_path)
    result = storescu(serve.port, files, extra=("-R", option))  # the files' syntax, undecoded
    assert result.returncode == 0, result.stderr
    db = db_of(serve)
    study = wait_done(db, datasets[0].StudyInstanceUID)
    assert_indexed(db, study, 3, "CT")
    with db.read() as s:
        rows = s.scalars(select(Instance).where(Instance.study_id == study.id)).all()
    assert {r.transfer_syntax_uid for r in rows} == {syntax}
    for r in rows:
        stored = dcmread(serve.data_dir / "spool" / r.file_path)
        assert stored.file_meta.TransferSyntaxUID == syntax  # not decoded, not transcoded


def _jpeg_baseline(ds: Dataset) -> None:
    """Encode the pixels as 8-bit JPEG baseline with Pillow (pydicom has no such encoder)."""
    import io

    import numpy as np
    from PIL import Image
    from pydicom.encaps import encapsulate

    arr = ds.pixel_array.astype(np.float32)
    img = ((arr - arr.min()) / max(float(np.ptp(arr)), 1.0) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit


def test_pynetdicom_scu_two_associations_and_resend(serve: PacsaiProcess) -> None:
    datasets = list(ct_series(8, 64, seed=5))
    ae = scu()
    for part in (datasets[:4], datasets[4:]):  # one study over two associations
        assoc = ae.associate("127.0.0.1", serve.port, ae_title="PACSAI")
        assert assoc.is_established
        for ds in part:
            assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
    db = db_of(serve)
    study = wait_done(db, datasets[0].StudyInstanceUID)
    assert_indexed(db, study, 8, "CT")
    assert [e.kind for e in timeline(db, study.id)].count("received") == 2

    assoc = ae.associate("127.0.0.1", serve.port, ae_title="PACSAI")  # the same study again
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    time.sleep(QUIET + 1.0)
    again = study_row(db, datasets[0].StudyInstanceUID)
    assert again.version == 1 and again.num_instances == 8 and again.state == "done"
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Instance)
                        .where(Instance.study_id == study.id)) == 8
        assert s.scalar(select(func.count()).select_from(Job).where(Job.study_id == study.id)) == 1
    files = list((serve.data_dir / "spool" / "studies").glob("*/*/*.dcm"))
    assert len({f.name for f in files}) == len(files)


def _raw_send(port: int, path: Path) -> list[int]:
    """Send file bytes as they are (no re-encoding), then a good instance; return statuses."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = scu("RAWSCU")
        assoc = ae.associate("127.0.0.1", port, ae_title="PACSAI")
        assert assoc.is_established
        bad = assoc.send_c_store(path)
        good = assoc.send_c_store(next(ct_series(1, 32, seed=9)))
        assoc.release()
        return [bad.Status, good.Status]
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False


def test_truncated_and_malformed_are_refused_association_survives(serve: PacsaiProcess, tmp_path: Path) -> None:
    src = write_series([next(ct_series(1, 64, seed=6))], tmp_path / "src")[0]
    raw = src.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(raw[:-3000])
    statuses = _raw_send(serve.port, truncated)
    assert statuses[0] == 0xC000 and statuses[1] == 0x0000

    ds = dcmread(src)
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(raw[:meta_end] + b"\x08\x00\x18\x00UI\xff\xff" + os.urandom(500))
    statuses = _raw_send(serve.port, garbage)
    assert statuses[0] == 0xC000 and statuses[1] == 0x0000
    assert study_row(db_of(serve), ds.StudyInstanceUID) is None
    assert "malformed data set" in serve.log()
    assert not any((serve.data_dir / "spool" / "tmp").iterdir())


def test_hostile_uid_is_not_a_path(serve: PacsaiProcess, tmp_path: Path) -> None:
    ds = next(ct_series(1, 32, seed=7))
    ds.SOPInstanceUID = "../../etc/passwd"
    ds.file_meta.MediaStorageSOPInstanceUID = "../../etc/passwd"
    path = tmp_path / "hostile.dcm"
    ds.save_as(path, enforce_file_format=True)
    result = storescu(serve.port, [path])
    assert result.returncode == 0, result.stderr
    db = db_of(serve)
    study = wait_done(db, ds.StudyInstanceUID)
    with db.read() as s:
        inst = s.scalar(select(Instance).where(Instance.study_id == study.id))
    assert inst.sop_instance_uid == "../../etc/passwd"
    assert ".." not in inst.file_path and "passwd" not in inst.file_path
    resolved = (serve.data_dir / "spool" / inst.file_path).resolve()
    assert resolved.is_relative_to((serve.data_dir / "spool").resolve())


def test_late_instance_opens_new_version(serve: PacsaiProcess) -> None:
    datasets = list(ct_series(3, 32, seed=8))
    ae = scu()
    assoc = ae.associate("127.0.0.1", serve.port, ae_title="PACSAI")
    for ds in datasets[:2]:
        assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    db = db_of(serve)
    wait_done(db, datasets[0].StudyInstanceUID)
    assoc = ae.associate("127.0.0.1", serve.port, ae_title="PACSAI")
    assert assoc.send_c_store(datasets[2]).Status == 0
    assoc.release()
    study = wait_done(db, datasets[0].StudyInstanceUID, version=2)
    with db.read() as s:
        jobs = s.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.version)).all()
    assert [(j.version, j.state) for j in jobs] == [(1, "done"), (2, "done")]
    assert study.num_instances == 3


def test_status_cli_shows_states_without_phi(serve: PacsaiProcess) -> None:
    env = {**serve.env}
    out = subprocess.run([os.sys.executable, "-m", "daemon.cli", "status", "--json"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    import json

    report = json.loads(out.stdout)
    assert report["studies_by_state"]["done"] >= 1
    assert report["last_received"]["num_instances"] >= 1
    assert "Synthetic" not in out.stdout and "SYN-PID" not in out.stdout


def _result_objects(serve: PacsaiProcess, study_uid: str) -> dict[str, tuple[str, float]]:
    """SOP Instance UID -> (SOP Class UID, mtime) of every result object written for the study."""
    out = {}
    for path in (serve.data_dir / "results").rglob("*.dcm"):
        ds = dcmread(path, stop_before_pixels=True,
                     specific_tags=["StudyInstanceUID", "SOPInstanceUID", "SOPClassUID"])
        if ds.StudyInstanceUID == study_uid:
            out[str(ds.SOPInstanceUID)] = (str(ds.SOPClassUID), path.stat().st_mtime)
    return out


def test_result_uids_change_after_retention_forgot_the_study(serve: PacsaiProcess,
                                                            tmp_path: Path) -> None:
    """The same study received again after retention deleted its rows starts over at version 1;
    its SR and SCs get new SOP Instance UIDs (the PACS still holds the first ones, with other
    content behind them), while a re-run of that same life re-creates identical objects."""
    import json

    from dicom_io.synthetic_study import radiograph

    files = write_series([radiograph(size=128, seed=31)], tmp_path / "dx")
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    db = db_of(serve)
    assert storescu(serve.port, files).returncode == 0
    first = wait_done(db, study_uid)
    before = _result_objects(serve, study_uid)
    classes = sorted(c for c, _ in before.values())
    assert "1.2.840.10008.5.1.4.1.1.88.34" in classes and "1.2.840.10008.5.1.4.1.1.7" in classes

    # 100 days on for this study only (retention.rows_days is 90): the real purge deletes it
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=100)
    with db.session() as s:
        st = s.get(Study, first.id)
        st.last_received_at = st.completed_at = st.version_started_at = old
        for job in s.scalars(select(Job).where(Job.study_id == first.id)):
            job.finished_at = job.queued_at = job.started_at = old
    purged = subprocess.run([os.sys.executable, "-m", "daemon.cli", "purge", "--json"],
                            env=serve.env, capture_output=True, text=True, timeout=60)
    assert purged.returncode == 0, purged.stderr
    assert json.loads(purged.stdout)["rows_studies"] == [first.id]
    assert study_row(db, study_uid) is None and _result_objects(serve, study_uid) == {}

    assert storescu(serve.port, files).returncode == 0  # the PACS sends it again, same bytes
    second = wait_done(db, study_uid)
    assert second.first_received_at > first.first_received_at and second.version == 1
    after = _result_objects(serve, study_uid)
    assert sorted(c for c, _ in after.values()) == classes
    assert set(after).isdisjoint(before), "a result UID was reused for a new life of the study"

    # a re-run of this life (a job that failed after writing its objects, retried) writes the
    # same objects again under the same UIDs
    with db.session() as s:
        (job,) = s.scalars(select(Job).where(Job.study_id == second.id)).all()
        job.state, job.error = "failed", "simulated: failed after writing its objects"
        job_id = job.id
    retried = subprocess.run([os.sys.executable, "-m", "daemon.cli", "retry", str(job_id)],
                             env=serve.env, capture_output=True, text=True, timeout=60)
    assert retried.returncode == 0, retried.stdout + retried.stderr

    def rerun_done() -> bool:
        with db.read() as s:
            kinds = [e.kind for e in timeline(db, second.id)]
            return s.get(Job, job_id).state == "done" and kinds.count("results_written") == 2

    wait_until(rerun_done, 60, 0.1)
    again = _result_objects(serve, study_uid)
    assert set(again) == set(after)
    assert all(again[u][1] > after[u][1] for u in after)  # rewritten, not left over
