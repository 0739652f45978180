"""Read-only views of the store for the admin API, the dashboard and the CLI.

They read through ``Database.read()`` (no write lock on SQLite: a busy listener never
holds them up); only :func:`sample_queues` writes.

No patient data unless ``phi=True`` is passed (the API decides who may).
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import defaultdict
from collections.abc import Collection
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from daemon.store.db import Database
from daemon.store.models import (
    Delivery,
    DeliveryState,
    Event,
    Finding,
    Job,
    JobState,
    QueueSample,
    Study,
    utcnow,
)

PHI_FIELDS = ("patient_id", "patient_name", "patient_birth_date", "patient_sex",
              "accession_number")

#: Timeline milestones and the stages between them (histograms, percentiles).
STAGES: list[tuple[str, str]] = [
    ("received", "complete"), ("complete", "queued"), ("queued", "started"),
    ("started", "finished"), ("finished", "delivered"), ("received", "finished"),
    ("received", "delivered"),
]


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def study_dict(s: Study, *, phi: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": s.id, "state": s.state, "version": s.version, "calling_aet": s.calling_aet,
        "modalities": s.modalities, "num_instances": s.num_instances,
        "size_bytes": s.size_bytes, "study_date": s.study_date,
        "study_description": s.study_description,
        "first_received_at": _iso(s.first_received_at),
        "last_received_at": _iso(s.last_received_at), "completed_at": _iso(s.completed_at),
        "spool_purged_at": _iso(s.spool_purged_at),
    }
    if phi:
        out.update({k: getattr(s, k) for k in PHI_FIELDS})
        out["study_instance_uid"] = s.study_instance_uid
    return out


def job_dict(j: Job, *, phi: bool = False) -> dict[str, Any]:
    """A job; ``error`` is the scrubbed reason, ``error_detail`` (the full text, which may
    quote header values) only with ``phi``."""
    out = {"id": j.id, "study_id": j.study_id, "version": j.version, "pipeline": j.pipeline,
           "state": j.state, "queue": j.queue, "attempts": j.attempts, "error": j.error,
           "queued_at": _iso(j.queued_at), "started_at": _iso(j.started_at),
           "finished_at": _iso(j.finished_at), "heartbeat_at": _iso(j.heartbeat_at)}
    if phi:
        out["error_detail"] = j.error_detail
    return out


def delivery_dict(d: Delivery) -> dict[str, Any]:
    return {"id": d.id, "study_id": d.study_id, "version": d.version, "job_id": d.job_id,
            "destination": d.destination, "sop_class_uid": d.sop_class_uid, "state": d.state,
            "attempts": d.attempts, "last_status": d.last_status, "last_error": d.last_error,
            "next_attempt_at": _iso(d.next_attempt_at), "created_at": _iso(d.created_at),
            "sent_at": _iso(d.sent_at)}


def list_studies(db: Database, *, state: str | None = None, since: dt.datetime | None = None,
                 until: dt.datetime | None = None, limit: int = 50,
                 phi: bool = False) -> list[dict[str, Any]]:
    q = select(Study).order_by(Study.last_received_at.desc(), Study.id.desc()).limit(limit)
    if state:
        q = q.where(Study.state == state)
    if since:
        q = q.where(Study.last_received_at >= since)
    if until:
        q = q.where(Study.last_received_at < until)
    with db.read() as session:
        return [study_dict(s, phi=phi) for s in session.scalars(q).all()]


def study_detail(db: Database, study_id: int, *, phi: bool = False) -> dict[str, Any] | None:
    with db.read() as session:
        s = session.get(Study, study_id)
        if s is None:
            return None
        events = session.scalars(select(Event).where(Event.study_id == study_id)
                                 .order_by(Event.at, Event.id)).all()
        jobs = session.scalars(select(Job).where(Job.study_id == study_id).order_by(Job.id)).all()
        deliveries = session.scalars(select(Delivery).where(Delivery.study_id == study_id)
                                     .order_by(Delivery.id)).all()
        findings = session.scalars(select(Finding).where(Finding.study_id == study_id)
                                   .order_by(Finding.id)).all()
        return {
            **study_dict(s, phi=phi),
            "timeline": [{"at": _iso(e.at), "version": e.version, "kind": e.kind,
                          "job_id": e.job_id, "detail": dict(e.detail or {})} for e in events],
            "jobs": [job_dict(j, phi=phi) for j in jobs],
            "deliveries": [delivery_dict(d) for d in deliveries],
            "findings": [{"model": f.model_name, "version": f.model_version,
                          "backend": f.backend, "label": f.label, "score": f.score,
                          "threshold": f.threshold, "present": f.present,
                          "inference_ms": f.inference_ms} for f in findings],
        }


def list_jobs(db: Database, *, state: str | None = None, limit: int = 100,
              phi: bool = False) -> list[dict[str, Any]]:
    q = select(Job).order_by(Job.id.desc()).limit(limit)
    if state:
        q = q.where(Job.state == state)
    with db.read() as session:
        return [job_dict(j, phi=phi) for j in session.scalars(q).all()]


def job_detail(db: Database, job_id: int, *, phi: bool = False) -> dict[str, Any] | None:
    """One job with its timeline events (``error_detail`` only with ``phi``)."""
    with db.read() as session:
        j = session.get(Job, job_id)
        if j is None:
            return None
        events = session.scalars(select(Event).where(Event.job_id == job_id)
                                 .order_by(Event.at, Event.id)).all()
        return {**job_dict(j, phi=phi), "route": j.route, "priority": j.priority,
                "task_id": j.task_id,
                "timeline": [{"at": _iso(e.at), "kind": e.kind, "detail": dict(e.detail or {})}
                             for e in events]}


def list_deliveries(db: Database, *, state: str | None = None,
                    limit: int = 100) -> list[dict[str, Any]]:
    q = select(Delivery).order_by(Delivery.id.desc()).limit(limit)
    if state:
        q = q.where(Delivery.state == state)
    with db.read() as session:
        return [delivery_dict(d) for d in session.scalars(q).all()]


def studies_by_state(session: Session) -> dict[str, int]:
    return dict(session.execute(select(Study.state, func.count()).group_by(Study.state)).all())


def jobs_by_queue_state(session: Session) -> dict[tuple[str, str], int]:
    rows = session.execute(select(Job.queue, Job.state, func.count())
                           .group_by(Job.queue, Job.state)).all()
    return {(q, s): n for q, s, n in rows}


def milestones(session: Session, since: dt.datetime | None = None, *,
               study_ids: Collection[int] | None = None
               ) -> dict[tuple[int, int], dict[str, dt.datetime]]:
    """Per study version: when it was received, complete, queued, started, finished, delivered.

    ``since`` keeps events from then on; ``study_ids`` only those studies.
    """
    kinds = {"receiving": "received", "version_opened": "received", "complete": "complete",
             "queued": "queued", "started": "started", "finished": "finished"}
    q = (select(Event.study_id, Event.version, Event.kind, func.min(Event.at), func.max(Event.at))
         .where(Event.kind.in_(kinds)).group_by(Event.study_id, Event.version, Event.kind))
    if since is not None:
        q = q.where(Event.at >= since)
    if study_ids is not None:
        q = q.where(Event.study_id.in_(study_ids))
    out: dict[tuple[int, int], dict[str, dt.datetime]] = defaultdict(dict)
    for study_id, version, kind, first, last in session.execute(q).all():
        name = kinds[kind]
        out[(study_id, version)][name] = last if name == "finished" else first
    dq = (select(Delivery.study_id, Delivery.version, func.max(Delivery.sent_at),
                 func.count(), func.count(Delivery.sent_at))
          .where(Delivery.state.in_((DeliveryState.SENT, DeliveryState.PENDING,
                                     DeliveryState.DEAD)))
          .group_by(Delivery.study_id, Delivery.version))
    if study_ids is not None:
        dq = dq.where(Delivery.study_id.in_(study_ids))
    for study_id, version, sent_at, total, sent in session.execute(dq).all():
        key = (study_id, version)
        if key in out and sent_at is not None and sent == total:
            out[key]["delivered"] = sent_at
    return out


def stage_durations(marks: dict[tuple[int, int], dict[str, dt.datetime]]
                    ) -> dict[str, list[float]]:
    """Seconds per stage ("received_to_complete", ...) over the given study versions."""
    out: dict[str, list[float]] = {f"{a}_to_{b}": [] for a, b in STAGES}
    for m in marks.values():
        for a, b in STAGES:
            if a in m and b in m:
                out[f"{a}_to_{b}"].append(max(0.0, (m[b] - m[a]).total_seconds()))
    return out


def percentiles(values: list[float], qs: tuple[int, ...] = (50, 90, 99)) -> dict[str, float | None]:
    if not values:
        return {f"p{q}": None for q in qs}
    if len(values) == 1:
        return {f"p{q}": values[0] for q in qs}
    cuts = statistics.quantiles(sorted(values), n=100, method="inclusive")
    return {f"p{q}": cuts[q - 1] for q in qs}


def summary(db: Database, *, hours: int = 24) -> dict[str, Any]:
    """Dashboard summary: states, throughput per hour, latency percentiles, failures."""
    now = utcnow()
    since = now - dt.timedelta(hours=hours)
    with db.read() as session:
        # one unit on both sides: study versions received, study versions analysed (the
        # time of the last of their jobs to finish or fail), not jobs beside studies
        analysed = session.execute(
            select(Event.study_id, Event.version, func.max(Event.at))
            .where(Event.kind.in_(("finished", "failed")), Event.at >= since)
            .group_by(Event.study_id, Event.version)).all()
        finished = [at for _, _, at in analysed]
        failed_events = session.scalar(select(func.count()).select_from(Event).where(
            Event.kind == "failed", Event.at >= since)) or 0
        received = session.scalars(select(Event.at).where(
            Event.kind.in_(("receiving", "version_opened")), Event.at >= since)).all()
        states = studies_by_state(session)
        durations = stage_durations(milestones(session, since))
        failed_jobs = session.scalar(select(func.count()).select_from(Job).where(
            Job.state == JobState.FAILED)) or 0
        dead = session.scalar(select(func.count()).select_from(Delivery).where(
            Delivery.state == DeliveryState.DEAD)) or 0
    buckets = [(since + dt.timedelta(hours=h)) for h in range(hours)]

    def per_hour(times: list[dt.datetime]) -> list[int]:
        counts = [0] * hours
        for t in times:
            i = int((t - since).total_seconds() // 3600)
            if 0 <= i < hours:
                counts[i] += 1
        return counts

    return {
        "now": now.isoformat(),
        "studies_by_state": states,
        "throughput": {"hours": [b.isoformat() for b in buckets],
                       "unit": "study versions",
                       "received": per_hour(list(received)),
                       "analysed": per_hour(list(finished))},
        "latency_seconds": {stage: {**percentiles(v), "n": len(v)}
                            for stage, v in durations.items()},
        "failures": {"failed_events_window": failed_events, "failed_jobs": failed_jobs,
                     "dead_deliveries": dead},
    }


def queue_history(db: Database, *, hours: float = 6) -> dict[str, list[dict[str, Any]]]:
    since = utcnow() - dt.timedelta(hours=hours)
    with db.read() as session:
        rows = session.scalars(select(QueueSample).where(QueueSample.at >= since)
                               .order_by(QueueSample.at)).all()
        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            out[r.queue].append({"at": r.at.isoformat(), "queued": r.queued,
                                 "running": r.running})
        return dict(out)


def sample_queues(db: Database, queues: list[str] | None = None) -> None:
    """Record the current depth of every queue that has or had jobs (for queue_history)."""
    now = utcnow()
    with db.session() as session:
        counts = jobs_by_queue_state(session)
        names = set(queues or []) | {q for q, _ in counts}
        for q in sorted(names):
            session.add(QueueSample(at=now, queue=q, queued=counts.get((q, JobState.QUEUED), 0),
                                    running=counts.get((q, JobState.RUNNING), 0)))
