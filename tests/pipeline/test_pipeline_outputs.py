"""Result objects and the outbox: per-destination SR class, routed destinations, re-runs."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from dicom_checks import assert_valid_dicom
from sqlalchemy import select

from daemon.config import PipelineSettings, Settings
from daemon.store.db import Database
from daemon.store.models import Delivery, Study, utcnow
from daemon.store.models import Finding as FindingRow
from dicom_io.results import AlgorithmInfo, AnalysisResult, CodedConcept, Finding, ImageEvidence
from dicom_io.synthetic_study import radiograph
from worker.outputs import previous_results, record_outputs, write_objects

SR_3D, SR_88_33, SC = ("1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.33",
                       "1.2.840.10008.5.1.4.1.1.7")


def _result(ds, version: int = 1) -> AnalysisResult:  # type: ignore[no-untyped-def]
    heat = np.zeros((32, 32), np.float32)
    heat[10:20, 10:20] = 1
    finding = Finding(CodedConcept("263654008", "SCT", "Abnormal"), 0.8, 0.5, True, "anomaly_score",
                      [ImageEvidence(ds.SOPInstanceUID, None, 0.8, heat)])
    return AnalysisResult(ds.StudyInstanceUID, version, "anomaly", AlgorithmInfo("m", "1"), [finding])


def test_outbox_follows_destinations_and_reruns_add_nothing(db: Database, db_url: str,
                                                            tmp_path: Path) -> None:
    settings = Settings(storage={"data_dir": tmp_path}, database={"url": db_url}, destinations=[
        {"name": "new", "ae_title": "NEW", "host": "h", "port": 1},
        {"name": "old", "ae_title": "OLD", "host": "h", "port": 2, "sr_sop_class": "comprehensive"},
        {"name": "other", "ae_title": "OTHER", "host": "h", "port": 3},
    ])
    pipeline = PipelineSettings(name="anomaly", model="m", outputs=["sr", "sc"])
    ds = radiograph(size=256, seed=1)
    now = utcnow()
    with db.session() as s:
        study = Study(study_instance_uid=ds.StudyInstanceUID, version=1, state="processing",
                      version_started_at=now, first_received_at=now, last_received_at=now)
        s.add(study)
        s.flush()
        study_id = study.id
    written = write_objects(settings, pipeline, _result(ds), [ds])
    assert sorted(w.sop_class_uid for w in written) == sorted([SR_3D, SR_88_33, SC])
    assert_valid_dicom([w.path for w in written])

    def record() -> int:
        with db.session() as s:
            study = s.get(Study, study_id)
            return record_outputs(s, study, settings, version=1, job_id=None,
                                  model_name="m", model_version="1", backend="onnxruntime",
                                  result=_result(ds), written=written, inference_ms=1.0, images=1,
                                  destinations=["new", "old"])

    assert record() == 4  # new: 3D SR + SC; old: 88.33 SR + SC; "other" not routed here
    with db.read() as s:
        rows = {(d.destination, d.sop_class_uid) for d in s.scalars(select(Delivery))}
    assert rows == {("new", SR_3D), ("new", SC), ("old", SR_88_33), ("old", SC)}
    again = write_objects(settings, pipeline, _result(ds), [ds])  # a retried task
    assert [w.sop_instance_uid for w in again] == [w.sop_instance_uid for w in written]
    assert record() == 0
    with db.read() as s:
        assert len(s.scalars(select(Delivery)).all()) == 4
        assert len(s.scalars(select(FindingRow)).all()) == 1

    # a second study version supersedes the first version's SRs
    v2 = write_objects(settings, pipeline, _result(ds, version=2), [ds])
    assert {w.sop_instance_uid for w in v2}.isdisjoint({w.sop_instance_uid for w in written})
    previous = previous_results(settings, ds.StudyInstanceUID, 2, "anomaly")
    assert {p.sop_instance_uid for p in previous} == {
        w.sop_instance_uid for w in written if w.role.startswith("sr")}


def test_full_disk_while_writing_results_leaves_nothing(small_tmpfs: Callable[[str], Path]) -> None:
    """Results on a real 8 MiB tmpfs: the write that hits ENOSPC fails the job cleanly."""
    mnt = small_tmpfs("8m")
    settings = Settings(storage={"data_dir": mnt})
    pipeline = PipelineSettings(name="anomaly", model="m", outputs=["sr", "sc"])
    ds = radiograph(size=1024, seed=3)  # the SR fits in what is left, its 3 MB heatmap SC not
    (mnt / "filler").write_bytes(b"\0" * (8 * 1024 * 1024 - 512 * 1024))
    with pytest.raises(OSError) as err:
        write_objects(settings, pipeline, _result(ds), [ds])
    assert err.value.errno == errno.ENOSPC
    left = [p.name for p in (mnt / "results").rglob("*") if p.is_file()]
    assert not [n for n in left if n.endswith(".part")], left
    (mnt / "filler").unlink()  # space again: the retried job writes everything
    written = write_objects(settings, pipeline, _result(ds), [ds])
    assert_valid_dicom([w.path for w in written])
    assert all(oct(w.path.stat().st_mode & 0o777) == "0o600" for w in written)


def test_each_destination_gets_the_heatmap_forms_it_asks_for(db: Database, db_url: str,
                                                             tmp_path: Path) -> None:
    from dicom_io.synthetic_study import ct_series

    settings = Settings(storage={"data_dir": tmp_path}, database={"url": db_url}, destinations=[
        {"name": "pacs", "ae_title": "PACS", "host": "h", "port": 1, "heatmaps": ["sc"]},
        {"name": "ohif", "ae_title": "OHIF", "host": "h", "port": 2, "heatmaps": ["pm"]},
        {"name": "both", "ae_title": "BOTH", "host": "h", "port": 3},
    ])
    pipeline = PipelineSettings(name="anomaly", model="m")  # default outputs: sr, sc, pm
    ct, = ct_series(1, 64, seed=4)  # cross-sectional: a Parametric Map can be written validly
    written = write_objects(settings, pipeline, _result(ct), [ct])
    pm = "1.2.840.10008.5.1.4.1.1.30"
    assert {w.sop_class_uid for w in written} == {SR_3D, SC, pm}
    assert_valid_dicom([w.path for w in written])
    now = utcnow()
    with db.session() as s:
        study = Study(study_instance_uid=ct.StudyInstanceUID, version=1, state="processing",
                      version_started_at=now, first_received_at=now, last_received_at=now)
        s.add(study)
        s.flush()
        record_outputs(s, study, settings, version=1, job_id=None, model_name="m",
                       model_version="1", backend="onnxruntime", result=_result(ct),
                       written=written, inference_ms=1.0, images=1)
    with db.read() as s:
        rows = {(d.destination, d.sop_class_uid) for d in s.scalars(select(Delivery))}
    assert rows == {("pacs", SR_3D), ("pacs", SC), ("ohif", SR_3D), ("ohif", pm),
                    ("both", SR_3D), ("both", SC), ("both", pm)}
