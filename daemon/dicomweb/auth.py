"""The DICOMweb bearer token: its own, because WADO-RS and QIDO-RS answers carry patient data.

Accepted: ``[dicomweb] token`` (else ``<data_dir>/dicomweb-token``, generated at first start,
mode 0600) and the admin service's PHI token. The admin token (no PHI rights) gets 403.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from fastapi import HTTPException, Request, status

from daemon.config import Settings
from daemon.ops.admin.auth import admin_token, stored_token

TOKEN_FILE = "dicomweb-token"


def token_path(settings: Settings) -> Path:
    return settings.data_dir / TOKEN_FILE


def dicomweb_token(settings: Settings, *, create: bool = True) -> str | None:
    """The configured token, else the stored one, else (``create``) a new stored one."""
    configured = settings.dicomweb.token
    if configured is not None and configured.get_secret_value():
        return configured.get_secret_value()
    return stored_token(token_path(settings), "DICOMweb", create=create)


class DicomwebAuth:
    """FastAPI dependency: the caller must present the DICOMweb or the PHI token."""

    def __init__(self, settings: Settings) -> None:
        token = dicomweb_token(settings)
        assert token
        self.allowed = [token.encode()]
        phi = settings.admin.phi_token.get_secret_value() if settings.admin.phi_token else ""
        if phi:
            self.allowed.append(phi.encode())
        admin = admin_token(settings, create=False) or ""
        self.admin = admin.encode() if admin and admin.encode() not in self.allowed else b""

    def __call__(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a bearer token is required",
                                headers={"WWW-Authenticate": 'Bearer realm="dicomweb"'})
        offered = given.strip().encode()
        ok = False
        for token in self.allowed:  # compare against every token: constant time per token
            ok |= hmac.compare_digest(token, offered)
        if ok:
            return
        if self.admin and hmac.compare_digest(self.admin, offered):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "the admin token has no rights to "
                                "patient data: use the DICOMweb token")
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid token")
