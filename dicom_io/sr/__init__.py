"""The AI result as a DICOM Structured Report: TID 1500 (IHE AIR), built with highdicom.

:mod:`.sop` assembles the document, :mod:`.templates` the TID 1500/1410/1501/1600 content,
:mod:`.content` where on its source image each finding is (regions from heatmaps);
codes are in :mod:`dicom_io.coding`, the algorithm's identification in
:mod:`dicom_io.equipment`.
"""

from dicom_io.sr.sop import COMPREHENSIVE_3D_SR, COMPREHENSIVE_SR, SRKind, SROptions, write_sr

__all__ = ["COMPREHENSIVE_3D_SR", "COMPREHENSIVE_SR", "SRKind", "SROptions", "write_sr"]
