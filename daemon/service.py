"""Process assembly: the listener service, and ``serve`` = listener + a supervised worker
(restarted with backoff when it exits, see daemon.supervisor)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

from celery import Celery

from daemon.ops import reports
from daemon.dispatch.broker import Broker
from daemon.config import CONFIG_ENV, Settings
from daemon.ingest.listener import Listener
from daemon.ops.notify import Notifier
from daemon.dispatch.tasks import make_celery, send_delivery
from daemon.dispatch.doorbell import Dispatcher, Doorbell
from daemon.dispatch.reconciler import Reconciler
from daemon.routing.rules import Router
from daemon.ingest.recovery import recover_spool
from daemon.ops.retention import purge
from daemon.ingest.spool import Spool
from daemon.ops.admin.app import create_app
from daemon.ops.admin.server import AdminServer
from daemon.store.db import Database
from daemon.ingest.tracker import StudyTracker
from daemon.routing.jobs import CompletedJob
from daemon.supervisor import WorkerSupervisor, state_path

log = logging.getLogger(__name__)


def prepare_data_dir(settings: Settings) -> None:
    """Create the data directory readable by the service user only."""
    os.umask(0o077)
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(settings.data_dir, 0o700)


class Periodic:
    """Call ``fn`` every ``interval`` seconds in a daemon thread; errors are logged."""

    def __init__(self, name: str, interval: float, fn: Callable[[], object]) -> None:
        self.name, self.interval, self.fn = name, interval, fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.fn()
            except Exception:  # noqa: BLE001 - next round
                log.exception("%s failed", self.name)


class ListenerService:
    """Listener, study tracker, reconciler, retention and the admin service in one process."""

    def __init__(self, settings: Settings) -> None:
        prepare_data_dir(settings)
        self.settings = settings
        self.db = Database(settings.database_url, echo=settings.database.echo)
        self.spool = Spool(settings.spool_dir, min_free_bytes=settings.storage.min_free_bytes,
                           fsync=settings.storage.fsync == "always")
        self.celery: Celery = make_celery(settings, name="pacsai-listener")
        self.dispatch = Dispatcher(self.celery, self.db)
        self.doorbell = Doorbell(self.dispatch)
        self.tracker = StudyTracker(
            self.db,
            quiet_seconds=settings.study.quiet_seconds,
            max_wait_seconds=settings.study.max_wait_seconds,
            poll_seconds=settings.study.poll_seconds,
            on_complete=self.enqueue,
            router=settings.router(),
            inference_queues=settings.queues.inference,
        )
        w = settings.worker
        self.broker = Broker(settings, self.celery)
        self.reconciler = Reconciler(
            self.db, self.enqueue, deliver=self.ring_delivery,
            pending=self.broker.holdings, in_flight=self.doorbell.in_flight,
            interval=w.reconcile_seconds, requeue_after=w.requeue_after_seconds,
            heartbeat_timeout=w.heartbeat_timeout_seconds, heartbeat_every=w.heartbeat_seconds,
            confirm_after=1.0,
            max_attempts=w.max_attempts,
        )
        self.listener = Listener(settings.listener, self.spool, self.tracker)
        self.housekeeping = [
            Periodic("retention", settings.retention.interval_seconds,
                     lambda: purge(settings, self.db)),
            Periodic("queue-sampler", settings.admin.queue_sample_seconds,
                     lambda: reports.sample_queues(self.db)),
        ]
        self.admin: AdminServer | None = None

    def enqueue(self, job: CompletedJob) -> None:
        """Have the job's task sent (from the doorbell's thread; the job is committed already)."""
        self.doorbell.ring(job)

    def ring_delivery(self, destination: str) -> None:
        with self.dispatch.lock:  # the same producer connection
            send_delivery(self.celery, destination)

    def start(self) -> None:
        self.db.upgrade()
        self.doorbell.start()
        self.tracker.start()
        recover_spool(self.spool, self.db, self.tracker)
        self.reconciler.run_once(resend_all_queued=True)
        self.reconciler.start()
        self.listener.start()
        reports.sample_queues(self.db)
        for task in self.housekeeping:
            task.start()
        if self.settings.admin.port:
            self.admin = AdminServer(create_app(
                self.settings, self.db, listener_accepting=self.accepting, send=self.enqueue,
                celery=self.celery), self.settings)
            self.admin.start()

    def accepting(self) -> bool:
        return self.listener._server is not None

    def stop(self) -> None:
        if self.admin is not None:
            self.admin.stop()
        for task in self.housekeeping:
            task.stop()
        self.listener.stop()
        self.reconciler.stop()
        self.tracker.stop()
        self.doorbell.stop()  # what it could not send stays queued: start-up re-sends it
        self.db.dispose()


def worker_command(settings: Settings, queues: list[str], concurrency: int,
                   *, pool: str = "prefork") -> list[str]:
    """The worker's command line. GPU workers use threads: CUDA never meets a fork."""
    return [sys.executable, "-m", "worker", "--loglevel", settings.logging.level,
            "-Q", ",".join(queues), "--concurrency", str(concurrency), "--pool", pool,
            "-n", f"pacsai-{'-'.join(queues)}@%h"]


def worker_env(settings: Settings) -> dict[str, str]:
    """The worker reads the same configuration file as its parent."""
    env = dict(os.environ)
    if settings.config_path is not None:
        env[CONFIG_ENV] = str(settings.config_path)
    return env


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_until_signal(stop: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        log.info("signal %d received, stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def serve(settings: Settings, *, with_worker: bool = True) -> None:
    """Run the listener service (and, for ``serve``, a supervised worker) until a signal."""
    stop = threading.Event()
    run_until_signal(stop)
    notifier = Notifier()
    service = ListenerService(settings)
    service.start()
    notifier.ready(f"listening on port {service.listener.port}")
    cmd = worker_command(settings, ["cpu", *settings.queues.inference], settings.worker.concurrency)
    env = worker_env(settings)
    env.pop("NOTIFY_SOCKET", None)  # the supervised worker is not the unit's main process
    worker = WorkerSupervisor(cmd, env, state_path(settings.data_dir),
                              preexec_fn=_die_with_parent) if with_worker else None
    try:
        while not stop.is_set():
            wait = min(1.0, notifier.interval)
            if worker is not None:
                worker.poll()  # starts it, or notices an exit and schedules the next try
                due = worker.seconds_to_next_start()
                if due is not None:
                    wait = min(wait, max(due, 0.05))
            notifier.maybe_ping()  # from this loop: a hung loop stops the watchdog pings
            stop.wait(wait)
    finally:
        notifier.stopping()
        if worker is not None:
            worker.stop()
        service.stop()


def serve_admin(settings: Settings) -> None:
    """``pacsai admin``: the admin service alone (the listener runs in another process)."""
    stop = threading.Event()
    run_until_signal(stop)
    prepare_data_dir(settings)
    notifier = Notifier()
    db = Database(settings.database_url, echo=settings.database.echo)
    db.upgrade()
    server = AdminServer(create_app(settings, db), settings)
    server.start()
    notifier.ready(f"admin on port {settings.admin.port}")
    try:
        while not stop.is_set():
            notifier.maybe_ping()
            stop.wait(min(1.0, notifier.interval))
    finally:
        notifier.stopping()
        server.stop()
        db.dispose()
