"""DICOMweb on a real ``pacsai listener`` (admin port, generated token): WADO-RS multipart read
by the standard library's MIME parser is the spool files byte for byte, versions select what a
job sees, QIDO-RS lists studies and series, tokens are enforced, STOW-RS stores a result
where the worker names it and refuses any other place."""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import io
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from sqlalchemy import func, select

from daemon.ingest.spool import results_folder
from daemon.store.db import Database
from daemon.store.models import Instance, Job, JobState, Study, utcnow
from dicom_io.multipart import new_boundary, related_type
from dicom_io.synthetic_study import ct_series, radiograph
from daemon.config import load_settings
from worker.remote import ReceivingNode, StaleAttempt
from pacsai_process import PacsaiProcess, free_port, wait_until
from peers import send_datasets

ADMIN, PHI = "dw-admin-token", "dw-phi-token"


class Listener:
    def __init__(self, proc: PacsaiProcess, admin_port: int) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{admin_port}/dicomweb"
        self.token = (proc.data_dir / "dicomweb-token").read_text().strip()
        self.db = Database(f"sqlite:///{proc.data_dir / 'pacsai.db'}")
        self._jobs: dict[str, int] = {}

    def stow_job(self, study_uid: str) -> int:
        """The running job (attempt 2) the tests' STOW requests name for this study."""
        if study_uid not in self._jobs:
            known = self.db.read()
            with known as s:
                exists = s.scalar(select(Study.id).where(Study.study_instance_uid == study_uid))
            self._jobs[study_uid] = _running_job(self, study_uid) if exists else 1
        return self._jobs[study_uid]

    def get(self, path: str, token: str | None = "", **kw: Any) -> httpx.Response:
        token = self.token if token == "" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(self.url + path, headers={**headers, **kw.pop("headers", {})},
                         timeout=30, **kw)

    def spool_files(self, study_uid: str, version: int | None = None) -> dict[str, bytes]:
        with self.db.read() as s:
            rows = s.execute(select(Instance.sop_instance_uid, Instance.file_path, Instance.version)
                             .join(Study).where(Study.study_instance_uid == study_uid)).all()
        return {uid: (self.proc.data_dir / "spool" / rel).read_bytes()
                for uid, rel, v in rows if version is None or v <= version}


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("dicomweb")
    admin_port = free_port()
    proc = PacsaiProcess(base / "data", command="listener", config={
        "PACSAI_ADMIN__PORT": str(admin_port), "PACSAI_ADMIN__TOKEN": ADMIN,
        "PACSAI_ADMIN__PHI_TOKEN": PHI, "PACSAI_STUDY__QUIET_SECONDS": "0.3",
        "PACSAI_STUDY__POLL_SECONDS": "0.05"})
    with proc:
        yield Listener(proc, admin_port)


@pytest.fixture(scope="module")
def study(listener: Listener) -> dict[str, Any]:
    """A CT series of 4 slices and a DX in one study; then version 2 adds one more slice."""
    ct = list(ct_series(4, 64, seed=3))
    dx = radiograph(size=64, study_uid=ct[0].StudyInstanceUID, seed=4)
    dx.PatientID, dx.PatientName = ct[0].PatientID, ct[0].PatientName
    send_datasets(listener.proc.port, [*ct, dx])
    uid = str(ct[0].StudyInstanceUID)

    def state() -> tuple[int, str] | None:
        with listener.db.read() as s:
            row = s.scalar(select(Study).where(Study.study_instance_uid == uid))
            return (row.version, row.state) if row is not None else None

    wait_until(lambda: (state() or (0, ""))[1] not in ("", "receiving"), 20, 0.05)
    late = next(ct_series(1, 64, study_uid=uid, series_uid=ct[0].SeriesInstanceUID, seed=5))
    late.InstanceNumber = 5
    send_datasets(listener.proc.port, [late])
    wait_until(lambda: (state() or (0, ""))[0] == 2, 20, 0.05)
    return {"uid": uid, "ct_series": str(ct[0].SeriesInstanceUID), "dx": dx, "late": late,
            "v1": {str(d.SOPInstanceUID) for d in [*ct, dx]}}


