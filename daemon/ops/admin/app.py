"""The admin FastAPI application: health, readiness, metrics, API and dashboard."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from celery import Celery
from fastapi import FastAPI, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from daemon import dicomweb
from daemon.ingest import metrics
from daemon.ops.admin.api import make_router
from daemon.ops.admin.auth import TokenAuth, admin_token
from daemon.ops.admin.collector import StoreCollector
from daemon.dispatch.broker import Broker
from daemon.dispatch.doorbell import Dispatcher
from daemon.config import Settings
from daemon.ops.health import readiness
from daemon.dispatch.tasks import make_celery
from daemon.store.db import Database
from daemon.routing.jobs import CompletedJob

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")


@dataclass
class AdminState:
    settings: Settings
    db: Database
    broker: Broker
    send: Callable[[CompletedJob], None]
    listener_accepting: Callable[[], bool] | None


class _ProcessMetrics:
    """Exposes daemon.ingest.metrics (the listener's counters) through the app's registry."""

    def collect(self):  # type: ignore[no-untyped-def]
        return metrics.REGISTRY.collect()


def create_app(settings: Settings, db: Database | None = None, *,
               listener_accepting: Callable[[], bool] | None = None,
               celery: Celery | None = None,
               send: Callable[[CompletedJob], None] | None = None) -> FastAPI:
    """Build the admin app. ``listener_accepting``: the in-process listener's state, if any;
    ``send``: how a retried job reaches the broker (default: a Celery producer of our own)."""
    db = db or Database(settings.database_url, echo=settings.database.echo)
    celery = celery or make_celery(settings, name="pacsai-admin")
    if send is None:
        send = Dispatcher(celery, db)
    broker = Broker(settings, celery)
    token = admin_token(settings)
    assert token is not None
    phi = settings.admin.phi_token.get_secret_value() if settings.admin.phi_token else None
    auth = TokenAuth(token, phi or None)

    app = FastAPI(title="pacsai admin", version="1",
                  description="Queues, studies, failures and actions of one pacsai installation.")
    app.state.pacsai = AdminState(settings, db, broker, send, listener_accepting)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ProcessMetrics())  # type: ignore[arg-type]
    registry.register(StoreCollector(settings, db, broker))

    @app.get("/healthz", tags=["health"], summary="The process is alive (no token)")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Ready to take studies (no token); 503 if not")
    def readyz() -> JSONResponse:
        checks = readiness(settings, db, broker, listener_accepting)
        failing = [c.as_dict() for c in checks if not c.ok]
        body = {"status": "ready" if not failing else "not ready", "failing": failing,
                "checks": [c.as_dict() for c in checks]}
        return JSONResponse(body, status_code=200 if not failing else 503)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics (no token)")
    def prometheus() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(make_router(auth))
    app.include_router(dicomweb.make_router(settings, db))

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
