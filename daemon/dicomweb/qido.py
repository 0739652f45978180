"""QIDO-RS search (PS3.18 10.6) for studies and a study's series, as ``application/dicom+json``.

A few standard attributes per match, from the database (patient and study attributes are
those the workers indexed; series are grouped from the instances as received, so a study
not analysed yet is listed too). Matching: exact values for UIDs, Patient ID, Accession
Number and Modality, and StudyDate as a date or a ``YYYYMMDD-YYYYMMDD`` range.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from daemon.store.db import Database
from daemon.store.models import Instance, Series, Study

StudyFilters = dict[str, str]


def _attr(vr: str, *values: Any) -> dict[str, Any]:
    present = [v for v in values if v not in (None, "")]
    if not present:
        return {"vr": vr}
    if vr == "PN":
        present = [{"Alphabetic": str(v)} for v in present]
    return {"vr": vr, "Value": present}


def search_studies(db: Database, filters: StudyFilters, root: str, *, limit: int,
                   offset: int) -> list[dict[str, Any]]:
    query = select(Study).order_by(Study.id)
    if uid := filters.get("StudyInstanceUID"):
        query = query.where(Study.study_instance_uid.in_(uid.replace("\\", ",").split(",")))
    if v := filters.get("PatientID"):
        query = query.where(Study.patient_id == v)
    if v := filters.get("AccessionNumber"):
        query = query.where(Study.accession_number == v)
    if v := filters.get("StudyDate"):
        low, sep, high = v.partition("-")
        if sep:
            if low:
                query = query.where(Study.study_date >= low)
            if high:
                query = query.where(Study.study_date <= high)
        else:
            query = query.where(Study.study_date == v)
    if v := filters.get("ModalitiesInStudy"):
        has = select(Instance.study_id).where(Instance.modality == v)
        query = query.where(Study.id.in_(has))
    with db.read() as session:
        studies = session.scalars(query.offset(offset).limit(limit)).all()
        ids = [s.id for s in studies]
        counts: dict[int, tuple[int, int, list[str]]] = {}
        if ids:
            for sid, n, nseries in session.execute(
                    select(Instance.study_id, func.count(),
                           func.count(Instance.series_instance_uid.distinct()))
                    .where(Instance.study_id.in_(ids)).group_by(Instance.study_id)):
                counts[sid] = (n, nseries, [])
            for sid, modality in session.execute(
                    select(Instance.study_id, Instance.modality).distinct()
                    .where(Instance.study_id.in_(ids))):
                if modality and sid in counts:
                    counts[sid][2].append(modality)
        return [{
            "00080020": _attr("DA", s.study_date),
            "00080030": _attr("TM", s.study_time),
            "00080050": _attr("SH", s.accession_number),
            "00080061": _attr("CS", *sorted(counts.get(s.id, (0, 0, []))[2])),
            "00081030": _attr("LO", s.study_description),
            "00081190": _attr("UR", f"{root}/studies/{s.study_instance_uid}"),
            "00100010": _attr("PN", s.patient_name),
            "00100020": _attr("LO", s.patient_id),
            "00100030": _attr("DA", s.patient_birth_date),
            "00100040": _attr("CS", s.patient_sex),
            "0020000D": _attr("UI", s.study_instance_uid),
            "00201206": _attr("IS", counts.get(s.id, (0, 0, []))[1]),
            "00201208": _attr("IS", counts.get(s.id, (0, 0, []))[0]),
        } for s in studies]


def search_series(db: Database, study_uid: str, root: str, *,
                  modality: str | None = None) -> list[dict[str, Any]] | None:
    """The study's series (None: no such study)."""
    with db.read() as session:
        study_id = session.scalars(select(Study.id).where(
            Study.study_instance_uid == study_uid)).one_or_none()
        if study_id is None:
            return None
        query = (select(Instance.series_instance_uid, func.min(Instance.modality),
                        func.min(Instance.series_description),
                        func.min(Instance.body_part_examined), func.count())
                 .where(Instance.study_id == study_id)
                 .group_by(Instance.series_instance_uid)
                 .order_by(Instance.series_instance_uid))
        if modality:
            query = query.where(Instance.modality == modality)
        rows = session.execute(query).all()
        numbers = dict(session.execute(select(Series.series_instance_uid, Series.series_number)
                                       .where(Series.study_id == study_id)).all())
    return [{
        "00080060": _attr("CS", mod),
        "0008103E": _attr("LO", desc),
        "00081190": _attr("UR", f"{root}/studies/{study_uid}/series/{uid}"),
        "00180015": _attr("CS", body_part),
        "0020000E": _attr("UI", uid),
        "00200011": _attr("IS", numbers.get(uid)),
        "00201209": _attr("IS", n),
    } for uid, mod, desc, body_part, n in rows]
