"""Start-up recovery: the spool is the journal of what we acknowledged.

A crash can fall between a file's rename into the spool and its row's commit
(Success was not yet sent then, but the file is whole). On start we drop partial
writes and record every spool file the database does not know, so nothing on disk
is orphaned and studies that were receiving resume.
"""

from __future__ import annotations

import logging

from pydicom import dcmread
from sqlalchemy import select

from daemon.spool import Spool, StoredFile, StoreOutcome
from daemon.store.db import Database
from daemon.store.models import Instance
from daemon.study_tracker import Arrival, StudyTracker
from dicom_io.wire import DatasetHeader

log = logging.getLogger(__name__)


def recover_spool(spool: Spool, db: Database, tracker: StudyTracker) -> int:
    """Record spool files missing from the database; return how many were recovered."""
    dropped = spool.clear_tmp()
    if dropped:
        log.warning("removed %d partial write(s) left by a crash", dropped)
    with db.session() as session:
        known = set(session.scalars(select(Instance.file_path)))
    recovered = 0
    for rel in spool.iter_files():
        if rel in known:
            continue
        path = spool.path(rel)
        try:
            ds = dcmread(path, stop_before_pixels=True)
            header = DatasetHeader(
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                study_instance_uid=str(ds.StudyInstanceUID),
                series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
                modality=str(ds.get("Modality", "")),
                has_pixel_data=True,
            )
            ts = str(ds.file_meta.TransferSyntaxUID)
        except Exception as exc:  # noqa: BLE001 - keep the file, report it
            log.error("spool file %s is unreadable, left in place: %s", rel, exc)
            continue
        if spool.relative_path(header.study_instance_uid, header.sop_instance_uid) != rel:
            log.error("spool file %s is not where its UIDs place it; left in place", rel)
            continue
        stored = StoredFile(rel, path.stat().st_size, StoreOutcome.NEW)
        tracker.record(Arrival(header=header, stored=stored, transfer_syntax=ts,
                               calling_aet="", called_aet="", assoc_id=None))
        recovered += 1
    if recovered:
        log.warning("recovered %d instance(s) from the spool that the database lacked", recovered)
    return recovered
