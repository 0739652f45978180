"""A frozen broker must not stop us receiving: Redis stopped with SIGSTOP (a hung host or VM).

TCP connections to a stopped Redis still open (the kernel completes the handshake) but no
command is ever answered. Instances must still be stored and acknowledged, studies must still
complete, and their tasks must reach Redis once it answers again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from sqlalchemy import select

from daemon.store.db import Database
from daemon.store.models import Job, Study
from dicom_io.synthetic_study import ct_series
from pacsai_process import PacsaiProcess, wait_until
from peers import RedisServer, send_datasets


def _studies(db: Database) -> dict[str, str]:
    with db.read() as s:
        return {st.study_instance_uid: st.state for st in s.scalars(select(Study))}


def _task_ids(db: Database) -> list[str | None]:
    with db.read() as s:
        return [j.task_id for j in s.scalars(select(Job).order_by(Job.id))]


def test_frozen_redis_does_not_stop_receiving(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as redis:
        config = {
            "PACSAI_BROKER__URL": redis.url,
            "PACSAI_BROKER__SOCKET_TIMEOUT_SECONDS": "15",
            "PACSAI_STUDY__QUIET_SECONDS": "0.5",
            "PACSAI_PIPELINES": '[{"name": "anomaly", "model": "chest-cxr-anomaly"}]',
            "PACSAI_WORKER__RECONCILE_SECONDS": "1",
            "PACSAI_WORKER__REQUEUE_AFTER_SECONDS": "2",
        }
        with PacsaiProcess(tmp_path / "data", command="listener", config=config) as proc:
            db = Database(f"sqlite:///{proc.data_dir / 'pacsai.db'}")
            assert redis.proc is not None
            os.kill(redis.proc.pid, signal.SIGSTOP)
            try:
                first = list(ct_series(3, 32, seed=1))
                send_datasets(proc.port, first)
                uid1 = str(first[0].StudyInstanceUID)
                wait_until(lambda: _studies(db).get(uid1) == "queued", 20, 0.1)
                time.sleep(0.5)  # the doorbell for the first study now waits on the frozen Redis

                second = list(ct_series(3, 32, seed=2))
                started = time.monotonic()
                send_datasets(proc.port, second)  # every C-STORE answered Success
                assert time.monotonic() - started < 10, "receiving waited for the broker"
                uid2 = str(second[0].StudyInstanceUID)
                wait_until(lambda: _studies(db).get(uid2) == "queued", 20, 0.1)
                assert _task_ids(db) == [None, None]  # nothing reached the broker yet
                # the doorbell gives up after the socket timeout; the jobs stay queued
                wait_until(lambda: "stays queued" in proc.log(), 60, 0.2)
                assert set(_studies(db).values()) == {"queued"}
            finally:
                os.kill(redis.proc.pid, signal.SIGCONT)
            # Redis answers again: the reconciler re-sends both, and both tasks wait in Redis
            wait_until(lambda: all(_task_ids(db)), 60, 0.2)
            waiting = sum(int(subprocess.run(
                ["redis-cli", "-p", str(redis.port), "llen", key], capture_output=True,
                text=True, check=True).stdout) for key in ["infer"] + [f"infer:{p}" for p in range(1, 10)])
            assert waiting >= 2
            db.dispose()
