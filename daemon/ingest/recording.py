"""Recording stored instances: their rows, their study's counters, new studies and versions.

Plain functions over one session, run by the tracker's thread (:mod:`daemon.ingest.tracker`),
which owns every study write of the listener process. Each returns the tallies
(arrival, study id, bytes) the tracker keeps per association.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from sqlalchemy import BigInteger, Integer, bindparam, select

from daemon.ingest.arrival import Arrival
from daemon.ingest.spool import StoreOutcome
from daemon.store import lifecycle, timeline
from daemon.store.models import Instance, Study, StudyState

log = logging.getLogger(__name__)

Tally = tuple[Arrival, int, int]

# The hot path runs once per received instance: Core statements built once, executed on the
# session's connection (the ORM's bulk insert and per-call statement building cost several
# times more per row).
_INSERT_INSTANCES = Instance.__table__.insert()
_studies = Study.__table__
_ADD_TO_STUDY = _studies.update().where(_studies.c.id == bindparam("study")).values(
    num_instances=_studies.c.num_instances + bindparam("count", type_=Integer),
    size_bytes=_studies.c.size_bytes + bindparam("bytes", type_=BigInteger),
    last_received_at=bindparam("last", type_=_studies.c.last_received_at.type),
)




def _instance_values(a: Arrival, study_id: int, version: int) -> dict:
    h = a.header
    return {
        "study_id": study_id, "series_id": None,
        "sop_instance_uid": h.sop_instance_uid, "sop_class_uid": h.sop_class_uid,
        "series_instance_uid": h.series_instance_uid, "modality": h.modality[:16],
        "body_part_examined": h.body_part_examined[:64],
        "series_description": h.series_description[:64],
        "transfer_syntax_uid": a.transfer_syntax, "file_path": a.stored.relative_path,
        "size_bytes": a.stored.size, "version": version, "calling_aet": a.calling_aet,
        "received_at": a.received_at, "indexed_at": None,
    }


def record_new_to_receiving(session, arrivals: list[Arrival],  # type: ignore[no-untyped-def]
                            receiving: dict[str, tuple[int, int]]) -> list[Tally]:
    """New instances of studies known to be receiving: one insert, one update per study."""
    rows = []
    per_study: dict[int, list[Arrival]] = defaultdict(list)
    for a in arrivals:
        study_id, version = receiving[a.header.study_instance_uid]
        per_study[study_id].append(a)
        rows.append(_instance_values(a, study_id, version))
    conn = session.connection()
    conn.execute(_INSERT_INSTANCES, rows)
    conn.execute(_ADD_TO_STUDY, [
        {"study": study_id, "count": len(batch), "bytes": sum(a.stored.size for a in batch),
         "last": max(a.received_at for a in batch)}
        for study_id, batch in per_study.items()])
    return [(a, study_id, a.stored.size) for study_id, batch in per_study.items() for a in batch]


def _new_study(session, a: Arrival) -> Study:  # type: ignore[no-untyped-def]
    study = Study(
        study_instance_uid=a.header.study_instance_uid, version=1,
        state=lifecycle.new_study_state(), calling_aet=a.calling_aet, called_aet=a.called_aet,
        version_started_at=a.received_at, first_received_at=a.received_at,
        last_received_at=a.received_at, num_instances=0, size_bytes=0)
    session.add(study)
    session.flush()
    timeline.record(session, study, "receiving", at=a.received_at, calling_aet=a.calling_aet)
    return study


def open_new_version(session, study: Study, a: Arrival) -> None:  # type: ignore[no-untyped-def]
    """Instances for a study no longer receiving open its next version."""
    previous = study.version
    lifecycle.open_version(study, a.received_at)
    timeline.record(session, study, "version_opened", at=a.received_at,
                    previous_version=previous, calling_aet=a.calling_aet)
    log.info("study %s: late instances open version %d", study.id, study.version)


def _update_instance(existing: Instance, study: Study, a: Arrival) -> None:
    """A known SOP Instance UID sent with new bytes (or into another study): replace it."""
    h = a.header
    if existing.study_id != study.id:
        log.warning("instance moved to another study (re-sent with a new StudyInstanceUID)")
        existing.study_id = study.id
        study.num_instances += 1
    study.size_bytes += a.stored.size - existing.size_bytes
    existing.sop_class_uid = h.sop_class_uid
    existing.series_instance_uid = h.series_instance_uid
    existing.body_part_examined = h.body_part_examined[:64]
    existing.series_description = h.series_description[:64]
    existing.transfer_syntax_uid = a.transfer_syntax
    existing.file_path = a.stored.relative_path
    existing.size_bytes = a.stored.size
    existing.version = study.version
    existing.received_at = a.received_at
    existing.indexed_at = None


def _record_one(session, study: Study, existing: Instance | None,  # type: ignore[no-untyped-def]
                a: Arrival) -> Instance | None:
    """Record ``a`` in ``study``; the new Instance row, if one was made."""
    h = a.header
    if study.state != StudyState.RECEIVING:
        open_new_version(session, study, a)
    study.last_received_at = a.received_at
    study.calling_aet = a.calling_aet or study.calling_aet
    if h.study_description and not study.study_description:
        study.study_description = h.study_description[:64]
    if existing is not None:
        _update_instance(existing, study, a)
        return None
    values = _instance_values(a, study.id, study.version)
    values.pop("series_id"), values.pop("indexed_at")
    inst = Instance(**values)
    session.add(inst)
    study.num_instances += 1
    study.size_bytes += a.stored.size
    return inst


def record_batch(session, arrivals: list[Arrival]  # type: ignore[no-untyped-def]
                 ) -> tuple[dict[str, tuple[int, int]], list[Tally]]:
    """Record any batch: new studies, re-sends, late instances, replaced instances.

    Returns the studies now receiving (UID -> (id, version)) and the tallies.
    """
    study_uids = {a.header.study_instance_uid for a in arrivals}
    sop_uids = {a.header.sop_instance_uid for a in arrivals}
    studies = {s.study_instance_uid: s for s in session.scalars(
        select(Study).where(Study.study_instance_uid.in_(study_uids)))}
    instances = {i.sop_instance_uid: i for i in session.scalars(
        select(Instance).where(Instance.sop_instance_uid.in_(sop_uids)))}
    tallies: list[Tally] = []
    for a in arrivals:
        h = a.header
        study = studies.get(h.study_instance_uid)
        if study is None:
            study = studies[h.study_instance_uid] = _new_study(session, a)
        existing = instances.get(h.sop_instance_uid)
        if (a.stored.outcome is StoreOutcome.IDENTICAL and existing is not None
                and existing.study_id == study.id):
            # A re-send of what we hold: idempotent, nothing to re-analyse. It still
            # counts as activity: retention keeps a study a PACS is sending again.
            study.last_received_at = max(study.last_received_at, a.received_at)
            tallies.append((a, study.id, 0))
            continue
        made = _record_one(session, study, existing, a)
        if made is not None:
            instances[h.sop_instance_uid] = made
        tallies.append((a, study.id, a.stored.size))
    receiving = {uid: (st.id, st.version) for uid, st in studies.items()
                 if st.state == StudyState.RECEIVING}
    return receiving, tallies
