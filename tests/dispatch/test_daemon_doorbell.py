"""The doorbell: sends off the caller's thread, never queues one job twice, survives failures."""

from __future__ import annotations

import threading

from daemon.dispatch.doorbell import Doorbell
from daemon.routing.jobs import CompletedJob
from pacsai_process import wait_until


def _job(job_id: int) -> CompletedJob:
    return CompletedJob(job_id, study_id=job_id, version=1, queue="infer", priority="routine")


def test_a_long_outage_does_not_pile_up_duplicates() -> None:
    broker_answers = threading.Event()
    sent: list[int] = []

    def dispatch(job: CompletedJob) -> str:  # a broker that hangs until it answers
        if not broker_answers.wait(10):
            raise TimeoutError("broker did not answer")
        if job.job_id == 2 and 2 not in sent:
            sent.append(2)
            raise ConnectionError("first send of job 2 fails")
        sent.append(job.job_id)
        return f"task-{job.job_id}"

    bell = Doorbell(dispatch)
    bell.start()
    try:
        bell.ring(_job(1))  # taken at once, now stuck on the broker
        wait_until(lambda: bell.waiting() == 0, 5, 0.01)
        for _ in range(100):  # the reconciler asks again and again during the outage
            bell.ring(_job(1))
            bell.ring(_job(2))
        assert bell.waiting() == 2  # one each, not two hundred
        broker_answers.set()
        wait_until(lambda: bell.waiting() == 0 and len(sent) == 3, 5, 0.01)
        assert sent == [1, 1, 2]  # job 1 again (asked after its send began), job 2 failed once
        bell.ring(_job(2))  # after a failure a new ring sends again
        wait_until(lambda: sent == [1, 1, 2, 2], 5, 0.01)
    finally:
        broker_answers.set()
        bell.stop()
