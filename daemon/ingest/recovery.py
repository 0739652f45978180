"""Start-up recovery: the spool is the journal of what we acknowledged.

A crash can fall between a file's rename into the spool and its row's commit
(Success was not yet sent then, but the file is whole). On start we drop partial
writes and record every spool file the database does not know, so nothing on disk
is orphaned and studies that were receiving resume.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from sqlalchemy import select

from daemon.ingest.spool import Spool, StoredFile, StoreOutcome
from daemon.store.db import Database
from daemon.store.models import Instance
from daemon.ingest.arrival import Arrival
from daemon.ingest.tracker import StudyTracker
from dicom_io.wire import DatasetHeader, inspect_dataset

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
            header, ts, calling, called = header_of(path)
        except Exception as exc:  # noqa: BLE001 - keep the file, report it
            log.error("spool file %s is unreadable, left in place: %s", rel, exc)
            continue
        if spool.relative_path(header.study_instance_uid, header.sop_instance_uid) != rel:
            log.error("spool file %s is not where its UIDs place it; left in place", rel)
            continue
        stored = StoredFile(rel, path.stat().st_size, StoreOutcome.NEW)
        tracker.record(Arrival(header=header, stored=stored, transfer_syntax=ts,
                               calling_aet=calling, called_aet=called, assoc_id=None))
        recovered += 1
    if recovered:
        log.warning("recovered %d instance(s) from the spool that the database lacked", recovered)
    return recovered


# (0002,0000) File Meta Information Group Length, explicit VR little endian, right after
# the preamble and "DICM": the data set starts that many bytes after the element.
_GROUP_LENGTH = struct.Struct("<HH2sHI")


def header_of(path: Path) -> tuple[DatasetHeader, str, str, str]:
    """The header of a spool file as the listener read it when it was received.

    The data set is read by :func:`dicom_io.wire.inspect_dataset`, as the C-STORE handler
    reads it: descriptions and body part decoded with the instance's own character set,
    so a recovered study is routed as it would have been (rules match on them).
    Returns (header, transfer syntax UID, calling AE, called AE); the AE titles come from
    the file meta's Sending/Source and Receiving AE Title where it holds them, else "".
    """
    meta = read_file_meta_info(path)
    ts = str(meta.TransferSyntaxUID)
    calling = str(meta.get("SendingApplicationEntityTitle")
                  or meta.get("SourceApplicationEntityTitle") or "").strip()
    called = str(meta.get("ReceivingApplicationEntityTitle") or "").strip()
    data = path.read_bytes()  # one instance at a time, as the listener holds it
    if data[128:132] != b"DICM" or len(data) < 144:
        raise ValueError("not a DICOM file with a preamble")
    group, element, vr, length, meta_length = _GROUP_LENGTH.unpack_from(data, 132)
    if (group, element, vr, length) != (2, 0, b"UL", 4):
        raise ValueError("the file meta has no group length")
    header = inspect_dataset(memoryview(data)[144 + meta_length:], ts)
    return header, ts, calling, called
