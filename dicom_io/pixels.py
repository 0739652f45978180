"""The DICOM pixel pipeline: stored pixels -> display-windowed float frames -> model input.

One place for: decoding any transfer syntax (pydicom + pylibjpeg / openjpeg / pyjpegls
plugins), Modality LUT (Rescale Slope/Intercept or LUT, including enhanced multi-frame
functional groups), VOI LUT / window (LINEAR, LINEAR_EXACT, SIGMOID, or a VOI LUT Sequence),
MONOCHROME1 inversion, colour, multi-frame, and resampling/normalising to a model's input.

    frames = load_frames(path)                              # list of HxW (or HxWx3) float32 in [0,1]
    x = to_model_input(frames[0], (256, 256), channels=1)   # [1, 256, 256] float32
    batch = load_model_input(path, (256, 256), 1, preprocessing)   # [F, C, H, W]

Used by the worker (model input) and the secondary-capture writer (display frames). This
module takes plain parameters (the model manifest's ``preprocessing`` mapping as keywords);
it does not import the inference package.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from os import PathLike
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi

log = logging.getLogger(__name__)

WindowSpec = str | tuple[float, float]  # "dicom" | "minmax" | "percentile" | (center, width)


class PixelDataError(ValueError):
    """The dataset has no decodable image pixels."""


def read_dataset(source: str | PathLike | Dataset) -> Dataset:
    """A dataset from a path (full read, pixels included) or the dataset itself."""
    if isinstance(source, Dataset):
        return source
    return pydicom.dcmread(source, force=True)


def _first(value: Any) -> float:
    """First value of a possibly multi-valued DS/IS element."""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0]
    return float(value)


def _frame_group(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """Item of a functional-group ``sequence`` for frame ``index`` (per-frame, else shared)."""
    for groups, i in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq and len(seq) > i and sequence in seq[i] and len(seq[i][sequence]):
            return seq[i][sequence][0]
    return None


def decode(ds: Dataset) -> np.ndarray:
    """Stored pixel values as ``[F, H, W]`` or ``[F, H, W, 3]`` (RGB), any transfer syntax."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise PixelDataError("dataset has no Pixel Data")
    try:
        arr = ds.pixel_array  # pydicom 3 converts YBR to RGB by default
    except Exception as e:  # decoders raise many types
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
        raise PixelDataError(f"cannot decode pixel data (transfer syntax {ts}): {e}") from e
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1))
    if frames == 1:
        arr = arr[None]
    if spp == 1 and arr.ndim != 3 or spp == 3 and arr.ndim != 4:
        raise PixelDataError(f"unexpected pixel array shape {arr.shape} for {frames} frame(s), {spp} sample(s)")
    return arr


def modality_values(ds: Dataset, frame: np.ndarray, index: int = 0) -> np.ndarray:
    """Apply the Modality LUT / rescale (frame-specific for enhanced multi-frame)."""
    group = _frame_group(ds, index, "PixelValueTransformationSequence")
    if group is not None and "RescaleSlope" in group:
        slope, intercept = float(group.RescaleSlope), float(group.get("RescaleIntercept", 0))
        return frame.astype(np.float64) * slope + intercept
    if "ModalityLUTSequence" in ds or "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return np.asarray(apply_modality_lut(frame, ds), dtype=np.float64)
    return frame.astype(np.float64)


def _window_params(ds: Dataset, index: int) -> tuple[float, float, str] | None:
    group = _frame_group(ds, index, "FrameVOILUTSequence")
    src = group if group is not None and "WindowCenter" in group else ds
    if "WindowCenter" in src and "WindowWidth" in src and src.WindowCenter is not None and src.WindowWidth is not None:
        func = str(src.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        width = _first(src.WindowWidth)
        if width > 0:
            return _first(src.WindowCenter), width, func
    return None


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """VOI window to [0, 1] per PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID).

    pydicom's ``apply_windowing`` does the same arithmetic but maps to the stored bit
    depth's range and reads the window only from the top level; we need [0, 1] and the
    per-frame window of enhanced multi-frame images (see :func:`_window_params`).
    """
    if function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))).astype(np.float32)
    if function == "LINEAR_EXACT":
        out = (values - (center - width / 2)) / width
    else:  # LINEAR
        if width < 1:
            width = 1.0
        out = ((values - (center - 0.5)) / (width - 1)) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _voi_lut_sequence(ds: Dataset, values: np.ndarray) -> np.ndarray | None:
    """The first VOI LUT Sequence view (pydicom's ``apply_voi``) scaled to [0, 1]."""
    if "VOILUTSequence" not in ds or not len(ds.VOILUTSequence):
        return None
    desc = ds.VOILUTSequence[0].LUTDescriptor
    out = np.asarray(apply_voi(np.round(values).astype(np.int64), ds), dtype=np.float64)
    bits = int(desc[2]) if len(desc) > 2 and desc[2] else 16
    return np.clip(out / float(2**bits - 1), 0, 1).astype(np.float32)


