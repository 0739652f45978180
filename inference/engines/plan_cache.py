"""Files of the TensorRT engine cache: written whole or not at all, built by one process at a time.

* :func:`atomic_write`: a temporary file in the same folder, fsynced, renamed over the target
  with :func:`os.replace`, then the folder fsynced. A reader (or a process that starts after a
  crash) sees the old file or the new one, never a torn one.
* :func:`exclusive`: an ``fcntl.flock`` on a ``.lock`` file next to the plan. Two workers that
  need the same plan at once build it once: the second waits, then finds the plan the first
  wrote. The kernel drops the lock when its holder exits, even on SIGKILL, so a crashed build
  leaves no stale lock behind. Lock files are never removed (removing one while another
  process waits on it would let a third take a different lock on a new file).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Replace ``path`` with ``data`` durably; on any error the old file (if any) is left as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def remove_stale_temporaries(path: Path) -> None:
    """Temporary files a crashed writer of ``path`` left; call only while holding its lock."""
    for stale in Path(path).parent.glob(f".{Path(path).name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            log.info("removed %s, left by an interrupted write", stale)


@contextlib.contextmanager
def exclusive(lock_path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if missing) for the block."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is building %s; waiting for it", what)
            start = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)
            log.info("waited %.1f s for %s", time.monotonic() - start, what)
        yield
    finally:
        os.close(fd)  # releases the lock
