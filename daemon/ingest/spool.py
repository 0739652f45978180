"""The spool: received instances, byte for byte as sent, durably on disk.

Layout under ``<data_dir>/spool``::

    tmp/                          partial writes; emptied at start (never acknowledged)
    studies/<ab>/<study-key>/<instance-key>.dcm
    locks/<nn>.lock               study locks (striped, never removed), see study_lock()

Keys are SHA-256 digests of the UIDs: the paths are ours, whatever a peer sends
(a SOP Instance UID of ``../../etc/passwd`` is just another digest). Files are
written to ``tmp/``, fsynced, renamed into place and the directory fsynced, so a
file either is whole under its final name or does not exist. Mode 0600/0700: only
the service user reads patient data.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from daemon.ingest.durable import fsync_dirs, write_atomically

FILE_MODE = 0o600
DIR_MODE = 0o700
LOCK_STRIPES = 256


class LockBusy(TimeoutError):
    """A study lock could not be taken in time."""


class SpoolFull(OSError):
    """Free space is below the configured floor (or the disk is full)."""


class StoreOutcome(enum.Enum):
    NEW = "new"
    IDENTICAL = "identical"  # the same bytes were already held: nothing changed
    REPLACED = "replaced"  # same SOP Instance UID, different content


@dataclass(frozen=True, slots=True)
class StoredFile:
    relative_path: str
    size: int
    outcome: StoreOutcome


def key(uid: str) -> str:
    """The file-system key of a UID: hex digest, never the UID itself."""
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:40]


def results_folder(results_dir: Path, study_uid: str, incarnation: str = "") -> Path:
    """Where the result objects of one life of a study are written (under ``results_dir``)."""
    name = study_uid if not incarnation else f"{study_uid}\x1f{incarnation}"
    return results_dir / hashlib.sha256(name.encode()).hexdigest()[:40]


class Spool:
    """Durable, atomic storage of received instances."""

    def __init__(self, root: Path, *, min_free_bytes: int = 0, fsync: bool = True) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.studies = root / "studies"
        self.locks = root / "locks"
        self.min_free_bytes = min_free_bytes
        self.fsync = fsync
        for folder in (root, self.tmp, self.studies, self.locks):
            folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            os.chmod(folder, DIR_MODE)

    # -- paths -------------------------------------------------------------------------------
    def study_dir(self, study_uid: str) -> Path:
        k = key(study_uid)
        return self.studies / k[:2] / k

    def relative_path(self, study_uid: str, sop_instance_uid: str) -> str:
        k = key(study_uid)
        return f"studies/{k[:2]}/{k}/{key(sop_instance_uid)}.dcm"

    def path(self, relative_path: str) -> Path:
        return self.root / relative_path

    # -- locking ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def study_lock(self, study_uid: str, *, exclusive: bool = False,
                   timeout: float | None = None) -> Iterator[None]:
        """Hold a study's lock (``flock``: across threads and processes of this host).

        Receiving holds it shared from the spool write until the instance row is committed;
        retention holds it exclusive while it decides to remove a study's files and removes
        them. So an instance acknowledged while a purge runs is either recorded before the
        purge looks (and the purge sees the study active again) or written after the purge
        is done: never removed after it was acknowledged. Locks are striped over
        ``LOCK_STRIPES`` files that are never removed (no lock on an unlinked file).
        """
        stripe = int(key(study_uid)[:8], 16) % LOCK_STRIPES
        fd = os.open(self.locks / f"{stripe:03d}.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            if timeout is None:
                fcntl.flock(fd, mode)
            else:
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        fcntl.flock(fd, mode | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise LockBusy(f"study lock busy for {timeout:g} s") from None
                        time.sleep(0.01)
            yield
        finally:
            os.close(fd)  # releases the lock

    # -- capacity ----------------------------------------------------------------------------
    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def check_space(self, incoming: int) -> None:
        free = self.free_bytes()
        if free - incoming < self.min_free_bytes:
            raise SpoolFull(
                errno.ENOSPC,
                f"spool free space {free} B minus {incoming} B is below the floor "
                f"of {self.min_free_bytes} B",
            )

    # -- writing -----------------------------------------------------------------------------
    def store(self, study_uid: str, sop_instance_uid: str, chunks: list[bytes | memoryview]) -> StoredFile:
        """Write ``chunks`` (a DICOM file: preamble, meta, data set) durably under our name."""
        size = sum(len(c) for c in chunks)
        self.check_space(size)
        rel = self.relative_path(study_uid, sop_instance_uid)
        final = self.root / rel
        outcome = StoreOutcome.NEW
        if final.exists():
            if _same_content(final, chunks, size):
                return StoredFile(rel, size, StoreOutcome.IDENTICAL)
            outcome = StoreOutcome.REPLACED
        new_dir = not final.parent.is_dir()
        if new_dir:
            final.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            write_atomically(tmp, final, chunks, fsync=self.fsync, mode=FILE_MODE)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull(exc.errno, f"disk full while writing an instance: {exc}") from exc
            raise
        if self.fsync:  # the new entry, and for a new study folder the folders above it
            fsync_dirs(final.parent, *([final.parent.parent, self.studies] if new_dir else []))
        return StoredFile(rel, size, outcome)

    def clear_tmp(self) -> int:
        """Remove partial writes left by a crash; return how many."""
        n = 0
        for part in self.tmp.iterdir():
            part.unlink(missing_ok=True)
            n += 1
        return n

    def iter_files(self) -> Iterator[str]:
        """Every stored instance, as a path relative to the spool root."""
        for path in self.studies.glob("*/*/*.dcm"):
            yield path.relative_to(self.root).as_posix()


def _same_content(path: Path, chunks: list[bytes | memoryview], size: int) -> bool:
    try:
        if path.stat().st_size != size:
            return False
        with path.open("rb") as fh:
            for chunk in chunks:
                if fh.read(len(chunk)) != bytes(chunk):
                    return False
        return True
    except OSError:
        return False

