"""The JSON API under /api (OpenAPI at /docs and /openapi.json). Every route needs a token.

No ``from __future__ import annotations`` here: FastAPI resolves the routes' annotations.
"""


import datetime as dt
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status

from daemon.ops import monitoring, operations, reports
from daemon.ops.admin.auth import Caller
from daemon.store.models import JobState, StudyState


def _state(request: Request) -> Any:
    return request.app.state.pacsai


def make_router(auth: Any) -> APIRouter:
    """The /api routes, each behind ``auth`` (a FastAPI dependency returning the Caller)."""
    router = APIRouter(prefix="/api", tags=["admin"])
    caller_dep = Annotated[Caller, Depends(auth)]
    _read_routes(router, caller_dep)
    _action_routes(router, caller_dep)
    return router


def _read_routes(router: APIRouter, CallerDep: Any) -> None:  # noqa: N803 - a type, as FastAPI reads it
    @router.get("/studies", summary="Studies, newest first (no patient data unless phi=true)")
    def studies(request: Request, caller: CallerDep, state: str | None = None,
                since: dt.datetime | None = None, until: dt.datetime | None = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                phi: bool = False) -> list[dict[str, Any]]:
        _phi_allowed(caller, phi)
        return reports.list_studies(_state(request).db, state=state, since=_utc(since),
                                    until=_utc(until), limit=limit, phi=phi)

    @router.get("/studies/{study_id}", summary="One study with its timeline, jobs, deliveries")
    def study(request: Request, caller: CallerDep, study_id: int,
              phi: bool = False) -> dict[str, Any]:
        _phi_allowed(caller, phi)
        detail = reports.study_detail(_state(request).db, study_id, phi=phi)
        if detail is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"study {study_id} does not exist")
        return detail

    @router.get("/summary", summary="States, throughput, latency percentiles, failures")
    def summary(request: Request, caller: CallerDep,
                hours: Annotated[int, Query(ge=1, le=168)] = 24) -> dict[str, Any]:
        return reports.summary(_state(request).db, hours=hours)

    @router.get("/queues", summary="Depth per queue: database, broker, workers")
    def queues(request: Request, caller: CallerDep) -> list[dict[str, Any]]:
        st = _state(request)
        with st.db.read() as session:
            counts = reports.jobs_by_queue_state(session)
        names = sorted({q for q, _ in counts} | {"cpu", "infer"})
        try:
            broker = st.broker.queue_lengths(names)
        except Exception:  # noqa: BLE001 - shown as unknown
            broker = {}
        workers = st.broker.workers() or []
        return [{"queue": q, "queued": counts.get((q, JobState.QUEUED), 0),
                 "running": counts.get((q, JobState.RUNNING), 0),
                 "failed": counts.get((q, JobState.FAILED), 0),
                 "broker_messages": broker.get(q),
                 "workers": sum(1 for w in workers if q in w.queues)} for q in names]

    @router.get("/queues/history", summary="Sampled queue depth over the last hours")
    def queue_history(request: Request, caller: CallerDep,
                      hours: Annotated[float, Query(gt=0, le=168)] = 6) -> dict[str, Any]:
        return reports.queue_history(_state(request).db, hours=hours)

    @router.get("/workers", summary="Workers answering the broker, their queues and GPU")
    def workers(request: Request, caller: CallerDep) -> list[dict[str, Any]]:
        found = _state(request).broker.workers()
        return [asdict(w) for w in found or []]

    @router.get("/jobs", summary="Jobs, newest first (e.g. state=failed; the full failure "
                "text, error_detail, only with phi=true)")
    def jobs(request: Request, caller: CallerDep, state: str | None = None,
             limit: Annotated[int, Query(ge=1, le=1000)] = 100,
             phi: bool = False) -> list[dict[str, Any]]:
        _phi_allowed(caller, phi)
        return reports.list_jobs(_state(request).db, state=state, limit=limit, phi=phi)

    @router.get("/jobs/{job_id}", summary="One job with its timeline (error_detail only with "
                "phi=true)")
    def job(request: Request, caller: CallerDep, job_id: int,
            phi: bool = False) -> dict[str, Any]:
        _phi_allowed(caller, phi)
        detail = reports.job_detail(_state(request).db, job_id, phi=phi)
        if detail is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} does not exist")
        return detail

    @router.get("/deliveries", summary="Outbox deliveries (e.g. state=dead)")
    def deliveries(request: Request, caller: CallerDep, state: str | None = None,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
        return reports.list_deliveries(_state(request).db, state=state, limit=limit)

    @router.get("/monitoring", summary="AI quality: daily scores and positive rate vs validation")
    def ai_quality(request: Request, caller: CallerDep,
                   days: Annotated[int, Query(ge=1, le=90)] = 14) -> list[dict[str, Any]]:
        st = _state(request)
        return [r.as_dict() for r in monitoring.monitor(st.db, st.settings.monitoring, days=days)]


def _action_routes(router: APIRouter, CallerDep: Any) -> None:  # noqa: N803
    @router.post("/jobs/{job_id}/retry", summary="Queue a failed or cancelled job again")
    def retry(request: Request, caller: CallerDep, job_id: int) -> dict[str, Any]:
        st = _state(request)
        with _mapped():
            operations.retry_job(st.db, job_id, caller.actor, st.send)
        return {"job": job_id, "state": JobState.QUEUED}

    @router.post("/studies/{study_id}/reroute",
                 summary="Apply the current routing rules to a not-routed study")
    def reroute(request: Request, caller: CallerDep, study_id: int) -> dict[str, Any]:
        st = _state(request)
        with _mapped():
            jobs = operations.reroute_study(st.db, study_id, caller.actor,
                                            st.settings.router(),
                                            st.settings.queues.inference, st.send)
        return {"study": study_id, "jobs": [j.job_id for j in jobs], "state": StudyState.QUEUED}

    @router.post("/jobs/{job_id}/cancel", summary="Cancel a queued or running job")
    def cancel(request: Request, caller: CallerDep, job_id: int) -> dict[str, Any]:
        with _mapped():
            operations.cancel_job(_state(request).db, job_id, caller.actor)
        return {"job": job_id, "state": JobState.CANCELLED}

    @router.post("/deliveries/{delivery_id}/resend", summary="Re-send a dead delivery now")
    def resend(request: Request, caller: CallerDep, delivery_id: int) -> dict[str, Any]:
        with _mapped():
            operations.resend_delivery(_state(request).db, delivery_id, caller.actor)
        return {"delivery": delivery_id, "state": "pending"}


class _mapped:
    """Turn operations' NotFound/Conflict into 404/409."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, operations.NotFound):
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
        if isinstance(exc, operations.Conflict):
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


def _phi_allowed(caller: Caller, phi: bool) -> None:
    if phi and not caller.may_see_phi:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this token may not see patient data")


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value
