"""Retention removes spool files and rows only of settled studies, only after their time."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import func, select

from conftest import add_study, make_settings  # type: ignore[import-not-found]
from daemon.ops.retention import purge
from daemon.ingest.spool import Spool
from daemon.store.db import Database
from daemon.store.models import AuditEntry, Event, Instance, Job, Study, utcnow


def files_of(db: Database, spool: Spool, sid: int) -> list[Path]:
    with db.session() as s:
        rels = s.scalars(select(Instance.file_path).where(Instance.study_id == sid)).all()
    return [p for p in (spool.path(r) for r in rels) if p.exists()]


def test_retention_removes_only_what_it_may(tmp_path: Path, db: Database) -> None:
    settings = make_settings(tmp_path, db.url, retention={"spool_days": 7, "rows_days": 30})
    spool = Spool(settings.spool_dir, fsync=False)
    now = utcnow()
    old = now - dt.timedelta(days=10)
    ancient = now - dt.timedelta(days=40)
    s = {
        "delivered_old": add_study(db, spool, state="done", uid="1.1", at=old,
                                   job_state="done", deliveries=["sent", "sent"]),
        "delivered_new": add_study(db, spool, state="done", uid="1.2", at=now - dt.timedelta(days=2),
                                   job_state="done", deliveries=["sent"]),
        "not_routed_old": add_study(db, spool, state="not_routed", uid="1.3", at=old),
        "pending_delivery": add_study(db, spool, state="done", uid="1.4", at=old,
                                      job_state="done", deliveries=["sent", "pending"]),
        "dead_delivery": add_study(db, spool, state="done", uid="1.5", at=old,
                                   job_state="done", deliveries=["dead"]),
        "failed_old": add_study(db, spool, state="failed", uid="1.6", at=old, job_state="failed"),
        "receiving_old": add_study(db, spool, state="receiving", uid="1.7", at=ancient),
        "queued_old": add_study(db, spool, state="queued", uid="1.8", at=ancient,
                                job_state="queued"),
        "processing_old": add_study(db, spool, state="processing", uid="1.9", at=ancient,
                                    job_state="running"),
        "ancient_done": add_study(db, spool, state="done", uid="1.10", at=ancient,
                                  job_state="done", deliveries=["sent"]),
        "ancient_failed": add_study(db, spool, state="failed", uid="1.11", at=ancient,
                                    job_state="failed"),
        # a done study whose job was re-queued by hand: pending, whatever its state says
        "job_requeued": add_study(db, spool, state="done", uid="1.12", at=ancient,
                                  job_state="queued"),
    }

    dry = purge(settings, db, now=now, dry_run=True)
    assert sorted(dry.spool_studies) == sorted([s["delivered_old"], s["not_routed_old"]])
    assert all(files_of(db, spool, sid) for sid in s.values())  # dry run touched nothing

    report = purge(settings, db, now=now, actor="cli:test")
    assert sorted(report.spool_studies) == sorted([s["delivered_old"], s["not_routed_old"]])
    assert sorted(report.rows_studies) == sorted([s["ancient_done"], s["ancient_failed"]])
    assert report.files_removed == 8 and report.bytes_freed == 800

    for name in ("delivered_old", "not_routed_old"):
        assert files_of(db, spool, s[name]) == []
        assert not spool.study_dir(f"1.{list(s).index(name) + 1}").exists()
        with db.session() as x:
            assert x.get(Study, s[name]).spool_purged_at is not None  # rows kept
    for name in ("delivered_new", "pending_delivery", "dead_delivery", "failed_old",
                 "receiving_old", "queued_old", "processing_old", "job_requeued"):
        assert len(files_of(db, spool, s[name])) == 2, name
    with db.session() as x:
        for name in ("ancient_done", "ancient_failed"):
            sid = s[name]
            assert x.get(Study, sid) is None
            for model in (Instance, Job, Event):
                assert x.scalar(select(func.count()).select_from(model)
                                .where(model.study_id == sid)) == 0
        actions = sorted(a.action for a in x.scalars(select(AuditEntry)))
        assert actions == ["purge_rows"] * 2 + ["purge_spool"] * 2
        assert {a.actor for a in x.scalars(select(AuditEntry))} == {"cli:test"}

    again = purge(settings, db, now=now)  # idempotent
    assert again.spool_studies == [] and again.rows_studies == []
