"""Study tracking on SQLite and PostgreSQL: completion, versions, idempotency, recovery."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from daemon.ingest.recovery import recover_spool
from daemon.ingest.spool import Spool
from daemon.store.db import Database
from daemon.store.models import Instance, Job, Study, StudyState
from daemon.ingest.arrival import Arrival
from daemon.ingest.tracker import StudyTracker
from daemon.routing.jobs import CompletedJob
from daemon.store.timeline import timeline
from dicom_io.synthetic_study import ct_series
from dicom_io.wire import inspect_dataset


class Harness:
    def __init__(self, db: Database, spool: Spool, quiet: float = 0.3, max_wait: float = 30) -> None:
        self.db = db
        self.spool = spool
        self.completed: list[CompletedJob] = []
        self.done = threading.Event()
        self.tracker = StudyTracker(db, quiet_seconds=quiet, max_wait_seconds=max_wait,
                                    poll_seconds=0.05, on_complete=self._on_complete)

    def _on_complete(self, job: CompletedJob) -> None:
        self.completed.append(job)
        self.done.set()

    def receive(self, ds, assoc: int | None = 1) -> None:  # type: ignore[no-untyped-def]
        import io

        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        raw = buf.getvalue()
        stream = raw[132 + 12 + int.from_bytes(raw[140:144], "little"):]
        header = inspect_dataset(stream, str(ds.file_meta.TransferSyntaxUID))
        stored = self.spool.store(header.study_instance_uid, header.sop_instance_uid, [raw])
        self.tracker.record(Arrival(header=header, stored=stored,
                                    transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                                    calling_aet="SCU", called_aet="PACSAI", assoc_id=assoc))

    def wait_complete(self, n: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(self.completed) < n:
            assert time.monotonic() < deadline, f"only {len(self.completed)} of {n} completions"
            time.sleep(0.02)


@pytest.fixture
def harness(db: Database, tmp_path: Path):  # type: ignore[no-untyped-def]
    h = Harness(db, Spool(tmp_path / "spool"))
    h.tracker.start()
    yield h
    h.tracker.stop()


def _count(db: Database, model) -> int:  # type: ignore[no-untyped-def]
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_completion_after_release_and_quiet(harness: Harness) -> None:
    series = list(ct_series(5, 32))
    for ds in series:
        harness.receive(ds, assoc=7)
    time.sleep(0.6)  # longer than quiet, but the association is still open
    assert harness.completed == []
    harness.tracker.association_released(7)
    harness.wait_complete(1)
    job = harness.completed[0]
    with harness.db.session() as s:
        study = s.get(Study, job.study_id)
        assert study.state == StudyState.QUEUED and study.num_instances == 5
        assert s.get(Job, job.job_id).state == "queued"
    kinds = [e.kind for e in timeline(harness.db, job.study_id)]
    assert kinds == ["receiving", "received", "complete", "queued"]


def test_max_wait_completes_an_open_study(db: Database, tmp_path: Path) -> None:
    h = Harness(db, Spool(tmp_path / "spool"), quiet=0.1, max_wait=0.5)
    h.tracker.start()
    try:
        h.receive(next(ct_series(1, 32)), assoc=1)  # association never released
        h.wait_complete(1, timeout=5)
        detail = [e.detail for e in timeline(db, h.completed[0].study_id) if e.kind == "complete"]
        assert detail[0]["reason"] == "max_wait"
    finally:
        h.tracker.stop()


def test_resend_is_idempotent_and_late_instances_open_a_version(harness: Harness) -> None:
    study_uid = "1.2.826.0.1.3680043.10.1484." + str(uuid.uuid4().int)[:20]
    first = list(ct_series(3, 32, study_uid=study_uid, seed=1))
    for ds in first:
        harness.receive(ds)
    harness.tracker.association_released(1)
    harness.wait_complete(1)
    for ds in first:  # the same study sent twice
        harness.receive(ds, assoc=2)
    harness.tracker.association_released(2)
    time.sleep(0.8)
    assert len(harness.completed) == 1, "an identical re-send must not re-open the study"
    assert _count(harness.db, Instance) == 3
    assert len(list(harness.spool.iter_files())) == 3

    late = next(ct_series(1, 32, study_uid=study_uid, seed=2))
    harness.receive(late, assoc=3)
    harness.tracker.association_released(3)
    harness.wait_complete(2)
    v2 = harness.completed[1]
    assert v2.version == 2 and v2.study_id == harness.completed[0].study_id
    assert v2.job_id != harness.completed[0].job_id
    with harness.db.session() as s:
        assert s.get(Study, v2.study_id).num_instances == 4
        versions = sorted(s.scalars(select(Instance.version)))
    assert versions == [1, 1, 1, 2]
    assert "version_opened" in [e.kind for e in timeline(harness.db, v2.study_id)]


def test_two_associations_make_one_study(db: Database, tmp_path: Path) -> None:
    # the second association starts well within the quiet period, even on a loaded machine
    h = Harness(db, Spool(tmp_path / "spool"), quiet=1.5)
    h.tracker.start()
    try:
        series = list(ct_series(6, 32))
        for ds in series[:3]:
            h.receive(ds, assoc=10)
        h.tracker.association_released(10)
        for ds in series[3:]:
            h.receive(ds, assoc=11)
        h.tracker.association_released(11)
        h.wait_complete(1)
        time.sleep(0.5)
        assert len(h.completed) == 1
        with h.db.session() as s:
            assert s.get(Study, h.completed[0].study_id).num_instances == 6
    finally:
        h.tracker.stop()


def test_recovery_indexes_files_the_database_lacks(db: Database, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for ds in ct_series(4, 32):  # on disk, as if the process died before the commit
        path = spool.path(spool.relative_path(ds.StudyInstanceUID, ds.SOPInstanceUID))
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
    (spool.tmp / "dead.part").write_bytes(b"half")
    h = Harness(db, spool)
    h.tracker.start()
    try:
        assert recover_spool(spool, db, h.tracker) == 4
        assert recover_spool(spool, db, h.tracker) == 0
        h.wait_complete(1)
        assert _count(db, Instance) == 4
        assert not any(spool.tmp.iterdir())
    finally:
        h.tracker.stop()


def test_recovered_instances_are_routed_on_their_descriptions(db: Database, tmp_path: Path) -> None:
    """A study whose rows were lost in a crash is routed as if received: recovery reads the
    descriptions (in the instance's own character set) and body part, as the listener does."""
    from daemon.routing.rules import RouteRule, Router

    spool = Spool(tmp_path / "spool")
    series = list(ct_series(2, 32, body_part="CHEST", description="Thorax Ödem"))
    for ds in series:
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.StudyDescription = "Ganzkörper"
        ds.file_meta.SourceApplicationEntityTitle = "MODALITY"
        path = spool.path(spool.relative_path(ds.StudyInstanceUID, ds.SOPInstanceUID))
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
    assert "Ödem".encode("latin_1") in path.read_bytes()
    rules = [RouteRule.model_validate({
        "name": "oedema", "match": {"series_description": "ödem", "body_part": "CHEST",
                                    "study_description": "^Ganzkörper$",
                                    "calling_aet": ["MODALITY"]},
        "action": {"pipelines": ["a"]}})]
    h = Harness(db, spool)
    h.tracker.router = Router(["a"], rules, {})
    h.tracker.start()
    try:
        assert recover_spool(spool, db, h.tracker) == 2
        h.wait_complete(1)
        with db.read() as s:
            rows = s.scalars(select(Instance)).all()
            study = s.get(Study, h.completed[0].study_id)
            (job,) = s.scalars(select(Job)).all()
        assert {(r.series_description, r.body_part_examined, r.calling_aet) for r in rows} == {
            ("Thorax Ödem", "CHEST", "MODALITY")}
        assert study.study_description == "Ganzkörper"
        assert (job.pipeline, job.route) == ("a", "oedema")
    finally:
        h.tracker.stop()


def test_routing_at_completion(db: Database, tmp_path: Path) -> None:
    from daemon.routing.rules import RouteRule, Router

    rules = [RouteRule.model_validate(r) for r in (
        {"name": "ct", "match": {"modality": ["CT"], "body_part": "CHEST"},
         "action": {"pipelines": ["a", "b"], "priority": "stat", "destinations": ["pacs"]}},
    )]
    h = Harness(db, Spool(tmp_path / "spool"))
    h.tracker.router = Router(["a", "b"], rules, {"pacs": "PACS"})
    h.tracker.inference_queues = ["gpu.0", "gpu.1"]
    h.tracker.start()
    try:
        for ds in ct_series(2, 32, body_part="CHEST"):
            h.receive(ds, assoc=1)
        h.tracker.association_released(1)
        h.wait_complete(2)
        with db.read() as s:
            jobs = s.scalars(select(Job).order_by(Job.id)).all()
        assert [(j.pipeline, j.priority, j.destinations, j.route) for j in jobs] == [
            ("a", "stat", ["pacs"], "ct"), ("b", "stat", ["pacs"], "ct")]
        assert sorted(j.queue for j in jobs) == ["gpu.0", "gpu.1"]  # spread over the GPUs

        for ds in ct_series(1, 32, body_part="KNEE"):  # matches no rule, no default
            h.receive(ds, assoc=2)
        h.tracker.association_released(2)
        deadline = time.monotonic() + 5
        while True:
            with db.read() as s:
                knee = s.scalars(select(Study).order_by(Study.id.desc())).first()
            if knee.state == StudyState.NOT_ROUTED or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert knee.state == StudyState.NOT_ROUTED
        events = [e for e in timeline(db, knee.id) if e.kind == "not_routed"]
        assert "no rule matched" in events[0].detail["reason"]
    finally:
        h.tracker.stop()


def test_a_study_that_cannot_be_routed_does_not_hold_up_the_others(db: Database,
                                                                   tmp_path: Path) -> None:
    """A defect while routing one study (here a rule that raises) fails only that study's
    completion, each in its own transaction; the others complete on the same poll."""
    from daemon.routing.rules import Router

    class Faulty(Router):
        def route(self, facts):  # type: ignore[no-untyped-def]
            if facts.study_description == "POISON":
                raise RuntimeError("a rule failed")
            return super().route(facts)

    h = Harness(db, Spool(tmp_path / "spool"))
    h.tracker.router = Faulty(["default"])
    h.tracker.start()
    try:
        poison = list(ct_series(1, 32, seed=1))
        poison[0].StudyDescription = "POISON"
        h.receive(poison[0], assoc=1)
        h.tracker.association_released(1)
        time.sleep(0.5)  # the poisoned study is due first and fails
        for n, ds in enumerate([*ct_series(1, 32, seed=2), *ct_series(1, 32, seed=3)]):
            h.receive(ds, assoc=10 + n)
            h.tracker.association_released(10 + n)
        h.wait_complete(2)
        with db.read() as s:
            states = {st.study_description: st.state for st in s.scalars(select(Study))}
        assert states.pop("POISON") == StudyState.RECEIVING  # kept, tried again later
        assert set(states.values()) == {StudyState.QUEUED}
    finally:
        h.tracker.stop()
