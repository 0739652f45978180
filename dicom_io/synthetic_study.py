"""Synthetic DICOM studies for demos, tests and benchmarks (no patient data).

Builds CT, CR/DX and multi-frame instances with valid headers so that the whole
pipeline can be exercised on a machine without a PACS or real images.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
    generate_uid,
)

_ROOT = "1.2.826.0.1.3680043.10.1484."  # pacsai synthetic-data UID root


def _uid() -> str:
    return generate_uid(prefix=_ROOT)


def _base(
    sop_class: str,
    study_uid: str,
    series_uid: str,
    modality: str,
    patient_id: str,
    patient_name: str,
) -> Dataset:
    now = dt.datetime(2026, 1, 1, 12, 0, 0)
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = _uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.SeriesDate = ds.StudyDate
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.AccessionNumber = "SYN0001"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.Manufacturer = "pacsai synthetic"
    ds.SeriesNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    return ds


def _file_meta(ds: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def ct_series(
    n_slices: int = 300,
    size: int = 512,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "SYN-PID-0001",
    patient_name: str = "Synthetic^Patient",
    seed: int = 0,
    body_part: str = "CHEST",
    description: str = "Synthetic CT axial",
) -> Iterator[Dataset]:
    """Yield an axial CT series of ``n_slices`` signed 16-bit ``size``² slices."""
    study_uid = study_uid or _uid()
    series_uid = series_uid or _uid()
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    body = ((xx - size / 2) ** 2 / (0.42 * size) ** 2 + (yy - size / 2) ** 2 / (0.32 * size) ** 2) < 1
    base = np.where(body, 40, -1000).astype(np.int16)
    frame_of_reference = _uid()
    for i in range(n_slices):
        ds = _base(CTImageStorage, study_uid, series_uid, "CT", patient_id, patient_name)
        ds.SeriesDescription = description
        ds.BodyPartExamined = body_part
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.FrameOfReferenceUID = frame_of_reference
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-size / 4, -size / 4, float(i)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 1.0
        ds.Rows = size
        ds.Columns = size
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        noise = rng.normal(0, 12, size=(size, size)).astype(np.int16)
        ds.PixelData = (base + noise).tobytes()
        ds.file_meta = _file_meta(ds)
        yield ds


def radiograph(
    *,
    size: int = 1024,
    study_uid: str | None = None,
    patient_id: str = "SYN-PID-0002",
    patient_name: str = "Synthetic^Radiograph",
    seed: int = 0,
    modality: str = "DX",
) -> Dataset:
    """Return one chest-radiograph-like DX image (unsigned 12-bit)."""
    rng = np.random.default_rng(seed)
    ds = _base(
        DigitalXRayImageStorageForPresentation, study_uid or _uid(), _uid(), modality,
        patient_id, patient_name,
    )
    ds.SeriesDescription = "Synthetic chest PA"
    ds.BodyPartExamined = "CHEST"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.InstanceNumber = 1
    ds.Rows = size
    ds.Columns = size
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.2, 0.2]
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.PatientOrientation = ["L", "F"]
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.BurnedInAnnotation = "NO"
    ds.DetectorType = "SCINTILLATOR"
    ds.Laterality = ""
    ds.ViewPosition = "PA"
    img = rng.normal(2000, 60, size=(size, size)).clip(0, 4095).astype(np.uint16)
    ds.PixelData = img.tobytes()
    ds.file_meta = _file_meta(ds)
    return ds


def write_series(datasets: Iterator[Dataset] | list[Dataset], folder: Path) -> list[Path]:
    """Write datasets as DICOM files named by instance number into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, ds in enumerate(datasets):
        path = folder / f"IM{n:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
