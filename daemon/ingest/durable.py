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
    out = AtomicFile(tmp, final, fsync=fsync, mode=mode)
    try:
        for chunk in chunks:
            out.write(chunk)
        out.close()
        out.commit()
    except OSError:
        out.abort()
        raise


class AtomicFile:
    """:func:`write_atomically` in steps, for data that arrives in pieces (a STOW-RS part):
    ``write`` as it comes, ``close`` (fsynced), look at ``tmp`` if need be, then ``commit``
    (rename to ``final``) or ``abort`` (``tmp`` removed). The caller fsyncs the directory."""

    def __init__(self, tmp: Path, final: Path, *, fsync: bool, mode: int = 0o600) -> None:
        self.tmp, self.final, self.fsync = tmp, final, fsync
        self.size = 0
        self._fd: int | None = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def write(self, chunk: bytes | memoryview) -> None:
        assert self._fd is not None, "closed"
        view = memoryview(chunk)
        self.size += len(view)
        while view:
            view = view[os.write(self._fd, view):]

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def commit(self) -> None:
        self.close()
        os.replace(self.tmp, self.final)

    def abort(self) -> None:
        try:
            self.close()
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)


def fsync_dirs(*folders: Path) -> None:
    """Make the entries of ``folders`` durable (new files, renames, new sub-folders)."""
    for folder in folders:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
