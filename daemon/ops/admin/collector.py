"""The Prometheus collector that computes pacsai's state from the database at scrape time.

Gauges are read from the store at each scrape (the truth, shared by every
process): studies by state, queue depth, deliveries, model drift; queue lengths
and workers from the broker, free space from the file system. Latency, task and
inference histograms and the findings counter are cumulative totals that each
scrape advances by what finished since the last one (daemon.ops.admin.histograms).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from daemon.ops import monitoring, reports
from daemon.ops.admin.histograms import WindowedTotals
from daemon.dispatch.broker import Broker
from daemon.config import Settings
from daemon.ops.health import spool_free_bytes
from daemon.store.db import Database
from daemon.store.models import Delivery, DeliveryState, JobState, StudyState

log = logging.getLogger(__name__)

KNOWN_QUEUES = ("cpu", "infer")


class StoreCollector(Collector):
    def __init__(self, settings: Settings, db: Database, broker: Broker) -> None:
        self.settings = settings
        self.db = db
        self.broker = broker
        self.totals = WindowedTotals(db, settle_seconds=settings.admin.metrics_settle_seconds,
                                     backfill_seconds=settings.admin.metrics_backfill_seconds)

    def collect(self) -> Iterator:  # type: ignore[type-arg]
        errors = GaugeMetricFamily("pacsai_scrape_error",
                                   "1 if a part of this scrape could not be computed.",
                                   labels=["source"])
        for source, part in (("disk", self._disk), ("database", self._store),
                             ("broker", self._broker), ("monitoring", self._monitoring)):
            try:
                yield from part()
                errors.add_metric([source], 0)
            except Exception as exc:  # noqa: BLE001 - a scrape shows what it can
                log.warning("metrics: %s part failed: %s", source, exc)
                errors.add_metric([source], 1)
        yield errors

    # -- parts -----------------------------------------------------------------------------
    def _disk(self) -> Iterator:  # type: ignore[type-arg]
        free = spool_free_bytes(self.settings)
        floor = self.settings.storage.min_free_bytes
        yield GaugeMetricFamily("pacsai_spool_free_bytes", "Free bytes on the spool file system.",
                                value=free)
        yield GaugeMetricFamily("pacsai_spool_min_free_bytes",
                                "Floor below which the listener refuses instances.", value=floor)
        yield GaugeMetricFamily("pacsai_spool_below_floor",
                                "1 while the disk guard refuses instances.",
                                value=1 if free < floor else 0)

    def _store(self) -> Iterator:  # type: ignore[type-arg]
        with self.db.read() as session:
            states = reports.studies_by_state(session)
            jobs = reports.jobs_by_queue_state(session)
            deliveries = session.execute(
                select(Delivery.destination, Delivery.state, func.count(),
                       func.coalesce(func.sum(Delivery.attempts), 0))
                .group_by(Delivery.destination, Delivery.state)).all()

        g = GaugeMetricFamily("pacsai_studies", "Studies by state.", labels=["state"])
        for state in (StudyState.RECEIVING, StudyState.QUEUED,
                      StudyState.PROCESSING, StudyState.DONE, StudyState.FAILED,
                      StudyState.NOT_ROUTED):
            g.add_metric([state], states.get(state, 0))
        yield g

        queues = sorted({q for q, _ in jobs} | set(KNOWN_QUEUES))
        g = GaugeMetricFamily("pacsai_jobs", "Jobs by queue and state.", labels=["queue", "state"])
        depth = GaugeMetricFamily("pacsai_queue_depth",
                                  "Jobs waiting for a worker (database view).", labels=["queue"])
        running = GaugeMetricFamily("pacsai_queue_running",
                                    "Jobs held by a worker (reserved/unacked).", labels=["queue"])
        for q in queues:
            for state in (JobState.QUEUED, JobState.RUNNING, JobState.DONE, JobState.FAILED,
                          JobState.CANCELLED):
                g.add_metric([q, state], jobs.get((q, state), 0))
            depth.add_metric([q], jobs.get((q, JobState.QUEUED), 0))
            running.add_metric([q], jobs.get((q, JobState.RUNNING), 0))
        yield g
        yield depth
        yield running

        by_dest: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for dest, state, n, attempts in deliveries:
            by_dest[dest][state] += n
            by_dest[dest]["attempts"] += int(attempts)
        g = GaugeMetricFamily("pacsai_deliveries", "Outbox deliveries by destination and state.",
                              labels=["destination", "state"])
        att = CounterMetricFamily("pacsai_delivery_attempts", "Delivery attempts.",
                                  labels=["destination"])
        fail = CounterMetricFamily("pacsai_delivery_failures",
                                   "Delivery attempts that did not succeed.",
                                   labels=["destination"])
        dead = GaugeMetricFamily("pacsai_deliveries_dead", "Dead letters (re-sendable).",
                                 labels=["destination"])
        for dest, c in sorted(by_dest.items()):
            for state in (DeliveryState.PENDING, DeliveryState.SENT, DeliveryState.DEAD,
                          DeliveryState.CANCELLED):
                g.add_metric([dest, state], c.get(state, 0))
            att.add_metric([dest], c["attempts"])
            fail.add_metric([dest], max(0, c["attempts"] - c.get(DeliveryState.SENT, 0)))
            dead.add_metric([dest], c.get(DeliveryState.DEAD, 0))
        yield from (g, att, fail, dead)

        self.totals.advance()
        yield from self.totals.families()

    def _broker(self) -> Iterator:  # type: ignore[type-arg]
        with self.db.read() as session:
            queues = sorted({q for q, _ in reports.jobs_by_queue_state(session)}
                            | set(KNOWN_QUEUES))
        lengths = self.broker.queue_lengths(queues)
        g = GaugeMetricFamily("pacsai_broker_queue_messages",
                              "Messages waiting in the broker queue.", labels=["queue"])
        for q, n in sorted(lengths.items()):
            g.add_metric([q], n)
        yield g
        unacked = self.broker.unacked()
        if unacked is not None:
            yield GaugeMetricFamily("pacsai_broker_unacked_messages",
                                    "Messages reserved by workers, not yet acknowledged.",
                                    value=unacked)
        workers = self.broker.workers()
        up = GaugeMetricFamily("pacsai_workers", "Workers alive per queue.", labels=["queue"])
        mem = GaugeMetricFamily("pacsai_worker_gpu_memory_bytes",
                                "GPU memory allocated by a worker.", labels=["worker", "gpu"])
        per_queue: dict[str, int] = dict.fromkeys(queues, 0)
        for w in workers or []:
            for q in w.queues:
                per_queue[q] = per_queue.get(q, 0) + 1
            if w.gpu.get("memory_allocated") is not None:
                mem.add_metric([w.name, str(w.gpu.get("device", ""))], w.gpu["memory_allocated"])
        for q, n in sorted(per_queue.items()):
            up.add_metric([q], n)
        yield up
        yield mem

    def _monitoring(self) -> Iterator:  # type: ignore[type-arg]
        results = monitoring.monitor(self.db, self.settings.monitoring, days=1)
        drift = GaugeMetricFamily("pacsai_model_drift",
                                  "1 when today's outputs depart from validation beyond the bound.",
                                  labels=["model"])
        rate = GaugeMetricFamily("pacsai_model_positive_rate", "Today's rate of positive findings.",
                                 labels=["model"])
        expected = GaugeMetricFamily("pacsai_model_expected_positive_rate",
                                     "Positive rate expected from validation.", labels=["model"])
        for r in results:
            drift.add_metric([r.model], 1 if r.drift else 0)
            if r.days:
                rate.add_metric([r.model], r.days[-1].positive_rate)
            if r.expected.get("positive_rate") is not None:
                expected.add_metric([r.model], r.expected["positive_rate"])
        yield from (drift, rate, expected)
