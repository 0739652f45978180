"""Heatmaps as DICOM Parametric Maps (IHE AIR's primitive for such maps)."""

from dicom_io.pm.sop import PMOptions, UnsupportedSource, write_parametric_map

__all__ = ["PMOptions", "UnsupportedSource", "write_parametric_map"]