def mime_parts(response: httpx.Response) -> list[Any]:
    """The multipart body through the standard library's MIME parser (not ours)."""
    raw = (f"Content-Type: {response.headers['content-type']}\r\n\r\n").encode() + response.content
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    assert msg.get_content_type() == "multipart/related"
    assert msg.get_param("type") == "application/dicom"
    assert not msg.defects, msg.defects
    return list(msg.iter_parts())


def test_token_file_is_private_and_required(listener: Listener, study: dict[str, Any]) -> None:
    path = listener.proc.data_dir / "dicomweb-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(listener.token) >= 32
    for route in ("/studies", f"/studies/{study['uid']}", f"/studies/{study['uid']}/series"):
        assert listener.get(route, token=None).status_code == 401
        assert listener.get(route, token="wrong").status_code == 403
        refused = listener.get(route, token=ADMIN)  # no PHI rights: no patient data
        assert refused.status_code == 403 and "admin token" in refused.json()["detail"]
        assert listener.get(route, token=PHI).status_code == 200
    stow = httpx.post(f"{listener.url}/studies/{study['uid']}", content=b"",
                      headers={"Authorization": f"Bearer {ADMIN}",
                               "Content-Type": related_type("x")})
    assert stow.status_code == 403


def test_wado_study_is_the_spool_files_byte_for_byte(listener: Listener,
                                                     study: dict[str, Any]) -> None:
    response = listener.get(f"/studies/{study['uid']}",
                            headers={"Accept": 'multipart/related; type="application/dicom"; '
                                               'transfer-syntax=*'})
    assert response.status_code == 200, response.text
    assert response.headers.get("transfer-encoding") == "chunked"  # streamed, not built whole
    parts = mime_parts(response)
    spool = listener.spool_files(study["uid"])
    assert len(parts) == len(spool) == 6
    for part in parts:
        assert part.get_content_type() == "application/dicom"
        assert part.get_param("transfer-syntax") == "1.2.840.10008.1.2.1"
        sop = part["Content-Location"].rsplit("/instances/", 1)[1]
        payload = part.get_payload(decode=True)
        assert payload == spool[sop]
        assert str(dcmread(io.BytesIO(payload)).SOPInstanceUID) == sop


def test_wado_version_series_and_instance(listener: Listener, study: dict[str, Any]) -> None:
    uid = study["uid"]
    v1 = mime_parts(listener.get(f"/studies/{uid}?version=1"))
    got = {p["Content-Location"].rsplit("/", 1)[1] for p in v1}
    assert got == study["v1"]  # what a job of version 1 analyses: not the late slice
    assert listener.get(f"/studies/{uid}?version=3").status_code == 404
    series = mime_parts(listener.get(f"/studies/{uid}/series/{study['ct_series']}"))
    assert len(series) == 5
    dx = study["dx"]
    dx_series = f"/studies/{uid}/series/{dx.SeriesInstanceUID}"
    one = listener.get(f"{dx_series}/instances/{dx.SOPInstanceUID}")
    [part] = mime_parts(one)
    assert part.get_payload(decode=True) == listener.spool_files(uid)[str(dx.SOPInstanceUID)]
    assert listener.get(f"{dx_series}/instances/1.2.3").status_code == 404
    assert listener.get("/studies/1.2.3.4").status_code == 404
    json_only = {"Accept": "application/dicom+json"}
    assert listener.get(f"/studies/{uid}", headers=json_only).status_code == 406


def test_qido_studies_and_series(listener: Listener, study: dict[str, Any]) -> None:
    uid = study["uid"]
    found = listener.get("/studies", params={"StudyInstanceUID": uid})
    assert found.status_code == 200 and found.headers["content-type"] == "application/dicom+json"
    [row] = found.json()
    assert row["0020000D"]["Value"] == [uid]
    assert row["00201208"]["Value"] == [6] and row["00201206"]["Value"] == [2]
    assert row["00080061"]["Value"] == ["CT", "DX"]
    assert row["00081190"]["Value"] == [f"/dicomweb/studies/{uid}"]
    assert listener.get("/studies", params={"StudyInstanceUID": "1.2.3"}).json() == []
    series = listener.get(f"/studies/{uid}/series").json()
    assert sorted((s["00080060"]["Value"][0], s["00201209"]["Value"][0]) for s in series) == \
        [("CT", 5), ("DX", 1)]
    assert listener.get("/studies/1.2.3/series").status_code == 404


