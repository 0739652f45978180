"""A restarted or lost broker strands nothing (issue 10, point 3).

First the reconciler against a real ``redis-server`` (and the embedded broker's folder)
without worker processes: what it re-sends, when, and that an old task that comes back
is dropped by the claim. Then end to end: ``pacsai listener`` + ``pacsai worker`` (or
``pacsai serve``) with Redis killed and started again mid-run (empty, and with its
appendonly data), Redis down when the listener starts, the embedded broker's folder
removed or corrupted, and a worker whose consumer stops taking tasks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from queue import Empty

import pytest
import redis as redis_py
from sqlalchemy import select

from daemon.dispatch.broker import Broker
from daemon.config import Settings
from daemon.dispatch.doorbell import Dispatcher
from daemon.dispatch.tasks import embedded_broker_folders, make_celery
from daemon.dispatch.reconciler import Reconciler
from daemon.store import lifecycle
from daemon.store.db import Database
from daemon.store.models import Event, Job, Study, utcnow
from daemon.routing.jobs import CompletedJob
from dicom_io.synthetic_study import ct_series
from pacsai_process import PacsaiProcess, wait_until
from peers import RedisServer, StoreSCP, WorkerProcess, send_datasets
from test_queue_redis import (  # type: ignore[import-not-found]  # noqa: F401 - fixtures
    ANOMALY, FAST, all_jobs_end, all_sent, db_of, dx, jobs_of, listener, redis, scp)

SLOW = {**ANOMALY, "modalities": ["CT", "DX"]}  # a CT keeps the worker busy; DX studies wait
# Long enough that only what this change adds can pass: nothing waits for age or heartbeat.
PATIENT = {"PACSAI_WORKER__REQUEUE_AFTER_SECONDS": "300",
           "PACSAI_WORKER__HEARTBEAT_TIMEOUT_SECONDS": "60"}


# -- the reconciler against a real broker ------------------------------------------------

def _database(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'pacsai.db'}")
    db.upgrade()
    return db


def _job(db: Database) -> CompletedJob:
    now = utcnow()
    with db.session() as s:
        study = Study(study_instance_uid=f"1.2.{os.urandom(4).hex()}", version=1, state="queued",
                      version_started_at=now, first_received_at=now, last_received_at=now)
        s.add(study)
        s.flush()
        job = Job(study_id=study.id, version=1, pipeline="p", state="queued", queue="infer",
                  queued_at=now)
        s.add(job)
        s.flush()
        return CompletedJob(job.id, study.id, 1, "infer")


def _task_id(db: Database, job_id: int) -> str | None:
    with db.read() as s:
        return s.get(Job, job_id).task_id  # type: ignore[union-attr]


def _claim(db: Database, job_id: int, task_id: str) -> lifecycle.Owner | None:
    with db.session() as s:
        return lifecycle.claim(s, job_id, task_id)


def _reasons(db: Database) -> dict[int, list[str]]:
    with db.read() as s:
        events = s.scalars(select(Event).where(Event.kind == "requeued").order_by(Event.id))
        out: dict[int, list[str]] = {}
        for e in events:
            out.setdefault(e.job_id, []).append(e.detail["reason"])
        return out


def _setup(tmp_path: Path, url: str) -> tuple[Database, Broker, Dispatcher, Reconciler]:
    db = _database(tmp_path)
    settings = Settings(storage={"data_dir": tmp_path},
                        database={"url": f"sqlite:///{tmp_path / 'pacsai.db'}"},
                        broker={"url": url, "socket_timeout_seconds": 2})
    celery = make_celery(settings)
    broker = Broker(settings, celery)
    dispatch = Dispatcher(celery, db)
    reconciler = Reconciler(db, dispatch, pending=broker.holdings, interval=1,
                            requeue_after=300, heartbeat_timeout=60, heartbeat_every=0.5,
                            max_attempts=3)
    return db, broker, dispatch, reconciler


def _take(url: str, queue: str = "infer") -> object:
    """What a worker does on delivery: the message moves to kombu's unacked set, unacked."""
    conn = make_celery(Settings(broker={"url": url})).connection_for_read()
    message = conn.default_channel.basic_get(queue, no_ack=False)
    assert message is not None
    return conn


