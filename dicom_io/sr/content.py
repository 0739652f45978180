"""Where on its source image the SR puts a finding: image regions from heatmaps.

All coordinates are DICOM image pixel coordinates (PS3.3 C.18.6.1.1, Graphic Data of a
SCOORD): (column, row), (0, 0) the top-left corner of the top-left pixel, (0.5, 0.5) that
pixel's centre, (Columns, Rows) the bottom-right corner of the image.

A heatmap (2-D, values in [0, 1], any resolution) is stretched over its source image's
Rows x Columns, as the secondary capture and the Parametric Map draw it
(:func:`dicom_io.pixels.resize`, bilinear, pixel centres aligned): heatmap cell (i, j) of
an h x w map covers columns [j*Columns/w, (j+1)*Columns/w) and rows [i*Rows/h,
(i+1)*Rows/h) of the image.

The region of a finding is the convex hull of the connected above-half-maximum part of
its heatmap that holds the maximum (8-connectivity), on the finding's highest-scoring
image: a simple, robust outline that always contains the peak and never leaves the image.
A heatmap with no maximum above zero, or a flat one, locates nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage
from scipy.spatial import ConvexHull

from dicom_io import pixels
from dicom_io.results import Finding, ImageEvidence

#: Part of the heatmap's maximum a cell must reach to belong to the region.
HALF_MAXIMUM = 0.5
#: The grid (per axis) the region is traced on: a heatmap coarser than TRACE_GRID is resized
#: up to it (smoother outlines), one finer than MAX_TRACE_GRID down to it (bounded cost);
#: never finer than the image itself.
TRACE_GRID = 256
MAX_TRACE_GRID = 1024


def _trace_size(heatmap: int, image: int) -> int:
    return min(image, max(TRACE_GRID, min(heatmap, MAX_TRACE_GRID)))


@dataclass(frozen=True)
class Region:
    """A closed outline on one source image (and frame), with the heatmap's peak."""

    sop_class_uid: str
    sop_instance_uid: str
    #: Referenced frames of a multi-frame image (None: a single-frame image).
    frame_numbers: tuple[int, ...] | None
    #: (n, 2) float32 (column, row) vertices of a closed POLYLINE: first == last.
    outline: np.ndarray
    #: (column, row) of the centre of the heatmap's hottest cell (None: a whole image).
    peak: tuple[float, float] | None = None


def heatmap_outline(heatmap: np.ndarray, rows: int,
                    columns: int) -> tuple[np.ndarray, tuple[float, float]] | None:
    """(closed outline, peak) of ``heatmap`` on a ``rows`` x ``columns`` image, or None.

    None when the heatmap locates nothing: empty, not finite, maximum <= 0, or flat.
    """
    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0, posinf=0.0,
                         neginf=0.0)
    while heat.ndim > 2:
        heat = heat[0]
    if heat.ndim != 2 or heat.size == 0 or rows < 1 or columns < 1:
        return None
    grid = (_trace_size(heat.shape[0], rows), _trace_size(heat.shape[1], columns))
    heat = pixels.resize(heat, grid)
    top = float(heat.max())
    if not top > 0.0 or top - float(heat.min()) <= 1e-6 * top:
        return None
    peak_row, peak_col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    labels, _ = ndimage.label(heat >= HALF_MAXIMUM * top, structure=np.ones((3, 3), dtype=bool))
    region = labels == labels[peak_row, peak_col]
    # The hull of the region's cells is the hull of its edge cells' corners (never
    # degenerate: a cell is a square).
    cell_rows, cell_cols = np.nonzero(region & ~ndimage.binary_erosion(region))
    corners = np.unique(np.concatenate([
        np.stack([cell_cols + dc, cell_rows + dr], axis=1) for dr in (0, 1) for dc in (0, 1)
    ]), axis=0).astype(np.float64)
    hull = corners[ConvexHull(corners).vertices]
    scale = np.array([columns / grid[1], rows / grid[0]])
    outline = np.clip(hull * scale, 0.0, [columns, rows])
    outline = np.vstack([outline, outline[:1]]).astype(np.float32)
    peak = (float((peak_col + 0.5) * scale[0]), float((peak_row + 0.5) * scale[1]))
    return outline, peak


def image_outline(rows: int, columns: int) -> np.ndarray:
    """The closed outline of a whole ``rows`` x ``columns`` image (its border)."""
    return np.array([[0, 0], [columns, 0], [columns, rows], [0, rows], [0, 0]], dtype=np.float32)


def by_score(images: Iterable[ImageEvidence]) -> list[ImageEvidence]:
    """Evidence images, highest score first (unscored last; ties keep their order)."""
    return sorted(images, key=lambda im: -im.score if im.score is not None else float("inf"))


def _frames(image: ImageEvidence | None, source: Dataset) -> tuple[bool, tuple[int, ...] | None]:
    """(usable, referenced frames) of ``image`` on ``source`` for a region on one frame.

    A multi-frame image needs its frame named (or to have only one); ``image`` None asks
    for every frame.
    """
    frames = int(source.get("NumberOfFrames", 1) or 1)
    if image is not None and image.frame_number is not None:
        return 1 <= image.frame_number <= frames, (image.frame_number,)
    if "NumberOfFrames" not in source:
        return True, None
    if image is None or frames == 1:
        return True, tuple(range(1, frames + 1))
    return False, None


def finding_region(finding: Finding, sources_by_uid: dict[str, Dataset]) -> Region | None:
    """The region of ``finding`` on its highest-scoring image whose heatmap locates it."""
    for image in by_score(finding.images):
        source = sources_by_uid.get(image.sop_instance_uid)
        if image.heatmap is None or source is None:
            continue
        usable, frames = _frames(image, source)
        if not usable:
            continue
        traced = heatmap_outline(image.heatmap, int(source.Rows), int(source.Columns))
        if traced is None:
            continue
        outline, peak = traced
        return Region(str(source.SOPClassUID), image.sop_instance_uid, frames, outline, peak)
    return None


def whole_image_regions(finding: Finding, sources_by_uid: dict[str, Dataset],
                        analysed: Iterable[Dataset]) -> list[Region]:
    """Whole-image outlines for a finding the model did not locate.

    On its highest-scoring image (the study score is that image's; all its frames when the
    frame is not named), or, when the finding names no known image, on every analysed
    image (one outline each).
    """
    for image in by_score(finding.images):
        source = sources_by_uid.get(image.sop_instance_uid)
        if source is None:
            continue
        usable, frames = _frames(image if image.frame_number is not None else None, source)
        if usable:
            return [_whole(source, frames)]
    return [_whole(ds, _frames(None, ds)[1]) for ds in analysed]


def _whole(source: Dataset, frames: tuple[int, ...] | None) -> Region:
    return Region(str(source.SOPClassUID), str(source.SOPInstanceUID), frames,
                  image_outline(int(source.Rows), int(source.Columns)))
