"""Seconds until stranded jobs run after the broker restarts, with the default periods.

Each round, with ``worker.reconcile_seconds`` 10, ``heartbeat_seconds`` 5,
``heartbeat_timeout_seconds`` 60 and ``requeue_after_seconds`` 300 (the defaults):

- ``redis-empty``: ``pacsai listener`` + one ``pacsai worker`` (1 process) over a private
  ``redis-server`` without persistence. A CT keeps the worker busy, 3 radiographs wait in
  Redis behind it; Redis is killed and started again empty on the same port; 3 more
  radiographs are sent. Timed from the restart: until the 3 stranded jobs are re-sent,
  until they have all started, and until all 7 jobs are done.
- ``redis-aof``: the same with ``appendonly yes``, the worker SIGKILLed together with Redis
  (a host crash) and a fresh worker started: until the job that was running runs again.
- ``redis-down``: Redis not running when the listener starts; 3 radiographs received; timed
  from Redis's start until every job's task is in Redis.
- ``embedded``: ``pacsai serve`` (embedded broker, 1 worker process); the broker folder is
  removed while 3 radiographs wait; until they have all started.

The reconciler passes at a random phase of its 10 s period, so each figure varies between
rounds by up to that period. Usage: python bench/broker_restart.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from sqlalchemy import select  # noqa: E402

from daemon.store.db import Database  # noqa: E402
from daemon.store.models import Event, Job  # noqa: E402
from dicom_io.synthetic_study import ct_series, radiograph  # noqa: E402
from pacsai_process import PacsaiProcess, wait_until  # noqa: E402
from peers import RedisServer, StoreSCP, WorkerProcess, send_datasets  # noqa: E402

PIPELINE = {"name": "anomaly", "model": "chest-cxr-anomaly", "outputs": ["sr"],
            "modalities": ["CT", "DX"]}


def config(scp: StoreSCP, url: str, **extra: str) -> dict[str, str]:
    return {"PACSAI_BROKER__URL": url, "PACSAI_STUDY__QUIET_SECONDS": "0.3",
            "PACSAI_DESTINATIONS": json.dumps([scp.destination()]),
            "PACSAI_PIPELINES": json.dumps([PIPELINE]), **extra}


def jobs(db: Database) -> list[Job]:
    with db.read() as s:
        return list(s.scalars(select(Job).order_by(Job.id)))


def requeued(db: Database) -> set[int]:
    with db.read() as s:
        return {e.job_id for e in s.scalars(select(Event).where(Event.kind == "requeued"))}


def busy_then_queued(proc: PacsaiProcess, db: Database, seed: int, n: int = 3) -> None:
    send_datasets(proc.port, list(ct_series(250, 256, seed=seed)))
    wait_until(lambda: [j for j in jobs(db) if j.state == "running"], 60, 0.05)
    for i in range(n):
        send_datasets(proc.port, [radiograph(size=256, seed=seed * 10 + i)])
    wait_until(lambda: len(jobs(db)) == n + 1 and all(j.task_id for j in jobs(db)), 30, 0.05)


def since(t0: float, predicate, timeout: float = 400) -> float:  # type: ignore[no-untyped-def]
    wait_until(predicate, timeout, 0.05)
    return time.monotonic() - t0


def redis_empty(work: Path, seed: int) -> dict[str, float]:
    scp = StoreSCP()
    with RedisServer(work / "redis") as redis:
        proc = PacsaiProcess(work / "data", command="listener", config=config(scp, redis.url))
        with proc:
            db = Database(f"sqlite:///{proc.data_dir / 'pacsai.db'}")
            worker = WorkerProcess(proc, "w1").start()
            try:
                busy_then_queued(proc, db, seed)
                stranded = {j.id for j in jobs(db) if j.state == "queued"}
                redis.kill()
                redis.start()
                t0 = time.monotonic()
                for i in range(3):
                    send_datasets(proc.port, [radiograph(size=256, seed=seed * 10 + 5 + i)])
                out = {
                    "re-sent": since(t0, lambda: stranded <= requeued(db)),
                    "started": since(t0, lambda: all(j.state != "queued" for j in jobs(db)
                                                     if j.id in stranded)),
                    "all done": since(t0, lambda: len(jobs(db)) == 7 and all(
                        j.state == "done" for j in jobs(db))),
                }
                assert len(scp.received) == len(set(scp.received))
                db.dispose()
                return out
            finally:
                worker.stop()
                scp.stop()


def redis_aof(work: Path, seed: int) -> dict[str, float]:
    scp = StoreSCP()
    with RedisServer(work / "redis", appendonly=True) as redis:
        proc = PacsaiProcess(work / "data", command="listener", config=config(scp, redis.url))
        with proc:
            db = Database(f"sqlite:///{proc.data_dir / 'pacsai.db'}")
            w1 = WorkerProcess(proc, "w1").start()
            busy_then_queued(proc, db, seed, n=2)
            time.sleep(1.1)
            w1.kill9()
            redis.kill()
            redis.start()
            t0 = time.monotonic()
            w2 = WorkerProcess(proc, "w2").start()
            try:
                out = {"worker up": time.monotonic() - t0,
                       "crashed job re-sent": since(t0, lambda: 1 in requeued(db)),
                       "crashed job started again": since(t0, lambda: jobs(db)[0].attempts == 2),
                       "all done": since(t0, lambda: all(j.state == "done" for j in jobs(db)))}
                with db.read() as s:
                    why = [e.detail["reason"] for e in s.scalars(
                        select(Event).where(Event.kind == "requeued", Event.job_id == 1))]
                print(f"  redis-aof: the crashed job was re-sent because: {why}", flush=True)
                db.dispose()
                return out
            finally:
                w2.stop()
                scp.stop()


def redis_down(work: Path, seed: int) -> dict[str, float]:
    scp = StoreSCP()
    redis = RedisServer(work / "redis")
    proc = PacsaiProcess(work / "data", command="listener",
                         config=config(scp, redis.url, PACSAI_BROKER__SOCKET_TIMEOUT_SECONDS="2"))
    with proc:
        db = Database(f"sqlite:///{proc.data_dir / 'pacsai.db'}")
        for i in range(3):
            send_datasets(proc.port, [radiograph(size=256, seed=seed * 10 + i)])
        wait_until(lambda: len(jobs(db)) == 3, 30, 0.05)
        time.sleep(2)
        redis.start()
        try:
            t0 = time.monotonic()
            out = {"all sent": since(t0, lambda: all(j.task_id for j in jobs(db)))}
            db.dispose()
            return out
        finally:
            redis.kill()
            scp.stop()


def embedded(work: Path, seed: int) -> dict[str, float]:
    scp = StoreSCP()
    proc = PacsaiProcess(work / "data", command="serve",
                         config=config(scp, "", PACSAI_WORKER__CONCURRENCY="1"))
    with proc:
        db = Database(f"sqlite:///{proc.data_dir / 'pacsai.db'}")
        busy_then_queued(proc, db, seed)
        stranded = {j.id for j in jobs(db) if j.state == "queued"}
        gone = proc.data_dir / "broker-removed"
        (proc.data_dir / "broker").rename(gone)  # at once: the worker makes folders again
        shutil.rmtree(gone)
        t0 = time.monotonic()
        out = {"re-sent": since(t0, lambda: stranded <= requeued(db)),
               "started": since(t0, lambda: all(j.state != "queued" for j in jobs(db)
                                                if j.id in stranded))}
        db.dispose()
        scp.stop()
        return out


SCENARIOS = {"redis-empty": redis_empty, "redis-aof": redis_aof, "redis-down": redis_down,
             "embedded": embedded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append")
    args = parser.parse_args()
    for name in args.only or SCENARIOS:
        rounds = []
        for run in range(args.runs):
            with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
                rounds.append(SCENARIOS[name](Path(tmp), seed=70 + run))
            print(f"{name} run {run + 1}: " + ", ".join(f"{k} {v:.1f} s" for k, v in rounds[-1].items()),
                  flush=True)
        summary = ", ".join(f"{k} median {statistics.median(r[k] for r in rounds):.1f} s "
                            f"(max {max(r[k] for r in rounds):.1f})" for k in rounds[0])
        print(f"{name}: {summary}", flush=True)


if __name__ == "__main__":
    main()