def _percentile_window(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    a, b = np.percentile(values, [lo, hi])
    if b <= a:
        b = a + 1.0
    return np.clip((values - a) / (b - a), 0, 1).astype(np.float32)


def display_frame(
    ds: Dataset,
    stored: np.ndarray,
    index: int = 0,
    window_spec: WindowSpec = "dicom",
    percentiles: tuple[float, float] = (0.5, 99.5),
    invert_monochrome1: bool = True,
) -> np.ndarray:
    """One stored frame -> float32 in [0, 1], bright = high display value."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if stored.ndim == 3:  # colour: already RGB after decode; scale by bit depth
        bits = int(ds.get("BitsStored", 8) or 8)
        return np.clip(stored.astype(np.float32) / float(2**bits - 1), 0, 1)
    values = modality_values(ds, stored, index)
    out: np.ndarray | None = None
    if isinstance(window_spec, tuple):
        out = window(values, float(window_spec[0]), float(window_spec[1]))
    elif window_spec == "dicom":
        params = _window_params(ds, index)
        if params is not None:
            out = window(values, *params)
        else:
            out = _voi_lut_sequence(ds, values)
        if out is None:
            out = _percentile_window(values, *percentiles)
    elif window_spec == "minmax":
        out = _percentile_window(values, 0.0, 100.0)
    elif window_spec == "percentile":
        out = _percentile_window(values, *percentiles)
    else:
        raise ValueError(f"unknown window {window_spec!r}")
    if invert_monochrome1 and photometric == "MONOCHROME1":
        out = 1.0 - out
    return out


def load_frames(
    source: str | PathLike | Dataset,
    window_spec: WindowSpec = "dicom",
    percentiles: tuple[float, float] = (0.5, 99.5),
    invert_monochrome1: bool = True,
) -> list[np.ndarray]:
    """All frames of an image as display-windowed float32 arrays in [0, 1].

    ``window_spec``: "dicom" (the dataset's window / VOI LUT, else percentiles), "minmax",
    "percentile", or an explicit ``(center, width)`` in modality units (e.g. HU).
    Greyscale frames are ``H x W``; colour frames ``H x W x 3`` (RGB).
    """
    ds = read_dataset(source)
    stored = decode(ds)
    return [display_frame(ds, stored[i], i, window_spec, percentiles, invert_monochrome1) for i in range(len(stored))]


def resize(img: np.ndarray, size: tuple[int, int], resample: str = "bilinear") -> np.ndarray:
    """A float 2-D array resized to ``size`` (rows, cols): "area" (shrinking), "bilinear",
    "bicubic". The one resize of the package: model input, SC and Parametric Map."""
    from PIL import Image

    filters = {"area": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
    h, w = size
    if img.shape[:2] == (h, w):
        return img.astype(np.float32)
    if resample == "area" and (img.shape[0] < h or img.shape[1] < w):
        resample = "bilinear"  # BOX is for shrinking
    im = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32), mode="F")
    return np.asarray(im.resize((w, h), filters[resample]), dtype=np.float32)


def to_model_input(
    frame: np.ndarray,
    size: tuple[int, int],
    channels: int = 1,
    *,
    resample: str = "area",
    keep_aspect: bool = False,
    normalise: str = "unit",
    mean: float = 0.0,
    std: float = 1.0,
    **_ignored: Any,
) -> np.ndarray:
    """A display frame (H x W or H x W x 3 in [0,1]) -> ``[channels, h, w]`` float32.

    ``keep_aspect`` letterboxes (pads with 0) instead of stretching; ``normalise`` is "unit"
    (keep [0,1]) or "zscore" ((x - mean) / std). Extra keywords (the rest of a manifest's
    preprocessing mapping) are ignored.
    """
    img = np.asarray(frame, dtype=np.float32)
    if img.ndim == 3:
        img = img @ np.array([0.299, 0.587, 0.114], np.float32) if channels == 1 else img
    elif img.ndim != 2:
        raise ValueError(f"expected an H x W or H x W x 3 frame, got shape {img.shape}")
    h, w = size
    planes = [img] if img.ndim == 2 else [img[..., c] for c in range(3)]
    out = []
    for p in planes:
        if keep_aspect:
            s = min(h / p.shape[0], w / p.shape[1])
            nh, nw = max(1, round(p.shape[0] * s)), max(1, round(p.shape[1] * s))
            r = resize(p, (nh, nw), resample)
            canvas = np.zeros((h, w), np.float32)
            y0, x0 = (h - nh) // 2, (w - nw) // 2
            canvas[y0 : y0 + nh, x0 : x0 + nw] = r
            out.append(canvas)
        else:
            out.append(resize(p, (h, w), resample))
    x = np.stack(out)
    if x.shape[0] == 1 and channels == 3:
        x = np.repeat(x, 3, axis=0)
    if normalise == "zscore":
        x = (x - mean) / std
    elif normalise != "unit":
        raise ValueError(f"unknown normalise {normalise!r}")
    return x.astype(np.float32)


def load_model_input(
    source: str | PathLike | Dataset,
    size: tuple[int, int],
    channels: int = 1,
    preprocessing: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """All frames of an image as a model batch ``[F, channels, h, w]``.

    ``preprocessing`` is a model manifest's preprocessing mapping: window ("dicom", "minmax",
    "percentile", "fixed" with window_center/window_width), percentiles, invert_monochrome1,
    resample, keep_aspect, normalise, mean, std.
    """
    p = dict(preprocessing or {})
    spec: WindowSpec = p.get("window", "dicom")
    if spec == "fixed":
        spec = (float(p["window_center"]), float(p["window_width"]))
    frames = load_frames(
        source, spec, tuple(p.get("percentiles", (0.5, 99.5))), bool(p.get("invert_monochrome1", True))
    )
    return np.stack([to_model_input(f, size, channels, **p) for f in frames])
