"""Result objects on disk and in the outbox.

Writes the SR (and, for destinations that ask for it, a Comprehensive SR 88.33),
the heatmap secondary captures and optional parametric maps into
``<data_dir>/results``, then, in one transaction, records the findings and one
outbox row per (destination, object). UIDs are deterministic, so a re-run
rewrites identical objects and finds its outbox rows already there.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from daemon.store import timeline
from daemon.config import PipelineSettings, Settings
from daemon.ingest.durable import fsync_dirs, write_atomically
from daemon.ingest.spool import results_folder
from daemon.store.db import Database
from daemon.store.models import Delivery, DeliveryState, Finding, Job, Study, utcnow
from dicom_io.pm import UnsupportedSource, write_parametric_map
from dicom_io.results import AnalysisResult, PreviousResult
from dicom_io.sc import SCOptions, write_heatmap_scs
from dicom_io.sr import SROptions, write_sr

log = logging.getLogger(__name__)

SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.33"}


@dataclass(frozen=True)
class WrittenObject:
    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    role: str  # "sr" | "sr-88.33" | "sc" | "pm"


def _save(ds: Dataset, folder: Path, *, fsync: bool = True) -> Path:
    """Write atomically (mode 0600), durable before the outbox row that points at it.

    A failed write (a full disk) leaves nothing behind: the job fails with the reason and
    a retry writes the same objects again (their UIDs are deterministic).
    """
    created = not folder.is_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = hashlib.sha256(str(ds.SOPInstanceUID).encode()).hexdigest()[:40] + ".dcm"
    final = folder / name
    tmp = folder / f".{name}.part"
    encoded = io.BytesIO()  # encoded first: pydicom would hide a write error's errno
    ds.save_as(encoded, enforce_file_format=True)
    try:
        write_atomically(tmp, final, [encoded.getbuffer()], fsync=fsync)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write a result object in {folder}: {exc.strerror}") from exc
    if fsync:  # the new entry, and on the first object the new folders' own entries
        fsync_dirs(folder, *(folder.parents[:3] if created else []))
    return final


def study_folder(settings: Settings, study_uid: str, incarnation: str = "") -> Path:
    return results_folder(settings.results_dir, study_uid, incarnation)


def previous_results(settings: Settings, study_uid: str, version: int,
                     pipeline: str, incarnation: str = "") -> list[PreviousResult]:
    """The SR(s) this pipeline wrote for the newest earlier version (to supersede)."""
    base = study_folder(settings, study_uid, incarnation)
    for earlier in range(version - 1, 0, -1):
        folder = base / f"v{earlier}" / pipeline
        if not folder.is_dir():
            continue
        found = []
        for path in sorted(folder.glob("*.dcm")):
            ds = dcmread(path, stop_before_pixels=True,
                         specific_tags=["SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID"])
            if str(ds.SOPClassUID) in SR_CLASSES:
                found.append(PreviousResult(study_uid, str(ds.SeriesInstanceUID),
                                            str(ds.SOPInstanceUID), str(ds.SOPClassUID)))
        if found:
            return found
    return []


def recorded_previous_results(db: Database, study_id: int, version: int,
                              pipeline: str) -> list[PreviousResult]:
    """:func:`previous_results` from the outbox instead of the results folder, for a remote
    worker (whose host keeps no results): the SR(s) this pipeline's job recorded for the
    newest earlier version. Only SRs recorded for a destination are known this way."""
    with db.read() as session:
        rows = session.execute(
            select(Job.version, Delivery.series_instance_uid, Delivery.sop_instance_uid,
                   Delivery.sop_class_uid)
            .join(Job, Delivery.job_id == Job.id)
            .where(Job.study_id == study_id, Job.pipeline == pipeline, Job.version < version,
                   Delivery.sop_class_uid.in_(SR_CLASSES))
            .order_by(Job.version.desc(), Delivery.id)).all()
        uid = session.scalar(select(Study.study_instance_uid).where(Study.id == study_id))
    if not rows:
        return []
    newest = rows[0][0]
    found: dict[str, PreviousResult] = {}
    for v, series, sop, cls in rows:
        if v == newest and sop not in found:
            found[sop] = PreviousResult(str(uid), series, sop, cls)
    return list(found.values())


def write_objects(settings: Settings, pipeline: PipelineSettings, result: AnalysisResult,
                  sources: list[Dataset]) -> list[WrittenObject]:
    """Write every object the pipeline asks for; return what was written."""
    folder = (study_folder(settings, result.study_instance_uid, result.study_incarnation)
              / f"v{result.study_version}" / pipeline.name)
    disclaimer = settings.results.disclaimer
    written: list[WrittenObject] = []

    def keep(ds: Dataset, role: str) -> None:
        path = _save(ds, folder, fsync=settings.storage.fsync == "always")
        written.append(WrittenObject(path, str(ds.SOPInstanceUID), str(ds.SOPClassUID),
                                     str(ds.SeriesInstanceUID), role))

    if "sr" in pipeline.outputs:
        keep(write_sr(result, sources, SROptions(disclaimer=disclaimer)), "sr")
        if any(d.sr_sop_class == "comprehensive" for d in settings.destinations):
            keep(write_sr(result, sources, SROptions(kind="comprehensive", disclaimer=disclaimer)),
                 "sr-88.33")
    if "sc" in pipeline.outputs:
        options = SCOptions(disclaimer=disclaimer, colormap=settings.results.colormap,
                            opacity=settings.results.opacity, top_k=pipeline.top_k)
        for sc in write_heatmap_scs(result, sources, options):
            keep(sc, "sc")
    if "pm" in pipeline.outputs:
        for index, finding in enumerate(result.findings, start=1):
            try:
                keep(write_parametric_map(result, finding, sources, finding_index=index), "pm")
            except UnsupportedSource as exc:
                log.info("no parametric map for this finding: %s", exc)  # CR/DX: SC only
    return written


def record_outputs(session: Session, study: Study, settings: Settings, *, version: int,
                   job_id: int, model_name: str, model_version: str, backend: str,
                   result: AnalysisResult, written: list[WrittenObject], inference_ms: float,
                   images: int, destinations: list[str] | None = None) -> int:
    """Findings and outbox rows in the caller's transaction; returns the number of new deliveries.

    The caller's transaction is the one that settles the job (``worker.jobs.outcome``), so
    these rows exist only if the attempt that wrote them still held the job.
    ``destinations``: names chosen by routing (None: every configured destination).
    """
    study_id = study.id
    now = utcnow()
    new = 0
    existing_findings = session.scalars(
        select(Finding).where(Finding.job_id == job_id)).all()
    for f in existing_findings:  # a re-run replaces its own findings
        session.delete(f)
    for f in result.findings:
        session.add(Finding(
            study_id=study_id, version=version, job_id=job_id, model_name=model_name,
            model_version=model_version, backend=backend, label=f.label.meaning[:64],
            score=f.score, threshold=f.threshold, present=f.present, images=images,
            inference_ms=inference_ms, created_at=now,
        ))
    uids = [obj.sop_instance_uid for obj in written]
    have = {(d, u) for d, u in session.execute(
        select(Delivery.destination, Delivery.sop_instance_uid)
        .where(Delivery.sop_instance_uid.in_(uids)))} if uids else set()
    for dest in settings.destinations:
        if destinations is not None and dest.name not in destinations:
            continue
        for obj in written:
            if obj.role == "sr" and dest.sr_sop_class == "comprehensive":
                continue
            if obj.role == "sr-88.33" and dest.sr_sop_class != "comprehensive":
                continue
            if obj.role in ("sc", "pm") and obj.role not in dest.heatmaps:
                continue
            if (dest.name, obj.sop_instance_uid) in have:
                continue
            session.add(Delivery(
                study_id=study_id, version=version, job_id=job_id, destination=dest.name,
                sop_instance_uid=obj.sop_instance_uid, sop_class_uid=obj.sop_class_uid,
                series_instance_uid=obj.series_instance_uid,
                file_path=str(obj.path.relative_to(settings.data_dir)),
                state=DeliveryState.PENDING, attempts=0, next_attempt_at=now, created_at=now,
            ))
            new += 1
    timeline.record(
        session, study, "results_written", version=version, job_id=job_id,
        objects=len(written), deliveries=new,
        findings=[{"label": f.label.meaning, "score": round(f.score, 4), "present": f.present}
                  for f in result.findings],
        skipped=len(result.skipped),
    )
    return new
