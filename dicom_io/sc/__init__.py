"""Heatmaps as Secondary Capture images: :mod:`.render` draws the picture, :mod:`.sop`
makes the DICOM object."""

from dicom_io.sc.render import SCOptions, banner_lines, display_frame, render, select_top_k
from dicom_io.sc.sop import (burned_in_annotation, patient_orientation, write_heatmap_sc,
                             write_heatmap_scs)

__all__ = ["SCOptions", "banner_lines", "burned_in_annotation", "display_frame",
           "patient_orientation", "render", "select_top_k", "write_heatmap_sc", "write_heatmap_scs"]
