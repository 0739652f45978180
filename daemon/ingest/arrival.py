"""One stored instance on its way into the database (listener and recovery -> tracker)."""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field

from daemon.ingest.spool import StoredFile
from daemon.store.models import utcnow
from dicom_io.wire import DatasetHeader


@dataclass(eq=False)
class Arrival:
    """One instance on disk, waiting to be recorded."""

    header: DatasetHeader
    stored: StoredFile
    transfer_syntax: str
    calling_aet: str
    called_aet: str
    assoc_id: int | None
    received_at: dt.datetime = field(default_factory=utcnow)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
