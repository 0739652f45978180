"""Issue 12 end to end on three hosts that share nothing but a network.

The receiving host (PostgreSQL, Redis, ``pacsai listener`` with ``/dicomweb``, the delivery
worker and the PACS) and two worker hosts running ``pacsai worker --listener-url … --token …``,
each with its own user and data directory, reaching only the receiver's PostgreSQL, Redis and
HTTP ports. A CR and a CT study flow end to end; then a worker host loses power mid-job (its link
removed, every process SIGKILLed) and every study still gets each of its results exactly once.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

import hosts
from deployment import DICOM_PORT, HTTP_PORT, PACS_PORT, PacsaiOnHost, Receiver, remote_worker, \
    send_study, wait_until
from daemon.store.models import Delivery, Event, Job, Study
from dicom_io.synthetic_study import ct_series, radiograph
from hosts import Network

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(hosts.unavailable_reason() is not None,
                       reason=f"no test hosts: {hosts.unavailable_reason()}"),
]


def _ct(n: int, size: int, seed: int, patient: str) -> list:
    return list(ct_series(n, size, seed=seed, patient_id=patient))


def _started_on(receiver: Receiver) -> dict[int, list[str]]:
    """Job id -> the host of each attempt, in order (from the 'started' events' worker names)."""
    def q(s):  # type: ignore[no-untyped-def]
        events = s.scalars(select(Event).where(Event.kind == "started").order_by(Event.id)).all()
        out: dict[int, list[str]] = {}
        for e in events:
            out.setdefault(e.job_id, []).append(str(e.detail.get("worker", "")).split("@")[-1])
        return out
    return receiver.query(q)


def _study_state(receiver: Receiver, uids: list[str]) -> dict[str, tuple[list[str], list[str]]]:
    """Study UID -> (its jobs' states, its deliveries' states)."""
    def q(s):  # type: ignore[no-untyped-def]
        out = {}
        for uid in uids:
            study = s.scalar(select(Study).where(Study.study_instance_uid == uid))
            if study is None:
                out[uid] = ([], [])
                continue
            jobs = s.scalars(select(Job.state).where(Job.study_id == study.id)).all()
            sent = s.scalars(select(Delivery.state).where(Delivery.study_id == study.id)).all()
            out[uid] = (list(jobs), list(sent))
        return out
    return receiver.query(q)


def _finished(receiver: Receiver, uids: list[str], n_jobs: int) -> bool:
    states = _study_state(receiver, uids)
    return all(len(jobs) == n_jobs and set(jobs) <= {"done", "failed"}
               and sent and set(sent) <= {"sent", "dead"} for jobs, sent in states.values())


def _outbox(receiver: Receiver, uid: str) -> list[str]:
    def q(s):  # type: ignore[no-untyped-def]
        study = s.scalar(select(Study).where(Study.study_instance_uid == uid))
        return list(s.scalars(select(Delivery.sop_instance_uid)
                              .where(Delivery.study_id == study.id)).all())
    return receiver.query(q)


def _check_exactly_once(receiver: Receiver, uids: list[str]) -> dict[str, int]:
    """Every study's every result reached the PACS once; returns results per study."""
    assert receiver.pacs is not None
    counts = {}
    for uid in uids:
        expected = _outbox(receiver, uid)
        assert expected and len(expected) == len(set(expected)), uid
        got = Counter(receiver.pacs.of_study(uid))
        assert got == Counter(set(expected)), (uid, got, expected)
        counts[uid] = len(expected)
    assert receiver.pacs.duplicates() == {}
    return counts


def _jobs(receiver: Receiver) -> list[tuple[int, str, int, str | None]]:
    return receiver.query(lambda s: [(j.id, j.state, j.attempts, j.error)
                                     for j in s.scalars(select(Job).order_by(Job.id)).all()])


def _start_workers(receiver: Receiver, worker_hosts: list[hosts.Host]) -> list[PacsaiOnHost]:
    started: dict[str, PacsaiOnHost] = {}
    errors: list[BaseException] = []

    def one(host: hosts.Host) -> None:
        try:
            started[host.name] = remote_worker(host, receiver)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(h,)) for h in worker_hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]
    return [started[h.name] for h in worker_hosts]


