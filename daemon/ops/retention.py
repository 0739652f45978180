"""Retention: received files go some days after their results were delivered, rows later.

A study is *settled* when nothing is pending for it: it is not receiving, complete,
queued or processing, it has no queued or running job and no pending delivery.
Only settled studies are touched:

- spool files: ``spool_days`` after the results were delivered (every delivery of
  the study sent; a done study with no deliveries counts from its last finished
  job) or after it was marked not-routed. Failed studies and studies with dead
  deliveries keep their files (an admin may retry or re-send) until their rows go.
- rows (study, series, instances, jobs, events, deliveries, findings): ``rows_days``
  after the same moment, or after the last activity for failed ones; their
  remaining files and their result objects go with them.

Each study is decided and purged under its exclusive study lock (``Spool.study_lock``),
which receiving holds shared from an instance's spool write to its row's commit: an
instance acknowledged while a purge runs is never removed (a re-sent instance counts
as activity, so the study is kept another ``spool_days``).
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, func, select

from daemon.config import Settings
from daemon.ops.operations import audit
from daemon.ingest.spool import LockBusy, Spool, results_folder
from daemon.store.db import Database
from daemon.store.models import (
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    QueueSample,
    Study,
    StudyState,
    utcnow,
)

log = logging.getLogger(__name__)

PENDING_STUDY_STATES = (StudyState.RECEIVING, StudyState.QUEUED, StudyState.PROCESSING)


@dataclass
class PurgeReport:
    spool_studies: list[int] = field(default_factory=list)
    files_removed: int = 0
    bytes_freed: int = 0
    rows_studies: list[int] = field(default_factory=list)
    queue_samples: int = 0


def _settled_since(session, study: Study) -> tuple[dt.datetime | None, bool]:  # type: ignore[no-untyped-def]
    """(the moment the study settled, whether its results are delivered); None: pending."""
    if study.state in PENDING_STUDY_STATES:
        return None, False
    active_jobs = session.scalar(select(func.count()).select_from(Job).where(
        Job.study_id == study.id, Job.state.in_(JobState.ACTIVE)))
    if active_jobs:
        return None, False
    states = dict(session.execute(select(Delivery.state, func.count()).where(
        Delivery.study_id == study.id).group_by(Delivery.state)).all())
    if states.get(DeliveryState.PENDING):
        return None, False
    last_sent = session.scalar(select(func.max(Delivery.sent_at)).where(
        Delivery.study_id == study.id))
    last_job = session.scalar(select(func.max(Job.finished_at)).where(Job.study_id == study.id))
    marks = [t for t in (last_sent, last_job, study.completed_at, study.last_received_at) if t]
    settled = max(marks)
    if study.state == StudyState.NOT_ROUTED:
        return settled, True
    delivered = (study.state == StudyState.DONE and not states.get(DeliveryState.DEAD))
    return settled, delivered


def purge(settings: Settings, db: Database, *, now: dt.datetime | None = None,
          actor: str = "retention", dry_run: bool = False) -> PurgeReport:
    """Apply the retention policy once (see the module docstring)."""
    now = now or utcnow()
    spool = Spool(settings.spool_dir, fsync=False)
    spool_cut = now - dt.timedelta(days=settings.retention.spool_days)
    rows_cut = now - dt.timedelta(days=settings.retention.rows_days)
    report = PurgeReport()
    with db.read() as session:
        ids = session.scalars(select(Study.id).where(
            Study.state.not_in(PENDING_STUDY_STATES)).order_by(Study.id)).all()
    for study_id in ids:
        with db.read() as session:
            uid = session.scalar(select(Study.study_instance_uid).where(Study.id == study_id))
        if uid is None:
            continue
        # Decide and remove under the study's exclusive lock: an instance being received
        # holds it shared from its spool write to its row's commit (daemon.ingest.spool).
        try:
            with spool.study_lock(uid, exclusive=True, timeout=5.0):
                _purge_one(settings, db, spool, study_id, now, spool_cut, rows_cut, actor,
                           dry_run, report)
        except LockBusy:
            log.info("retention: study %d is receiving; looked at again next round", study_id)
    if not dry_run:
        with db.session() as session:
            res = session.execute(delete(QueueSample).where(
                QueueSample.at < now - dt.timedelta(days=min(settings.retention.rows_days, 7))))
            report.queue_samples = res.rowcount or 0  # type: ignore[attr-defined]
    if report.spool_studies or report.rows_studies:
        log.info("retention: spool of %d studies removed (%d files, %d B), %d studies deleted",
                 len(report.spool_studies), report.files_removed, report.bytes_freed,
                 len(report.rows_studies))
    return report


def _purge_one(settings: Settings, db: Database, spool: Spool, study_id: int, now: dt.datetime,
               spool_cut: dt.datetime, rows_cut: dt.datetime, actor: str, dry_run: bool,
               report: PurgeReport) -> None:
    with db.session() as session:
        study = session.get(Study, study_id)
        if study is None:
            return
        settled, delivered = _settled_since(session, study)
        if settled is None:
            return
        if settled < rows_cut:
            files = _files(session, spool, study)
            if not dry_run:
                _remove_files(spool, files, report, study)
                _remove_results(settings, study)
                audit(session, actor, "purge_rows", f"study:{study.id}", state=study.state)
                session.execute(delete(Study).where(Study.id == study.id))
            report.rows_studies.append(study_id)
        elif delivered and settled < spool_cut and (
                study.spool_purged_at is None or study.spool_purged_at < settled):
            files = _files(session, spool, study)
            if not dry_run:
                _remove_files(spool, files, report, study)
                study.spool_purged_at = now
                audit(session, actor, "purge_spool", f"study:{study.id}", files=len(files))
            report.spool_studies.append(study_id)


def _remove_results(settings: Settings, study: Study) -> None:
    """The result objects written for this life of the study (rows go: so do they)."""
    folder = results_folder(settings.results_dir, study.study_instance_uid,
                            study.first_received_at.isoformat())
    shutil.rmtree(folder, ignore_errors=True)


def _files(session, spool: Spool, study: Study) -> list[Path]:  # type: ignore[no-untyped-def]
    rels = session.scalars(select(Instance.file_path).where(Instance.study_id == study.id)).all()
    return [spool.path(r) for r in rels]


def _remove_files(spool: Spool, files: list[Path], report: PurgeReport, study: Study) -> None:
    for path in files:
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        report.files_removed += 1
        report.bytes_freed += size
    folder = spool.study_dir(study.study_instance_uid)
    if folder.is_dir() and not any(folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)
