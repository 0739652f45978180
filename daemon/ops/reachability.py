"""Can this host reach what its configuration names? (``pacsai config check --reach``)

A worker host needs the receiving node's DICOMweb service, the broker and the database;
a receiving host the broker and the database. Each check says what it tried and why it
failed, in a few seconds at most.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.config import Settings

TIMEOUT = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _database(settings: Settings) -> Check:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    args = {"connect_timeout": int(TIMEOUT)} if url.get_backend_name() == "postgresql" else {}
    engine = create_engine(url, connect_args=args, hide_parameters=True)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return Check("database", True, f"{url.get_backend_name()} at {url.host or url.database} answers")
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return Check("database", False, f"{url.render_as_string(hide_password=True)}: "
                                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    finally:
        engine.dispose()


def _broker(settings: Settings) -> Check:
    url = settings.broker_url
    if url.startswith("filesystem://"):
        folder = settings.embedded_broker_dir
        ok = folder.parent.exists()
        return Check("broker", ok, f"embedded broker in {folder}" + ("" if ok else " (no data dir)"))
    import redis

    try:
        redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT).ping()
        return Check("broker", True, "Redis answers PING")
    except Exception as exc:  # noqa: BLE001
        return Check("broker", False, f"Redis: {type(exc).__name__}: {exc}")


def _listener(settings: Settings) -> Check:
    import httpx

    w = settings.worker
    root = str(w.listener_url).rstrip("/")
    token = w.listener_token.get_secret_value() if w.listener_token else ""
    verify: str | bool = str(w.listener_ca_file) if w.listener_ca_file else True
    try:
        r = httpx.get(f"{root}/studies", params={"limit": 1}, timeout=TIMEOUT, verify=verify,
                      headers={"Authorization": f"Bearer {token}",
                               "Accept": "application/dicom+json"})
    except Exception as exc:  # noqa: BLE001
        return Check("listener", False, f"{root}: {type(exc).__name__}: {exc}")
    if r.status_code in (200, 204):
        return Check("listener", True, f"{root} answers QIDO-RS with the token")
    return Check("listener", False, f"{root} answered {r.status_code} "
                                    f"({'the token is refused' if r.status_code in (401, 403) else r.text[:100]})")


def reach(settings: Settings) -> list[Check]:
    """The checks that apply to this host's configuration."""
    checks = [_database(settings), _broker(settings)]
    if settings.worker.listener_url:
        checks.append(_listener(settings))
    return checks
