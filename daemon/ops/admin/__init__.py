"""The admin HTTP service: dashboard, JSON API, /metrics, /healthz, /readyz."""

from daemon.ops.admin.app import create_app

__all__ = ["create_app"]
