"""Which images of a study a pipeline analyses, and why the others are skipped.

Projection images (CR, DX, MG, ...): every image. Cross-sectional (CT, MR, PT):
the axial series with the most slices. Objects that are not images (no Rows and
Columns: SR, KO, presentation states), files that cannot be read, and modalities
the model is not meant for are skipped with a recorded reason. An image whose Pixel
Data is missing is found when it is decoded (worker.analysis: "cannot decode").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

CROSS_SECTIONAL = {"CT", "MR", "PT", "NM"}
_TAGS = ["SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "Modality", "Rows", "Columns",
         "ImageOrientationPatient", "NumberOfFrames", "InstanceNumber", "ImagePositionPatient",
         "ImageType", "SamplesPerPixel", "BitsAllocated"]


@dataclass(frozen=True)
class Candidate:
    path: Path
    header: Dataset

    @property
    def sop_instance_uid(self) -> str:
        return str(self.header.SOPInstanceUID)


@dataclass
class Selection:
    images: list[Candidate]
    skipped: list[tuple[str, str]]  # (SOP Instance UID, reason)


def read_header(path: Path) -> Dataset:
    return dcmread(path, stop_before_pixels=True, specific_tags=_TAGS + ["PixelData"])


def _has_pixels(path: Path, ds: Dataset) -> bool:
    return bool(ds.get("Rows")) and bool(ds.get("Columns"))


def _is_axial(ds: Dataset) -> bool:
    iop = ds.get("ImageOrientationPatient")
    if not iop or len(iop) != 6:
        return True  # unknown orientation: do not exclude
    normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
    return abs(normal[2]) >= 0.8 * float(np.linalg.norm(normal) or 1)


def _slice_key(ds: Dataset) -> float:
    ipp = ds.get("ImagePositionPatient")
    if ipp and len(ipp) == 3:
        return float(ipp[2])
    return float(ds.get("InstanceNumber") or 0)


def select_images(paths: Sequence[Path], modalities: Sequence[str]) -> Selection:
    """Pick the images a model meant for ``modalities`` should see."""
    wanted = {m.upper() for m in modalities}
    skipped: list[tuple[str, str]] = []
    projection: list[Candidate] = []
    volumes: dict[str, list[Candidate]] = defaultdict(list)
    for path in paths:
        try:
            ds = read_header(path)
        except Exception as exc:  # noqa: BLE001 - recorded
            skipped.append((path.name, f"unreadable: {exc}"))
            continue
        uid = str(ds.get("SOPInstanceUID", path.name))
        modality = str(ds.get("Modality", "")).upper()
        if not _has_pixels(path, ds):
            skipped.append((uid, "no pixel data (not an image)"))
        elif wanted and modality not in wanted:
            skipped.append((uid, f"modality {modality or '?'} is not one the model is meant for"))
        elif modality in CROSS_SECTIONAL:
            if _is_axial(ds):
                volumes[str(ds.get("SeriesInstanceUID", ""))].append(Candidate(path, ds))
            else:
                skipped.append((uid, "not an axial image"))
        else:
            projection.append(Candidate(path, ds))
    chosen = list(projection)
    if volumes:
        best = max(volumes, key=lambda k: len(volumes[k]))
        chosen.extend(sorted(volumes[best], key=lambda c: _slice_key(c.header)))
        for series, members in volumes.items():
            if series != best:
                skipped.extend((c.sop_instance_uid, "not the largest axial series") for c in members)
    return Selection(chosen, skipped)
