"""STOW-RS (PS3.18 10.5) of a remote worker's result objects into ``<data_dir>/results``.

Each part is ``application/dicom`` and names, in its ``Content-Location``, the path relative
to the results folder that ``worker.outputs.write_objects`` gives it (the outbox's
``Delivery.file_path`` is ``results/`` + that path)::

    <study folder>/v<N>/<pipeline>/<sha256(SOP Instance UID)[:40]>.dcm

A part is stored only if that path has exactly this shape, its study folder is the one of
the study in the URL (``results_folder`` of its UID and incarnation), it resolves inside the
results folder, and the object's Study and SOP Instance UIDs match the URL and the file
name. It is streamed to a temporary file in ``results/.stow``, fsynced, checked, renamed
into place and the folder fsynced (``daemon.ingest.durable``): whole or absent. Others are
listed in the answer's FailedSOPSequence with a reason; nothing is written for them.

Fenced by the job's attempt: the request names its job and attempt (``?job=&attempt=``),
and is refused (412) unless that job of that study is running under that attempt, checked
when the request starts and again before each part is renamed into place. A worker host
that comes back after its job was handed on cannot replace the files of the attempt that
now holds the job (result UIDs are deterministic, so both attempts write the same names).
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from collections.abc import Callable

from sqlalchemy import select

from daemon.config import Settings
from daemon.ingest.durable import AtomicFile, fsync_dirs
from daemon.ingest.spool import results_folder
from daemon.store.db import Database
from daemon.store.models import Job, JobState, Study
from dicom_io.multipart import DICOM, parse_content_type

log = logging.getLogger(__name__)

# PS3.18 Table 10.5.3-2 / PS3.4 C.4.2.1.4 failure reasons
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
STUDY_MISMATCH = 0xC409  # as dcm4chee: Study Instance UID differs from the request's
WRONG_PLACE = 0xA900  # the object does not match where it is to be stored

_PATH = re.compile(r"(?P<study>[0-9a-f]{40})/v[1-9][0-9]{0,5}/"
                   r"[A-Za-z0-9][A-Za-z0-9_.-]{0,47}/(?P<name>[0-9a-f]{40})\.dcm")


STAGING = ".stow"  # parts being received, beside the results (same file system: a rename)


class UnknownStudy(LookupError):
    pass


class StaleAttempt(RuntimeError):
    """The request's job is not running under its attempt any more (handed on, cancelled)."""


def attempt_holds(db: Database, study_uid: str, job_id: int, attempt: int) -> bool:
    """Whether job ``job_id`` of the study ``study_uid`` is running under ``attempt``."""
    with db.read() as session:
        row = session.execute(
            select(Job.id).join(Study, Study.id == Job.study_id)
            .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.attempts == attempt,
                   Study.study_instance_uid == study_uid)).first()
    return row is not None


def clear_staging(results_dir: Path, older_than: float = 3600.0) -> int:
    """Remove parts a crash left half-received (only old ones: another process may be
    receiving into the same folder now)."""
    import time

    n = 0
    now = time.time()
    for part in (results_dir / STAGING).glob("*.part"):
        try:
            if now - part.stat().st_mtime > older_than:
                part.unlink()
                n += 1
        except OSError:
            pass
    return n


def study_folder_names(settings: Settings, db: Database, study_uid: str) -> set[str]:
    """The result folder names this study's results may be stored under."""
    with db.read() as session:
        study = session.scalars(select(Study).where(
            Study.study_instance_uid == study_uid)).one_or_none()
        if study is None:
            raise UnknownStudy(study_uid)
        incarnation = study.first_received_at.isoformat()
    return {results_folder(settings.results_dir, study_uid, incarnation).name}


@dataclass
class Outcome:
    sop_class: str | None = None
    sop_instance: str | None = None
    reason: int | None = None  # None: stored
    why: str = ""
    location: str | None = None


