"""Database errors quote no statement parameters (UIDs, patient names), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from daemon.store.db import Database
from daemon.store.models import Study, utcnow

UID = "1.2.826.0.1.3680043.8.498.424242424242"
NAME = "SECRETSURNAME^GIVEN"


def _study() -> Study:
    now = utcnow()
    return Study(study_instance_uid=UID, version=1, state="receiving", patient_name=NAME,
                 patient_id="PID-SECRET-7", version_started_at=now, first_received_at=now,
                 last_received_at=now)


def test_an_integrity_error_names_no_parameter_value(db: Database) -> None:
    with db.session() as session:
        session.add(_study())
    with pytest.raises(IntegrityError) as raised:
        with db.session() as session:
            session.add(_study())  # the same Study Instance UID again
    text = str(raised.value)
    assert "parameters hidden" in text  # SQLAlchemy says it left them out
    for value in (NAME, "SECRETSURNAME", "PID-SECRET-7"):
        assert value not in text, text
    if db.is_sqlite:
        assert UID not in text, text
    # PostgreSQL's own DETAIL line repeats the duplicated key (a server message, not a
    # statement parameter); daemon.redact keeps it out of logs and job errors.
