"""Pipeline throughput and queue overhead with 1 and 2 CPU workers over Redis.

Sends a burst of single-image DX studies (1024²) to ``pacsai listener`` (a private
redis-server as broker, the demo anomaly pipeline writing an SR delivered to a
pynetdicom SCP) and measures, per worker count:

* studies per minute: the burst is queued while no worker runs, then the workers start;
  from the first "started" to the last "delivered" event;
* queue overhead: "queued" → "started" (median and p95) with studies sent one at a time
  to idle workers: the cost of the queue itself, without waiting behind other studies.

ONNX Runtime gets cores/workers intra-op threads per worker, so workers do not
oversubscribe the CPU.

Usage: python bench/pipeline.py [--studies 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from sqlalchemy import select  # noqa: E402

from daemon.store.db import Database  # noqa: E402
from daemon.store.models import Delivery, Event, Job  # noqa: E402
from dicom_io.synthetic_study import radiograph  # noqa: E402
from pacsai_process import PacsaiProcess, wait_until  # noqa: E402
from peers import RedisServer, StoreSCP, WorkerProcess, send_datasets  # noqa: E402

PIPELINE = [{"name": "anomaly", "model": "chest-cxr-anomaly", "outputs": ["sr"]}]


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def queue_waits(db: Database) -> list[float]:
    with db.read() as s:
        events = s.scalars(select(Event).where(Event.kind.in_(["queued", "started"]))).all()
    queued = {e.job_id: e.at for e in events if e.kind == "queued"}
    started = {e.job_id: e.at for e in events if e.kind == "started"}
    return [(started[j] - queued[j]).total_seconds() for j in started if j in queued]


def jobs(db: Database) -> list[Job]:
    with db.read() as s:
        return list(s.scalars(select(Job)))


def span(db: Database) -> float:
    with db.read() as s:
        events = s.scalars(select(Event).where(Event.kind.in_(["started", "delivered"]))).all()
    first = min(e.at for e in events if e.kind == "started")
    last = max(e.at for e in events if e.kind == "delivered")
    return (last - first).total_seconds()


def delivered(db: Database, n: int) -> bool:
    with db.read() as s:
        states = s.scalars(select(Delivery.state)).all()
        jobs = s.scalars(select(Job.state)).all()
    return len(jobs) == n and len(states) == n and set(states) == {"sent"}


def run(workers: int, studies: int, work: Path) -> dict[str, float]:
    scp = StoreSCP()
    with RedisServer(work / f"redis{workers}") as redis:
        config = {"PACSAI_BROKER__URL": redis.url, "PACSAI_PIPELINES": json.dumps(PIPELINE),
                  "PACSAI_DESTINATIONS": json.dumps([scp.destination()]),
                  "PACSAI_STUDY__QUIET_SECONDS": "0.2", "PACSAI_STUDY__POLL_SECONDS": "0.05",
                  "PACSAI_LOGGING__LEVEL": "WARNING",
                  "PACSAI_INFERENCE__INTRA_OP_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}
        with PacsaiProcess(work / f"data{workers}", command="listener", config=config) as proc:
            pool = [WorkerProcess(proc, f"w{i}").start() for i in range(workers)]
            db = Database(f"sqlite:///{proc.data_dir / 'pacsai.db'}")
            try:
                for i in range(5):  # idle overhead: one study at a time
                    send_datasets(proc.port, [radiograph(size=1024, seed=10_000 + i)])
                    wait_until(lambda n=i + 1: delivered(db, n), 60, 0.02)
                idle = queue_waits(db)
                for w in pool:
                    w.stop()
                with db.session() as s:  # forget the warm-up for the burst figures
                    s.query(Event).delete()
                for i in range(studies):
                    send_datasets(proc.port, [radiograph(size=1024, seed=i)])
                wait_until(lambda: len(jobs(db)) == studies + 5, 60, 0.05)
                pool = [WorkerProcess(proc, f"w{i}b").start() for i in range(workers)]
                wait_until(lambda: delivered(db, studies + 5), 600, 0.1)
                elapsed = span(db)
            finally:
                for w in pool:
                    w.stop()
                scp.stop()
    return {"per_min": studies / elapsed * 60, "elapsed": elapsed,
            "idle_med": statistics.median(idle), "idle_p95": p95(idle)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pacsai-pipeline-") as tmp:
        print(f"burst of {args.studies} DX studies (1024²), anomaly pipeline + SR delivery, Redis broker")
        print(f"{'workers':>7} {'studies/min':>12} {'burst s':>8} {'queue overhead med/p95 s':>26}")
        base = None
        for workers in (1, 2):
            r = run(workers, args.studies, Path(tmp))
            base = base or r["per_min"]
            print(f"{workers:>7} {r['per_min']:>12.1f} {r['elapsed']:>8.1f} "
                  f"{r['idle_med']:>16.3f} / {r['idle_p95']:.3f}   ({r['per_min'] / base:.2f}x of 1 worker)")


if __name__ == "__main__":
    main()
