"""A worker on "another host" (its own data directory, no access to the receiving node's files:
an audit hook refuses every open there) analyses a study fetched over WADO-RS, stores its SR
on the receiving node over STOW-RS before the job is done, and the receiving host's delivery
worker sends it to the PACS. Real processes: ``pacsai listener``, a ``pacsai worker --queues
cpu`` beside it, ``pacsai worker --listener-url … --token …``, Redis and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select

from daemon.store.db import Database
from daemon.store.models import Delivery, Event, Job, Study
from dicom_io.synthetic_study import radiograph
from pacsai_process import PacsaiProcess, free_port, wait_until
from peers import RedisServer, StoreSCP, WorkerProcess, send_datasets
from remote_worker import RemoteWorker

TOKEN = "remote-worker-dicomweb-token"
PIPELINES = [{"name": "cxr-anomaly", "model": "chest-cxr-anomaly", "outputs": ["sr"]}]
FAST = {
    "PACSAI_WORKER__HEARTBEAT_SECONDS": "0.5",
    "PACSAI_WORKER__RECONCILE_SECONDS": "0.5",
    "PACSAI_STUDY__QUIET_SECONDS": "0.3",
    "PACSAI_STUDY__POLL_SECONDS": "0.05",
}


def test_remote_worker_fetches_analyses_and_stores_back(tmp_path: Path, pg_url: str) -> None:
    scp = StoreSCP()
    admin_port = free_port()
    shared = {**FAST, "PACSAI_PIPELINES": json.dumps(PIPELINES),
              "PACSAI_DESTINATIONS": json.dumps([scp.destination()])}
    workers: list = []
    try:
        with RedisServer(tmp_path / "redis") as redis, PacsaiProcess(
                tmp_path / "receiver", command="listener", database_url=pg_url, config={
                    **shared, "PACSAI_BROKER__URL": redis.url,
                    "PACSAI_ADMIN__PORT": str(admin_port), "PACSAI_DICOMWEB__TOKEN": TOKEN,
                }) as receiver:
            remote = RemoteWorker(
                tmp_path / "worker-host", listener_url=f"http://127.0.0.1:{admin_port}/dicomweb",
                token=TOKEN, forbidden=receiver.data_dir, config={
                    **shared, "PACSAI_BROKER__URL": redis.url, "PACSAI_DATABASE__URL": pg_url})
            workers.append(remote.start())
            workers.append(WorkerProcess(receiver, "recv", queues="cpu").start())  # delivery
            remote.wait_ready()
            assert "queue cpu (delivery) is left to the receiving host" in remote.log()

            images = [radiograph(size=256, seed=s) for s in (1, 2)]
            images[1].StudyInstanceUID = images[0].StudyInstanceUID
            send_datasets(receiver.port, images)
            study_uid = str(images[0].StudyInstanceUID)
            db = Database(pg_url)

            def delivered() -> list[Delivery]:
                with db.read() as s:
                    return [d for d in s.scalars(select(Delivery)) if d.state == "sent"]

            wait_until(lambda: delivered() or _failed(db), 90, 0.2)
            assert not _failed(db), _failed(db)
            [row] = delivered()
            assert scp.received == [row.sop_instance_uid]  # the SR reached the PACS, once
            with db.read() as s:
                job = s.scalar(select(Job))
                started = s.scalar(select(Event).where(Event.kind == "started"))
                study = s.scalar(select(Study))
            assert job.state == "done" and study.study_instance_uid == study_uid
            assert started.detail["worker"].startswith("pacsai-infer@")  # the remote one ran it

            # the outbox row points at the SR on the receiving node, stored there by STOW-RS
            sr = receiver.data_dir / row.file_path
            assert row.file_path.startswith("results/") and sr.is_file()
            ds = dcmread(sr)
            assert str(ds.SOPInstanceUID) == row.sop_instance_uid
            assert str(ds.StudyInstanceUID) == study_uid
            assert "fetched 2 instances" in remote.log()

            # the worker host read nothing of the receiving host and keeps nothing of the study
            assert remote.forbidden_opens() == []
            probe = subprocess.run([sys.executable, "-c", f"open({str(sr)!r}, 'rb')"],
                                   env=remote.env, capture_output=True, text=True)
            assert "PermissionError" in probe.stderr and len(remote.forbidden_opens()) == 1  # live
            left = [p for p in remote.data_dir.rglob("*") if p.is_file()]
            assert not [p for p in left if p.suffix == ".dcm" or "fetched" in p.parts[-4:]], left
            assert not (remote.data_dir / "spool" / "studies").exists() or \
                not any((remote.data_dir / "spool" / "studies").iterdir())
            db.dispose()
    finally:
        for w in workers:
            w.stop()
        scp.stop()


def _failed(db: Database) -> list[tuple[int, str | None]]:
    with db.read() as s:
        return [(j.id, j.error) for j in s.scalars(select(Job)) if j.state == "failed"]