def _result(study_uid: str) -> tuple[str, bytes]:
    ds = radiograph(size=16, study_uid=study_uid, seed=9)  # stands in for an SR
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return str(ds.SOPInstanceUID), buf.getvalue()


def _running_job(listener: Listener, study_uid: str, attempt: int = 2) -> int:
    """A job of the study running under ``attempt`` (what a remote worker's STOW names); its
    heartbeat is far ahead so the listener's reconciler leaves it alone."""
    with listener.db.session() as s:
        study_id = s.scalar(select(Study.id).where(Study.study_instance_uid == study_uid))
        later = utcnow().replace(year=utcnow().year + 1)
        n = s.scalar(select(func.count()).select_from(Job).where(Job.study_id == study_id))
        job = Job(study_id=study_id, version=1, pipeline=f"stow-test-{n}", state=JobState.RUNNING,
                  queue="infer", attempts=attempt, queued_at=utcnow(), started_at=utcnow(),
                  heartbeat_at=later, task_id=f"stow-test-{attempt}")
        s.add(job)
        s.flush()
        return job.id


def _stow(listener: Listener, study_uid: str, parts: list[tuple[str, bytes]],
          token: str | None = None, fence: tuple[int, int] | None = None) -> httpx.Response:
    boundary = new_boundary()
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\nContent-Location: "
                    f"{loc}\r\n\r\n".encode() + data + b"\r\n" for loc, data in parts)
    body += f"--{boundary}--\r\n".encode()
    if fence is None:
        fence = (listener.stow_job(study_uid), 2)
    return httpx.post(f"{listener.url}/studies/{study_uid}", content=body,
                      params={"job": fence[0], "attempt": fence[1]},
                      headers={"Authorization": f"Bearer {token or listener.token}",
                               "Content-Type": related_type(boundary)}, timeout=30)


def _folder(listener: Listener, study_uid: str) -> str:
    with listener.db.read() as s:
        first = s.scalar(select(Study.first_received_at)
                         .where(Study.study_instance_uid == study_uid))
    return results_folder(listener.proc.data_dir / "results", study_uid, first.isoformat()).name


def test_stow_stores_a_result_where_the_worker_names_it(listener: Listener,
                                                        study: dict[str, Any]) -> None:
    uid = study["uid"]
    sop, data = _result(uid)
    name = hashlib.sha256(sop.encode()).hexdigest()[:40] + ".dcm"
    rel = f"{_folder(listener, uid)}/v2/cxr-anomaly/{name}"
    response = _stow(listener, uid, [(rel, data)])
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["00081199"]["Value"][0]["00081155"]["Value"] == [sop]
    assert "00081198" not in answer
    stored = listener.proc.data_dir / "results" / rel
    assert stored.read_bytes() == data and stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert not [p for p in stored.parent.iterdir() if p.name.startswith(".")]  # no temp left
    # sent again (a retried job): the same answer, the same file
    assert _stow(listener, uid, [(rel, data)]).status_code == 200


