"""AI quality monitoring: daily figures from findings, drift against validation, the metric."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest import TOKEN, add_study, make_settings  # type: ignore[import-not-found]
from daemon.ops.admin import create_app
from daemon.ops.monitoring import expected_from_manifest, monitor
from daemon.store.db import Database
from daemon.store.models import Finding, Job

REPO = Path(__file__).resolve().parents[2]


def add_findings(db: Database, study_id: int, model: str, label: str,
                 scores: list[float], threshold: float) -> None:
    with db.session() as s:
        job_id = s.scalar(select(Job.id).where(Job.study_id == study_id))
        for score in scores:
            s.add(Finding(study_id=study_id, version=1, job_id=job_id, model_name=model, model_version="1",
                          backend="onnxruntime", label=label, score=score, threshold=threshold,
                          present=score >= threshold, images=1, inference_ms=40.0))


def test_expected_rate_from_the_shipped_manifest() -> None:
    manifest = json.loads((REPO / "models/chest-cxr-classifier/manifest.json").read_text())
    expected = expected_from_manifest(manifest)
    m = manifest["metrics"]["effusion"]
    want = (m["sensitivity"] * m["n_positive"] + (1 - m["specificity"]) * m["n_negative"]) / (
        m["n_positive"] + m["n_negative"])
    assert abs(expected["chest-cxr-classifier/effusion"].positive_rate - want) < 1e-3


def test_drift_flagged_beyond_the_bound_and_exported(tmp_path: Path, db: Database) -> None:
    settings = make_settings(tmp_path, db.url, admin={"metrics_settle_seconds": 0}, monitoring={
        "min_findings": 10, "positive_rate_bound": 0.1, "score_bound": 0.5,
        "expected": {"cls/effusion": {"positive_rate": 0.25, "score_p50": 0.3},
                     "cls/nodule": {"positive_rate": 0.3}}})
    sid = add_study(db, state="done", uid="2.1", job_state="done")
    # effusion: 18 of 20 positive today (0.9 against 0.25 expected): drift
    add_findings(db, sid, "cls", "effusion", [0.95] * 18 + [0.1] * 2, threshold=0.5)
    # nodule: 6 of 20 positive (0.3, as validated): no drift
    add_findings(db, sid, "cls", "nodule", [0.8] * 6 + [0.2] * 14, threshold=0.5)
    reports = {r.model: r for r in monitor(db, settings.monitoring)}
    eff, nod = reports["cls/effusion"], reports["cls/nodule"]
    assert eff.drift and any("positive rate 0.900" in r for r in eff.reasons)
    assert any(r.startswith("score_p50") for r in eff.reasons)
    assert not nod.drift and nod.days[-1].n == 20 and abs(nod.days[-1].positive_rate - 0.3) < 1e-9

    c = TestClient(create_app(settings, db))
    text = c.get("/metrics").text
    assert 'pacsai_model_drift{model="cls/effusion"} 1.0' in text
    assert 'pacsai_model_drift{model="cls/nodule"} 0.0' in text
    assert 'pacsai_inference_seconds_count{backend="onnxruntime",model="cls"} 1.0' in text
    assert 'pacsai_findings_total{label="effusion",model="cls",present="true"} 18.0' in text
    api = c.get("/api/monitoring", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert [m["model"] for m in api if m["drift"]] == ["cls/effusion"]


def test_too_few_findings_give_no_verdict(tmp_path: Path, db: Database) -> None:
    settings = make_settings(tmp_path, db.url, monitoring={
        "min_findings": 50, "expected": {"cls": {"positive_rate": 0.1}}})
    sid = add_study(db, state="done", uid="2.2")
    add_findings(db, sid, "cls", "effusion", [0.9] * 20, threshold=0.5)
    (report,) = monitor(db, settings.monitoring)
    assert report.model == "cls/effusion" and not report.drift
    assert report.expected["positive_rate"] == 0.1  # model-wide expectation applies per label


def test_daily_figures_are_read_while_a_writer_holds_the_lock(tmp_path: Path) -> None:
    """The dashboard and /metrics read the monitoring figures without SQLite's write lock:
    a listener in the middle of a write does not hold them up (busy_timeout is 30 s)."""
    import sqlite3
    import threading
    import time

    from daemon.ops.monitoring import daily_stats

    db = Database(f"sqlite:///{tmp_path / 'pacsai.db'}")
    db.upgrade()
    sid = add_study(db, state="done", uid="2.9", job_state="done")
    add_findings(db, sid, "cls", "effusion", [0.9, 0.1], threshold=0.5)
    writer = sqlite3.connect(tmp_path / "pacsai.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    got: list[object] = []
    try:
        reader = threading.Thread(target=lambda: got.append(daily_stats(db)), daemon=True)
        started = time.monotonic()
        reader.start()
        reader.join(5)
        assert got, f"daily_stats still waiting for the write lock after {time.monotonic() - started:.1f} s"
        assert got[0]["cls/effusion"][0].n == 2  # type: ignore[index]
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        db.dispose()
