"""What ``pacsai status`` reports: health checks, queues, workers, recent failures (no PHI)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy import select

from daemon.ops import reports
from daemon.dispatch.broker import Broker
from daemon.config import Settings
from daemon.ops.health import readiness
from daemon.dispatch.tasks import make_celery
from daemon.store.db import Database, SchemaUnknown
from daemon.store.models import Delivery, DeliveryState, Job, JobState, Study


class DatabaseUnreadable(RuntimeError):
    pass


def collect(settings: Settings, *, db: Database | None = None) -> dict[str, Any]:
    """Everything ``pacsai status`` shows; raises DatabaseUnreadable if the store is out of reach.

    It only reads (no write lock on SQLite) and never migrates: a schema that is behind
    is reported (the ``database`` check fails, ``database_schema`` lists the pending
    migrations) and whatever the old schema can still answer is shown.
    """
    own = db is None
    db = db or Database(settings.database_url)
    try:
        try:
            db.ping()
            try:
                current: list[str] = list(db.current_revisions())
                pending: list[str] | None = db.pending_migrations()
                problem = db.schema_problem()
            except SchemaUnknown as exc:
                current, pending, problem = list(db.current_revisions()), None, str(exc)
        except Exception as exc:  # noqa: BLE001
            raise DatabaseUnreadable(_first_line(exc)) from exc
        by_state: dict[str, int] = {}
        jobs: dict[tuple[str, str], int] = {}
        last_d: dict[str, Any] | None = None
        failures: list[dict[str, Any]] = []
        dead_d: list[dict[str, Any]] = []
        try:
            with db.read() as session:
                by_state = reports.studies_by_state(session)
                jobs = reports.jobs_by_queue_state(session)
                last = session.scalars(
                    select(Study).order_by(Study.last_received_at.desc()).limit(1)).first()
                failed = session.scalars(
                    select(Job).where(Job.state == JobState.FAILED)
                    .order_by(Job.finished_at.desc()).limit(5)).all()
                dead = session.scalars(
                    select(Delivery).where(Delivery.state == DeliveryState.DEAD)
                    .order_by(Delivery.id.desc()).limit(5)).all()
                last_d = None if last is None else {
                    "id": last.id, "state": last.state, "version": last.version,
                    "modalities": last.modalities, "num_instances": last.num_instances,
                    "calling_aet": last.calling_aet,
                    "last_received_at": last.last_received_at.isoformat()}
                failures = [{"job": j.id, "study": j.study_id, "version": j.version,
                             "queue": j.queue, "error": j.error,
                             "finished_at": j.finished_at.isoformat() if j.finished_at else None}
                            for j in failed]
                dead_d = [{"delivery": d.id, "study": d.study_id, "destination": d.destination,
                           "attempts": d.attempts, "error": d.last_error} for d in dead]
        except Exception as exc:  # noqa: BLE001
            if problem is None:
                raise DatabaseUnreadable(_first_line(exc)) from exc
            # a schema behind (or ahead) may lack what these queries read: the problem
            # is reported by the database check; show what there is
        broker = Broker(settings, make_celery(settings, name="pacsai-status"))
        checks = readiness(settings, db, broker)
        names = sorted({q for q, _ in jobs} | {"cpu", "infer"})
        try:
            lengths = broker.queue_lengths(names)
        except Exception:  # noqa: BLE001
            lengths = {}
        workers = broker.workers() or []
        return {
            "healthy": all(c.ok for c in checks),
            "checks": [c.as_dict() for c in checks],
            "studies_by_state": by_state,
            "jobs_by_state": _by_state(jobs),
            "queues": [{"queue": q, "queued": jobs.get((q, JobState.QUEUED), 0),
                        "running": jobs.get((q, JobState.RUNNING), 0),
                        "broker_messages": lengths.get(q),
                        "workers": sum(1 for w in workers if q in w.queues)} for q in names],
            "workers": [asdict(w) for w in workers],
            "last_received": last_d,
            "recent_failures": failures,
            "dead_deliveries": dead_d,
            "database_schema": {"revisions": current, "pending_migrations": pending,
                                "problem": problem},
        }
    finally:
        if own:
            db.dispose()


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else repr(exc)


def _by_state(jobs: dict[tuple[str, str], int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for (_q, state), n in jobs.items():
        out[state] = out.get(state, 0) + n
    return out
