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

Damage does not stop it: a queue, control or temporary folder that was removed (or
replaced by something that is not a folder, which is kept aside) is made again by the
first channel that needs it, an unreadable message is skipped, and an exchange table
that cannot be parsed starts again empty. The broker folder carries an ``identity``
file made with it (:func:`broker_identity`), so the reconciler sees a folder made
again as a broker restart and re-sends the jobs whose messages went with it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from queue import Empty
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)

TRANSPORT = f"{__name__}:Transport"
IDENTITY_FILE = "identity"


def repair_folder(path: str) -> bool:
    """Make ``path`` a folder (mode 0700) again; True if it was missing or not a folder.

    Something else where the folder should be (a file, a dangling link) is kept aside as
    ``<path>.corrupt-<ns>`` for inspection, never deleted.
    """
    if os.path.isdir(path):
        return False
    if os.path.lexists(path):
        aside = f"{path}.corrupt-{time.time_ns()}"
        os.replace(path, aside)
        log.error("embedded broker: %s was not a folder; moved it to %s", path, aside)
    os.makedirs(path, mode=0o700, exist_ok=True)
    log.warning("embedded broker: made folder %s again (the messages it held are gone; the "
                "reconciler re-sends their jobs)", path)
    return True


def broker_identity(base: str) -> str:
    """A name for this incarnation of the broker folder ``base``.

    It is written when the folder is first made (or made again after being removed), so a
    change tells the reconciler that the broker lost what it held, as a Redis ``run_id``
    change does.
    """
    path = os.path.join(base, IDENTITY_FILE)
    for _ in range(3):
        try:
            with open(path, encoding="ascii", errors="replace") as fh:
                name = fh.read().strip()
            if name:
                return name
            os.unlink(path)  # empty or torn: give it a new name
        except FileNotFoundError:
            pass
        os.makedirs(base, mode=0o700, exist_ok=True)
        partial = os.path.join(base, f".{uuid.uuid4().hex}.part")
        with open(partial, "w", encoding="ascii") as fh:
            fh.write(uuid.uuid4().hex)
        try:
            os.link(partial, path)  # create-if-absent, whole: one name even if two make it
        except FileExistsError:
            pass
        finally:
            os.unlink(partial)
    raise OSError(f"cannot name the embedded broker folder {base}")

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
        try:
            self._put_once(queue, payload)
        except ChannelError:
            if os.path.isdir(self.data_folder_out):
                raise
            self._repair()  # the folder was removed or replaced: make it again, try once more
            self._put_once(queue, payload)

    def _put_once(self, queue: str, payload: Any) -> None:
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

    def _folders(self) -> list[str]:
        folders = [self.data_folder_in, self.data_folder_out, str(self.control_folder)]
        if self.store_processed:
            folders.append(self.processed_folder)
        return list(dict.fromkeys(folders))

    def _repair(self) -> None:
        """Make the broker's folders again where they are missing or not folders."""
        for folder in self._folders():
            repair_folder(folder)
        self._floor = None

    def _get(self, queue: str) -> Any:
        """The first message of ``queue`` in name order (priority, then time), taken whole.

        A missing or replaced queue folder is made again (its messages are gone: the
        reconciler re-sends their jobs) and an unreadable message is logged and skipped,
        so neither stops the consumer.
        """
        wanted = f"{queue}.msg"
        try:
            names = sorted(n for n in os.listdir(self.data_folder_in) if n.partition(".")[2] == wanted)
        except (FileNotFoundError, NotADirectoryError):
            self._repair()
            raise Empty() from None
        target = self.processed_folder if self.store_processed else tempfile.gettempdir()
        for name in names:
            taken = os.path.join(target, name)
            try:
                shutil.move(os.path.join(self.data_folder_in, name), taken)
            except FileNotFoundError:
                if not os.path.isdir(target):  # our tmp folder went with the broker's
                    repair_folder(target)
                continue  # or another consumer took it first
            except OSError:
                continue
            try:
                with open(taken, "rb") as fh:
                    payload = fh.read()
                if not self.store_processed:
                    os.remove(taken)
            except OSError as exc:
                raise ChannelError(f"cannot read message {taken!r}: {exc}") from exc
            try:
                return loads(bytes_to_str(payload))
            except ValueError as exc:
                log.error("embedded broker: skipped an unreadable message in queue %s: %s", queue, exc)
        raise Empty()

    def _size(self, queue: str) -> int:
        try:
            return super()._size(queue)
        except (FileNotFoundError, NotADirectoryError):
            self._repair()
            return 0

    def _purge(self, queue: str) -> int:
        try:
            return super()._purge(queue)
        except (FileNotFoundError, NotADirectoryError):
            self._repair()
            return 0

    def get_table(self, exchange: str) -> Any:
        try:
            return super().get_table(exchange)
        except ValueError as exc:  # a corrupt table: start it again, empty
            self._reset_table(exchange, exc)
            return []

    def _reset_table(self, exchange: str, exc: Exception) -> None:
        table = self._exchange_file(exchange)
        log.error("embedded broker: exchange table %s was unreadable (%s); starting it again "
                  "empty (its consumers bind again when they restart)", table, exc)
        partial = table.with_name(f".{uuid.uuid4().hex}.part")
        partial.write_bytes(b"[]")
        os.replace(partial, table)

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        if not self.control_folder.is_dir():
            self._repair()
        table = self._exchange_file(exchange)
        if not table.exists():
            partial = table.with_name(f".{uuid.uuid4().hex}.part")
            partial.write_bytes(b"[]")
            try:
                os.link(partial, table)  # create-if-absent, whole
            except FileExistsError:
                pass  # another process made it first
            finally:
                partial.unlink()
        try:
            super()._queue_bind(exchange, routing_key, pattern, queue)  # locked read-modify-write
        except ValueError as exc:
            self._reset_table(exchange, exc)
            super()._queue_bind(exchange, routing_key, pattern, queue)

    def _delete(self, queue: str, exchange: str, routing_key: str, pattern: str,
                *args: Any, **kwargs: Any) -> None:
        try:
            super()._delete(queue, exchange, routing_key, pattern, *args, **kwargs)
        except ValueError as exc:
            self._reset_table(exchange, exc)


class Transport(filesystem.Transport):
    Channel = Channel
