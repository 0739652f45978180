"""The admin app in process (real database, real embedded broker): auth, readiness, actions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest import PHI_TOKEN, TOKEN, add_study, closed_port, make_settings  # type: ignore[import-not-found]
from daemon.ops.admin import create_app
from daemon.ops.admin.auth import admin_token
from daemon.dispatch.tasks import embedded_broker_folders
from daemon.store.db import Database
from daemon.store.models import AuditEntry, Delivery, Job, Study

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def client(settings, db: Database | None = None) -> TestClient:  # type: ignore[no-untyped-def]
    if db is None:
        db = Database(settings.database_url)
        db.upgrade()
    return TestClient(create_app(settings, db))


def test_health_and_metrics_need_no_token(tmp_path: Path, db: Database) -> None:
    c = client(make_settings(tmp_path, db.url), db)
    assert c.get("/healthz").json() == {"status": "ok"}
    metrics = c.get("/metrics")
    assert metrics.status_code == 200
    assert "pacsai_studies{state=\"done\"}" in metrics.text
    assert "pacsai_spool_free_bytes" in metrics.text


@pytest.mark.parametrize("path", ["/api/studies", "/api/studies/1", "/api/queues", "/api/workers",
                                  "/api/jobs?state=failed", "/api/jobs/1",
                                  "/api/deliveries?state=dead",
                                  "/api/summary", "/api/monitoring", "/api/queues/history"])
def test_api_requires_a_valid_token(tmp_path: Path, path: str) -> None:
    c = client(make_settings(tmp_path))
    assert c.get(path).status_code == 401
    assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert c.get(path, headers={"Authorization": TOKEN}).status_code == 401  # no scheme
    assert c.post("/api/jobs/1/retry", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert c.get(path, headers=AUTH).status_code in (200, 404)


def test_patient_names_need_the_phi_token(tmp_path: Path, db: Database) -> None:
    c = client(make_settings(tmp_path, db.url), db)
    sid = add_study(db, state="done", uid="1.2.3.4")
    plain = c.get("/api/studies", headers=AUTH).json()
    assert plain[0]["id"] == sid and "patient_name" not in plain[0]
    assert "DOE" not in c.get(f"/api/studies/{sid}", headers=AUTH).text
    assert c.get("/api/studies?phi=true", headers=AUTH).status_code == 403
    phi = c.get("/api/studies?phi=true", headers={"Authorization": f"Bearer {PHI_TOKEN}"}).json()
    assert phi[0]["patient_name"] == "DOE^JANE"
    assert c.get("/api/studies?state=failed", headers=AUTH).json() == []


def test_generated_token_is_private_and_printed_once(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(tmp_path, admin={"token": None})
    token = admin_token(settings)
    path = settings.data_dir / "admin-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token in capsys.readouterr().err
    c = client(settings)
    assert "admin token" not in capsys.readouterr().err  # not printed again
    assert c.get("/api/queues", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_ready_when_everything_answers(tmp_path: Path, db: Database, listening_port: int) -> None:
    settings = make_settings(tmp_path, db.url, listener={"port": listening_port})
    r = client(settings, db).get("/readyz")
    assert r.status_code == 200, r.json()
    assert {c["name"] for c in r.json()["checks"]} == {"database", "broker", "disk", "listener",
                                                       "workers"}


@pytest.mark.parametrize("cause", ["database", "broker", "disk", "listener", "workers"])
def test_not_ready_names_each_cause(tmp_path: Path, listening_port: int, cause: str) -> None:
    sections: dict = {"listener": {"port": listening_port}}
    db_url = f"sqlite:///{tmp_path / 'ok.db'}"
    if cause == "database":
        db_url = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/pacsai?connect_timeout=2"
    elif cause == "broker":
        sections["broker"] = {"url": f"redis://127.0.0.1:{closed_port()}/0"}
    elif cause == "disk":
        sections["storage"] = {"min_free_bytes": 1 << 60}
    elif cause == "listener":
        sections["listener"] = {"port": closed_port()}
    settings = make_settings(tmp_path, db_url, **sections)
    db = Database(settings.database_url)
    if cause != "database":
        db.upgrade()
    if cause == "workers":  # a job waits on a queue no worker consumes
        add_study(db, state="queued", uid="1.2.9", job_state="queued", queue="gpu.7")
    r = client(settings, db).get("/readyz")
    assert r.status_code == 503
    failing = {c["name"]: c["detail"] for c in r.json()["failing"]}
    assert cause in failing
    if cause != "database":
        assert set(failing) == {cause}, failing
    if cause == "workers":
        assert "gpu.7" in failing["workers"]
    db.dispose()


def test_retry_cancel_resend_are_audited(tmp_path: Path, db: Database) -> None:
    settings = make_settings(tmp_path, db.url)
    c = client(settings, db)
    sid = add_study(db, state="failed", uid="1.2.5", job_state="failed", deliveries=["dead"])
    with db.session() as s:
        job = s.scalar(select(Job).where(Job.study_id == sid))
        delivery = s.scalar(select(Delivery).where(Delivery.study_id == sid))
    who = {**AUTH, "X-Pacsai-User": "alice"}
    assert c.get("/api/jobs?state=failed", headers=AUTH).json()[0]["id"] == job.id
    assert c.get("/api/deliveries?state=dead", headers=AUTH).json()[0]["id"] == delivery.id

    r = c.post(f"/api/jobs/{job.id}/retry", headers=who)
    assert r.status_code == 200, r.text
    queue_dir = Path(embedded_broker_folders(settings)["queue"])
    assert any(n.endswith(".cpu.msg") for n in os.listdir(queue_dir))  # the task was sent
    assert c.post(f"/api/jobs/{job.id}/retry", headers=AUTH).status_code == 409
    assert c.post(f"/api/jobs/{job.id}/cancel", headers=who).status_code == 200
    assert c.post(f"/api/jobs/{job.id}/cancel", headers=AUTH).status_code == 409
    assert c.post("/api/jobs/999999/retry", headers=AUTH).status_code == 404
    assert c.post(f"/api/deliveries/{delivery.id}/resend", headers=who).status_code == 200
    assert c.post(f"/api/deliveries/{delivery.id}/resend", headers=AUTH).status_code == 409

    with db.session() as s:
        assert s.get(Delivery, delivery.id).state == "pending"
        assert s.get(Job, job.id).state == "cancelled"
        assert s.get(Study, sid).state == "failed"
        audit = [(a.actor, a.action, a.target) for a in s.scalars(
            select(AuditEntry).order_by(AuditEntry.id))]
    assert audit == [("api:admin:alice", "retry", f"job:{job.id}"),
                     ("api:admin:alice", "cancel", f"job:{job.id}"),
                     ("api:admin:alice", "resend", f"delivery:{delivery.id}")]
    kinds = [e["kind"] for e in c.get(f"/api/studies/{sid}", headers=AUTH).json()["timeline"]]
    assert kinds == ["requeued", "cancelled", "resend"]


def test_openapi_describes_the_api(tmp_path: Path) -> None:
    spec = client(make_settings(tmp_path)).get("/openapi.json").json()
    for path in ("/api/studies", "/api/studies/{study_id}", "/api/queues", "/api/workers",
                 "/api/jobs", "/api/deliveries", "/api/jobs/{job_id}/retry",
                 "/api/jobs/{job_id}/cancel", "/api/deliveries/{delivery_id}/resend",
                 "/healthz", "/readyz", "/metrics"):
        assert path in spec["paths"], path


def test_dashboard_assets_are_local(tmp_path: Path) -> None:
    c = client(make_settings(tmp_path))
    page = c.get("/").text
    assert "/static/chart.umd.js" in page and "http" not in page.split("<body>")[0].replace(
        'http-equiv', '')
    assert c.get("/static/chart.umd.js").status_code == 200
    assert c.get("/static/app.js").status_code == 200


def _rules(*rules: dict) -> list:  # type: ignore[type-arg]
    from daemon.routing.rules import RouteRule

    return [RouteRule.model_validate(r) for r in rules]


def test_reroute_applies_the_current_rules_to_a_not_routed_study(tmp_path: Path, db: Database) -> None:
    er_only = _rules({"name": "er", "match": {"calling_aet": ["ER"]},
                      "action": {"pipelines": ["cxr-anomaly"]}})
    settings = make_settings(tmp_path, db.url).model_copy(update={"routes": er_only})
    sid = add_study(db, state="not_routed", uid="1.2.77")  # sent by MODALITY, no rule for it
    who = {**AUTH, "X-Pacsai-User": "bob"}

    r = client(settings, db).post(f"/api/studies/{sid}/reroute", headers=who)
    assert r.status_code == 409 and "still not routed" in r.json()["detail"], r.text
    with db.session() as s:
        assert s.get(Study, sid).state == "not_routed"
        assert s.scalars(select(Job)).all() == []

    fixed = er_only + _rules({"name": "rest", "default": True,
                              "action": {"pipelines": ["cxr-anomaly"], "priority": "stat"}})
    c = client(settings.model_copy(update={"routes": fixed}), db)
    r = c.post(f"/api/studies/{sid}/reroute", headers=who)
    assert r.status_code == 200, r.text
    (job_id,) = r.json()["jobs"]
    with db.session() as s:
        job = s.get(Job, job_id)
        assert (job.state, job.pipeline, job.priority, job.route) == ("queued", "cxr-anomaly", "stat", "rest")
        assert s.get(Study, sid).state == "queued"
        audit = [(a.actor, a.action, a.target) for a in s.scalars(select(AuditEntry))]
    assert audit == [("api:admin:bob", "reroute", f"study:{sid}")]
    # the task was sent with the job's priority and its id recorded for the reconciler
    sent = [n for n in os.listdir(embedded_broker_folders(settings)["queue"]) if n.endswith(".infer.msg")]
    assert len(sent) == 1 and sent[0].startswith("0_")  # stat
    assert job.task_id and job.task_id in Path(embedded_broker_folders(settings)["queue"], sent[0]).read_text()
    assert c.post(f"/api/studies/{sid}/reroute", headers=AUTH).status_code == 409  # queued now
    assert c.post("/api/studies/999999/reroute", headers=AUTH).status_code == 404


def test_a_retried_job_keeps_its_priority(tmp_path: Path, db: Database) -> None:
    settings = make_settings(tmp_path, db.url)
    sid = add_study(db, state="failed", uid="1.2.78", job_state="failed")
    with db.session() as s:
        job = s.scalar(select(Job).where(Job.study_id == sid))
        job.priority = "stat"
    assert client(settings, db).post(f"/api/jobs/{job.id}/retry", headers=AUTH).status_code == 200
    (sent,) = os.listdir(embedded_broker_folders(settings)["queue"])
    assert sent.startswith("0_")
    with db.session() as s:
        assert s.get(Job, job.id).task_id in Path(embedded_broker_folders(settings)["queue"], sent).read_text()
