"""kombu's filesystem transport, with messages that appear whole or not at all.

The stock transport creates ``<n>_<uuid>.<queue>.msg`` and then writes into it, so
a consumer listing the folder in between moves an empty file away, fails to parse
it and the message is gone (about 1 in 3000 under load; the reconciler would bring
the job back, but only after ``requeue_after_seconds``). Here a message is written
under a name no consumer matches and renamed into place once complete; a file that
still cannot be parsed is logged and skipped instead of breaking the consumer.

The same holds for the fanout exchange tables under ``control_folder`` (remote
control, events): the stock transport creates a table file empty and fills it
after, so a publisher reading it in between fails; here it appears holding ``[]``
and is then updated under kombu's lock.

Priorities, as pacsai uses them on Redis (0 = stat is served first, 9 last): the
file name starts with the message's priority, then a zero-padded time, and
consumers take the first name in sorted order, so a stat study overtakes a
routine backlog here too.

The time is wall-clock nanoseconds since the epoch, so messages left in the queue
by an earlier boot still sort first after a reboot (a monotonic clock restarts at
zero there). It never goes backwards: within a process each stamp is past the
previous one even if the clock is stepped back, and a process starts past the
newest message already in the folder (a clock set wrong after a reboot).
Files named by an older version (monotonic stamps, far smaller) sort first too.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

log = logging.getLogger(__name__)

TRANSPORT = f"{__name__}:Transport"

_stamp_lock = threading.Lock()
_last_stamp = 0


def _stamp(floor: int = 0) -> int:
    """Wall-clock ns, strictly increasing within this process and past ``floor``."""
    global _last_stamp
    with _stamp_lock:
        _last_stamp = max(time.time_ns(), _last_stamp + 1, floor + 1)
        return _last_stamp


def _newest_stamp(folder: str) -> int:
    """The largest time stamp among the message files in ``folder`` (0 if none)."""
    newest = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        parts = name.split("_", 2)
        if len(parts) == 3 and parts[1].isdigit():
            newest = max(newest, int(parts[1]))
    return newest


class Channel(filesystem.Channel):
    """Atomic ``_put``; ``_get`` that survives a malformed message file."""

    _floor: int | None = None

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        priority = self._get_message_priority(payload)  # 0..9, kombu's default 0 when unset
        if self._floor is None:  # once per channel: start past what is queued already
            self._floor = _newest_stamp(self.data_folder_out)
        name = f"{priority}_{_stamp(self._floor):020d}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{uuid.uuid4().hex}.part")
        try:
            with open(partial, "wb") as fh:
                fh.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            try:
                os.unlink(partial)
            except OSError:
                pass
            raise ChannelError(f"cannot add a message to {self.data_folder_out!r}: {exc}") from exc

    def _get(self, queue: str) -> Any:
        while True:  # each failed try has consumed one bad file; Empty ends the loop
            try:
                return super()._get(queue)
            except ValueError as exc:
                log.error("embedded broker: skipped an unreadable message in queue %s: %s", queue, exc)


    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        table = self._exchange_file(exchange)
        self.control_folder.mkdir(exist_ok=True)
        if not table.exists():
            partial = table.with_name(f".{uuid.uuid4().hex}.part")
            partial.write_bytes(b"[]")
            try:
                os.link(partial, table)  # create-if-absent, whole
            except FileExistsError:
                pass  # another process made it first
            finally:
                partial.unlink()
        super()._queue_bind(exchange, routing_key, pattern, queue)  # locked read-modify-write


class Transport(filesystem.Transport):
    Channel = Channel
