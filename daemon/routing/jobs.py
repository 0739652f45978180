"""From a routing verdict to queued jobs: one job per routed pipeline, on the least-loaded
inference queue, or the study marked not routed with the reason."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import func, select

from daemon.routing.rules import NotRouted, Router, StudyFacts
from daemon.store import lifecycle, timeline
from daemon.store.models import Instance, Job, JobState, Study, StudyState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompletedJob:
    job_id: int
    study_id: int
    version: int
    queue: str
    priority: str = "routine"


def study_facts(session, study: Study) -> StudyFacts:  # type: ignore[no-untyped-def]
    """What the routing rules look at: the study's description, AEs and its instances."""
    rows = session.execute(
        select(Instance.modality, Instance.body_part_examined, Instance.series_description,
               Instance.sop_class_uid).where(Instance.study_id == study.id)).all()
    return StudyFacts(study_description=study.study_description or "",
                      calling_aet=study.calling_aet, called_aet=study.called_aet,
                      instances=[tuple(r) for r in rows])


def route_study(session, study: Study, router: Router, inference_queues: list[str],  # type: ignore[no-untyped-def]
                now: dt.datetime) -> list[CompletedJob] | NotRouted:
    """Apply ``router`` to the study's current version: queue one job per routed pipeline
    (on the least-loaded inference queue), or mark the study not routed and say why."""
    routes = router.route(study_facts(session, study))
    if isinstance(routes, NotRouted):
        lifecycle.move_study(study, StudyState.NOT_ROUTED)
        timeline.record(session, study, "not_routed", at=now, reason=routes.reason)
        log.warning("study %s version %d not routed: %s", study.id, study.version, routes.reason)
        return routes
    lifecycle.move_study(study, StudyState.QUEUED)
    existing = {j.pipeline: j for j in session.scalars(
        select(Job).where(Job.study_id == study.id, Job.version == study.version))}
    load = dict(session.execute(
        select(Job.queue, func.count()).where(Job.state.in_(JobState.ACTIVE))
        .group_by(Job.queue)).all())
    jobs = []
    for route in routes:
        job = existing.get(route.pipeline)
        if job is None:
            queue = min(inference_queues, key=lambda q: load.get(q, 0))
            load[queue] = load.get(queue, 0) + 1
            job = Job(study_id=study.id, version=study.version, pipeline=route.pipeline,
                      state=JobState.QUEUED, queue=queue, priority=route.priority,
                      queued_at=now, route=route.rule,
                      destinations=list(route.destinations) if route.destinations is not None else None)
            session.add(job)
            session.flush()
        timeline.record(session, study, "queued", at=now, job_id=job.id, queue=job.queue,
                        pipeline=job.pipeline, priority=job.priority, rule=route.rule)
        jobs.append(CompletedJob(job.id, study.id, study.version, job.queue, job.priority))
    return jobs
