"""Durable, atomic files: whole under their final name, or not there at all.

Used by the spool (received instances) and by the worker's result objects.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def write_atomically(tmp: Path, final: Path, chunks: Iterable[bytes | memoryview], *,
                     fsync: bool, mode: int = 0o600) -> None:
    """Write ``chunks`` to ``tmp`` (``mode``), fsync it, rename it to ``final``.

    On any ``OSError`` (a full disk, say) ``tmp`` is removed and the error re-raised with
    its errno. The caller fsyncs the directory (``fsync_dirs``) when the entry must last.
    """
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def fsync_dirs(*folders: Path) -> None:
    """Make the entries of ``folders`` durable (new files, renames, new sub-folders)."""
    for folder in folders:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
