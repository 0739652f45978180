"""What the broker knows: reachability, message counts per queue, and live workers.

Works for Redis and for the embedded filesystem transport (whose remote control
runs through its ``control_folder``, so ``inspect()`` reaches workers there too).
The database stays the truth for jobs; these numbers add what only the broker
sees (messages waiting, reserved/unacked, which workers consume which queue).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from daemon.config import Settings
from daemon.dispatch.embedded_broker import broker_identity, repair_folder
from daemon.dispatch.tasks import embedded_broker_folders

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holdings:
    """What the broker holds, seen at one moment (see :meth:`Broker.holdings`)."""

    identity: str | None  # changes when the broker restarts or its folder is made again
    waiting: frozenset[str]  # task ids in the queues
    unacked: dict[str, float | None]  # task id -> when it was delivered (epoch s), if known
    stale: frozenset[str] = frozenset()  # unacked deliveries no live consumer can acknowledge
    knows_unacked: bool = False  # False: unacked messages are kept where we cannot see them

    @property
    def task_ids(self) -> set[str]:
        return set(self.waiting) | set(self.unacked)


def _task_id(message: object) -> str:
    if not isinstance(message, dict):
        return ""
    headers = message.get("headers")
    return str(headers.get("id") or "") if isinstance(headers, dict) else ""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class WorkerInfo:
    name: str
    queues: list[str]
    active: int = 0
    gpu: dict[str, Any] = field(default_factory=dict)


class Broker:
    """Read-only views of the broker; ``workers()`` results are cached for ``cache_seconds``."""

    def __init__(self, settings: Settings, celery: Celery, *, timeout: float = 1.0,
                 cache_seconds: float = 5.0) -> None:
        self.settings = settings
        self.celery = celery
        self.url = settings.broker_url
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._cached: tuple[float, list[WorkerInfo] | None] = (0.0, None)
        self._refreshing = False
        self._inspect_lock = threading.Lock()
        self._failing = False

    @property
    def is_redis(self) -> bool:
        return self.url.startswith(("redis://", "rediss://", "redis+socket://"))

    @property
    def is_embedded(self) -> bool:
        return self.url.startswith("filesystem://")

    def _redis(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=self.timeout,
                                    socket_connect_timeout=self.timeout)

    def ping(self) -> None:
        """Raise if the broker cannot be reached."""
        if self.is_redis:
            client = self._redis()
            try:
                client.ping()
            finally:
                client.close()
        elif self.is_embedded:
            for name in ("queue", "control"):
                folder = embedded_broker_folders(self.settings)[name]
                if not os.access(folder, os.W_OK | os.X_OK):
                    raise OSError(f"embedded broker folder {folder} is not writable")
        else:
            with self.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=self.timeout)

    def queue_lengths(self, queues: list[str]) -> dict[str, int]:
        """Messages waiting in each queue (not counting reserved ones)."""
        if self.is_redis:
            client = self._redis()
            try:
                out = {}
                for q in queues:
                    out[q] = sum(int(client.llen(k)) for k in self._redis_keys(q))
                return out
            finally:
                client.close()
        if self.is_embedded:
            folder = embedded_broker_folders(self.settings)["queue"]
            counts = dict.fromkeys(queues, 0)
            try:
                names = os.listdir(folder)
            except OSError:
                return counts
            for name in names:
                q = name.partition(".")[2].removesuffix(".msg")
                if q in counts:
                    counts[q] += 1
            return counts
        return {}

    def _redis_keys(self, queue: str) -> list[str]:
        """kombu keeps priority sub-queues as separate keys: ``q``, ``q<sep>1`` ... ``q<sep>9``."""
        sep = self.celery.conf.broker_transport_options.get("sep", "\x06\x16")
        return [queue] + [f"{queue}{sep}{p}" for p in range(1, 10)]

    def pending_task_ids(self, queues: list[str]) -> set[str] | None:
        """Ids of tasks the broker still holds for ``queues`` (waiting or delivered-unacked).

        ``None`` when the broker cannot tell; the caller then falls back to time alone.
        """
        held = self.holdings(queues)
        return None if held is None else held.task_ids

    def holdings(self, queues: list[str]) -> Holdings | None:
        """What the broker holds for ``queues`` now, and who it is; ``None`` if it cannot tell.

        Redis: the queue lists (every priority step) and kombu's ``unacked`` hash with each
        delivery's time (``unacked_index``), read in one MULTI so nothing is seen twice, and
        the server's ``run_id`` and start time. A delivery older than the server's start was
        restored from its data (appendonly or a dump): the consumer it went to was connected
        to the previous server and can never acknowledge it, so it is ``stale``.
        Embedded: the message files of the queue folder (made again if it went) and the
        folder's identity; unacked messages live in the workers' memory there.
        """
        try:
            if self.is_redis:
                held = self._redis_holdings(queues)
            elif self.is_embedded:
                held = self._embedded_holdings(queues)
            else:
                return None
        except Exception as exc:  # noqa: BLE001 - unknown: time decides
            if not self._failing:  # once per outage, not once per reconcile pass
                log.warning("cannot list the broker's pending tasks: %s", exc)
            self._failing = True
            return None
        if self._failing:
            log.info("the broker answers again")
            self._failing = False
        return held

    def _redis_holdings(self, queues: list[str]) -> Holdings:
        opts = self.celery.conf.broker_transport_options
        unacked_key = opts.get("unacked_key", "unacked")
        index_key = opts.get("unacked_index_key", "unacked_index")
        keys = [k for q in queues for k in self._redis_keys(q)]
        client = self._redis()
        try:
            pipe = client.pipeline(transaction=True)
            for k in keys:
                pipe.lrange(k, 0, -1)
            pipe.hgetall(unacked_key)
            pipe.zrange(index_key, 0, -1, withscores=True)
            pipe.info("server")
            *lists, unacked_raw, index, info = pipe.execute()
        finally:
            client.close()
        waiting = {_task_id(json.loads(m)) for raw in lists for m in raw}
        delivered_at = {_text(tag): float(score) for tag, score in index}
        started = (float(info.get("server_time_usec", time.time() * 1e6)) / 1e6
                   - float(info.get("uptime_in_seconds", 0)))
        unacked: dict[str, float | None] = {}
        stale: set[str] = set()
        for tag, value in unacked_raw.items():
            task_id = _task_id(json.loads(value)[0])
            at = delivered_at.get(_text(tag))
            unacked[task_id] = at
            if at is not None and at < started - 1.0:  # uptime counts whole seconds
                stale.add(task_id)
        waiting.discard("")
        unacked.pop("", None)
        return Holdings(identity=str(info.get("run_id") or "") or None,
                        waiting=frozenset(waiting), unacked=unacked,
                        stale=frozenset(stale), knows_unacked=True)

    def _embedded_holdings(self, queues: list[str]) -> Holdings:
        folders = embedded_broker_folders(self.settings)
        folder = folders["queue"]
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            for path in folders.values():  # removed or replaced: the messages are gone
                repair_folder(path)
            names = []
        identity = broker_identity(str(self.settings.embedded_broker_dir))
        wanted = {f"{q}.msg" for q in queues}
        waiting = set()
        for name in names:
            if name.partition(".")[2] in wanted:
                try:
                    with open(os.path.join(folder, name), "rb") as fh:
                        waiting.add(_task_id(json.loads(fh.read())))
                except (OSError, ValueError):
                    continue  # consumed meanwhile, or unreadable (its job is re-sent)
        waiting.discard("")
        return Holdings(identity=identity, waiting=frozenset(waiting), unacked={},
                        stale=frozenset(), knows_unacked=False)

    def unacked(self) -> int | None:
        """Messages delivered to a worker and not yet acknowledged (Redis only)."""
        if not self.is_redis:
            return None
        client = self._redis()
        try:
            return int(client.hlen("unacked"))
        finally:
            client.close()

    def workers(self, *, fresh: bool = False) -> list[WorkerInfo] | None:
        """Workers that answered; ``None`` if the broker could not be asked.

        One broadcast (``pacsai_info``, see worker.control) waits ``timeout`` seconds for
        answers, so results are cached for ``cache_seconds`` and, once there is a cached
        answer, refreshed in the background: a scrape or /readyz never waits on it.
        """
        with self._lock:
            at, cached = self._cached
            age = time.monotonic() - at
            if not fresh and at and age < self.cache_seconds:
                return cached
            if not fresh and at and age < 60:
                if not self._refreshing:
                    self._refreshing = True
                    threading.Thread(target=self._refresh, name="broker-inspect",
                                     daemon=True).start()
                return cached
        return self._refresh()

    def _refresh(self) -> list[WorkerInfo] | None:
        try:
            result: list[WorkerInfo] | None = self._inspect()
        except Exception as exc:  # noqa: BLE001 - the caller falls back to heartbeats
            log.warning("cannot inspect workers: %s", exc)
            result = None
        with self._lock:
            self._cached = (time.monotonic(), result)
            self._refreshing = False
        return result

    def _inspect(self) -> list[WorkerInfo]:
        with self._inspect_lock:  # one broadcast at a time per process
            replies = self.celery.control.inspect(timeout=self.timeout)._request("pacsai_info")
        return [
            WorkerInfo(name=name, queues=sorted(info.get("queues") or []),
                       active=int(info.get("active") or 0), gpu=dict(info.get("gpu") or {}))
            for name, info in sorted((replies or {}).items()) if isinstance(info, dict)
        ]
