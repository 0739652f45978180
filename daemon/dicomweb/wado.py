"""WADO-RS retrieve (PS3.18 10.4): instances as received, from the spool, streamed.

A study's instances are those of its current version, or with ``version=N`` those a job of
version N analyses (``Instance.version <= N``, as ``worker.tasks`` picks them). The body is
``multipart/related; type="application/dicom"``: one part per instance, the spool file's
bytes unchanged (no transcoding: the part's Content-Type names its transfer syntax), its
Content-Location the instance's WADO-RS URL. Files are read in 1 MiB pieces as the client
takes them: a 300-slice CT is never in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import select

from daemon.config import Settings
from daemon.store.db import Database
from daemon.store.models import Instance, Study
from dicom_io.multipart import DICOM, FilePart, parse_content_type, stream_parts


class NotFound(LookupError):
    """Nothing matches (the message says what); 404."""


class NotAcceptable(ValueError):
    """The Accept header asks for something we do not serve; 406."""


@dataclass(frozen=True)
class StoredInstance:
    series_uid: str
    sop_uid: str
    transfer_syntax: str
    path: Path


def select_instances(settings: Settings, db: Database, study_uid: str, *,
                     version: int | None = None, series_uid: str | None = None,
                     sop_uid: str | None = None) -> list[StoredInstance]:
    """The spool files of a study version (of one series, of one instance); NotFound if none."""
    spool_root = settings.spool_dir  # Instance.file_path is relative to it (Spool.path)
    with db.read() as session:
        study = session.scalars(select(Study).where(
            Study.study_instance_uid == study_uid)).one_or_none()
        if study is None:
            raise NotFound("no such study")
        if version is not None and not 1 <= version <= study.version:
            raise NotFound(f"the study has versions 1 to {study.version}")
        if study.spool_purged_at is not None:
            raise NotFound("the study's files were removed by retention")
        query = select(Instance.series_instance_uid, Instance.sop_instance_uid,
                       Instance.transfer_syntax_uid, Instance.file_path).where(
            Instance.study_id == study.id, Instance.version <= (version or study.version))
        if series_uid is not None:
            query = query.where(Instance.series_instance_uid == series_uid)
        if sop_uid is not None:
            query = query.where(Instance.sop_instance_uid == sop_uid)
        rows = session.execute(query.order_by(Instance.series_instance_uid, Instance.id)).all()
    if not rows:
        raise NotFound("no such series" if sop_uid is None else "no such instance")
    return [StoredInstance(s, i, ts, spool_root / rel) for s, i, ts, rel in rows]


def check_accept(accept: str | None) -> None:
    """Serve instances as stored unless the client accepts no multipart/related DICOM.

    ``transfer-syntax`` is not negotiated: every part is sent in the syntax it was received
    in and says so; a client asking for one particular syntax gets what is stored.
    """
    if not accept:
        return
    for media_range in accept.split(","):
        mime, params = parse_content_type(media_range.strip())
        if mime in ("*/*", "multipart/*"):
            return
        if mime == "multipart/related" and params.get("type", DICOM).lower() in (DICOM, "*/*"):
            return
    raise NotAcceptable('only multipart/related; type="application/dicom" is served')


def body(instances: list[StoredInstance], boundary: str, root: str,
         study_uid: str) -> Iterator[bytes]:
    """The response body, read from the spool files as it is sent."""
    def q(uid: str) -> str:  # UIDs as the peer sent them: never raw in a header
        return quote(uid, safe=".")

    return stream_parts((FilePart(i.path, {
        "Content-Type": f"{DICOM}; transfer-syntax={q(i.transfer_syntax)}",
        "Content-Location": f"{root}/studies/{q(study_uid)}/series/{q(i.series_uid)}"
                            f"/instances/{q(i.sop_uid)}",
    }) for i in instances), boundary)
