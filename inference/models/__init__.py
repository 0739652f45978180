"""PyTorch model definitions and their export wrappers.

Each architecture has a *family* name used in manifests (``architecture.family``) so a
state dict can be rebuilt into a module for the PyTorch backend and for fine-tuning.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from inference.models.autoencoder import AnomalyExport, ConvAutoencoder
from inference.models.classifier import CamClassifier, ClassifierExport

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "cam_resnet": CamClassifier,
    "conv_autoencoder": ConvAutoencoder,
}


def build_module(family: str, params: dict[str, Any]) -> nn.Module:
    """Instantiate the bare network of ``family`` with constructor ``params``."""
    try:
        cls = ARCHITECTURES[family]
    except KeyError:
        raise ValueError(f"unknown architecture family {family!r}; known: {sorted(ARCHITECTURES)}") from None
    return cls(**params)


def export_wrapper(module: nn.Module, **kwargs: Any) -> nn.Module:
    """Wrap a bare network into the module whose outputs are the exported graph's outputs."""
    if isinstance(module, CamClassifier):
        return ClassifierExport(module)
    if isinstance(module, ConvAutoencoder):
        return AnomalyExport(module, **kwargs)
    raise TypeError(f"no export wrapper for {type(module).__name__}")


__all__ = [
    "ARCHITECTURES",
    "AnomalyExport",
    "CamClassifier",
    "ClassifierExport",
    "ConvAutoencoder",
    "build_module",
    "export_wrapper",
]
