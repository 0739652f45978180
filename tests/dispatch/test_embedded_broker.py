"""The embedded broker's transport: no message is lost to a consumer reading a half-written file."""

from __future__ import annotations

import builtins
import json
import multiprocessing as mp
import os
import time
from pathlib import Path
from queue import Empty
from typing import Any

from kombu import Connection

from daemon.config import Settings
from daemon.dispatch.embedded_broker import TRANSPORT
from daemon.dispatch.tasks import make_celery

N = 2000


def _options(folder: str) -> dict[str, str]:
    return {"data_folder_in": folder, "data_folder_out": folder}


def _consume(folder: str, ready: "mp.synchronize.Event", out: "mp.Queue[tuple[list[int], int]]") -> None:
    seen: list[int] = []
    errors = 0
    deadline = time.monotonic() + 60
    with Connection("filesystem://", transport=TRANSPORT, transport_options=_options(folder)) as conn:
        channel = conn.channel()
        ready.set()
        while len(seen) < N and time.monotonic() < deadline:
            try:
                seen.append(channel._get("q")["i"])
            except Empty:
                pass
            except Exception:  # noqa: BLE001 - counted: the stock transport fails here
                errors += 1
    out.put((seen, errors))


def test_concurrent_producer_and_consumer_lose_nothing(tmp_path: Path) -> None:
    """Another process polls while we write (the stock transport loses ~1 in 3000 here)."""
    ctx = mp.get_context("spawn")
    out: "mp.Queue[tuple[list[int], int]]" = ctx.Queue()
    ready = ctx.Event()
    consumer = ctx.Process(target=_consume, args=(str(tmp_path), ready, out))
    consumer.start()
    assert ready.wait(60)
    with Connection("filesystem://", transport=TRANSPORT, transport_options=_options(str(tmp_path))) as conn:
        channel = conn.channel()
        for i in range(N):
            channel._put("q", {"i": i, "pad": "x" * 4000})
    seen, errors = out.get(timeout=90)
    consumer.join(10)
    assert errors == 0
    assert sorted(seen) == list(range(N))  # each once
    assert not [n for n in os.listdir(tmp_path) if not n.startswith(".")]


def test_a_message_is_visible_only_when_complete(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A consumer polling while the producer writes finds nothing yet (stock kombu: a lost message)."""
    options = _options(str(tmp_path))
    with Connection("filesystem://", transport=TRANSPORT, transport_options=options) as producer, \
            Connection("filesystem://", transport=TRANSPORT, transport_options=options) as consumer:
        put, get = producer.channel(), consumer.channel()
        polled: list[object] = []
        real_open = builtins.open

        class Spied:
            def __init__(self, fh: Any) -> None:
                self.fh = fh

            def write(self, data: bytes) -> int:
                try:
                    polled.append(get._get("q"))  # the consumer polls mid-write
                except Empty:
                    polled.append(None)
                return self.fh.write(data)

            def __getattr__(self, name: str) -> Any:
                return getattr(self.fh, name)

            def __enter__(self) -> "Spied":
                return self

            def __exit__(self, *exc: object) -> None:
                self.fh.close()

        def spying_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            fh = real_open(file, mode, *args, **kwargs)
            return Spied(fh) if "w" in mode and str(file).startswith(str(tmp_path)) else fh

        monkeypatch.setattr(builtins, "open", spying_open)
        put._put("q", {"i": 1})
        monkeypatch.undo()
        assert polled == [None]
        assert get._get("q") == {"i": 1}


def test_an_unreadable_message_file_is_skipped_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "1_bad.q.msg").write_bytes(b"")  # what a crashed stock producer leaves
    (tmp_path / "2_good.q.msg").write_text(json.dumps({"i": 2}))
    with Connection("filesystem://", transport=TRANSPORT, transport_options=_options(str(tmp_path))) as conn:
        channel = conn.channel()
        assert channel._get("q") == {"i": 2}


def test_the_embedded_default_uses_this_transport(tmp_path: Path) -> None:
    settings = Settings(storage={"data_dir": tmp_path})  # type: ignore[arg-type]
    app = make_celery(settings)
    with app.connection_for_write() as conn:
        assert type(conn.transport).__module__ == "daemon.dispatch.embedded_broker"


def test_lower_priority_numbers_are_served_first_then_in_order(tmp_path: Path) -> None:
    with Connection("filesystem://", transport=TRANSPORT, transport_options=_options(str(tmp_path))) as conn:
        channel = conn.channel()
        for i in range(5):
            channel._put("q", {"body": f"routine-{i}", "properties": {"priority": 5}})
        channel._put("q", {"body": "low", "properties": {"priority": 9}})
        channel._put("q", {"body": "stat", "properties": {"priority": 0}})
        order = [channel._get("q")["body"] for _ in range(7)]
    assert order == ["stat", *(f"routine-{i}" for i in range(5)), "low"]


def test_stat_overtakes_a_routine_backlog_through_celery(tmp_path: Path) -> None:
    """What the daemon sends (daemon.dispatch.tasks.send_job) comes out stat first."""
    from daemon.dispatch.tasks import send_job
    from daemon.routing.rules import redis_priority

    app = make_celery(Settings(storage={"data_dir": tmp_path}))  # type: ignore[arg-type]
    for job_id in range(1, 11):
        send_job(app, job_id=job_id, study_id=job_id, version=1, queue="infer",
                 priority=redis_priority("routine"))
    send_job(app, job_id=99, study_id=99, version=1, queue="infer", priority=redis_priority("stat"))
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue("infer", no_ack=True)
        first = queue.get(timeout=5)
        assert first.headers["id"] and json.loads(first.body)[1]["job_id"] == 99
        assert json.loads(queue.get(timeout=5).body)[1]["job_id"] == 1
        queue.close()


def test_an_exchange_table_is_never_seen_half_made(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A publisher reading a fanout table while a worker binds to it (stock kombu: JSONDecodeError)."""
    from kombu.transport import filesystem

    options = {**_options(str(tmp_path / "q")), "control_folder": str(tmp_path / "control")}
    (tmp_path / "q").mkdir()
    with Connection("filesystem://", transport=TRANSPORT, transport_options=options) as binder, \
            Connection("filesystem://", transport=TRANSPORT, transport_options=options) as publisher:
        bind, read = binder.channel(), publisher.channel()
        seen: list[object] = []
        real_lock = filesystem.lock

        def spying_lock(fh: Any, flags: int) -> None:
            if flags == filesystem.LOCK_EX and not seen:  # the binder, about to write the table
                seen.append("reading")
                try:
                    seen.append(read.get_table("celeryev"))
                except Exception as exc:  # noqa: BLE001 - what the stock transport raises
                    seen.append(exc)
            real_lock(fh, flags)

        monkeypatch.setattr(filesystem, "lock", spying_lock)
        bind._queue_bind("celeryev", "worker.#", "", "q1")
        monkeypatch.undo()
        assert seen == ["reading", []]
        assert [q.queue for q in read.get_table("celeryev")] == ["q1"]
