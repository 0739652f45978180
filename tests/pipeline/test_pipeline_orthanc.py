"""Round trip with a real PACS: Orthanc sends a study to pacsai, results come back into it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom_io"))

from daemon.store.db import Database  # noqa: E402
from daemon.store.models import Delivery, Finding, Job, Study  # noqa: E402
from daemon.store.timeline import timeline  # noqa: E402
from dicom_io.synthetic_study import radiograph  # noqa: E402
from orthanc import OrthancServer  # noqa: E402
from pacsai_process import PacsaiProcess, free_port, wait_until  # noqa: E402

from dicom_checks import assert_valid_dicom  # noqa: E402

SR_3D = "1.2.840.10008.5.1.4.1.1.88.34"
SC = "1.2.840.10008.5.1.4.1.1.7"


def pacsai_for(tmp: Path, orthanc: OrthancServer, port: int) -> PacsaiProcess:
    dest = [{"name": "orthanc", "ae_title": orthanc.aet, "host": "127.0.0.1",
             "port": orthanc.dicom_port}]
    return PacsaiProcess(tmp / "data", port=port, config={
        "PACSAI_DESTINATIONS": json.dumps(dest),
        "PACSAI_DELIVERY__FIRST_RETRY_SECONDS": "1",
        "PACSAI_DELIVERY__MAX_RETRY_SECONDS": "2",
        "PACSAI_WORKER__RECONCILE_SECONDS": "0.5",
    })


def db_of(proc: PacsaiProcess) -> Database:
    return Database(f"sqlite:///{proc.data_dir / 'pacsai.db'}")


def series_by_class(orthanc: OrthancServer, study_id: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for series in orthanc.get(f"/studies/{study_id}/series"):
        instances = orthanc.get(f"/series/{series['ID']}/instances")
        for inst in instances:
            tags = orthanc.get(f"/instances/{inst['ID']}/simplified-tags")
            out.setdefault(tags["SOPClassUID"], []).append(tags)
    return out


def orthanc_instance(orthanc: OrthancServer, sop_uid: str):  # type: ignore[no-untyped-def]
    import io
    import urllib.request

    found = orthanc.post("/tools/lookup", sop_uid)
    oid = next(f["ID"] for f in found if f["Type"] == "Instance")
    with urllib.request.urlopen(f"{orthanc.url}/instances/{oid}/file", timeout=30) as rsp:
        return dcmread(io.BytesIO(rsp.read()))


def all_sent(db: Database, study_uid: str) -> bool:
    with db.read() as s:
        study = s.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        if study is None or study.state != "done":
            return False
        states = s.scalars(select(Delivery.state).where(Delivery.study_id == study.id)).all()
        jobs = s.scalars(select(Job.state).where(Job.study_id == study.id)).all()
        return bool(states) and set(states) == {"sent"} and set(jobs) == {"done"}


@pytest.mark.slow
def test_orthanc_round_trip_and_outage(tmp_path: Path) -> None:
    port = free_port()
    orthanc = OrthancServer(tmp_path / "orthanc", modalities={"pacsai": ("PACSAI", "127.0.0.1", port)})
    with orthanc, pacsai_for(tmp_path, orthanc, port) as proc:
        db = db_of(proc)
        # 1. Orthanc routes a study to pacsai; results come back into the same study.
        src = radiograph(size=512, seed=1)
        path = tmp_path / "cr.dcm"
        src.save_as(path, enforce_file_format=True)
        orthanc.upload(path)
        study_id = orthanc.study_id(src.StudyInstanceUID)
        orthanc.post("/modalities/pacsai/store", study_id)
        wait_until(lambda: all_sent(db, src.StudyInstanceUID), 120, 0.25)
        found = series_by_class(orthanc, study_id)
        assert len(found[SR_3D]) == 2  # one SR per pipeline (classifier, anomaly)
        assert len(found[SC]) >= 2
        for tags in found[SR_3D] + found[SC]:
            assert tags["StudyInstanceUID"] == src.StudyInstanceUID
            assert tags["PatientID"] == src.PatientID
        for sc in found[SC]:
            assert "not for diagnostic use" in sc["SeriesDescription"]
            ds = orthanc_instance(orthanc, sc["SOPInstanceUID"])
            assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
            assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        for sr in found[SR_3D]:
            ds = orthanc_instance(orthanc, sr["SOPInstanceUID"])
            assert ds.PreliminaryFlag == "PRELIMINARY" and ds.VerificationFlag == "UNVERIFIED"
            refs = {r.ReferencedSOPInstanceUID for item in ds.CurrentRequestedProcedureEvidenceSequence
                    for s in item.ReferencedSeriesSequence for r in s.ReferencedSOPSequence}
            assert refs == {src.SOPInstanceUID}
        with db.read() as s:
            study = s.scalar(select(Study).where(Study.study_instance_uid == src.StudyInstanceUID))
            findings = s.scalars(select(Finding).where(Finding.study_id == study.id)).all()
        assert {f.model_name for f in findings} == {"chest-cxr-classifier", "chest-cxr-anomaly"}
        results = sorted((proc.data_dir / "results").rglob("*.dcm"))
        assert len(results) == len(found[SR_3D]) + len(found[SC])
        assert_valid_dicom(results)  # every object the pipeline wrote
        kinds = [e.kind for e in timeline(db, study.id)]
        for kind in ("receiving", "complete", "queued", "started", "results_written", "finished",
                     "delivered"):
            assert kind in kinds

        # 2. Orthanc down when results are ready: they arrive after it returns, none twice.
        orthanc.stop()
        src2 = radiograph(size=512, seed=2)
        path2 = tmp_path / "cr2.dcm"
        src2.save_as(path2, enforce_file_format=True)
        r = subprocess.run(["storescu", "-aec", "PACSAI", "127.0.0.1", str(port), str(path2)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr

        def failed_once() -> bool:
            with db.read() as s:
                st = s.scalar(select(Study).where(Study.study_instance_uid == src2.StudyInstanceUID))
            return st is not None and "delivery_failed" in [e.kind for e in timeline(db, st.id)]

        wait_until(failed_once, 120, 0.25)
        orthanc.start()
        wait_until(lambda: all_sent(db, src2.StudyInstanceUID), 120, 0.25)
        sid2 = orthanc.study_id(src2.StudyInstanceUID)
        found2 = series_by_class(orthanc, sid2)
        assert len(found2[SR_3D]) == 2
        with db.read() as s:
            st = s.scalar(select(Study).where(Study.study_instance_uid == src2.StudyInstanceUID))
            rows = s.scalars(select(Delivery).where(Delivery.study_id == st.id)).all()
            n_objects = s.scalar(select(func.count()).select_from(Delivery)
                                 .where(Delivery.study_id == st.id))
        delivered = sum(e.detail["objects"] for e in timeline(db, st.id) if e.kind == "delivered")
        assert delivered == n_objects == len(rows), "an object was delivered twice"
        assert any(r.attempts >= 2 for r in rows)  # the outage cost a retry
        instances_in_orthanc = sum(len(v) for v in found2.values())
        assert instances_in_orthanc == n_objects  # src2 went to pacsai directly, not via Orthanc
