"""A worker on another host: the study comes over WADO-RS, the results go back over STOW-RS.

With ``[worker] listener_url`` set, a job never touches the receiving node's files. Its
study version (the instances with ``version <= N``) is fetched from the receiving node's
DICOMweb service into ``<data_dir>/fetched/<study key>/v<N>/job-<id>/``, laid out as the
spool is (``Instance.file_path`` under that folder), so indexing and analysis read it as
they read the spool. The body is parsed as it arrives and each instance streamed to its
file: a 300-slice CT is never in memory. The result objects are written locally as usual,
then stored on the receiving node with STOW-RS at the same path under its ``results/``
before the job's outcome is committed, so the outbox rows point at files that exist where
delivery runs (the receiving host). The job's fetched copy and local result files are
removed when it ends, whatever the outcome.

Every request has a timeout (``fetch_timeout_seconds``: connect, and the longest silence
while reading) and is tried ``fetch_attempts`` times, 0.5 s apart doubling to 8 s, when the
connection fails, the body breaks off or the receiving node answers 5xx/429; an answer that
cannot change (401, 403, 404, a refused object) fails the job at once with the reason.
TLS is verified against ``listener_ca_file`` (or the system's CAs).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, unquote

import httpx
from sqlalchemy import select

from daemon.config import Settings
from daemon.ingest.spool import Spool, key
from daemon.store.db import Database
from daemon.store.models import Instance
from dicom_io.multipart import (
    DICOM,
    FilePart,
    MultipartError,
    PartReader,
    boundary_of,
    new_boundary,
    related_type,
    stream_parts,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
ACCEPT = f'multipart/related; type="{DICOM}"; transfer-syntax=*'
RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class RemoteError(RuntimeError):
    """The receiving node cannot give or take what the job needs (after any retries)."""


class StaleAttempt(RemoteError):
    """The receiving node refused the results: the job is no longer this attempt's."""


class _Retry(Exception):
    """This try failed in a way another try may not."""


def enabled(settings: Settings) -> bool:
    return bool(settings.worker.listener_url)


@dataclass(frozen=True)
class FetchReport:
    instances: int
    bytes: int
    seconds: float
    attempts: int


