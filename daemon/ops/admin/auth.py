"""Bearer tokens for the admin service.

Two roles: ``admin`` (everything but patient data) and ``phi`` (admin plus patient
names on request). The admin token comes from ``admin.token``, else from
``<data_dir>/admin-token`` (mode 0600), which is generated at first start and
printed once on stderr. ``/healthz`` and ``/metrics`` need no token.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, Request, status

from daemon.config import Settings

log = logging.getLogger(__name__)

TOKEN_FILE = "admin-token"


@dataclass(frozen=True)
class Caller:
    role: str  # "admin" or "phi"
    name: str  # from X-Pacsai-User, for the audit log

    @property
    def may_see_phi(self) -> bool:
        return self.role == "phi"

    @property
    def actor(self) -> str:
        return f"api:{self.role}" + (f":{self.name}" if self.name else "")


def token_path(settings: Settings) -> Path:
    return settings.data_dir / TOKEN_FILE


def admin_token(settings: Settings, *, create: bool = True) -> str | None:
    """The configured token, else the stored one, else (``create``) a new stored one."""
    if settings.admin.token is not None and settings.admin.token.get_secret_value():
        return settings.admin.token.get_secret_value()
    return stored_token(token_path(settings), "admin", create=create)


def stored_token(path: Path, label: str, *, create: bool = True) -> str | None:
    """The token kept in ``path``, else (``create``) a new one written there (mode 0600) and
    printed once on stderr."""
    if path.is_file():
        return path.read_text().strip()
    if not create:
        return None
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process of this installation made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    # Printed once, on purpose not through logging (log files are kept and shipped).
    print(f"pacsai {label} token (stored in {path}, shown only now): {token}", file=sys.stderr,
          flush=True)
    log.info("generated a%s %s token in %s", "n" if label[0] in "aeiou" else "", label, path)
    return token


class TokenAuth:
    """FastAPI dependency: resolves the caller from ``Authorization: Bearer ...``."""

    def __init__(self, admin: str, phi: str | None) -> None:
        self.tokens = [(admin.encode(), "admin")]
        if phi:
            self.tokens.append((phi.encode(), "phi"))

    def __call__(self, request: Request) -> Caller:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})
        role = None
        for token, r in self.tokens:  # compare against every token: constant time per token
            if hmac.compare_digest(token, given.strip().encode()):
                role = r
        if role is None:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid token")
        name = "".join(c for c in request.headers.get("x-pacsai-user", "")
                       if c.isalnum() or c in "._-@")[:32]
        return Caller(role=role, name=name)
