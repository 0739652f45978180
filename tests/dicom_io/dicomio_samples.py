"""Synthetic source images for the dicom_io tests (generated with pydicom)."""

from __future__ import annotations

import copy

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

from dicom_io.results import AlgorithmInfo, AnalysisResult, CodedConcept, Finding, ImageEvidence

STUDY_UID = "1.2.826.0.1.3680043.8.498.10000000000000000000000000000000001"
MULTIFRAME_XA = "1.2.840.10008.5.1.4.1.1.12.1"  # X-Ray Angiographic Image Storage

PNEUMOTHORAX = CodedConcept("36118008", "SCT", "Pneumothorax")
ALGO = AlgorithmInfo(name="chestnet", version="1.2.0", manufacturer="pacsai",
                     model_name="ChestNet DenseNet121", software_version="pacsai 0.1.0",
                     model_fingerprint="sha256:abc")


def _base(sop_class: str, modality: str, rows: int, cols: int, series_uid: str,
          number: int, full: bool = True) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(number)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.PatientID = "TEST123"
    ds.PatientName = "Test^Patient"
    if full:
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "F"
        ds.StudyID = "1"
        ds.AccessionNumber = "ACC1"
        ds.StudyDate = "20240102"
        ds.StudyTime = "101500"
        ds.ReferringPhysicianName = "Ref^Doc"
    ds.Manufacturer = "ACME"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    return ds


def _pixels(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:cols]
    img = 2000 + 1500 * np.sin(x / 17.0 + seed) * np.cos(y / 23.0)
    return img.clip(0, 4095).astype(np.uint16)


def cr(full: bool = True, rows: int = 96, cols: int = 80) -> Dataset:
    """Single CR image (MONOCHROME2, 12-bit)."""
    ds = _base(ComputedRadiographyImageStorage, "CR", rows, cols,
               generate_uid(entropy_srcs=["cr-series", str(full)]), 1, full)
    ds.BodyPartExamined = "CHEST"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PixelData = _pixels(rows, cols).tobytes()
    ds.WindowCenter, ds.WindowWidth = 2000, 3000
    return ds


def dx_monochrome1() -> Dataset:
    """DX for presentation, MONOCHROME1 with presentation LUT shape INVERSE."""
    ds = _base(DigitalXRayImageStorageForPresentation, "DX", 90, 70,
               generate_uid(entropy_srcs=["dx-series"]), 1)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PresentationLUTShape = "INVERSE"
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.BurnedInAnnotation = "NO"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.WindowCenter, ds.WindowWidth = 2000, 3000
    ds.PixelData = _pixels(90, 70, 1).tobytes()
    return ds


def ct_series(n: int = 5, full: bool = True) -> list[Dataset]:
    series = generate_uid(entropy_srcs=["ct-series", str(n)])
    frame_of_ref = generate_uid(entropy_srcs=["ct-for"])
    out = []
    for i in range(n):
        ds = _base(CTImageStorage, "CT", 64, 64, series, i + 1, full)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.FrameOfReferenceUID = frame_of_ref
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [-100.0, -100.0, float(i * 2)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.SliceThickness = 2.0
        ds.KVP = 120
        ds.AcquisitionNumber = 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = _pixels(64, 64, i).tobytes()
        out.append(ds)
    return out


def j2k(ds: Dataset) -> Dataset:
    """The same image JPEG 2000 lossless encoded (pylibjpeg-openjpeg)."""
    ds = copy.deepcopy(ds)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    return ds


def multiframe_xa(frames: int = 4) -> Dataset:
    """Multi-frame XA image (8-bit)."""
    ds = _base(MULTIFRAME_XA, "XA", 48, 48, generate_uid(entropy_srcs=["xa"]), 1)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063
    ds.FrameTime = 33.3
    ds.KVP = 80
    ds.RadiationSetting = "GR"
    ds.PositionerMotion = "STATIC"
    ds.PixelIntensityRelationship = "LIN"
    arr = np.stack([(_pixels(48, 48, f) // 16).astype(np.uint8) for f in range(frames)])
    ds.PixelData = arr.tobytes()
    return ds


def heatmap(rows: int = 32, cols: int = 32, cy: float = 0.4, cx: float = 0.6) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:cols] / np.array([rows, cols])[:, None, None]
    return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 0.02)


def result_for(sources: list[Dataset], version: int = 1, score: float = 0.87,
               kind: str = "probability", frames: bool = False, **kw) -> AnalysisResult:
    images = []
    for i, ds in enumerate(sources):
        n = int(ds.get("NumberOfFrames", 1) or 1)
        for f in range(1, n + 1) if frames else [None]:
            images.append(ImageEvidence(ds.SOPInstanceUID, frame_number=f,
                                        score=score - 0.1 * i, heatmap=heatmap()))
    finding = Finding(label=PNEUMOTHORAX, score=score, threshold=0.5, present=score >= 0.5,
                      kind=kind, images=images)
    return AnalysisResult(
        study_instance_uid=sources[0].StudyInstanceUID, study_version=version,
        pipeline="chest-xray", algorithm=kw.pop("algorithm", ALGO), findings=[finding],
        analysed_sop_instance_uids=[d.SOPInstanceUID for d in sources], **kw)
