"""The outbox on SQLite and PostgreSQL: claims, backoff, dead letters, unknown destinations."""

from __future__ import annotations

import datetime as dt
import random
import threading
from pathlib import Path

from sqlalchemy import select

from daemon.config import DeliverySettings, Settings
from daemon.store.db import Database
from daemon.store.models import Delivery, DeliveryState, Study, utcnow
from daemon.store.timeline import timeline
from dicom_io.synthetic_study import radiograph
from pacsai_process import free_port
from peers import StoreSCP
from worker.delivery import _claim, backoff_seconds, deliver_due


def test_backoff_doubles_with_jitter_and_caps() -> None:
    policy = DeliverySettings()
    rng = random.Random(1)
    values = [backoff_seconds(n, policy, rng) for n in range(1, 12)]
    assert 8 <= values[0] <= 12 and 16 <= values[1] <= 24 and 32 <= values[2] <= 48
    assert max(values) <= 3600 * 1.2 and values[-1] >= 3600 * 0.8
    assert len({round(v, 6) for v in values}) == len(values)  # jittered


def _settings(tmp_path: Path, db_url: str, port: int, **delivery: float) -> Settings:
    return Settings(
        storage={"data_dir": tmp_path},
        database={"url": db_url},
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": port}],
        delivery=delivery,
    )


def _outbox(db: Database, settings: Settings, n: int, destination: str = "pacs") -> list[str]:
    now = utcnow()
    uids = []
    with db.session() as s:
        study = Study(study_instance_uid="1.2.3", version=1, state="done", version_started_at=now,
                      first_received_at=now, last_received_at=now)
        s.add(study)
        s.flush()
        for i in range(n):
            ds = radiograph(size=64, seed=i)
            rel = f"results/obj{i}.dcm"
            (settings.data_dir / "results").mkdir(parents=True, exist_ok=True)
            ds.save_as(settings.data_dir / rel, enforce_file_format=True)
            s.add(Delivery(study_id=study.id, version=1, destination=destination,
                           sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                           series_instance_uid=ds.SeriesInstanceUID, file_path=rel,
                           state=DeliveryState.PENDING, next_attempt_at=now, created_at=now))
            uids.append(ds.SOPInstanceUID)
    return uids


def test_delivers_once_and_records(db: Database, db_url: str, tmp_path: Path) -> None:
    scp = StoreSCP()
    try:
        settings = _settings(tmp_path, db_url, scp.port)
        uids = _outbox(db, settings, 3)
        report = deliver_due(db, settings, "pacs")
        assert (report.sent, report.failed, report.dead) == (3, 0, 0)
        assert sorted(scp.received) == sorted(uids)
        assert deliver_due(db, settings, "pacs").sent == 0  # nothing twice
        assert len(scp.received) == 3
        with db.read() as s:
            rows = s.scalars(select(Delivery)).all()
            study_id = rows[0].study_id
        assert {r.state for r in rows} == {"sent"} and all(r.attempts == 1 for r in rows)
        assert [e.kind for e in timeline(db, study_id)] == ["delivered"]
    finally:
        scp.stop()


def test_failure_backs_off_then_dead_letters(db: Database, db_url: str, tmp_path: Path) -> None:
    down = free_port()  # nothing listens here: the PACS is down
    settings = _settings(tmp_path, db_url, down, give_up_after_seconds=3600)
    _outbox(db, settings, 2)
    report = deliver_due(db, settings, "pacs")
    assert (report.sent, report.failed) == (0, 2)
    with db.read() as s:
        rows = s.scalars(select(Delivery)).all()
    now = utcnow()
    assert all(r.state == "pending" and r.attempts == 1 for r in rows)
    assert all(dt.timedelta(seconds=7) < r.next_attempt_at - now < dt.timedelta(seconds=13) for r in rows)
    assert "connect" in rows[0].last_error
    assert deliver_due(db, settings, "pacs").failed == 0  # not due yet

    with db.session() as s:  # the retry window has passed
        for r in s.scalars(select(Delivery)):
            r.created_at = now - dt.timedelta(hours=2)
            r.next_attempt_at = now
    report = deliver_due(db, settings, "pacs")
    assert report.dead == 2
    with db.read() as s:
        rows = s.scalars(select(Delivery)).all()
    assert {r.state for r in rows} == {DeliveryState.DEAD}
    assert "dead_letter" in [e.kind for e in timeline(db, rows[0].study_id)]


def test_failure_status_and_unknown_destination(db: Database, db_url: str, tmp_path: Path) -> None:
    scp = StoreSCP(status=0xA700)
    try:
        settings = _settings(tmp_path, db_url, scp.port)
        _outbox(db, settings, 1)
        report = deliver_due(db, settings, "pacs")
        assert report.failed == 1
        with db.read() as s:
            row = s.scalars(select(Delivery)).one()
        assert row.last_status == 0xA700 and row.state == "pending"
    finally:
        scp.stop()


def test_concurrent_claims_never_overlap(db: Database, db_url: str, tmp_path: Path) -> None:
    settings = _settings(tmp_path, db_url, 1)
    _outbox(db, settings, 20)
    policy = settings.delivery.model_copy(update={"batch_size": 7})
    claimed: list[list[int]] = []
    lock = threading.Lock()

    def claim() -> None:
        other = Database(db_url)
        rows = _claim(other, "pacs", policy, utcnow())
        with lock:
            claimed.append([r.id for r in rows])
        other.dispose()

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for batch in claimed for i in batch]
    assert len(ids) == len(set(ids)), "a row was claimed twice"
    assert len(ids) == 20