def test_studies_flow_over_worker_hosts_and_survive_losing_one(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with Network(keep_logs=tmp_path) as net:
        recv = net.host("recv")
        w1, w2 = net.host("w1", isolated=True), net.host("w2", isolated=True)
        receiver = Receiver(recv, tls=True).start()  # /dicomweb over HTTPS
        try:
            _start_workers(receiver, [w1, w2])
            n_jobs = len(receiver.pipelines)
            if shutil.which("nft"):  # the worker hosts reach the receiver's 3 ports and no other
                for host in (w1, w2):
                    assert host.connect_error(recv.address, DICOM_PORT) is not None
                    assert host.connect_error(recv.address, PACS_PORT) is not None
                    assert host.can_connect(recv.address, HTTP_PORT)

            # 1. a CR and a CT study, end to end over the worker hosts
            cr = [radiograph(size=512, seed=1, modality="CR", patient_id="MH-1")]
            ct = _ct(24, 128, seed=2, patient="MH-2")
            send_study(recv, recv.address, cr)
            send_study(recv, recv.address, ct)
            first = [cr[0].StudyInstanceUID, ct[0].StudyInstanceUID]
            wait_until(lambda: _finished(receiver, first, n_jobs), 120, 0.2,
                       "CR and CT analysed and delivered")
            assert [j for j in _jobs(receiver) if j[1] != "done"] == []
            per_study = _check_exactly_once(receiver, first)
            ran_on = _started_on(receiver)
            assert {h for attempts in ran_on.values() for h in attempts} <= {"w1", "w2"}
            # the worker hosts kept nothing of the studies (fetched copies and local results go)
            for host in (w1, w2):
                leftovers = host.run(["find", host.data_dir / "pacsai", "-name", "*.dcm"]).stdout
                assert leftovers.strip() == "", leftovers
            phase1 = time.monotonic() - t0

            # 2. a worker host loses power in the middle of a job
            cr2 = [radiograph(size=512, seed=3, modality="CR", patient_id="MH-3")]
            ct2 = _ct(48, 256, seed=4, patient="MH-4")
            send_study(recv, recv.address, ct2)
            send_study(recv, recv.address, cr2)
            second = [ct2[0].StudyInstanceUID, cr2[0].StudyInstanceUID]

            def ct_jobs() -> dict[int, str]:
                return receiver.query(lambda s: dict(s.execute(
                    select(Job.id, Job.state).join(Study, Study.id == Job.study_id)
                    .where(Study.study_instance_uid == ct2[0].StudyInstanceUID)).all()))

            def running_on_w1() -> int | None:
                """A CT job (seconds long: not about to finish) that w1 is running now."""
                states = ct_jobs()
                for job_id, attempts in _started_on(receiver).items():
                    if states.get(job_id) == "running" and attempts[-1] == "w1":
                        return job_id
                return None

            victim = wait_until(running_on_w1, 60, 0.05, "a job running on w1")
            w1.power_off()
            lost_at = time.monotonic()
            wait_until(lambda: _finished(receiver, second, n_jobs), 120, 0.2,
                       "every study analysed and delivered after w1 was lost")
            recovered = time.monotonic() - lost_at
            jobs = _jobs(receiver)
            assert [j for j in jobs if j[1] != "done"] == [], jobs
            ran_on = _started_on(receiver)
            assert ran_on[victim][0] == "w1" and ran_on[victim][-1] == "w2", ran_on
            per_study |= _check_exactly_once(receiver, first + second)
            assert not w1.pids() and not w1.linked
            print(f"\nphase 1 (start-up, CR + CT) {phase1:.1f} s; job {victim} lost with w1, "
                  f"all delivered {recovered:.1f} s later; results per study "
                  f"{list(per_study.values())}; attempts by job {ran_on}")
        finally:
            receiver.stop()
