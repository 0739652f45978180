"""Source images as evidence: the header copy every result writer references."""

from __future__ import annotations

import copy

from pydicom.dataset import Dataset

# Type 2 Patient/Study attributes highdicom copies from the first evidence item; real PACS
# data often lacks them.
_TYPE2_DEFAULTS = {
    "PatientName": "",
    "PatientID": "",
    "PatientBirthDate": "",
    "PatientSex": "",
    "AccessionNumber": "",
    "StudyID": "",
    "StudyDate": "",
    "StudyTime": "",
    "ReferringPhysicianName": "",
}
_PATIENT_SEX = {"M", "F", "O"}


def header_only(ds: Dataset) -> Dataset:
    """Copy of ``ds`` without pixel data or overlays, with missing Type 2 filled empty.

    Also blanks invalid PatientSex values (highdicom rejects them) and takes the SOP
    Class from the file meta when the data set lacks it.
    """
    out = Dataset()
    for elem in ds:
        if elem.tag.group == 0x7FE0 or 0x6000 <= elem.tag.group <= 0x60FF:  # pixels, overlays
            continue
        out.add(copy.deepcopy(elem))
    for keyword, empty in _TYPE2_DEFAULTS.items():
        if keyword not in out or out[keyword].value is None:
            setattr(out, keyword, empty)
    if str(out.PatientSex).upper() not in _PATIENT_SEX:
        out.PatientSex = ""
    if "SOPClassUID" not in out and hasattr(ds, "file_meta"):
        out.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    return out
