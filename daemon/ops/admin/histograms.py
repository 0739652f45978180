"""Cumulative histograms and counters for /metrics, fed from the store one time window at a time.

Recomputing them from every row at each scrape costs more as the database grows,
and goes backwards when retention deletes rows. Instead each scrape reads only
what finished since the previous one, up to ``now - settle_seconds`` (so rows
committed a little after their timestamp are still counted, once), and adds it
to totals kept in this process. A restart starts from ``backfill_seconds`` ago;
Prometheus treats the drop as the counter reset it is.
"""

from __future__ import annotations

import datetime as dt
import threading
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from sqlalchemy import func, select

from daemon.ops import reports
from daemon.store.db import Database
from daemon.store.models import Delivery, Event, Finding, Job, JobState, utcnow

LATENCY_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
INFERENCE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MILESTONE_EVENTS = ("receiving", "version_opened", "complete", "queued", "started", "finished")


class Histogram:
    """One labelled Prometheus histogram, cumulative, in memory."""

    def __init__(self, name: str, doc: str, labels: list[str], buckets: Iterable[float]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.bounds = list(buckets)
        self.counts: dict[tuple[str, ...], list[int]] = {}
        self.sums: dict[tuple[str, ...], float] = defaultdict(float)

    def observe(self, key: tuple[str, ...], value: float) -> None:
        counts = self.counts.setdefault(key, [0] * (len(self.bounds) + 1))
        counts[bisect_left(self.bounds, value)] += 1  # the first bound >= value
        self.sums[key] += value

    def family(self) -> HistogramMetricFamily:
        h = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for key, counts in sorted(self.counts.items()):
            running, buckets = 0, []
            for bound, n in zip([*map(lambda b: str(float(b)), self.bounds), "+Inf"], counts):
                running += n
                buckets.append((bound, running))
            h.add_metric(list(key), buckets, self.sums[key])
        return h


class WindowedTotals:
    """Latency, task duration, inference and findings totals, advanced from the store."""

    def __init__(self, db: Database, *, settle_seconds: float, backfill_seconds: float) -> None:
        self.db = db
        self.settle = dt.timedelta(seconds=settle_seconds)
        self.backfill = dt.timedelta(seconds=backfill_seconds)
        self.upto: dt.datetime | None = None
        self._lock = threading.Lock()
        self.latency = Histogram(
            "pacsai_study_latency_seconds",
            "Study latency by stage (received, complete, queued, started, finished, delivered).",
            ["stage"], LATENCY_BUCKETS)
        self.tasks = Histogram("pacsai_task_duration_seconds", "Job run time, start to finish.",
                               ["queue", "pipeline", "state"], LATENCY_BUCKETS)
        self.inference = Histogram("pacsai_inference_seconds", "Inference time per study and model.",
                                   ["model", "backend"], INFERENCE_BUCKETS)
        self.batch = Histogram("pacsai_inference_batch_images", "Images per inference call.",
                               ["model", "backend"], BATCH_BUCKETS)
        self.findings: dict[tuple[str, str, str], int] = defaultdict(int)

    def advance(self, now: dt.datetime | None = None) -> None:
        """Add what finished in ``(upto, now - settle]``."""
        with self._lock:
            now = now or utcnow()
            start = self.upto or now - self.backfill
            end = now - self.settle
            if end <= start:
                return
            with self.db.read() as session:
                self._stages(session, start, end)
                self._jobs(session, start, end)
            self.upto = end

    def _stages(self, session, start: dt.datetime, end: dt.datetime) -> None:  # type: ignore[no-untyped-def]
        """A stage is observed when its end milestone falls in the window."""
        ids = set(session.scalars(select(Event.study_id).where(
            Event.at > start, Event.at <= end, Event.kind.in_(MILESTONE_EVENTS))).all())
        ids |= set(session.scalars(select(Delivery.study_id).where(
            Delivery.sent_at > start, Delivery.sent_at <= end)).all())
        ids_list = sorted(ids)
        for i in range(0, len(ids_list), 500):  # bounded IN lists
            marks = reports.milestones(session, study_ids=ids_list[i:i + 500])
            for m in marks.values():
                for a, b in reports.STAGES:
                    if a in m and b in m and start < m[b] <= end:
                        self.latency.observe((f"{a}_to_{b}",), max(0.0, (m[b] - m[a]).total_seconds()))

    def _jobs(self, session, start: dt.datetime, end: dt.datetime) -> None:  # type: ignore[no-untyped-def]
        in_window = (Job.finished_at > start, Job.finished_at <= end,
                     Job.state.in_((JobState.DONE, JobState.FAILED)))
        for queue, pipeline, state, started, finished in session.execute(
                select(Job.queue, Job.pipeline, Job.state, Job.started_at, Job.finished_at)
                .where(*in_window, Job.started_at.is_not(None))).all():
            self.tasks.observe((queue, pipeline, state), max(0.0, (finished - started).total_seconds()))
        for model, backend, _job, ms, images in session.execute(
                select(Finding.model_name, Finding.backend, Finding.job_id,
                       func.max(Finding.inference_ms), func.max(Finding.images))
                .join(Job, Job.id == Finding.job_id).where(*in_window)
                .group_by(Finding.model_name, Finding.backend, Finding.job_id)).all():
            if ms is not None:
                self.inference.observe((model, backend), ms / 1000.0)
            if images:
                self.batch.observe((model, backend), float(images))
        for model, label, present, n in session.execute(
                select(Finding.model_name, Finding.label, Finding.present, func.count())
                .join(Job, Job.id == Finding.job_id).where(*in_window)
                .group_by(Finding.model_name, Finding.label, Finding.present)).all():
            self.findings[(model, label, "true" if present else "false")] += int(n)

    def families(self) -> Iterator:  # type: ignore[type-arg]
        with self._lock:
            yield self.latency.family()
            yield self.tasks.family()
            yield self.inference.family()
            yield self.batch.family()
            c = CounterMetricFamily("pacsai_findings", "Model findings by label and outcome.",
                                    labels=["model", "label", "present"])
            for key, n in sorted(self.findings.items()):
                c.add_metric(list(key), n)
            yield c
