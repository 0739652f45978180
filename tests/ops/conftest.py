"""Fixtures for the admin tests: settings on a temporary data dir, rows in a real database."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.config import Settings, load_settings
from daemon.ingest.spool import Spool
from daemon.store.db import Database
from daemon.store.models import (
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    Study,
    utcnow,
)

TOKEN = "test-admin-token"
PHI_TOKEN = "test-phi-token"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A TCP port something accepts on (stands in for a running listener)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def make_settings(tmp_path: Path, db_url: str | None = None, **sections: Any) -> Settings:
    base: dict[str, Any] = {
        "storage": {"data_dir": tmp_path / "data", "min_free_bytes": 0},
        "listener": {"host": "127.0.0.1", "port": closed_port()},
        "admin": {"token": TOKEN, "phi_token": PHI_TOKEN, "port": 0},
    }
    if db_url:
        base["database"] = {"url": db_url}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return load_settings(**base)


def add_study(db: Database, spool: Spool | None = None, *, state: str, uid: str,
              at: dt.datetime | None = None, instances: int = 2,
              job_state: str | None = None, deliveries: list[str] = (),  # type: ignore[assignment]
              queue: str = "cpu") -> int:
    """A study with instances (files in ``spool`` if given), one job and deliveries."""
    at = at or utcnow()
    with db.session() as s:
        study = Study(study_instance_uid=uid, version=1, state=state, calling_aet="MODALITY",
                      patient_name="DOE^JANE", patient_id="PID-1", modalities="CT",
                      num_instances=instances, size_bytes=100 * instances,
                      version_started_at=at, first_received_at=at, last_received_at=at,
                      completed_at=at)
        s.add(study)
        s.flush()
        for n in range(instances):
            sop = f"{uid}.{n}"
            rel = (spool.relative_path(uid, sop) if spool
                   else f"studies/xx/{uid}/{n}.dcm")
            if spool:
                spool.store(uid, sop, [b"x" * 100])
            s.add(Instance(study_id=study.id, sop_instance_uid=sop, sop_class_uid="1.2",
                           transfer_syntax_uid="1.2.840.10008.1.2.1", file_path=rel,
                           size_bytes=100, version=1, received_at=at))
        job_id = None
        if job_state:
            job = Job(study_id=study.id, version=1, pipeline="default", state=job_state,
                      queue=queue, queued_at=at, attempts=1,
                      started_at=at if job_state != JobState.QUEUED else None,
                      finished_at=at if job_state not in JobState.ACTIVE else None,
                      error="boom" if job_state == JobState.FAILED else None)
            s.add(job)
            s.flush()
            job_id = job.id
        for n, dstate in enumerate(deliveries):
            s.add(Delivery(study_id=study.id, version=1, job_id=job_id, destination="PACS",
                           sop_instance_uid=f"{uid}.9{n}", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                           series_instance_uid=f"{uid}.99", file_path=f"results/{uid}.{n}.dcm",
                           state=dstate, attempts=3 if dstate == DeliveryState.DEAD else 1,
                           next_attempt_at=at, last_error="refused" if dstate == DeliveryState.DEAD else None,
                           sent_at=at if dstate == DeliveryState.SENT else None))
        return study.id
