"""Engine interface: run a float32 NCHW batch, get named float32 numpy outputs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np


class EngineError(RuntimeError):
    """An engine cannot be built, loaded or run."""


class Engine(ABC):
    """A loaded model graph on one backend. ``run`` is safe to call from several threads."""

    backend: str = "?"
    device: str = "cpu"

    def __init__(self, input_name: str, output_names: Sequence[str]) -> None:
        self.input_name = input_name
        self.output_names = list(output_names)

    @abstractmethod
    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch ``[B, C, H, W]`` float32; returns ``{output_name: array}`` on the host."""

    @property
    def max_batch(self) -> int | None:
        """Largest batch the engine accepts in one call (None: unlimited)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""

    def describe(self) -> str:
        return f"{self.backend} on {self.device}"
