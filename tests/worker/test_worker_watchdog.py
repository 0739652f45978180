"""Thread-pool workers get the prefork pool's time limits from the watchdog."""

from __future__ import annotations

import threading
import time

from celery.exceptions import SoftTimeLimitExceeded

from worker.watchdog import EXIT_HARD_LIMIT, Watchdog


def test_soft_limit_interrupts_python_code() -> None:
    dog = Watchdog(0.3, 30, period=0.05, exit_process=lambda code: None)
    seen: list[str] = []

    def task() -> None:
        with dog.watch("job 1", on_hard=lambda: seen.append("hard")):
            try:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:  # a model loop in Python
                    sum(range(1000))
            except SoftTimeLimitExceeded:
                seen.append("soft")

    t = threading.Thread(target=task)
    t.start()
    t.join(5)
    assert seen == ["soft"]


def test_hard_limit_fails_the_job_and_replaces_the_process() -> None:
    """A call stuck in native code never sees the soft limit: the hard one ends the process."""
    exits: list[int] = []
    recorded = threading.Event()
    dog = Watchdog(0.2, 0.6, period=0.05, exit_process=exits.append)

    def task() -> None:
        try:
            with dog.watch("job 2", on_hard=recorded.set):
                time.sleep(3)  # stands for an engine call that does not return
        except SoftTimeLimitExceeded:
            pass

    t = threading.Thread(target=task, daemon=True)
    started = time.monotonic()
    t.start()
    assert recorded.wait(5)
    assert time.monotonic() - started < 2.5  # long before the call returned
    time.sleep(0.2)
    assert exits == [EXIT_HARD_LIMIT]
