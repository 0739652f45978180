"""Against a real ``pacsai serve`` with its admin service: readiness, metrics, CLI, dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from conftest import PHI_TOKEN, TOKEN  # type: ignore[import-not-found]
from daemon.store.db import Database
from daemon.store.models import AuditEntry, Delivery, Job, Study, utcnow
from dicom_io.synthetic_study import ct_series, radiograph
from pacsai_process import REPO, PacsaiProcess, free_port, wait_until

BROWSER = Path(__file__).with_name("browser")
ARTIFACTS = REPO / "tests" / "artifacts"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name} missing"
    return float(m.group(1))


def send_study(port: int, n: int = 3) -> str:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSAI")
    assert assoc.is_established
    datasets = list(ct_series(n, 64, seed=11))
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    return str(datasets[0].StudyInstanceUID)


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("admin-serve")
    admin_port = free_port()
    proc = PacsaiProcess(root / "data", config={
        "PACSAI_ADMIN__PORT": str(admin_port), "PACSAI_ADMIN__TOKEN": TOKEN,
        "PACSAI_ADMIN__PHI_TOKEN": PHI_TOKEN,
        "PACSAI_ADMIN__QUEUE_SAMPLE_SECONDS": "1", "PACSAI_ADMIN__METRICS_SETTLE_SECONDS": "0",
        "PACSAI_PIPELINES": '[{"name": "anomaly", "model": "chest-cxr-anomaly"}]'})
    proc.admin_url = f"http://127.0.0.1:{admin_port}"  # type: ignore[attr-defined]
    with proc:
        yield proc
    assert "DOE" not in proc.log() and "PatientName" not in proc.log()


@pytest.fixture(scope="module")
def study(serve: PacsaiProcess) -> dict:  # type: ignore[type-arg]
    url = serve.admin_url  # type: ignore[attr-defined]
    before = httpx.get(f"{url}/metrics").text
    uid = send_study(serve.port)
    db = Database(f"sqlite:///{serve.data_dir / 'pacsai.db'}")
    row = wait_until(lambda: _done(db, uid), 60, 0.2)
    db.dispose()
    return {"id": row.id, "uid": uid, "metrics_before": before}


def _done(db: Database, uid: str) -> Study | None:
    with db.session() as s:
        row = s.scalar(select(Study).where(Study.study_instance_uid == uid))
        return row if row is not None and row.state == "done" else None


def test_ready_and_metrics_move(serve: PacsaiProcess, study: dict) -> None:  # type: ignore[type-arg]
    url = serve.admin_url  # type: ignore[attr-defined]
    ready = wait_until(lambda: (r := httpx.get(f"{url}/readyz")).status_code == 200 and r, 20)
    assert ready.json()["failing"] == []
    before, after = study["metrics_before"], httpx.get(f"{url}/metrics").text
    assert metric(after, "pacsai_instances_received_total") == \
        metric(before, "pacsai_instances_received_total") + 3
    assert metric(after, "pacsai_bytes_received_total") > metric(before, "pacsai_bytes_received_total")
    assert metric(after, "pacsai_associations_total") >= 1
    assert metric(after, "pacsai_associations_active") == 0
    assert metric(after, 'pacsai_studies{state="done"}') == 1
    assert metric(after, 'pacsai_study_latency_seconds_count{stage="received_to_finished"}') == 1
    assert metric(after, 'pacsai_task_duration_seconds_count{pipeline="anomaly",queue="infer",state="done"}') == 1
    # worker answers are cached a few seconds: the first scrape may predate the worker
    wait_until(lambda: metric(httpx.get(f"{url}/metrics").text, 'pacsai_workers{queue="cpu"}') == 1, 15, 0.5)
    assert metric(after, 'pacsai_queue_depth{queue="cpu"}') == 0
    studies = httpx.get(f"{url}/api/studies", headers=AUTH).json()
    assert studies[0]["id"] == study["id"] and "patient_name" not in studies[0]
    workers = httpx.get(f"{url}/api/workers", headers=AUTH).json()
    assert workers and "cpu" in workers[0]["queues"]


def test_cli_status_healthy(serve: PacsaiProcess, study: dict) -> None:  # type: ignore[type-arg]
    env = {**serve.env}
    out = subprocess.run([sys.executable, "-m", "daemon.cli", "status", "--json"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["healthy"] and report["studies_by_state"] == {"done": 1}
    assert report["workers"][0]["queues"] == ["cpu", "infer"]
    table = subprocess.run([sys.executable, "-m", "daemon.cli", "status"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "Health" in table.stdout and "Queues" in table.stdout


@pytest.mark.skipif(not shutil.which("node") or not Path("/usr/bin/chromium").exists(),
                    reason="node and Debian chromium are needed")
def test_dashboard_in_chromium(serve: PacsaiProcess, study: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    if not (BROWSER / "node_modules" / "playwright-core").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BROWSER, check=True,
                       capture_output=True, timeout=300)
    db = Database(f"sqlite:///{serve.data_dir / 'pacsai.db'}")
    with db.session() as s:
        dead = Delivery(study_id=study["id"], version=1, destination="PACS",
                        sop_instance_uid="2.25.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                        series_instance_uid="2.25.2", file_path="results/x.dcm", state="dead",
                        attempts=5, next_attempt_at=utcnow(), last_error="association rejected")
        s.add(dead)
        now = utcnow()
        lost = Study(study_instance_uid="2.25.77", version=1, state="not_routed",
                     calling_aet="OTHER", version_started_at=now, first_received_at=now,
                     last_received_at=now, completed_at=now)
        s.add(lost)
        s.flush()
        delivery_id, not_routed_id = dead.id, lost.id
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "admin-dashboard.png"
    run = subprocess.run(
        ["node", str(BROWSER / "dashboard.js"), serve.admin_url, TOKEN,  # type: ignore[attr-defined]
         str(study["id"]), str(delivery_id), str(shot), str(tmp_path / "profile"),
         str(not_routed_id)],
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["stateText"] == "done"
    assert {"receiving", "complete", "queued", "started", "finished"} <= set(seen["timeline"])
    assert seen["external"] == [] and seen["errors"] == []
    charts = seen["charts"]  # the queue chart spans the last 6 hours, labelled by the hour
    assert abs(charts["queueMin"] - (charts["now"] - 6 * 3600 * 1000)) < 120_000
    assert len(set(charts["queueTicks"])) >= 6, charts["queueTicks"]  # not "12:00 AM" on every tick
    assert not any("AM" in t or "PM" in t for t in charts["queueTicks"] + charts["throughputTicks"])
    assert charts["throughputSeries"] == ["studies received", "studies analysed"]  # one unit
    assert shot.stat().st_size > 10_000
    with db.session() as s:
        row = s.get(Delivery, delivery_id)
        assert row.state == "pending"
        audit = s.scalar(select(AuditEntry).where(AuditEntry.target == f"delivery:{delivery_id}"))
        assert audit.actor == "api:admin:browser-test" and audit.action == "resend"
        assert s.get(Study, not_routed_id).state != "not_routed"  # rerouted from the page
        audit = s.scalar(select(AuditEntry).where(AuditEntry.target == f"study:{not_routed_id}"))
        assert audit.actor == "api:admin:browser-test" and audit.action == "reroute"
    db.dispose()


# Patient data that must never leave the database without PHI rights. The name has one
# component (no ^), as many RIS send it: highdicom then warns, quoting the whole name.
# The birth date is ISO 8601 instead of DA, as a worklist bridge may send it: highdicom
# refuses it while the SR is written (a real failing path), and pydicom quotes it.
MARK_NAME, MARK_ID, MARK_BIRTH = "Zzmarker Patientname", "ZZMARKER-ID-4711", "1947-11-03"
MARKS = ("zzmarker", "patientname", "id-4711", MARK_BIRTH, MARK_BIRTH.replace("-", ""))


def _marks_in(text: str) -> list[str]:
    low = text.lower()
    return [m for m in MARKS if m in low]


def test_a_failing_job_shows_no_patient_data_without_phi_rights(serve: PacsaiProcess) -> None:
    """The marker study fails in the worker (highdicom refuses its birth date); its name, ID
    and birth date appear 0 times in the process log, ``pacsai status --json`` and the API
    answers to the admin token; the full failure text is given to the PHI token only."""
    url = serve.admin_url  # type: ignore[attr-defined]
    ds = radiograph(size=128, seed=21, patient_id=MARK_ID, patient_name=MARK_NAME)
    ds.PatientBirthDate = MARK_BIRTH
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID)
    assoc = ae.associate("127.0.0.1", serve.port, ae_title="PACSAI")
    assert assoc.is_established
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    db = Database(f"sqlite:///{serve.data_dir / 'pacsai.db'}")
    try:
        def failed() -> Job | None:
            with db.read() as s:
                sid = s.scalar(select(Study.id).where(
                    Study.study_instance_uid == ds.StudyInstanceUID))
                job = s.scalar(select(Job).where(Job.study_id == sid)) if sid else None
            return job if job is not None and job.state in ("failed", "done") else None

        job = wait_until(failed, 60, 0.2)
        with db.read() as s:
            study = s.get(Study, job.study_id)
            assert (study.patient_name, study.patient_id) == (MARK_NAME, MARK_ID)  # it got in
    finally:
        db.dispose()
    assert job.state == "failed" and "ValueError" in (job.error or ""), job.error
    assert MARK_BIRTH in (job.error_detail or "")  # the full text, kept for PHI rights

    admin = {"Authorization": f"Bearer {TOKEN}"}
    answers = {path: httpx.get(f"{url}{path}", headers=admin) for path in (
        "/api/jobs", "/api/jobs?state=failed", f"/api/jobs/{job.id}", "/api/studies",
        f"/api/studies/{job.study_id}", "/api/summary", "/api/deliveries", "/api/queues")}
    for path, answer in answers.items():
        assert answer.status_code == 200, (path, answer.text)
        assert _marks_in(answer.text) == [], (path, answer.text)
    assert answers[f"/api/jobs/{job.id}"].json()["error"] == job.error
    assert "error_detail" not in answers[f"/api/jobs/{job.id}"].text
    for path in (f"/api/jobs/{job.id}?phi=true", "/api/jobs?phi=true",
                 f"/api/studies/{job.study_id}?phi=true"):
        assert httpx.get(f"{url}{path}", headers=admin).status_code == 403, path

    status = subprocess.run([sys.executable, "-m", "daemon.cli", "status", "--json"], cwd=REPO,
                            env=serve.env, capture_output=True, text=True, timeout=60)
    report = json.loads(status.stdout)
    assert job.id in [f["job"] for f in report["recent_failures"]]
    assert _marks_in(status.stdout + status.stderr) == []

    log = serve.log()
    assert "is unlikely to represent the intended person name" in log  # highdicom spoke...
    assert f"job {job.id} failed: ValueError" in log
    assert _marks_in(log) == []  # ...and no value it quoted was written

    phi = {"Authorization": f"Bearer {PHI_TOKEN}"}
    shown = httpx.get(f"{url}/api/jobs/{job.id}?phi=true", headers=phi).json()
    assert MARK_BIRTH in shown["error_detail"] and shown["error"] == job.error
    listed = httpx.get(f"{url}/api/jobs?phi=true", headers=phi).json()
    assert [j["error_detail"] for j in listed if j["id"] == job.id] == [shown["error_detail"]]
    detail = httpx.get(f"{url}/api/studies/{job.study_id}?phi=true", headers=phi).json()
    assert detail["patient_name"] == MARK_NAME
    assert [j["error_detail"] for j in detail["jobs"]] == [shown["error_detail"]]
