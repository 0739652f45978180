"""Study tracking: records every stored instance and decides when a study is complete.

One thread owns all study writes of the listener process, so arrivals, association
releases and completions never race. C-STORE handlers hand it an :class:`Arrival`
and wait until the row is committed (group commit: a burst of instances from
several associations costs one transaction), so Success is answered only once the
instance is on disk *and* in the database.

A study is complete when no open association has delivered to it and nothing
arrived for ``quiet_seconds``, or ``max_wait_seconds`` after its version opened in
any case. An instance for a study that was already complete opens a new version.
State is in the database only: after a restart, studies still receiving get a fresh
quiet period counted from the start, then complete.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import BigInteger, Integer, bindparam, func, select
from sqlalchemy.exc import IntegrityError

from daemon import redact, timeline
from daemon.routing import NotRouted, Router, StudyFacts
from daemon.spool import StoredFile, StoreOutcome
from daemon.store import lifecycle
from daemon.store.db import Database
from daemon.store.models import Instance, Job, JobState, Study, StudyState, utcnow
from dicom_io.wire import DatasetHeader

log = logging.getLogger(__name__)

DEFAULT_PIPELINE = "default"


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


@dataclass(eq=False)
class _Release:
    assoc_id: int


@dataclass
class _AssocTally:
    instances: int = 0
    bytes: int = 0


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


# The hot path runs once per received instance: Core statements built once, executed on the
# session's connection (the ORM's bulk insert and per-call statement building cost several
# times more per row).
_INSERT_INSTANCES = Instance.__table__.insert()
_studies = Study.__table__
_ADD_TO_STUDY = _studies.update().where(_studies.c.id == bindparam("study")).values(
    num_instances=_studies.c.num_instances + bindparam("count", type_=Integer),
    size_bytes=_studies.c.size_bytes + bindparam("bytes", type_=BigInteger),
    last_received_at=bindparam("last", type_=_studies.c.last_received_at.type),
)


class StudyTracker:
    """Owns study rows in the listener process (see module docstring)."""

    def __init__(
        self,
        db: Database,
        *,
        quiet_seconds: float,
        max_wait_seconds: float,
        poll_seconds: float = 0.25,
        on_complete: Callable[[CompletedJob], None] | None = None,
        router: Router | None = None,
        inference_queues: list[str] | None = None,
        commit_timeout: float = 60.0,
    ) -> None:
        self.db = db
        self.quiet = dt.timedelta(seconds=quiet_seconds)
        self.max_wait = dt.timedelta(seconds=max_wait_seconds)
        self.poll_seconds = poll_seconds
        self.on_complete = on_complete
        self.router = router or Router([DEFAULT_PIPELINE])
        self.inference_queues = inference_queues or ["infer"]
        self.commit_timeout = commit_timeout
        self._inbox: queue.SimpleQueue[Arrival | _Release | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._started_at = utcnow()
        # association id -> study id -> tally; only the tracker thread touches it
        self._open: dict[int, dict[int, _AssocTally]] = defaultdict(dict)
        self._stopping = threading.Event()
        # study UID -> (id, version) of studies this thread knows to be receiving: the
        # only thread that moves a study out of RECEIVING is this one, so it stays true.
        self._receiving: dict[str, tuple[int, int]] = {}
        # study id -> (monotonic time of the next try, pause) for studies whose completion failed
        self._failing: dict[int, tuple[float, float]] = {}

    # -- called from handler threads ---------------------------------------------------------
    def record(self, arrival: Arrival) -> None:
        """Record one stored instance; returns once committed, raises if it was not."""
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("study tracker is not running")
        self._inbox.put(arrival)
        if not arrival.done.wait(self.commit_timeout):
            raise TimeoutError("the database did not commit the instance in time")
        if arrival.error is not None:
            raise arrival.error

    def association_released(self, assoc_id: int) -> None:
        self._inbox.put(_Release(assoc_id))

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._started_at = utcnow()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="study-tracker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the tracker thread ------------------------------------------------------------------
    def _run(self) -> None:
        next_check = 0.0
        while not self._stopping.is_set():
            batch = self._drain()
            arrivals = [m for m in batch if isinstance(m, Arrival)]
            if arrivals:
                try:
                    self._apply(arrivals)
                except Exception as exc:  # noqa: BLE001 - reported to every waiting handler
                    log.error("could not record %d instance(s): %s", len(arrivals),
                              redact.reason(exc))
                    log.debug("recording failure", exc_info=True)
                    for a in arrivals:
                        a.error = exc
                finally:
                    for a in arrivals:
                        a.done.set()
            for m in batch:
                if isinstance(m, _Release):
                    self._release(m.assoc_id)
            if time.monotonic() >= next_check:  # at most once per poll period
                next_check = time.monotonic() + self.poll_seconds
                try:
                    self._complete_due()
                except Exception:  # noqa: BLE001 - keep the thread alive; retried next poll
                    log.exception("completion check failed")

    def _drain(self) -> list[Arrival | _Release]:
        items: list[Arrival | _Release] = []
        try:
            first = self._inbox.get(timeout=self.poll_seconds)
        except queue.Empty:
            return items
        if first is not None:
            items.append(first)
        while len(items) < 512:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                items.append(item)
        return items

    def _apply(self, arrivals: list[Arrival]) -> None:
        """Record a batch: the common case in a few statements, anything else in full."""
        if all(a.stored.outcome is StoreOutcome.NEW
               and a.header.study_instance_uid in self._receiving for a in arrivals):
            try:
                self._apply_new_to_receiving(arrivals)
                return
            except IntegrityError:  # a row exists after all (e.g. its file was purged)
                log.debug("fast path conflicted; recording the batch in full")
        self._apply_general(arrivals)

    def _apply_new_to_receiving(self, arrivals: list[Arrival]) -> None:
        """New instances of studies already receiving: one insert, one update per study."""
        rows = []
        per_study: dict[int, list[Arrival]] = defaultdict(list)
        for a in arrivals:
            study_id, version = self._receiving[a.header.study_instance_uid]
            per_study[study_id].append(a)
            h = a.header
            rows.append({
                "study_id": study_id, "series_id": None,
                "sop_instance_uid": h.sop_instance_uid, "sop_class_uid": h.sop_class_uid,
                "series_instance_uid": h.series_instance_uid, "modality": h.modality[:16],
                "body_part_examined": h.body_part_examined[:64],
                "series_description": h.series_description[:64],
                "transfer_syntax_uid": a.transfer_syntax, "file_path": a.stored.relative_path,
                "size_bytes": a.stored.size, "version": version, "calling_aet": a.calling_aet,
                "received_at": a.received_at, "indexed_at": None,
            })
        with self.db.session() as session:
            conn = session.connection()
            conn.execute(_INSERT_INSTANCES, rows)
            conn.execute(_ADD_TO_STUDY, [
                {"study": study_id, "count": len(batch),
                 "bytes": sum(a.stored.size for a in batch),
                 "last": max(a.received_at for a in batch)}
                for study_id, batch in per_study.items()
            ])
        for study_id, batch in per_study.items():
            for a in batch:
                self._tally(a, study_id, a.stored.size)

    def _apply_general(self, arrivals: list[Arrival]) -> None:
        study_uids = {a.header.study_instance_uid for a in arrivals}
        sop_uids = {a.header.sop_instance_uid for a in arrivals}
        with self.db.session() as session:
            studies = {
                s.study_instance_uid: s
                for s in session.scalars(
                    select(Study).where(Study.study_instance_uid.in_(study_uids))
                )
            }
            instances = {
                i.sop_instance_uid: i
                for i in session.scalars(
                    select(Instance).where(Instance.sop_instance_uid.in_(sop_uids))
                )
            }
            for a in arrivals:
                h = a.header
                study = studies.get(h.study_instance_uid)
                if study is None:
                    study = Study(
                        study_instance_uid=h.study_instance_uid,
                        version=1,
                        state=lifecycle.new_study_state(),
                        calling_aet=a.calling_aet,
                        called_aet=a.called_aet,
                        version_started_at=a.received_at,
                        first_received_at=a.received_at,
                        last_received_at=a.received_at,
                        num_instances=0,
                        size_bytes=0,
                    )
                    session.add(study)
                    session.flush()
                    studies[h.study_instance_uid] = study
                    timeline.record(session, study, "receiving", at=a.received_at,
                                    calling_aet=a.calling_aet)
                existing = instances.get(h.sop_instance_uid)
                if (
                    a.stored.outcome is StoreOutcome.IDENTICAL
                    and existing is not None
                    and existing.study_id == study.id
                ):
                    # A re-send of what we hold: idempotent, nothing to re-analyse. It still
                    # counts as activity: retention keeps a study a PACS is sending again.
                    study.last_received_at = max(study.last_received_at, a.received_at)
                    self._tally(a, study.id, 0)
                    continue
                if study.state != StudyState.RECEIVING:
                    self._open_new_version(session, study, a)
                study.last_received_at = a.received_at
                study.calling_aet = a.calling_aet or study.calling_aet
                if h.study_description and not study.study_description:
                    study.study_description = h.study_description[:64]
                if existing is None:
                    inst = Instance(
                        study_id=study.id,
                        sop_instance_uid=h.sop_instance_uid,
                        sop_class_uid=h.sop_class_uid,
                        series_instance_uid=h.series_instance_uid,
                        modality=h.modality[:16],
                        body_part_examined=h.body_part_examined[:64],
                        series_description=h.series_description[:64],
                        transfer_syntax_uid=a.transfer_syntax,
                        file_path=a.stored.relative_path,
                        size_bytes=a.stored.size,
                        version=study.version,
                        calling_aet=a.calling_aet,
                        received_at=a.received_at,
                    )
                    session.add(inst)
                    instances[h.sop_instance_uid] = inst
                    study.num_instances += 1
                    study.size_bytes += a.stored.size
                else:
                    if existing.study_id != study.id:
                        log.warning("instance moved to another study (re-sent with a new StudyInstanceUID)")
                        existing.study_id = study.id
                        study.num_instances += 1
                    study.size_bytes += a.stored.size - existing.size_bytes
                    existing.sop_class_uid = h.sop_class_uid
                    existing.series_instance_uid = h.series_instance_uid
                    existing.body_part_examined = h.body_part_examined[:64]
                    existing.series_description = h.series_description[:64]
                    existing.transfer_syntax_uid = a.transfer_syntax
                    existing.file_path = a.stored.relative_path
                    existing.size_bytes = a.stored.size
                    existing.version = study.version
                    existing.received_at = a.received_at
                    existing.indexed_at = None
                self._tally(a, study.id, a.stored.size)
            receiving = {uid: (st.id, st.version) for uid, st in studies.items()
                         if st.state == StudyState.RECEIVING}
        self._receiving.update(receiving)

    def _open_new_version(self, session, study: Study, a: Arrival) -> None:  # type: ignore[no-untyped-def]
        previous = study.version
        lifecycle.open_version(study, a.received_at)
        timeline.record(session, study, "version_opened", at=a.received_at,
                        previous_version=previous, calling_aet=a.calling_aet)
        log.info("study %s: late instances open version %d", study.id, study.version)

    def _tally(self, a: Arrival, study_id: int, size: int) -> None:
        if a.assoc_id is None:
            return
        tally = self._open[a.assoc_id].setdefault(study_id, _AssocTally())
        tally.instances += 1
        tally.bytes += size

    def _release(self, assoc_id: int) -> None:
        touched = self._open.pop(assoc_id, {})
        if not touched:
            return
        with self.db.session() as session:
            for study_id, tally in touched.items():
                study = session.get(Study, study_id)
                if study is not None:
                    timeline.record(session, study, "received", instances=tally.instances,
                                    bytes=tally.bytes, association=assoc_id)

    def open_study_ids(self) -> set[int]:
        return {sid for studies in self._open.values() for sid in studies}

    def _complete_due(self) -> None:
        """Complete every study that is due, each in a transaction of its own: one study
        that cannot be routed (an error, not a "no rule" verdict) never holds up the others;
        it is tried again with a growing pause and logged once per try."""
        now = utcnow()
        busy = self.open_study_ids()
        with self.db.read() as session:
            receiving = session.execute(
                select(Study.id, Study.version_started_at, Study.last_received_at)
                .where(Study.state == StudyState.RECEIVING)).all()
        completed: list[CompletedJob] = []
        for study_id, started_at, last_at in receiving:
            overdue = now - started_at >= self.max_wait
            quiet_since = max(last_at, self._started_at)
            quiet = study_id not in busy and now - quiet_since >= self.quiet
            if not (quiet or overdue):
                continue
            retry_at, pause = self._failing.get(study_id, (0.0, 0.0))
            if time.monotonic() < retry_at:
                continue
            try:
                with self.db.session() as session:
                    study = session.get(Study, study_id)
                    if study is None or study.state != StudyState.RECEIVING:
                        continue
                    completed.extend(self._complete(
                        session, study, now, "max_wait" if overdue and not quiet else "quiet"))
            except Exception as exc:  # noqa: BLE001 - this study waits; the others go on
                pause = min(max(pause * 2, 1.0), 60.0)
                self._failing[study_id] = (time.monotonic() + pause, pause)
                log.error("study %d could not be completed: %s; trying again in %.0f s",
                          study_id, redact.reason(exc), pause)
                log.debug("completion of study %d", study_id, exc_info=True)
                continue
            self._failing.pop(study_id, None)
        for job in completed:
            if self.on_complete is not None:
                try:
                    self.on_complete(job)
                except Exception:  # noqa: BLE001 - the reconciler re-sends queued jobs
                    log.exception("could not enqueue job %d; the reconciler will retry", job.job_id)

    def _complete(self, session, study: Study, now: dt.datetime, reason: str) -> list[CompletedJob]:  # type: ignore[no-untyped-def]
        self._receiving.pop(study.study_instance_uid, None)
        study.completed_at = now
        timeline.record(session, study, "complete", at=now, reason=reason,
                        instances=study.num_instances)
        jobs = route_study(session, study, self.router, self.inference_queues, now)
        if isinstance(jobs, NotRouted):
            return []
        log.info("study %s version %d complete (%s, %d instances); %d job(s) queued",
                 study.id, study.version, reason, study.num_instances, len(jobs))
        return jobs
