"""Celery over a real Redis with separate worker processes: nothing lost, nothing twice."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless
from sqlalchemy import select

from daemon.store.db import Database
from daemon.store.models import Delivery, Event, Job, Study
from dicom_io.synthetic_study import ct_series, radiograph
from pacsai_process import PacsaiProcess, wait_until
from dicom_checks import assert_valid_dicom
from peers import RedisServer, StoreSCP, WorkerProcess, send_datasets

ANOMALY = {"name": "anomaly", "model": "chest-cxr-anomaly", "outputs": ["sr"]}
FAST = {
    "PACSAI_WORKER__HEARTBEAT_SECONDS": "0.5",
    "PACSAI_WORKER__HEARTBEAT_TIMEOUT_SECONDS": "4",
    "PACSAI_WORKER__RECONCILE_SECONDS": "0.5",
    "PACSAI_WORKER__REQUEUE_AFTER_SECONDS": "3",
    "PACSAI_STUDY__QUIET_SECONDS": "0.3",
    "PACSAI_STUDY__POLL_SECONDS": "0.05",
}


def listener(tmp: Path, redis: RedisServer | None, scp: StoreSCP, **extra: object) -> PacsaiProcess:
    """A ``pacsai listener`` on ``redis``, or on the embedded broker when ``redis`` is None."""
    config = {**FAST, "PACSAI_BROKER__URL": redis.url if redis else "",
              "PACSAI_DESTINATIONS": json.dumps([scp.destination()]),
              "PACSAI_PIPELINES": json.dumps(extra.pop("pipelines", [ANOMALY]))}
    for key, value in extra.items():
        config[key] = value if isinstance(value, str) else json.dumps(value)
    return PacsaiProcess(tmp / "data", command="listener", config=config)


def db_of(proc: PacsaiProcess) -> Database:
    return Database(f"sqlite:///{proc.data_dir / 'pacsai.db'}")


def jobs_of(db: Database) -> list[Job]:
    with db.read() as s:
        return list(s.scalars(select(Job).order_by(Job.id)))


def all_jobs_end(db: Database, n: int) -> bool:
    jobs = jobs_of(db)
    return len(jobs) == n and all(j.state in ("done", "failed") for j in jobs)


def all_sent(db: Database) -> bool:
    with db.read() as s:
        states = s.scalars(select(Delivery.state)).all()
    return bool(states) and set(states) == {"sent"}


def dx(seed: int, description: str = "") -> object:
    ds = radiograph(size=256, seed=seed)
    if description:
        ds.StudyDescription = description
    return ds


@pytest.fixture
def redis(tmp_path: Path):  # type: ignore[no-untyped-def]
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def scp():  # type: ignore[no-untyped-def]
    peer = StoreSCP()
    yield peer
    peer.stop()


def test_two_workers_share_a_burst_exactly_once(tmp_path: Path, redis: RedisServer, scp: StoreSCP) -> None:
    with listener(tmp_path, redis, scp) as proc:
        workers = [WorkerProcess(proc, f"w{i}").start() for i in (1, 2)]
        try:
            for i in range(20):
                send_datasets(proc.port, [dx(i)])
            db = db_of(proc)
            wait_until(lambda: all_jobs_end(db, 20) and all_sent(db), 180, 0.2)
            jobs = jobs_of(db)
            assert all(j.state == "done" and j.attempts == 1 for j in jobs)
            with db.read() as s:
                started = s.scalars(select(Event).where(Event.kind == "started")).all()
                n_deliveries = len(s.scalars(select(Delivery)).all())
            assert len(started) == 20  # analysed once each
            by_worker = Counter(e.detail["worker"].split("@")[0] for e in started)
            assert set(by_worker) == {"w1", "w2"}, by_worker  # both took a share
            assert n_deliveries == 20 and len(scp.received) == 20 == len(set(scp.received))
            assert_valid_dicom(sorted((proc.data_dir / "results").rglob("*.dcm")))
        finally:
            for w in workers:
                w.stop()


def test_worker_killed_mid_inference_the_other_finishes(tmp_path: Path, redis: RedisServer,
                                                        scp: StoreSCP) -> None:
    slow = {**ANOMALY, "modalities": ["CT"]}  # a long CT through the model: time to kill
    with listener(tmp_path, redis, scp, pipelines=[slow]) as proc:
        w1 = WorkerProcess(proc, "w1").start()
        w2 = None
        try:
            send_datasets(proc.port, list(ct_series(250, 256, seed=5)))
            db = db_of(proc)
            wait_until(lambda: [j for j in jobs_of(db) if j.state == "running"], 60, 0.05)
            time.sleep(0.5)  # inside the inference loop
            w1.kill9()
            w2 = WorkerProcess(proc, "w2").start()
            wait_until(lambda: all_jobs_end(db, 1) and all_sent(db), 120, 0.2)
            (job,) = jobs_of(db)
            assert job.state == "done" and job.attempts == 2
            with db.read() as s:
                events = s.scalars(select(Event).order_by(Event.id)).all()
            kinds = [e.kind for e in events]
            assert "requeued" in kinds
            started = [e.detail["worker"].split("@")[0] for e in events if e.kind == "started"]
            assert started == ["w1", "w2"]
            assert len(scp.received) == len(set(scp.received)) == 1  # the SR, delivered once
        finally:
            w1.kill9()
            if w2:
                w2.stop()


def test_redis_restarted_without_persistence_loses_nothing(tmp_path: Path, redis: RedisServer,
                                                           scp: StoreSCP) -> None:
    with listener(tmp_path, redis, scp) as proc:
        db = db_of(proc)
        for i in range(3):  # queued while no worker runs
            send_datasets(proc.port, [dx(100 + i)])
        wait_until(lambda: len(jobs_of(db)) == 3, 30, 0.1)
        redis.kill()  # every queued message is gone with it
        redis.start()
        assert redis.ping()
        worker = WorkerProcess(proc, "w1").start()
        try:
            wait_until(lambda: all_jobs_end(db, 3) and all_sent(db), 120, 0.2)
            assert all(j.state == "done" for j in jobs_of(db))
            with db.read() as s:
                assert len(s.scalars(select(Event).where(Event.kind == "requeued")).all()) >= 3
            assert len(scp.received) == 3 == len(set(scp.received))
        finally:
            worker.stop()


@pytest.mark.parametrize("broker", ["redis", "embedded"])
def test_stat_overtakes_a_routine_backlog(tmp_path: Path, redis: RedisServer, scp: StoreSCP,
                                          broker: str) -> None:
    routes = [
        {"name": "emergency", "match": {"calling_aet": ["ER"]},
         "action": {"pipelines": ["anomaly"], "priority": "stat"}},
        {"name": "rest", "default": True, "action": {"pipelines": ["anomaly"]}},
    ]
    with listener(tmp_path, redis if broker == "redis" else None, scp, PACSAI_ROUTES=routes) as proc:
        db = db_of(proc)
        for i in range(10):
            send_datasets(proc.port, [dx(200 + i)], calling="WARD")
        send_datasets(proc.port, [dx(300)], calling="ER")
        wait_until(lambda: len(jobs_of(db)) == 11, 30, 0.1)
        time.sleep(4)  # past requeue_after: the reconciler must see the broker still holds them
        with db.read() as s:
            assert s.scalars(select(Event).where(Event.kind == "requeued")).all() == []
        worker = WorkerProcess(proc, "w1").start()
        try:
            wait_until(lambda: all_jobs_end(db, 11), 180, 0.2)
            jobs = jobs_of(db)
            stat = [j for j in jobs if j.priority == "stat"]
            routine = [j for j in jobs if j.priority == "routine"]
            assert len(stat) == 1 and len(routine) == 10
            assert stat[0].id == max(j.id for j in jobs)  # it was sent last
            assert all(stat[0].started_at < j.started_at for j in routine)
        finally:
            worker.stop()


def _site_model(folder: Path, name: str, module: torch.nn.Module) -> None:
    folder.mkdir(parents=True)
    torch.jit.script(module).save(str(folder / "model.ts"))
    (folder / "manifest.toml").write_text(f"""
