"""Export networks (through their wrappers) to ONNX with a dynamic batch axis, or TorchScript."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from inference.models import export_wrapper

log = logging.getLogger(__name__)
OPSET = 18
logging.getLogger("onnx_ir").setLevel(logging.WARNING)
logging.getLogger("onnxscript").setLevel(logging.WARNING)


class HalfPrecision(nn.Module):
    """Runs ``inner`` in fp16 with fp32 graph inputs/outputs (the fp16 ONNX for TensorRT 11)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner.half()

    def forward(self, x: torch.Tensor):
        return tuple(o.float() for o in self.inner(x.half()))


def _wrapped(module: nn.Module) -> nn.Module:
    try:
        return export_wrapper(module)
    except TypeError:
        return module  # already a wrapper (or a site module whose forward is the graph)


def export_onnx(
    module: nn.Module,
    path: str | Path,
    input_shape: Sequence[int],
    output_names: Sequence[str],
    input_name: str = "x",
    half: bool = False,
) -> Path:
    """Export ``module`` (bare network or wrapper) to ``path``; batch axis dynamic.

    Uses the torch.export-based exporter and falls back to the TorchScript-based one.
    """
    path = Path(path)
    model = _wrapped(module).eval().cpu()
    if half:
        import copy

        model = HalfPrecision(copy.deepcopy(model)).eval()
    example = torch.rand(2, *input_shape)  # fp32 even for half: the cast is inside the graph
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model, (example,), str(path), input_names=[input_name], output_names=list(output_names),
                dynamo=True, external_data=False, opset_version=OPSET, verbose=False,
                dynamic_shapes={input_name: {0: torch.export.Dim("batch", min=1, max=4096)}},
            )
        except Exception as e:  # exporter errors are many types
            log.warning("dynamo ONNX export failed (%s); using the TorchScript exporter", e)
            axes = {input_name: {0: "batch"}, **{o: {0: "batch"} for o in output_names}}
            torch.onnx.export(
                model, (example,), str(path), input_names=[input_name], output_names=list(output_names),
                dynamo=False, opset_version=OPSET, dynamic_axes=axes,
            )
    log.debug("exported %s", path)
    return path


def export_torchscript(module: nn.Module, path: str | Path, input_shape: Sequence[int]) -> Path:
    """Trace the wrapper of ``module`` to a TorchScript file."""
    model = _wrapped(module).eval().cpu()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.rand(2, *input_shape), check_trace=False)
    traced.save(str(path))
    return Path(path)
