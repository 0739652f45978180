"""``python -m worker``: run a Celery worker for pacsai (see ``pacsai worker``)."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    from daemon.config import load_settings
    from daemon.dispatch.tasks import embedded_broker_folders

    settings = load_settings()
    if settings.broker_url.startswith("filesystem://"):
        # kombu's filesystem transport moves consumed messages through TMPDIR: keep
        # that on the broker's file system so the move is a rename.
        tmp = embedded_broker_folders(settings)["tmp"]
        os.makedirs(tmp, mode=0o700, exist_ok=True)
        os.environ["TMPDIR"] = tmp
        import tempfile

        tempfile.tempdir = tmp
    args = list(sys.argv[1:] if argv is None else argv)
    if settings.worker.listener_url and _delivery_queue_in(args):
        print("error: a worker with worker.listener_url set must not consume the delivery "
              "queue (cpu): the result files it sends are on the receiving host", file=sys.stderr)
        sys.exit(2)
    from worker.celery_app import app

    if "--pool" in args:  # tasks read it to decide on dynamic batching
        os.environ["PACSAI_WORKER_POOL"] = args[args.index("--pool") + 1]
    # app.worker_main() drops the worker's exit code; systemd's Restart=on-failure and
    # serve's supervisor need it (75: the consumer stopped, see worker.consumer_watch)
    from celery.bin.celery import celery as celery_cli

    celery_cli.params[0].default = app  # what app.start() does, keeping what main returns
    code = celery_cli.main(args=["worker", *args], standalone_mode=False)
    sys.exit(code if isinstance(code, int) else 0)


def _delivery_queue_in(args: list[str]) -> bool:
    from daemon.dispatch.tasks import DEFAULT_QUEUE

    for flag in ("-Q", "--queues"):
        if flag in args:
            return DEFAULT_QUEUE in args[args.index(flag) + 1].split(",")
    return True  # Celery's default: the default queue, which is delivery's


if __name__ == "__main__":
    main()
