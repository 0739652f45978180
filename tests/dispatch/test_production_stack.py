"""The production shape: PostgreSQL + Redis + two workers + two pipelines, studies at once."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from sqlalchemy import select

from daemon.store.db import Database
from daemon.store.models import Delivery, Job, Series
from dicom_io.synthetic_study import radiograph
from pacsai_process import PacsaiProcess, wait_until
from peers import RedisServer, StoreSCP, WorkerProcess, send_datasets
from test_queue_redis import FAST  # type: ignore[import-not-found]

PIPELINES = [{"name": "cxr-classifier", "model": "chest-cxr-classifier", "outputs": ["sr"]},
             {"name": "cxr-anomaly", "model": "chest-cxr-anomaly", "outputs": ["sr"]}]
STUDIES, SERIES, IMAGES = 12, 5, 4  # 20 files a study: a wide window for the race


def _study(n: int) -> list:
    """One study of SERIES series: both pipelines index every one of them at once."""
    first = radiograph(size=64, seed=1000 + n)
    out = []
    for s in range(SERIES):
        for i in range(IMAGES):
            ds = radiograph(size=64, seed=1000 + n * 100 + s * 10 + i)
            ds.StudyInstanceUID = first.StudyInstanceUID
            ds.PatientID, ds.PatientName = first.PatientID, first.PatientName
            if i == 0:
                series_uid = ds.SeriesInstanceUID
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = s + 1
            out.append(ds)
    return out


def test_two_workers_two_pipelines_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    scp = StoreSCP()
    try:
        with RedisServer(tmp_path / "redis") as redis, PacsaiProcess(
                tmp_path / "data", command="listener", database_url=pg_url,
                config={**FAST, "PACSAI_BROKER__URL": redis.url,
                        "PACSAI_DESTINATIONS": json.dumps([scp.destination()]),
                        "PACSAI_PIPELINES": json.dumps(PIPELINES)}) as proc:
            workers = [WorkerProcess(proc, f"w{i}").start() for i in (1, 2)]
            try:
                studies = [_study(n) for n in range(STUDIES)]
                senders = [threading.Thread(target=send_datasets, args=(proc.port, s))
                           for s in studies]
                for t in senders:
                    t.start()
                for t in senders:
                    t.join(60)
                db = Database(pg_url)

                def ended() -> bool:
                    with db.read() as s:
                        states = s.scalars(select(Job.state)).all()
                        sent = s.scalars(select(Delivery.state)).all()
                    return (len(states) == 2 * STUDIES and set(states) <= {"done", "failed"}
                            and len(sent) == states.count("done")
                            and set(sent) <= {"sent", "dead"})

                wait_until(ended, 240, 0.3)
                with db.read() as s:
                    jobs = s.scalars(select(Job)).all()
                    series = s.scalars(select(Series)).all()
                failed = [(j.id, j.pipeline, j.error) for j in jobs if j.state != "done"]
                assert failed == []
                assert len(scp.received) == 2 * STUDIES == len(set(scp.received))  # every SR, once
                assert len(series) == STUDIES * SERIES
                assert all(x.num_instances == IMAGES for x in series)
                db.dispose()
            finally:
                for w in workers:
                    w.stop()
    finally:
        scp.stop()