class ReceivingNode:
    """The receiving node's DICOMweb service, as ``[worker] listener_*`` describes it."""

    def __init__(self, settings: Settings) -> None:
        w = settings.worker
        assert w.listener_url and w.listener_token
        self.url = w.listener_url
        self.token = w.listener_token.get_secret_value()
        self.timeout = w.fetch_timeout_seconds
        self.attempts = w.fetch_attempts
        self.verify = _tls_context(str(w.listener_ca_file) if w.listener_ca_file else None)

    def client(self) -> httpx.Client:
        return httpx.Client(headers={"Authorization": f"Bearer {self.token}"},
                            timeout=httpx.Timeout(self.timeout), verify=self.verify,
                            follow_redirects=False)

    # -- WADO-RS --------------------------------------------------------------------------------
    def fetch_study(self, study_uid: str, version: int, expected: dict[str, str],
                    root: Path) -> FetchReport:
        """Fetch the study's instances up to ``version`` into ``root`` (at their spool paths,
        ``expected``: SOP Instance UID -> Instance.file_path); every one must come."""
        url = f"{self.url}/studies/{quote(study_uid, safe='.')}"
        started = time.monotonic()

        def once() -> FetchReport:
            sink = _FileSink(root, expected)
            try:
                with self.client() as client, client.stream(
                        "GET", url, params={"version": version},
                        headers={"Accept": ACCEPT}) as response:
                    _check(response, "fetch the study")
                    reader = PartReader(boundary_of(response.headers.get("content-type", "")), sink)
                    for chunk in response.iter_bytes():
                        reader.feed(chunk)
                    reader.close()
            except (httpx.TransportError, MultipartError) as exc:
                sink.abort()
                raise _Retry(f"the study's transfer broke off: {exc}") from exc
            except BaseException:
                sink.abort()
                raise
            missing = set(expected) - sink.received
            if missing:
                raise _Retry(f"{len(missing)} of {len(expected)} instances did not come")
            return FetchReport(len(sink.received), sink.bytes, time.monotonic() - started, 0)

        report, tries = self._retrying("fetch the study", once)
        return FetchReport(report.instances, report.bytes, report.seconds, tries)

    # -- STOW-RS --------------------------------------------------------------------------------
    def store_results(self, study_uid: str, objects: list[tuple[Path, str]], *,
                      job_id: int, attempt: int) -> int:
        """Store result files on the receiving node (``(local path, path under results/)``)
        as attempt ``attempt`` of job ``job_id`` (the node's fence); returns how many it
        holds. StaleAttempt if the job is no longer that attempt's, RemoteError if it
        refused any."""
        if not objects:
            return 0
        url = f"{self.url}/studies/{quote(study_uid, safe='.')}?job={job_id}&attempt={attempt}"

        def once() -> int:
            boundary = new_boundary()
            body = stream_parts([FilePart(path, {"Content-Type": DICOM, "Content-Location": rel})
                                 for path, rel in objects], boundary)
            try:
                with self.client() as client:
                    response = client.post(url, content=body,
                                           headers={"Content-Type": related_type(boundary),
                                                    "Accept": "application/dicom+json"})
            except httpx.TransportError as exc:
                raise _Retry(f"storing the results broke off: {exc}") from exc
            if response.status_code == 412:
                raise StaleAttempt(f"the receiving node refused the results of job {job_id} "
                                   f"attempt {attempt}: the job is no longer this attempt's")
            if response.status_code in (202, 409):
                failed = response.json().get("00081198", {}).get("Value", [])
                reasons = sorted({f"0x{item.get('00081197', {}).get('Value', [0])[0]:04X}"
                                  for item in failed})
                raise RemoteError(f"the receiving node refused {len(failed)} of {len(objects)} "
                                  f"result objects (STOW-RS {response.status_code}, failure "
                                  f"reasons {', '.join(reasons)}; its log says why)")
            _check(response, "store the results")
            stored = response.json().get("00081199", {}).get("Value", [])
            if len(stored) != len(objects):
                raise RemoteError(f"the receiving node stored {len(stored)} of {len(objects)} "
                                  "result objects")
            return len(stored)

        return self._retrying("store the results", once)[0]

    # -- inside ---------------------------------------------------------------------------------
    def _retrying(self, what: str, once: Callable[[], T]) -> tuple[T, int]:
        delay = 0.5
        for attempt in range(1, self.attempts + 1):
            try:
                return once(), attempt
            except _Retry as exc:
                if attempt == self.attempts:
                    raise RemoteError(f"cannot {what} from the receiving node after {attempt} "
                                      f"tries: {exc}") from None
                log.warning("cannot %s (try %d of %d): %s; again in %.1f s", what, attempt,
                            self.attempts, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 8.0)
        raise AssertionError("unreachable")


@functools.lru_cache(maxsize=4)
def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    """One verifying context per CA file and process (loading CAs costs ~50 ms a time)."""
    return ssl.create_default_context(cafile=ca_file)


def _check(response: httpx.Response, what: str) -> None:
    code = response.status_code
    if code in RETRY_STATUS:
        raise _Retry(f"the receiving node answered {code}")
    if code >= 300:
        try:
            detail = response.read().decode("utf-8", "replace")[:200]
        except httpx.HTTPError:
            detail = ""
        raise RemoteError(f"cannot {what}: the receiving node answered {code} {detail}".rstrip())


class _FileSink:
    """Each part into its file under ``root`` (temporary name, renamed when whole)."""

    def __init__(self, root: Path, expected: dict[str, str]) -> None:
        self.root, self.expected = root, expected
        self.tmp = root / "tmp"
        self.tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.received: set[str] = set()
        self.bytes = 0
        self._fh = None  # type: ignore[var-annotated]
        self._tmp_path: Path | None = None
        self._final: Path | None = None
        self._sop = ""

    def begin(self, headers: dict[str, str]) -> None:
        location = headers.get("content-location", "")
        _, found, sop = location.rpartition("/instances/")
        self._sop = unquote(sop) if found else ""
        rel = self.expected.get(self._sop)
        if rel is None:
            self._final = None  # not one this job analyses (or unnamed): skipped
            log.warning("an instance the job did not ask for was sent; skipped")
            return
        self._final = self.root / rel
        self._tmp_path = self.tmp / f"{uuid.uuid4().hex}.part"
        self._fh = os.fdopen(os.open(self._tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                                     0o600), "wb")

    def data(self, chunk: bytes) -> None:
        if self._fh is not None:
            self._fh.write(chunk)
            self.bytes += len(chunk)

    def end(self) -> None:
        fh, self._fh = self._fh, None
        if fh is None or self._final is None or self._tmp_path is None:
            return
        fh.close()
        self._final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.replace(self._tmp_path, self._final)
        self.received.add(self._sop)

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tmp_path is not None:
            self._tmp_path.unlink(missing_ok=True)


