"""/metrics histograms advance a window at a time: each observation once, never backwards."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import delete

from conftest import add_study, make_settings  # type: ignore[import-not-found]
from daemon.ops.admin import create_app
from daemon.ops.admin.histograms import Histogram, WindowedTotals
from daemon.store.db import Database
from daemon.store.models import Event, Job, Study, utcnow

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def finish_study(db: Database, uid: str, at: dt.datetime, run_seconds: float) -> int:
    """A study received at ``at`` whose job ran ``run_seconds`` and finished then."""
    sid = add_study(db, state="done", uid=uid, at=at, job_state="done")
    finished = at + dt.timedelta(seconds=run_seconds)
    with db.session() as s:
        job = s.query(Job).filter_by(study_id=sid).one()
        job.started_at, job.finished_at = at, finished
        for kind, when in (("receiving", at), ("complete", at), ("queued", at),
                           ("started", at), ("finished", finished)):
            s.add(Event(study_id=sid, version=1, job_id=job.id, kind=kind, at=when, detail={}))
    return sid


def count(h: Histogram, key: tuple[str, ...]) -> int:
    return sum(h.counts.get(key, []))


def test_histogram_buckets_are_cumulative_and_le() -> None:
    h = Histogram("x", "x", ["k"], (1, 2, 5))
    for v in (0.5, 1.0, 1.5, 5.0, 9.0):
        h.observe(("a",), v)
    (sample_set,) = [h.family()]
    buckets = {s.labels["le"]: s.value for s in sample_set.samples if s.name == "x_bucket"}
    assert buckets == {"1.0": 2, "2.0": 3, "5.0": 4, "+Inf": 5}
    assert [s.value for s in sample_set.samples if s.name == "x_sum"] == [17.0]


def test_each_study_counted_once_and_never_backwards(db: Database) -> None:
    totals = WindowedTotals(db, settle_seconds=10, backfill_seconds=3600)
    finish_study(db, "1.1", NOW - dt.timedelta(minutes=5), run_seconds=3)
    totals.advance(NOW)
    done = ("cpu", "default", "done")
    assert count(totals.tasks, done) == 1
    assert count(totals.latency, ("received_to_finished",)) == 1

    # finished 5 s before that scrape, committed after it: inside the settle margin, so counted now
    finish_study(db, "1.2", NOW - dt.timedelta(seconds=8), run_seconds=3)
    totals.advance(NOW + dt.timedelta(seconds=30))
    assert count(totals.tasks, done) == 2
    totals.advance(NOW + dt.timedelta(seconds=60))  # nothing new: nothing added
    assert count(totals.tasks, done) == 2

    # retention deletes rows: the totals do not go down
    with db.session() as s:
        s.execute(delete(Event))
        s.execute(delete(Job))
        s.execute(delete(Study))
    totals.advance(NOW + dt.timedelta(minutes=5))
    assert count(totals.tasks, done) == 2
    assert count(totals.latency, ("received_to_finished",)) == 2


def test_a_restart_reads_only_the_backfill_window(db: Database) -> None:
    finish_study(db, "2.1", NOW - dt.timedelta(hours=3), run_seconds=1)  # before the backfill
    finish_study(db, "2.2", NOW - dt.timedelta(minutes=10), run_seconds=1)
    totals = WindowedTotals(db, settle_seconds=0, backfill_seconds=3600)
    totals.advance(NOW)
    assert count(totals.tasks, ("cpu", "default", "done")) == 1


def test_metrics_endpoint_serves_them(tmp_path: Path, db: Database) -> None:
    settings = make_settings(tmp_path, db.url, admin={"metrics_settle_seconds": 0})
    finish_study(db, "3.1", utcnow() - dt.timedelta(seconds=30), run_seconds=2)
    c = TestClient(create_app(settings, db))
    text = c.get("/metrics").text
    assert re.search(r'^pacsai_task_duration_seconds_count\{pipeline="default",queue="cpu",state="done"\} 1\.0$',
                     text, re.M)
    assert re.search(r'^pacsai_task_duration_seconds_bucket\{le="2\.0",pipeline="default",queue="cpu",'
                     r'state="done"\} 1\.0$', text, re.M)
    again = c.get("/metrics").text  # a second scrape does not count it again
    assert 'pacsai_task_duration_seconds_count{pipeline="default",queue="cpu",state="done"} 1.0' in again
