"""Failure reasons carry no patient data: real database and pydicom errors, scrubbed."""

from __future__ import annotations

import pytest
from pydicom.valuerep import DA
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from daemon import redact

NAME, PID = "Zzmarker^Patientname", "ZZMARKER-ID-4711"


def test_postgresql_errors_lose_their_parameters_and_detail(pg_url: str) -> None:
    engine = create_engine(pg_url)  # without hide_parameters: the worst case
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE p (name text UNIQUE, pid text)"))
        conn.execute(text("INSERT INTO p VALUES (:n, :i)"), {"n": NAME, "i": PID})
    with pytest.raises(DBAPIError) as err, engine.begin() as conn:
        conn.execute(text("INSERT INTO p VALUES (:n, :i)"), {"n": NAME, "i": PID})
    engine.dispose()
    full = str(err.value)
    assert NAME in full and PID in full  # what would reach logs and job.error unscrubbed
    why = redact.reason(err.value)
    assert NAME not in why and PID not in why and "Zzmarker" not in why
    assert "IntegrityError" in why and "duplicate key" in why and "p_name_key" in why


def test_pydicom_messages_lose_quoted_values_and_known_phi() -> None:
    with pytest.raises(ValueError) as err:
        DA(f"{PID}")
    assert PID in str(err.value)
    why = redact.reason(err.value, redact.phi_values(NAME, PID))
    assert PID not in why and "ValueError" in why
    text_with_name = f"cannot decode image of Zzmarker ({NAME}) in 1.2.840.113619.2.55.3.1"
    scrubbed = redact.scrub(text_with_name, redact.phi_values(NAME, PID))
    assert "Zzmarker" not in scrubbed and "Patientname" not in scrubbed
    assert "1.2.840" not in scrubbed and "<uid>" in scrubbed