@dataclass
class ResultWriter:
    """A :class:`dicom_io.multipart.PartSink` that stores each part as described above."""

    results_dir: Path
    study_uid: str
    folders: set[str]
    fsync: bool = True
    holds: Callable[[], bool] | None = None  # the fence, asked before each part is placed
    outcomes: list[Outcome] = field(default_factory=list)
    stale: bool = False  # a part found the attempt no longer holding its job
    _out: AtomicFile | None = None
    _current: Outcome | None = None

    # -- PartSink ---------------------------------------------------------------------------
    def begin(self, headers: dict[str, str]) -> None:
        self._current = outcome = Outcome(location=headers.get("content-location"))
        self._out = None
        mime, _ = parse_content_type(headers.get("content-type", ""))
        if self.stale:
            return self._fail(PROCESSING_FAILURE, "the job is no longer this attempt's")
        if mime != DICOM:
            return self._fail(CANNOT_UNDERSTAND, f"part is {mime}, not {DICOM}")
        final = self._place(outcome.location or "")
        if final is None:
            return
        staging = self.results_dir / STAGING
        staging.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self._out = AtomicFile(staging / f"{uuid.uuid4().hex}.part", final, fsync=self.fsync)
        except OSError as exc:
            self._fail(OUT_OF_RESOURCES, f"cannot write: {exc.strerror}")

    def data(self, chunk: bytes) -> None:
        if self._out is None:
            return  # a refused part: its bytes are dropped
        try:
            self._out.write(chunk)
        except OSError as exc:
            self._out.abort()
            self._out = None
            self._fail(OUT_OF_RESOURCES, f"cannot write: {exc.strerror}")

    def end(self) -> None:
        out, outcome = self._out, self._current
        self._out = self._current = None
        if outcome is None:
            return
        if outcome.reason is None and out is None:
            outcome.reason = PROCESSING_FAILURE
        if outcome.reason is not None:
            self.outcomes.append(outcome)
            return
        assert out is not None
        try:
            out.close()
            self._check(out.tmp, out.final, outcome)
            if outcome.reason is None and self.holds is not None and not self.holds():
                self.stale = True
                outcome.reason, outcome.why = PROCESSING_FAILURE, "the job is no longer this attempt's"
            if outcome.reason is None:
                folder = out.final.parent
                new = [p for p in (folder, folder.parent, folder.parent.parent) if not p.is_dir()]
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                out.commit()
                if self.fsync:  # the entry, and those of the folders made for it
                    fsync_dirs(folder, *[p.parent for p in new])
        except OSError as exc:
            outcome.reason, outcome.why = OUT_OF_RESOURCES, f"cannot write: {exc.strerror}"
        finally:
            if outcome.reason is not None:
                out.abort()
        self.outcomes.append(outcome)

    def abort(self) -> None:
        """The body broke off: drop the part being written."""
        if self._out is not None:
            self._out.abort()
            self._out = None

    # -- inside -----------------------------------------------------------------------------
    def _fail(self, reason: int, why: str) -> None:
        assert self._current is not None
        self._current.reason, self._current.why = reason, why

    def _place(self, location: str) -> Path | None:
        """The final path a Content-Location names, or None (the part is refused)."""
        m = _PATH.fullmatch(location)
        if m is None:
            self._fail(WRONG_PLACE, "Content-Location is not <study>/v<N>/<pipeline>/<name>.dcm "
                                    "under the results folder")
            return None
        if m["study"] not in self.folders:
            self._fail(STUDY_MISMATCH, "Content-Location names another study's results folder")
            return None
        root = self.results_dir.resolve()
        final = (root / location).resolve()
        if not final.is_relative_to(root) or final.parent.parent.parent.parent != root:
            self._fail(WRONG_PLACE, "Content-Location leaves the results folder")
            return None
        return final

    def _check(self, tmp: Path, final: Path, outcome: Outcome) -> None:
        try:
            ds = dcmread(tmp, stop_before_pixels=True,
                         specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"])
            outcome.sop_class = str(ds.get("SOPClassUID", "")) or None
            outcome.sop_instance = str(ds.get("SOPInstanceUID", "")) or None
            study = str(ds.get("StudyInstanceUID", ""))
        except Exception as exc:  # noqa: BLE001 - reported as the part's failure
            outcome.reason = CANNOT_UNDERSTAND
            outcome.why = f"not a DICOM file: {type(exc).__name__}"
            return
        if not outcome.sop_instance or not outcome.sop_class:
            outcome.reason, outcome.why = CANNOT_UNDERSTAND, "no SOP Class or Instance UID"
        elif study != self.study_uid:
            outcome.reason = STUDY_MISMATCH
            outcome.why = "Study Instance UID differs from the URL's"
        elif hashlib.sha256(outcome.sop_instance.encode()).hexdigest()[:40] + ".dcm" != final.name:
            outcome.reason = WRONG_PLACE
            outcome.why = "file name does not match the SOP Instance UID"


def response(outcomes: list[Outcome], root: str, study_uid: str) -> tuple[int, dict[str, Any]]:
    """HTTP status and the PS3.18 Store Instances Response Module as DICOM JSON."""

    def sop_ref(o: Outcome) -> dict[str, Any]:
        item: dict[str, Any] = {}
        if o.sop_class:
            item["00081150"] = {"vr": "UI", "Value": [o.sop_class]}
        if o.sop_instance:
            item["00081155"] = {"vr": "UI", "Value": [o.sop_instance]}
        return item

    stored = [o for o in outcomes if o.reason is None]
    failed = [o for o in outcomes if o.reason is not None]
    answer: dict[str, Any] = {"00081190": {"vr": "UR", "Value": [f"{root}/studies/{study_uid}"]}}
    if stored:
        # no RetrieveURL per object: results are not served back (the outbox sends them)
        answer["00081199"] = {"vr": "SQ", "Value": [sop_ref(o) for o in stored]}
    if failed:
        answer["00081198"] = {"vr": "SQ", "Value": [
            {**sop_ref(o), "00081197": {"vr": "US", "Value": [o.reason]}} for o in failed]}
        for o in failed:
            log.warning("STOW-RS: a result object was refused (0x%04X): %s", o.reason, o.why)
    if not outcomes:
        return 400, answer
    if not failed:
        return 200, answer
    return (202 if stored else 409), answer
