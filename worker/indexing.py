"""Indexing: headers of a study's spooled instances into the database.

Fills what routing and the admin views need (patient and study attributes,
series with modality, body part and description) from the files themselves.
Idempotent: running it twice gives the same rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydicom import dcmread
from sqlalchemy import select

from daemon.spool import Spool
from daemon.store.db import Database
from daemon.store.models import Instance, Series, Study, utcnow

log = logging.getLogger(__name__)

_TAGS = [
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "StudyDate", "StudyTime", "StudyDescription", "SeriesInstanceUID", "Modality",
    "BodyPartExamined", "SeriesDescription", "SeriesNumber", "SpecificCharacterSet",
]


@dataclass(frozen=True)
class IndexResult:
    instances: int
    series: int
    unreadable: int


def _text(ds, keyword: str, limit: int) -> str | None:  # type: ignore[no-untyped-def]
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value)[:limit]


def index_study(db: Database, spool: Spool, study_id: int) -> IndexResult:
    with db.session() as session:
        study = session.get(Study, study_id)
        if study is None:
            raise LookupError(f"study {study_id} does not exist")
        instances = session.scalars(select(Instance).where(Instance.study_id == study_id)).all()
        series_by_uid = {s.series_instance_uid: s for s in session.scalars(
            select(Series).where(Series.study_id == study_id))}
        counts: dict[str, int] = {}
        modalities: set[str] = set()
        unreadable = 0
        now = utcnow()
        for inst in instances:
            try:
                ds = dcmread(spool.path(inst.file_path), stop_before_pixels=True,
                             specific_tags=_TAGS)
            except Exception as exc:  # noqa: BLE001 - recorded, the rest is indexed
                unreadable += 1
                log.warning("instance %d unreadable: %s", inst.id, exc)
                continue
            if study.patient_id is None:
                study.patient_id = _text(ds, "PatientID", 64)
                study.patient_name = _text(ds, "PatientName", 324)
                study.patient_birth_date = _text(ds, "PatientBirthDate", 8)
                study.patient_sex = _text(ds, "PatientSex", 16)
                study.accession_number = _text(ds, "AccessionNumber", 64)
                study.study_date = _text(ds, "StudyDate", 8)
                study.study_time = _text(ds, "StudyTime", 16)
                study.study_description = _text(ds, "StudyDescription", 64)
            uid = str(ds.get("SeriesInstanceUID", "") or inst.series_instance_uid)
            series = series_by_uid.get(uid)
            if series is None:
                series = Series(study_id=study_id, series_instance_uid=uid, num_instances=0)
                session.add(series)
                series_by_uid[uid] = series
            series.modality = _text(ds, "Modality", 16)
            series.body_part_examined = _text(ds, "BodyPartExamined", 64)
            series.series_description = _text(ds, "SeriesDescription", 64)
            number = ds.get("SeriesNumber")
            series.series_number = int(number) if number not in (None, "") else None
            if series.modality:
                modalities.add(series.modality)
            session.flush()
            inst.series_id = series.id
            inst.indexed_at = now
            counts[uid] = counts.get(uid, 0) + 1
        for uid, n in counts.items():
            series_by_uid[uid].num_instances = n
        study.modalities = "\\".join(sorted(modalities))[:64] or None
        return IndexResult(len(instances) - unreadable, len(counts), unreadable)
