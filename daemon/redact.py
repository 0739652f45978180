"""Failure reasons without patient data, for logs, job errors, the API and ``pacsai status``.

Exceptions quote what they were given: SQLAlchemy appends a statement's parameters
(UIDs, descriptions, names) and PostgreSQL's DETAIL repeats the offending key; pydicom
and highdicom put header values in their messages. :func:`reason` keeps what an
on-call engineer needs (the exception type, the database's primary message, the
constraint) and drops values: every UID, every quoted literal, and any value the
caller knows to be patient data. The full text is kept only where PHI rights apply
(``jobs.error_detail``), never in a log line at INFO or above.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_UID = re.compile(r"(?<![\w.])[0-2](?:\.\d+){3,}(?![\w.])")
_QUOTED = re.compile(r"'[^'\n]{1,400}'|\"[^\"\n]{1,400}\"")
_PARAMS = re.compile(r"\[parameters: .*?\](?=\s|$)", re.S)
_BACKGROUND = re.compile(r"\(Background on this error at: [^)]*\)")
_SQL = re.compile(r"\[SQL: (.*?)\]", re.S)
REDACTED = "…"


def phi_values(*values: object) -> list[str]:
    """The strings to hide for these header values (a PN and each of its components)."""
    out: set[str] = set()
    for value in values:
        if value is None:
            continue
        text = str(value).strip()
        if len(text) >= 2:
            out.add(text)
        for part in re.split(r"[\^=\\]", text):
            part = part.strip()
            if len(part) >= 3:
                out.add(part)
    return sorted(out, key=len, reverse=True)


def scrub(text: str, known: Iterable[str] = ()) -> str:
    """``text`` without UIDs, quoted literals, statement parameters and ``known`` values."""
    text = _PARAMS.sub("[parameters hidden]", text)
    text = _BACKGROUND.sub("", text)
    for value in known:
        if value:
            text = text.replace(value, REDACTED)
    text = _QUOTED.sub(lambda m: m.group(0)[0] + REDACTED + m.group(0)[0], text)
    text = _UID.sub("<uid>", text)
    return " ".join(text.split())


def _database_reason(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None)
    if orig is None:
        return None
    diag = getattr(orig, "diag", None)  # psycopg: primary message without DETAIL's values
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    state = getattr(orig, "sqlstate", None)
    message = primary or str(orig).split("\n", 1)[0]
    constraint = getattr(diag, "constraint_name", None) if diag is not None else None
    out = f"{type(exc).__name__} ({type(orig).__name__}{f' {state}' if state else ''}): " \
          f"{scrub(message)}"
    if constraint:  # a name from our schema, never patient data
        out += f" (constraint {constraint})"
    return out


def reason(exc: BaseException, known: Iterable[str] = (), limit: int = 500) -> str:
    """A one-line failure reason for ``exc`` with no patient data (see module docstring)."""
    db = _database_reason(exc)
    if db is not None:
        known = list(known)
        for value in known:
            db = db.replace(value, REDACTED)
        return db[:limit]
    return scrub(f"{type(exc).__name__}: {exc}", known)[:limit]


def detail(exc: BaseException, limit: int = 4000) -> str:
    """The full text of ``exc`` (PHI rights only)."""
    return f"{type(exc).__name__}: {exc}"[:limit]