# -- a job's copy --------------------------------------------------------------------------------
def job_folder(settings: Settings, study_uid: str, version: int, job_id: int) -> Path:
    return settings.fetched_dir / key(study_uid) / f"v{version}" / f"job-{job_id}"


def expected_files(db: Database, study_id: int, version: int) -> dict[str, str]:
    """SOP Instance UID -> spool path of the instances a job of ``version`` analyses (the
    set ``worker.tasks._study_files`` takes and the receiving node's WADO-RS sends)."""
    with db.read() as session:
        return dict(session.execute(select(Instance.sop_instance_uid, Instance.file_path).where(
            Instance.study_id == study_id, Instance.version <= version)).all())


class FetchedStudy:
    """A job's copy of its study version: a spool-shaped folder, removed by :meth:`remove`."""

    def __init__(self, settings: Settings, root: Path) -> None:
        self.settings, self.root = settings, root
        self.spool = Spool(root, min_free_bytes=0, fsync=False)

    def remove(self) -> None:
        _remove_copy(self.root)


def _remove_copy(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    for parent in (root.parent, root.parent.parent):  # v<N>, then the study's folder
        try:
            parent.rmdir()
        except OSError:
            break


def fetch(settings: Settings, db: Database, study_id: int, study_uid: str, version: int,
          job_id: int) -> FetchedStudy:
    root = job_folder(settings, study_uid, version, job_id)
    shutil.rmtree(root, ignore_errors=True)  # what an earlier attempt on this host left
    for folder in (settings.fetched_dir, root.parent.parent, root.parent, root):
        folder.mkdir(mode=0o700, exist_ok=True)  # patient data: the service user's only
    copy = FetchedStudy(settings, root)
    try:
        expected = expected_files(db, study_id, version)
        report = ReceivingNode(settings).fetch_study(study_uid, version, expected, root)
    except BaseException:
        copy.remove()
        raise
    mb = report.bytes / 1e6
    log.info("job %d: fetched %d instances (%.1f MB) in %.2f s (%.0f MB/s, %d %s)", job_id,
             report.instances, mb, report.seconds, mb / max(report.seconds, 1e-6),
             report.attempts, "try" if report.attempts == 1 else "tries")
    return copy


def store(settings: Settings, study_uid: str, paths: list[Path], *, job_id: int,
          attempt: int) -> int:
    """STOW the job's result files to the receiving node, at their path under results/,
    fenced by the job's attempt (:class:`StaleAttempt` when it no longer holds the job)."""
    results = settings.results_dir
    return ReceivingNode(settings).store_results(
        study_uid, [(p, p.relative_to(results).as_posix()) for p in paths],
        job_id=job_id, attempt=attempt)


def remove_local(settings: Settings, paths: list[Path]) -> None:
    """The worker host keeps no result object once the receiving node has it."""
    folders = set()
    for p in paths:
        p.unlink(missing_ok=True)
        folders.add(p.parent)
    for folder in folders:  # <study>/v<N>/<pipeline>, then up while empty
        for f in (folder, folder.parent, folder.parent.parent):
            if f == settings.results_dir:
                break
            try:
                f.rmdir()
            except OSError:
                break


def clear_stale(settings: Settings, older_than: float) -> int:
    """Remove job copies a killed worker left behind (only old ones: other workers of this
    host may be fetching now)."""
    n = 0
    now = time.time()
    for folder in settings.fetched_dir.glob("*/v*/job-*"):
        try:
            if now - folder.stat().st_mtime > older_than:
                _remove_copy(folder)
                n += 1
        except OSError:
            pass
    return n

