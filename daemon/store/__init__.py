"""The database: every study's state and timeline (SQLite embedded, PostgreSQL in production)."""

from daemon.store.db import Database
from daemon.store.models import Event, Instance, Job, Series, Study

__all__ = ["Database", "Event", "Instance", "Job", "Series", "Study"]