def test_redis_restarted_empty_young_jobs_resent_at_once(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        db, broker, dispatch, reconciler = _setup(tmp_path, server.url)
        queued = _job(db)
        first = dispatch(queued)
        # two jobs taken by a worker (their deliveries in kombu's unacked set) and running;
        # one worker still beats, the other fell silent (it went down with the broker)
        running, dying = _job(db), _job(db)
        consumers = []
        for job, silent in ((running, 0), (dying, 2)):
            dispatch(job)
            consumers.append(_take(server.url))
            assert _claim(db, job.job_id, _task_id(db, job.job_id) or "") is not None
            with db.session() as s:
                s.get(Job, job.job_id).heartbeat_at = utcnow() - dt.timedelta(seconds=silent)
        assert reconciler.run_once() == []  # held (or beating): nothing to do
        server.kill()
        server.start()  # empty: every message is gone
        resent = reconciler.run_once()
        # the queued job, seconds old, at once; the running job whose worker also went
        # silent (3 beats) and whose task the broker lost; not the one still beating
        assert sorted(resent) == sorted([queued.job_id, dying.job_id])
        assert reconciler.restarts == 1
        second = _task_id(db, queued.job_id)
        assert second not in (None, first)
        assert second in broker.holdings(["infer"]).waiting  # type: ignore[union-attr]
        assert reconciler.run_once() == []  # the new tasks are held: not again
        reasons = _reasons(db)
        assert reasons[queued.job_id] == ["the broker lost the task"]
        assert "broker lost its task" in reasons[dying.job_id][0]
        assert running.job_id not in reasons
        assert _claim(db, queued.job_id, first) is None  # the old task, should it come back
        assert _claim(db, queued.job_id, second) is not None
        for conn in consumers:
            with contextlib.suppress(Exception):  # its server is gone
                conn.release()  # type: ignore[attr-defined]
        db.dispose()


def test_redis_restarted_with_its_data_stale_deliveries_count_as_lost(tmp_path: Path) -> None:
    """appendonly: the queues come back (held: not re-sent) and so does kombu's unacked set,
    whose deliveries went to consumers of the old server and will never be acknowledged."""
    with RedisServer(tmp_path / "redis", appendonly=True) as server:
        db, broker, dispatch, reconciler = _setup(tmp_path, server.url)
        taken = _job(db)
        old = dispatch(taken)
        consumer = _take(server.url)  # a worker took it and has not started it yet
        waiting = _job(db)
        waiting_task = dispatch(waiting)
        assert reconciler.run_once() == []  # delivered seconds ago, and one waiting
        held = broker.holdings(["infer"])
        assert held is not None and old in held.unacked and not held.stale
        time.sleep(1.1)  # Redis counts its uptime in whole seconds
        server.kill()
        server.start()
        held = broker.holdings(["infer"])
        assert held is not None and held.stale == {old}  # delivered before this server began
        assert waiting_task in held.waiting
        assert reconciler.run_once() == [taken.job_id]
        assert _reasons(db)[taken.job_id] == [
            "the broker restarted: its delivery of the task can never be acknowledged"]
        assert _task_id(db, waiting.job_id) == waiting_task  # came back: left alone
        # kombu puts the old delivery back in the queue after its visibility timeout; here
        # at once, as it does: the old message comes back and its claim is refused
        raw = subprocess.run(["redis-cli", "-p", str(server.port), "hvals", "unacked"],
                             capture_output=True, text=True, check=True).stdout.strip()
        message = json.loads(raw)[0]
        assert message["headers"]["id"] == old
        assert _claim(db, taken.job_id, old) is None
        assert _claim(db, taken.job_id, _task_id(db, taken.job_id) or "") is not None
        with contextlib.suppress(Exception):  # its server is gone
            consumer.release()  # type: ignore[attr-defined]
        db.dispose()


def test_embedded_folder_removed_or_corrupted(tmp_path: Path) -> None:
    db, broker, dispatch, reconciler = _setup(tmp_path, "")
    settings = broker.settings
    folders = embedded_broker_folders(settings)
    a, b, c = _job(db), _job(db), _job(db)
    for job in (a, b, c):
        dispatch(job)
    assert reconciler.run_once() == []
    before = reconciler.identity

    shutil.rmtree(settings.embedded_broker_dir)  # the whole broker folder, messages and all
    assert sorted(reconciler.run_once()) == sorted([a.job_id, b.job_id, c.job_id])
    assert reconciler.restarts == 1 and reconciler.identity != before
    assert all(os.path.isdir(f) for f in folders.values())  # made again, and used
    assert reconciler.run_once() == []

    queue = Path(folders["queue"])
    victim = sorted(queue.iterdir())[0]
    victim.write_bytes(b"\x00 not a message")  # one message file corrupted
    assert len(reconciler.run_once()) == 1  # its job, and only it
    assert reconciler.run_once() == []

    # a consumer of the same folder skips the corrupt file and takes the rest
    celery = make_celery(settings)
    got = []
    with celery.connection_for_read() as conn:
        channel = conn.default_channel
        while True:
            try:
                got.append(channel._get("infer")["headers"]["id"])
            except Empty:
                break
    assert len(got) == 3 and not victim.exists()

    # a file where the queue folder should be, and an exchange table full of garbage
    shutil.rmtree(queue)
    queue.write_bytes(b"junk")
    table = Path(folders["control"]) / "celery.pidbox.exchange"
    table.write_bytes(b"{not json")
    with celery.connection_for_write() as conn:
        channel = conn.default_channel
        assert channel.get_table("celery.pidbox") == []
        channel._queue_bind("celery.pidbox", "", "", "w1.pidbox")
        channel._put("infer", {"headers": {"id": "x"}, "body": ""})
    assert queue.is_dir() and [p for p in queue.parent.iterdir() if ".corrupt-" in p.name]
    assert json.loads(table.read_bytes()) == [["", "", "w1.pidbox"]]
    db.dispose()


def test_a_task_just_taken_by_a_worker_is_not_mistaken_for_lost(tmp_path: Path) -> None:
    """Embedded broker: a message a worker has taken is in its memory until its claim. The
    reconciler looks again before re-sending; a claim meanwhile means it was not lost."""
    db, broker, dispatch, _ = _setup(tmp_path, "")
    reconciler = Reconciler(db, dispatch, pending=broker.holdings, interval=1,
                            requeue_after=300, heartbeat_timeout=60, max_attempts=3,
                            confirm_after=0.5)
    taken, lost = _job(db), _job(db)
    for job in (taken, lost):
        dispatch(job)
    with make_celery(broker.settings).connection_for_read() as conn:
        for _ in range(2):  # a worker takes both messages; it will claim one of them
            conn.default_channel._get("infer")
    claimer = threading.Timer(0.2, _claim, (db, taken.job_id, _task_id(db, taken.job_id)))
    claimer.start()
    assert reconciler.run_once() == [lost.job_id]
    claimer.join()
    assert taken.job_id not in _reasons(db)
    db.dispose()


# -- end to end: real listener, workers, Redis and PACS ------------------------------------

def _events(db: Database, kind: str) -> list[Event]:
    with db.read() as s:
        return list(s.scalars(select(Event).where(Event.kind == kind).order_by(Event.id)))


def _busy_then_queued(proc: PacsaiProcess, db: Database, seed: int, n: int = 3) -> None:
    """A long CT running on the (single) worker, then ``n`` radiographs waiting behind it."""
    send_datasets(proc.port, list(ct_series(200, 256, seed=seed)))
    wait_until(lambda: [j for j in jobs_of(db) if j.state == "running"], 60, 0.05)
    for i in range(n):
        send_datasets(proc.port, [dx(seed * 10 + i)])
    wait_until(lambda: len(jobs_of(db)) == n + 1 and all(j.task_id for j in jobs_of(db)), 30, 0.05)


def test_redis_killed_and_restarted_empty_mid_run(tmp_path: Path, redis: RedisServer,
                                                  scp: StoreSCP) -> None:
    """The issue's run: studies sent, Redis killed and started again empty on the same port,
    more studies sent. Nothing waits for the 300 s requeue or the 60 s heartbeat timeout."""
    with listener(tmp_path, redis, scp, pipelines=[SLOW], **PATIENT) as proc:
        worker = WorkerProcess(proc, "w1").start()
        try:
            db = db_of(proc)
            _busy_then_queued(proc, db, seed=61)
            assert [j.state for j in jobs_of(db)] == ["running", "queued", "queued", "queued"]
            redis.kill()
            redis.start()  # empty: the three waiting tasks are gone
            restarted = time.monotonic()
            for i in range(3):
                send_datasets(proc.port, [dx(700 + i)])
            wait_until(lambda: all_jobs_end(db, 7) and all_sent(db), 60, 0.1)
            took = time.monotonic() - restarted
            jobs = jobs_of(db)
            assert all(j.state == "done" and j.attempts == 1 for j in jobs)  # each ran once
            assert sorted(e.job_id for e in _events(db, "requeued")) == [2, 3, 4]
            assert len(scp.received) == 7 == len(set(scp.received))  # no duplicate at the PACS
            assert worker.proc is not None and worker.proc.poll() is None  # the same worker ...
            assert worker.log().count("Connected to redis") >= 2  # ... reconnected and consumed
            assert "the broker restarted or was replaced" in proc.log()
            assert took < 40, took
        finally:
            worker.stop()


def test_redis_restarted_with_its_data_after_a_host_crash(tmp_path: Path, scp: StoreSCP) -> None:
    """appendonly Redis and its worker die together (the host went down). The waiting tasks
    come back and run once, unsent again; the running job's delivery comes back too but can
    never be acknowledged: the job is re-sent at once, and the old task, put back in the
    queue as kombu does after the visibility timeout, is dropped by the claim."""
    with RedisServer(tmp_path / "redis", appendonly=True) as redis, \
            listener(tmp_path, redis, scp, pipelines=[SLOW], **PATIENT) as proc:
        w1 = WorkerProcess(proc, "w1").start()
        w2 = None
        try:
            db = db_of(proc)
            _busy_then_queued(proc, db, seed=62, n=2)
            old = jobs_of(db)[0].task_id
            time.sleep(1.1)  # Redis counts its uptime in whole seconds
            w1.kill9()
            redis.kill()
            redis.start()  # with its data: two waiting tasks and the CT's delivery
            w2 = WorkerProcess(proc, "w2").start()
            wait_until(lambda: [e for e in _events(db, "requeued") if e.job_id == 1], 30, 0.1)
            client = redis_py.Redis(port=redis.port)
            (tag, raw), = [(t, v) for t, v in client.hgetall("unacked").items()
                           if json.loads(v)[0]["headers"]["id"] == old]
            message = json.loads(raw)[0]
            client.lpush(f"infer:{message['properties']['priority']}", json.dumps(message))
            client.hdel("unacked", tag)
            client.close()
            wait_until(lambda: all_jobs_end(db, 3) and all_sent(db), 60, 0.1)
            wait_until(lambda: f"process_study[{old}] succeeded" in w2.log(), 30, 0.1)
            jobs = jobs_of(db)
            assert [(j.state, j.attempts) for j in jobs] == [("done", 2), ("done", 1), ("done", 1)]
            assert [e.job_id for e in _events(db, "requeued")] == [1]  # the others came back
            assert "broker lost its task" in _events(db, "requeued")[0].detail["reason"]
            assert "job 1 is not claimable" in w2.log()  # the old task, dropped
            assert len(scp.received) == 3 == len(set(scp.received))
        finally:
            w1.kill9()
            if w2 is not None:
                w2.stop()


def test_redis_down_when_the_listener_starts(tmp_path: Path, scp: StoreSCP) -> None:
    redis = RedisServer(tmp_path / "redis")  # its port is chosen; it is not running yet
    with listener(tmp_path, redis, scp, PACSAI_BROKER__SOCKET_TIMEOUT_SECONDS="2",
                  **PATIENT) as proc:
        db = db_of(proc)
        for i in range(3):
            send_datasets(proc.port, [dx(800 + i)])  # received while no broker answers
        wait_until(lambda: len(jobs_of(db)) == 3, 30, 0.05)
        time.sleep(1)  # a few reconcile passes against nothing
        redis.start()
        try:
            up = time.monotonic()
            # every job has a task the broker holds within a few reconcile periods (0.5 s)
            wait_until(lambda: all(j.task_id for j in jobs_of(db)), 10, 0.05)
            sent_after = time.monotonic() - up
            worker = WorkerProcess(proc, "w1").start()
            try:
                wait_until(lambda: all_jobs_end(db, 3) and all_sent(db), 60, 0.1)
            finally:
                worker.stop()
            assert all(j.state == "done" and j.attempts == 1 for j in jobs_of(db))
            assert len(scp.received) == 3 == len(set(scp.received))
            assert proc.log().count("cannot list the broker's pending tasks") == 1  # not a flood
            assert sent_after < 5, sent_after
        finally:
            redis.kill()


@pytest.mark.parametrize("damage", ["removed", "corrupted"])
def test_embedded_broker_folder_damaged_mid_run(tmp_path: Path, scp: StoreSCP,
                                                damage: str) -> None:
    config = {**FAST, **PATIENT, "PACSAI_WORKER__CONCURRENCY": "1",
              "PACSAI_DESTINATIONS": json.dumps([scp.destination()]),
              "PACSAI_PIPELINES": json.dumps([SLOW])}
    with PacsaiProcess(tmp_path / "data", command="serve", config=config) as proc:
        db = db_of(proc)
        _busy_then_queued(proc, db, seed=63 if damage == "removed" else 64)
        broker = proc.data_dir / "broker"
        assert len(list((broker / "queue").iterdir())) == 3
        if damage == "removed":  # at once (a live worker makes folders again meanwhile)
            broker.rename(broker.with_name("broker-removed"))
            shutil.rmtree(broker.with_name("broker-removed"))
        else:  # every message and every exchange table overwritten with garbage
            for f in [*(broker / "queue").iterdir(), *(broker / "control").iterdir()]:
                if f.is_file():
                    f.write_bytes(b"\x00{garbage")
        damaged = time.monotonic()
        wait_until(lambda: all_jobs_end(db, 4) and all_sent(db), 60, 0.1)
        took = time.monotonic() - damaged
        assert all(j.state == "done" and j.attempts == 1 for j in jobs_of(db))
        assert sorted(e.job_id for e in _events(db, "requeued")) == [2, 3, 4]
        assert len(scp.received) == 4 == len(set(scp.received))
        assert "worker exited" not in proc.log()  # its consumer carried on
        assert took < 40, took


def test_a_worker_that_stops_consuming_is_replaced(tmp_path: Path, redis: RedisServer,
                                                   scp: StoreSCP) -> None:
    """A consumer that takes nothing (here: Celery told to cancel its consumers, which leaves
    the process up and connected, as the known reconnection fault does): the worker sees
    work waiting that it does not take, exits with code 75, and serve starts a fresh one."""
    config = {**FAST, "PACSAI_BROKER__URL": redis.url,
              "PACSAI_DESTINATIONS": json.dumps([scp.destination()]),
              "PACSAI_PIPELINES": json.dumps([ANOMALY])}
    with PacsaiProcess(tmp_path / "data", command="serve", config=config) as proc:
        db = db_of(proc)
        wait_until(lambda: "ready." in proc.log(), 60, 0.1)  # serve's worker consumes
        control = make_celery(Settings(broker={"url": redis.url})).control
        for queue in ("cpu", "infer"):
            assert control.cancel_consumer(queue, reply=True, timeout=5, limit=1)
        send_datasets(proc.port, [dx(901)])
        wait_until(lambda: all_jobs_end(db, 1) and all_sent(db), 60, 0.1)
        log = proc.log()
        assert "its consumer has stopped" in log and "exited with code 75" in log
        assert all(j.state == "done" and j.attempts == 1 for j in jobs_of(db))
        assert len(scp.received) == 1
