"""Every coded concept the result writers put into DICOM, in one place.

Our plain :class:`CodedConcept` is what inference and worker code pass around (no
highdicom there); :func:`coded` turns it into highdicom's. The DICOM-side constants
are highdicom concepts already.
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd


@dataclass(frozen=True)
class CodedConcept:
    """A coded term (code value, coding scheme designator, code meaning)."""

    value: str
    scheme: str
    meaning: str
    scheme_version: str | None = None


def coded(concept: CodedConcept) -> hd.sr.CodedConcept:
    """highdicom coded concept from our plain one."""
    return hd.sr.CodedConcept(concept.value, concept.scheme, concept.meaning,
                              concept.scheme_version)


# -- a finding's evaluation (SNOMED CT) and its NUM concept names ---------------------------
PRESENT = CodedConcept("52101004", "SCT", "Present")
ABSENT = CodedConcept("272519000", "SCT", "Absent")
PROBABILITY = CodedConcept("122157", "DCM", "Probability")
SCORE = CodedConcept("246262008", "SCT", "Score")

# -- the imaging procedure reported, by modality, when the pipeline names none (SNOMED CT) --
PROCEDURE_BY_MODALITY = {
    "CR": CodedConcept("363680008", "SCT", "Radiographic imaging procedure"),
    "DX": CodedConcept("363680008", "SCT", "Radiographic imaging procedure"),
    "MG": CodedConcept("71651007", "SCT", "Mammography"),
    "CT": CodedConcept("77477000", "SCT", "Computerized axial tomography"),
    "MR": CodedConcept("113091000", "SCT", "Magnetic resonance imaging"),
    "US": CodedConcept("16310003", "SCT", "Ultrasonography"),
    "PT": CodedConcept("82918005", "SCT", "Positron emission tomography"),
}
IMAGING = CodedConcept("363679005", "SCT", "Imaging")

# -- IHE AIR ---------------------------------------------------------------------------------
#: Purpose of Reference of the algorithm's Contributing Equipment item.
PROCESSING_ALGORITHM = hd.sr.CodedConcept("1630", "99IHE", "Processing Algorithm")
#: TID 1500 root container for the disclaimer and the thresholds.
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")

# -- references to source images -------------------------------------------------------------
#: TID 1601 Image Library Entry concept name.
SOURCE = hd.sr.CodedConcept("260753009", "SCT", "Source")
#: Concept name of what a measurement was inferred from (TID 300 / TID 320).
SOURCE_OF_MEASUREMENT = hd.sr.CodedConcept("121112", "DCM", "Source of Measurement")
#: Purpose of Reference of Source Image Sequence items (CID 7202).
SOURCE_FOR_PROCESSING = hd.sr.CodedConcept(
    "121322", "DCM", "Source image for image processing operation")
