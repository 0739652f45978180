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
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from daemon import redact
from daemon.ingest import recording
from daemon.ingest.arrival import Arrival
from daemon.ingest.spool import StoreOutcome
from daemon.routing.jobs import CompletedJob, route_study
from daemon.routing.rules import NotRouted, Router
from daemon.store import timeline
from daemon.store.db import Database
from daemon.store.models import Study, StudyState, utcnow

log = logging.getLogger(__name__)

DEFAULT_PIPELINE = "default"


@dataclass(eq=False)
class _Release:
    assoc_id: int


@dataclass
class _AssocTally:
    instances: int = 0
    bytes: int = 0


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
        with self.db.session() as session:
            tallies = recording.record_new_to_receiving(session, arrivals, self._receiving)
        for a, study_id, size in tallies:
            self._tally(a, study_id, size)

    def _apply_general(self, arrivals: list[Arrival]) -> None:
        with self.db.session() as session:
            receiving, tallies = recording.record_batch(session, arrivals)
        for a, study_id, size in tallies:
            self._tally(a, study_id, size)
        self._receiving.update(receiving)

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
