"""Indexing: headers of a study's spooled instances into the database.

Fills what the admin views need (patient and study attributes, series with
modality, body part and description) from the files themselves. Safe when several
jobs of one study run at once on several workers (PostgreSQL): the headers are read
with no transaction open, then one short write transaction records them with
insert-or-ignore for series and conditional updates for the rest, so two pipelines
indexing the same study version at once both succeed and give the same rows.
Instances already indexed are not read again: a study version is read once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydicom import dcmread
from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from daemon import redact
from daemon.ingest.spool import Spool
from daemon.store.db import Database
from daemon.store.models import Instance, Series, Study, utcnow
from dicom_io import charset  # noqa: F401 - completes pydicom's tables (ISO_IR 203, IR 58)

log = logging.getLogger(__name__)

_TAGS = [
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "StudyDate", "StudyTime", "StudyDescription", "SeriesInstanceUID", "Modality",
    "BodyPartExamined", "SeriesDescription", "SeriesNumber", "SpecificCharacterSet",
]
_STUDY_FIELDS = {  # study column -> (keyword, length)
    "patient_id": ("PatientID", 64), "patient_name": ("PatientName", 324),
    "patient_birth_date": ("PatientBirthDate", 8), "patient_sex": ("PatientSex", 16),
    "accession_number": ("AccessionNumber", 64), "study_date": ("StudyDate", 8),
    "study_time": ("StudyTime", 16), "study_description": ("StudyDescription", 64),
}


@dataclass(frozen=True)
class IndexResult:
    instances: int
    series: int
    unreadable: int


@dataclass(frozen=True)
class _Header:
    instance_id: int
    series_uid: str
    series: dict[str, object]
    study: dict[str, str | None]


def _text(ds, keyword: str, limit: int) -> str | None:  # type: ignore[no-untyped-def]
    """A header value as text for the database: NUL and other control characters (which
    PostgreSQL refuses and no DICOM text VR allows) are dropped, the length capped."""
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a value pydicom cannot convert is not indexed
        return None
    if value is None or value == "":
        return None
    text = "".join(ch for ch in str(value) if ch >= " " or ch == "\x1b")
    return text[:limit] or None


def _number(ds, keyword: str) -> int | None:  # type: ignore[no-untyped-def]
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except Exception:  # noqa: BLE001 - a malformed IS is not indexed
        return None


def _read(spool: Spool, inst_id: int, rel: str, fallback_series: str) -> _Header | None:
    try:
        ds = dcmread(spool.path(rel), stop_before_pixels=True, specific_tags=_TAGS)
        series_uid = str(ds.get("SeriesInstanceUID", "") or fallback_series)
    except Exception as exc:  # noqa: BLE001 - recorded, the rest is indexed
        log.warning("instance %d unreadable: %s", inst_id, redact.reason(exc))
        return None
    return _Header(
        inst_id, series_uid[:64],
        {"modality": _text(ds, "Modality", 16),
         "body_part_examined": _text(ds, "BodyPartExamined", 64),
         "series_description": _text(ds, "SeriesDescription", 64),
         "series_number": _number(ds, "SeriesNumber")},
        {col: _text(ds, kw, n) for col, (kw, n) in _STUDY_FIELDS.items()},
    )


def _insert_series_ignoring_existing(session: Session, rows: list[dict[str, object]]) -> None:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        stmt = postgresql.insert(Series).values(rows).on_conflict_do_nothing()
    elif dialect == "sqlite":
        stmt = sqlite.insert(Series).values(rows).on_conflict_do_nothing()
    else:  # pragma: no cover - the two supported databases are above
        raise RuntimeError(f"indexing does not support {dialect}")
    session.execute(stmt)


def index_study(db: Database, spool: Spool, study_id: int, *,
                up_to_version: int | None = None) -> IndexResult:
    """Index the study's instances that are not indexed yet (idempotent, concurrent-safe).

    ``up_to_version``: only those of versions 1..N (a remote worker's copy holds no others).
    """
    with db.read() as session:
        if session.get(Study, study_id) is None:
            raise LookupError(f"study {study_id} does not exist")
        query = (select(Instance.id, Instance.file_path, Instance.series_instance_uid)
                 .where(Instance.study_id == study_id, Instance.indexed_at.is_(None)))
        if up_to_version is not None:
            query = query.where(Instance.version <= up_to_version)
        todo = session.execute(query).all()
    if not todo:
        return IndexResult(0, 0, 0)
    headers = [h for h in (_read(spool, i, rel, s) for i, rel, s in todo) if h is not None]
    unreadable = len(todo) - len(headers)
    now = utcnow()
    by_series: dict[str, _Header] = {}
    for h in headers:
        by_series.setdefault(h.series_uid, h)
    with db.session() as session:
        if by_series:
            _insert_series_ignoring_existing(session, [
                {"study_id": study_id, "series_instance_uid": uid, "num_instances": 0}
                for uid in by_series])
            series_ids = dict(session.execute(
                select(Series.series_instance_uid, Series.id).where(
                    Series.study_id == study_id,
                    Series.series_instance_uid.in_(list(by_series)))).all())
            for uid, h in by_series.items():
                sid = series_ids.get(uid)
                if sid is None:  # the same Series Instance UID in another study (a sender's bug)
                    log.warning("study %d: a series UID that another study holds; its "
                                "instances are kept but not listed under a series", study_id)
                    continue
                session.execute(update(Series).where(Series.id == sid).values(**h.series))
                ids = [x.instance_id for x in headers if x.series_uid == uid]
                session.execute(update(Instance).where(Instance.id.in_(ids))
                                .values(series_id=sid))
        done = [i for i, _, _ in todo]  # unreadable ones too: they are not read again
        session.execute(update(Instance).where(Instance.id.in_(done), Instance.indexed_at.is_(None))
                        .values(indexed_at=now))
        counts = (select(func.count()).select_from(Instance)
                  .where(Instance.series_id == Series.id).scalar_subquery())
        session.execute(update(Series).where(Series.study_id == study_id)
                        .values(num_instances=counts))
        modalities = session.scalars(select(Series.modality).distinct().where(
            Series.study_id == study_id, Series.modality.is_not(None))).all()
        values: dict[str, object] = {"modalities": "\\".join(sorted(modalities))[:64] or None}
        if headers:  # patient and study attributes once, from the first readable header
            first = headers[0].study
            session.execute(update(Study).where(Study.id == study_id, Study.patient_id.is_(None))
                            .values(**first))
        session.execute(update(Study).where(Study.id == study_id).values(**values))
    return IndexResult(len(headers), len(by_series), unreadable)
