"""Execution engines: one per backend, all with the same :class:`Engine` interface."""

from inference.engines.base import Engine, EngineError

__all__ = ["Engine", "EngineError"]
