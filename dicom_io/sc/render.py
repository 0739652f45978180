"""What a heatmap secondary capture shows: the source frame windowed for display, the
heatmap blended over it, a colour-bar legend and a burned-in banner (model, finding,
score, disclaimer)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from dicom_io import pixels
from dicom_io.results import DEFAULT_DISCLAIMER, AnalysisResult, Finding, ImageEvidence
from pydicom.dataset import Dataset


@dataclass(frozen=True)
class SCOptions:
    """Rendering and series choices for heatmap secondary captures."""

    disclaimer: str = DEFAULT_DISCLAIMER
    colormap: str = "jet"
    opacity: float = 0.45
    top_k: int | None = None
    series_number: int = 9902
    series_description: str | None = None
    min_size: int = 512
    max_size: int = 1536


def select_top_k(images: Sequence[ImageEvidence], k: int | None) -> list[ImageEvidence]:
    """The ``k`` images with the highest per-image score (all when ``k`` is None).

    Images without a score rank last; ties keep their input order.
    """
    ranked = sorted(
        enumerate(images),
        key=lambda p: (p[1].score is None, -(p[1].score or 0.0), p[0]),
    )
    chosen = [img for _, img in ranked]
    return chosen if k is None else chosen[: max(k, 0)]


def display_frame(ds: Dataset, frame_number: int | None = None) -> np.ndarray:
    """Float [0, 1] display image of one frame (1-based ``frame_number``):
    decoded, modality LUT, DICOM window / VOI LUT (else percentiles), MONOCHROME1
    inverted, colour reduced to luminance. Delegates to :mod:`dicom_io.pixels`."""
    index = (frame_number or 1) - 1
    stored = pixels.decode(ds)[index]
    out = pixels.display_frame(ds, stored, index)
    if out.ndim == 3:
        out = out @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return out


def _target_size(shape: tuple[int, int], options: SCOptions) -> tuple[int, int]:
    rows, cols = shape
    longest = max(rows, cols)
    scale = 1.0
    if longest < options.min_size:
        scale = options.min_size / longest
    elif longest > options.max_size:
        scale = options.max_size / longest
    return max(1, round(rows * scale)), max(1, round(cols * scale))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """Truncate ``text`` with an ellipsis to ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def banner_lines(result: AnalysisResult, finding: Finding, image: ImageEvidence, disclaimer: str) -> list[str]:
    algo = result.algorithm
    verdict = "PRESENT" if finding.present else "absent"
    what = "probability" if finding.kind == "probability" else "anomaly score"
    lines = [
        disclaimer,
        f"{algo.manufacturer_model_name} {algo.version}",
        f"{finding.label.meaning}: {what} {finding.score:.2f} "
        f"(threshold {finding.threshold:.2f}) - {verdict}",
    ]
    if image.score is not None and image.score != finding.score:
        lines[-1] += f"; this image {image.score:.2f}"
    return lines


def render(
    display: np.ndarray,
    heatmap: np.ndarray | None,
    lines: Sequence[str],
    options: SCOptions = SCOptions(),
) -> np.ndarray:
    """Compose the RGB uint8 picture (banner on top, legend on the right)."""
    rows, cols = _target_size(display.shape, options)
    gray = pixels.resize(np.clip(display, 0, 1), (rows, cols))
    rgb = np.repeat(np.clip(gray, 0, 1)[..., None], 3, axis=2)
    cmap = colormaps[options.colormap]
    if heatmap is not None:
        heat = np.clip(pixels.resize(np.nan_to_num(heatmap.astype(np.float32)), (rows, cols)), 0, 1)
        alpha = (options.opacity * heat)[..., None]
        rgb = rgb * (1 - alpha) + cmap(heat)[..., :3] * alpha
    picture = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)

    font_size = max(12, cols // 36)
    font = _font(font_size)
    line_h = int(font_size * 1.35)
    banner_h = line_h * len(lines) + font_size // 2
    legend_w = max(48, font_size * 4)
    canvas = Image.new("RGB", (cols + legend_w, rows + banner_h), (0, 0, 0))
    canvas.paste(Image.fromarray(picture, "RGB"), (0, banner_h))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(lines):
        colour = (255, 220, 0) if i == 0 else (255, 255, 255)
        draw.text((font_size // 3, font_size // 4 + i * line_h),
                  _fit(draw, text, font, cols + legend_w - font_size), font=font, fill=colour)

    # Colour bar: 1.0 at the top, 0.0 at the bottom, labelled.
    bar_top, bar_bottom = banner_h + line_h, banner_h + rows - line_h
    bar_x0, bar_x1 = cols + legend_w // 4, cols + legend_w // 4 + max(8, legend_w // 4)
    if bar_bottom - bar_top > 10:
        ramp = np.linspace(1.0, 0.0, bar_bottom - bar_top)
        bar = (cmap(ramp)[:, :3] * 255).astype(np.uint8)
        bar = np.repeat(bar[:, None, :], bar_x1 - bar_x0, axis=1)
        canvas.paste(Image.fromarray(bar, "RGB"), (bar_x0, bar_top))
        small = _font(max(10, font_size * 3 // 4))
        draw.text((bar_x0, bar_top - line_h), "1.0", font=small, fill=(255, 255, 255))
        draw.text((bar_x0, bar_bottom + 2), "0.0", font=small, fill=(255, 255, 255))
    return np.asarray(canvas)