def test_stow_refuses_every_other_place(listener: Listener, study: dict[str, Any],
                                        tmp_path: Path) -> None:
    uid = study["uid"]
    sop, data = _result(uid)
    name = hashlib.sha256(sop.encode()).hexdigest()[:40] + ".dcm"
    folder = _folder(listener, uid)
    before = sorted(p for p in listener.proc.data_dir.rglob("*"))
    bad = [f"../../../{tmp_path.name}/{name}",  # path traversal
           f"{folder}/v1/../../../spool/{name}",
           f"/etc/{name}",
           f"{folder}/v1/cxr-anomaly/../{name}",
           f"{'0' * 40}/v1/cxr-anomaly/{name}",  # another study's folder
           f"{folder}/v1/cxr-anomaly/{'1' * 40}.dcm",  # name is not the SOP Instance UID's
           ""]
    for location in bad:
        response = _stow(listener, uid, [(location, data)])
        assert response.status_code == 409, (location, response.text)
        assert "00081198" in response.json() and "00081199" not in response.json()
    # the object's study is not the URL's
    other = _stow(listener, uid, [(f"{folder}/v1/x/{name}", _result("1.2.3.4.5")[1])])
    assert other.status_code == 409
    assert other.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC409]
    # one good and one bad part: 202, only the good one stored
    rel = f"{folder}/v1/cxr-anomaly/{name}"
    mixed = _stow(listener, uid, [(rel, data), (f"../{name}", data)])
    assert mixed.status_code == 202 and len(mixed.json()["00081198"]["Value"]) == 1
    after = sorted(p for p in listener.proc.data_dir.rglob("*"))
    assert set(after) - set(before) <= {listener.proc.data_dir / "results" / p for p in
                                         (folder, f"{folder}/v1", f"{folder}/v1/cxr-anomaly", rel,
                                          ".stow")}
    assert not list(tmp_path.parent.glob(f"*/{name}")) and not (Path("/etc") / name).exists()
    # a body cut off half-way stores nothing and is a 400
    boundary = new_boundary()
    cut = httpx.post(f"{listener.url}/studies/{uid}", params={
        "job": listener.stow_job(uid), "attempt": 2}, content=(
        f"--{boundary}\r\nContent-Type: application/dicom\r\nContent-Location: "
        f"{folder}/v3/p/{name}\r\n\r\n").encode() + data[:100],
        headers={"Authorization": f"Bearer {listener.token}",
                 "Content-Type": related_type(boundary)})
    assert cut.status_code == 400
    assert not (listener.proc.data_dir / "results" / folder / "v3").exists()
    assert not list((listener.proc.data_dir / "results" / ".stow").iterdir())  # nothing left
    # not multipart at all, and an unknown study
    assert httpx.post(f"{listener.url}/studies/{uid}", params={
        "job": listener.stow_job(uid), "attempt": 2}, content=data, headers={
        "Authorization": f"Bearer {listener.token}", "Content-Type": "application/dicom"}
    ).status_code == 415
    assert _stow(listener, "1.2.3.9", [(rel, data)]).status_code == 404


def test_stow_is_fenced_by_the_job_attempt(listener: Listener, study: dict[str, Any],
                                           tmp_path: Path) -> None:
    """A worker host that comes back after its job was handed on cannot replace the files of
    the attempt that holds the job now: its STOW names an attempt that no longer runs."""
    uid = study["uid"]
    sop, data = _result(uid)
    name = hashlib.sha256(sop.encode()).hexdigest()[:40] + ".dcm"
    rel = f"{_folder(listener, uid)}/v1/stow-fence/{name}"
    stored = listener.proc.data_dir / "results" / rel
    job = _running_job(listener, uid, attempt=3)
    for fence in ((job, 2), (job, 4), (999999, 3)):  # an attempt that was, one to come, no job
        stale = _stow(listener, uid, [(rel, data)], fence=fence)
        assert stale.status_code == 412, stale.text
        assert "not running under attempt" in stale.json()["detail"]
    assert not stored.exists()
    other = _running_job(listener, uid, attempt=1)
    with listener.db.session() as s:  # the job handed on: back to the queue
        s.get(Job, other).state = JobState.QUEUED
    assert _stow(listener, uid, [(rel, data)], fence=(other, 1)).status_code == 412
    assert not stored.exists()
    unnamed = httpx.post(f"{listener.url}/studies/{uid}", content=b"", headers={
        "Authorization": f"Bearer {listener.token}", "Content-Type": related_type("x")})
    assert unnamed.status_code == 422  # no job and attempt: not a worker's results
    assert _stow(listener, uid, [(rel, data)], fence=(job, 3)).status_code == 200
    assert stored.read_bytes() == data
    # the worker's client: a 412 is StaleAttempt (the task records nothing), not retried
    settings = load_settings(storage={"data_dir": tmp_path / "worker-host"}, worker={
        "listener_url": listener.url, "listener_token": listener.token},
        broker={"url": "redis://127.0.0.1:1/0"}, database={"url": "postgresql://x@127.0.0.1/x"})
    local = tmp_path / "result.dcm"
    local.write_bytes(data)
    with pytest.raises(StaleAttempt, match=f"job {job} attempt 2"):
        ReceivingNode(settings).store_results(uid, [(local, rel)], job_id=job, attempt=2)
    assert ReceivingNode(settings).store_results(uid, [(local, rel)], job_id=job, attempt=3) == 1