name = "{name}"
version = "1"
task = "anomaly"
intended_use = "test fault injection"
modalities = ["DX"]
input = {{ height = 64, width = 64, channels = 1 }}
labels = [{{ name = "abnormal", display = "Abnormal", code = {{ value = "263654008", scheme = "SCT", meaning = "Abnormal" }}, threshold = 0.5 }}]
files = {{ torchscript = "model.ts" }}
training = {{ data = "none: a test model" }}
""")


class Boom(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if bool(x.sum() > -1.0):
            raise RuntimeError("boom: this site model always fails")
        return x, x, x.mean(dim=(1, 2, 3))


class Hang(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y = x
        for _ in range(2_000_000_000):  # never returns in practice, deaf to signals
            y = y * 1.0000001
        return y, y, y.mean(dim=(1, 2, 3))


def test_failures_are_clear_and_the_worker_goes_on(tmp_path: Path, redis: RedisServer,
                                                   scp: StoreSCP) -> None:
    site = tmp_path / "site-models"
    _site_model(site / "boom-model", "boom-model", Boom())
    _site_model(site / "hang-model", "hang-model", Hang())
    pipelines = [ANOMALY, {"name": "boom", "model": "boom-model", "outputs": ["sr"]},
                 {"name": "hang", "model": "hang-model", "outputs": ["sr"]}]
    routes = [
        {"name": "boom", "match": {"study_description": "BOOM"}, "action": {"pipelines": ["boom"]}},
        {"name": "hang", "match": {"study_description": "HANG"}, "action": {"pipelines": ["hang"]}},
        {"name": "rest", "default": True, "action": {"pipelines": ["anomaly"]}},
    ]
    broken = dx(401)
    broken.PixelData = encapsulate([b"\xff\x4f\xff\x51 this is not a JPEG 2000 codestream"])
    broken["PixelData"].VR = "OB"
    broken["PixelData"].is_undefined_length = True
    broken.file_meta.TransferSyntaxUID = JPEG2000Lossless
    with listener(tmp_path, redis, scp, pipelines=pipelines, PACSAI_ROUTES=routes,
                  PACSAI_INFERENCE__MODELS_DIRS=[str(site)],
                  PACSAI_WORKER__TASK_SOFT_TIME_LIMIT="3",
                  PACSAI_WORKER__TASK_TIME_LIMIT="6") as proc:
        worker = WorkerProcess(proc, "w1").start()
        try:
            db = db_of(proc)
            send_datasets(proc.port, [dx(400, "BOOM")])
            send_datasets(proc.port, [dx(402, "HANG")])
            send_datasets(proc.port, [broken])
            send_datasets(proc.port, [dx(403, "routine chest")])
            wait_until(lambda: all_jobs_end(db, 4), 180, 0.2)
            with db.read() as s:
                rows = s.execute(select(Study.study_description, Job.state, Job.error)
                                 .join(Job, Job.study_id == Study.id)
                                 .order_by(Job.id)).all()
            by_desc = {r[0] or "broken": (r[1], r[2] or "") for r in rows}
            assert by_desc["BOOM"][0] == "failed" and "boom: this site model always fails" in by_desc["BOOM"][1]
            assert by_desc["HANG"][0] == "failed" and "hard time limit" in by_desc["HANG"][1]
            assert by_desc["broken"][0] == "failed" and "no image could be decoded" in by_desc["broken"][1]
            assert by_desc["routine chest"] == ("done", "")
            with db.read() as s:
                states = dict(s.execute(select(Study.study_description, Study.state)).all())
            assert states["BOOM"] == states["HANG"] == "failed" and states["routine chest"] == "done"
        finally:
            worker.stop()


def test_gpu_style_worker_batches_concurrent_studies(tmp_path: Path, redis: RedisServer,
                                                     scp: StoreSCP) -> None:
    """A thread-pool worker (what `pacsai worker --gpu N` runs) shares one batcher per model."""
    with listener(tmp_path, redis, scp, PACSAI_INFERENCE__MAX_DELAY_MS="100") as proc:
        db = db_of(proc)
        for i in range(8):
            send_datasets(proc.port, [dx(500 + i)])
        wait_until(lambda: len(jobs_of(db)) == 8, 30, 0.1)
        worker = WorkerProcess(proc, "gpu0", queues="infer,cpu", concurrency=4)
        worker.cmd += ["--pool", "threads"]
        worker.start()
        try:
            wait_until(lambda: all_jobs_end(db, 8) and all_sent(db), 120, 0.2)
            assert all(j.state == "done" and j.attempts == 1 for j in jobs_of(db))
            with db.read() as s:
                finished = s.scalars(select(Event).where(Event.kind == "finished")).all()
            batching = [e.detail["batching"] for e in finished]
            assert max(b["mean_size"] for b in batching) > 1.0, batching  # images shared a batch
            assert len(scp.received) == 8 == len(set(scp.received))
        finally:
            worker.stop()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def test_embedded_broker_survives_a_killed_worker(tmp_path: Path) -> None:
    """The default install (filesystem broker, `pacsai serve`): SIGKILL of its worker mid-task."""
    slow = {**ANOMALY, "modalities": ["CT"]}
    config = {**FAST, "PACSAI_PIPELINES": json.dumps([slow])}
    with PacsaiProcess(tmp_path / "data", command="serve", config=config) as proc:
        db = db_of(proc)
        send_datasets(proc.port, list(ct_series(250, 256, seed=6)))
        wait_until(lambda: [j for j in jobs_of(db) if j.state == "running"], 60, 0.05)
        time.sleep(0.5)
        (worker,) = _children(proc.proc.pid)  # serve's supervised worker ...
        for pid in [*_children(worker), worker]:  # ... and its pool: all at once
            os.kill(pid, 9)
        wait_until(lambda: all_jobs_end(db, 1), 120, 0.2)
        (job,) = jobs_of(db)
        assert job.state == "done" and job.attempts == 2
        assert "worker exited" in proc.log()  # serve noticed and restarted it
        with db.read() as s:
            kinds = [e.kind for e in s.scalars(select(Event).order_by(Event.id))]
        assert kinds.count("started") == 2 and "requeued" in kinds
