"""The study timeline: events written with the state change they describe."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from daemon.store.db import Database
from daemon.store.models import Event, Study, utcnow


def record(
    session: Session,
    study: Study,
    kind: str,
    *,
    version: int | None = None,
    job_id: int | None = None,
    at: dt.datetime | None = None,
    **detail: Any,
) -> Event:
    """Add one event to ``study``'s timeline inside the caller's transaction."""
    event = Event(
        study_id=study.id,
        version=study.version if version is None else version,
        job_id=job_id,
        kind=kind,
        at=at or utcnow(),
        detail=detail,
    )
    session.add(event)
    return event


@dataclass(frozen=True)
class TimelineEntry:
    at: dt.datetime
    version: int
    kind: str
    job_id: int | None
    detail: dict[str, Any]


def timeline(db: Database, study_id: int) -> list[TimelineEntry]:
    """Every event of a study, oldest first."""
    with db.read() as session:
        rows = session.scalars(
            select(Event).where(Event.study_id == study_id).order_by(Event.at, Event.id)
        ).all()
        return [TimelineEntry(e.at, e.version, e.kind, e.job_id, dict(e.detail or {})) for e in rows]
