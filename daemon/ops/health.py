"""Readiness: can this installation take a study and bring it through now?

Each check returns a :class:`Check`; :func:`readiness` runs them all (it never
stops at the first failure, so an admin sees every cause at once).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass

from sqlalchemy import func, select

from daemon.dispatch.broker import Broker
from daemon.config import Settings
from daemon.store.db import Database
from daemon.store.models import Job, JobState, utcnow
from daemon.supervisor import read_state, restarting_detail


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def spool_free_bytes(settings: Settings) -> int:
    """Free bytes on the file system holding the spool (or its nearest existing parent)."""
    path = settings.spool_dir
    while not path.exists() and path != path.parent:
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def check_database(db: Database) -> Check:
    """Reachable, and its schema current (read only: a pending migration is reported,
    never applied here)."""
    try:
        db.ping()
    except Exception as exc:  # noqa: BLE001
        return Check("database", False, f"unreachable: {_short(exc)}")
    try:
        problem = db.schema_problem()
    except Exception as exc:  # noqa: BLE001
        return Check("database", False, f"reachable, but its schema version cannot be read: "
                                        f"{_short(exc)}")
    if problem:
        return Check("database", False, problem)
    return Check("database", True, "reachable, schema current")


def check_broker(broker: Broker) -> Check:
    try:
        broker.ping()
    except Exception as exc:  # noqa: BLE001
        return Check("broker", False, f"unreachable: {_short(exc)}")
    return Check("broker", True, "reachable")


def check_disk(settings: Settings) -> Check:
    floor = settings.storage.min_free_bytes
    try:
        free = spool_free_bytes(settings)
    except OSError as exc:
        return Check("disk", False, f"cannot stat the spool: {exc}")
    ok = free >= floor
    return Check("disk", ok, f"{free} B free, floor {floor} B"
                 + ("" if ok else ": the listener refuses instances"))


def check_listener(settings: Settings, accepting: Callable[[], bool] | None = None) -> Check:
    """In-process: ask the listener; always also try a TCP connection to its port."""
    if accepting is not None and not accepting():
        return Check("listener", False, "the listener is not running in this process")
    host = settings.listener.host
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    try:
        with socket.create_connection((host, settings.listener.port), timeout=1.0):
            pass
    except OSError as exc:
        return Check("listener", False, f"{host}:{settings.listener.port} not accepting: {exc}")
    return Check("listener", True, f"{host}:{settings.listener.port} accepting")


def queued_by_queue(db: Database) -> dict[str, int]:
    with db.read() as session:
        return dict(session.execute(
            select(Job.queue, func.count()).where(Job.state == JobState.QUEUED)
            .group_by(Job.queue)).all())


def check_workers(db: Database, broker: Broker, heartbeat_timeout: float) -> Check:
    """Every queue with queued jobs needs a consumer (asked via the broker, else heartbeats)."""
    try:
        waiting = queued_by_queue(db)
    except Exception as exc:  # noqa: BLE001
        return Check("workers", False, f"cannot read jobs: {_short(exc)}")
    if not waiting:
        return Check("workers", True, "no queued jobs")
    workers = broker.workers()
    if workers is not None:
        served = {q for w in workers for q in w.queues}
        how = f"{len(workers)} worker(s) answered"
    else:  # broker remote control unavailable: a recent heartbeat proves a consumer
        since = utcnow() - dt.timedelta(seconds=heartbeat_timeout)
        with db.read() as session:
            served = set(session.scalars(select(Job.queue).where(
                Job.heartbeat_at >= since).distinct()).all())
        how = "no broker answer; judged by job heartbeats"
    missing = sorted(q for q in waiting if q not in served)
    if missing:
        return Check("workers", False, f"no worker for queue(s) {', '.join(missing)} "
                     f"with {sum(waiting[q] for q in missing)} queued job(s) ({how})")
    return Check("workers", True, f"every queue with jobs has a worker ({how})")


def readiness(settings: Settings, db: Database, broker: Broker,
              listener_accepting: Callable[[], bool] | None = None) -> list[Check]:
    database = check_database(db)
    checks = [database, check_broker(broker), check_disk(settings),
              check_listener(settings, listener_accepting)]
    if not database.ok and database.detail.startswith("unreachable"):
        checks.append(Check("workers", False, "unknown: the database is unreachable"))
        return checks
    workers = check_workers(db, broker, settings.worker.heartbeat_timeout_seconds)
    if not database.ok and not workers.ok and workers.detail.startswith("cannot read jobs"):
        workers = Check("workers", False, "unknown: the database schema is not current")
    checks.append(_with_supervised_worker(settings, workers))
    return checks


def _with_supervised_worker(settings: Settings, workers: Check) -> Check:
    """A ``pacsai serve`` on this machine whose worker is down, waiting for its next try
    (daemon.supervisor), makes the workers check fail with the reason."""
    state = read_state(settings.data_dir)
    detail = restarting_detail(state) if state is not None else None
    if detail is None:
        return workers
    return Check("workers", False, detail + ("" if workers.ok else f"; {workers.detail}"))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
