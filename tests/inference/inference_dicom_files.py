"""Write small DICOM radiographs for tests (uncompressed, MONOCHROME1, RLE, JPEG 2000)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def radiograph(
    image01: np.ndarray,
    *,
    monochrome1: bool = False,
    bits: int = 12,
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
) -> Dataset:
    """A CR dataset whose displayed image (after rescale/window/inversion) is ``image01``."""
    img = np.clip(np.asarray(image01, dtype=np.float64), 0, 1)
    stored_max = 2**bits - 1
    disp = 1 - img if monochrome1 else img
    stored = np.round(disp * stored_max).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CR_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "TEST", "Test^Phantom", "CR"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if slope != 1.0 or intercept != 0.0:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    # full-range window in modality units unless given
    lo, hi = intercept, stored_max * slope + intercept
    c, w = window or ((lo + hi) / 2, hi - lo)
    ds.WindowCenter, ds.WindowWidth = c, w
    ds.VOILUTFunction = "LINEAR_EXACT"
    ds.PixelData = stored.tobytes()
    return ds


def write(ds: Dataset, path: Path, compression: str | None = None) -> Path:
    """Save ``ds`` uncompressed or with "rle" / "j2k" compression."""
    if compression == "rle":
        ds.compress(RLELossless)
    elif compression == "j2k":
        ds.compress(JPEG2000Lossless)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def multiframe(frames01: np.ndarray) -> Dataset:
    """An 8-bit multi-frame secondary capture (MONOCHROME2) of ``frames01`` [F,H,W]."""
    stored = np.round(np.clip(frames01, 0, 1) * 255).astype(np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.NumberOfFrames = stored.shape[0]
    ds.Rows, ds.Columns = stored.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = stored.tobytes()
    return ds
