"""Validation helpers shared by end-to-end tests."""

from __future__ import annotations

import subprocess
from pathlib import Path


def dciodvfy(path: Path | str) -> tuple[list[str], list[str]]:
    """(errors, warnings) lines printed by dicom3tools' dciodvfy for ``path``."""
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stderr + proc.stdout).splitlines()
    return ([ln.strip() for ln in lines if ln.startswith("Error")],
            [ln.strip() for ln in lines if ln.startswith("Warning")])


# dciodvfy warnings accepted on the objects pacsai writes (each explained in
# docs/dicom-output.md): IHE AIR's Device UID is unknown to this dicom3tools dictionary.
ACCEPTED_WARNINGS = {
    "Warning - Attribute is not present in standard DICOM IOD - (0x0018,0x1002) UI Device UID",
    "Warning - Dicom dataset contains attributes not present in standard DICOM IOD - this is a "
    "Standard Extended SOP Class",
    # Parametric Map: this dicom3tools does not know the defined term QUANTITY (PS3.3 C.8.32)
    "Warning - Unrecognized defined term <QUANTITY> for value 4 of attribute <Image Type>",
    "Warning - Unrecognized defined term <QUANTITY> for value 4 of attribute <Frame Type>",
}


def assert_valid_dicom(paths: list[Path]) -> None:
    """Every file passes dciodvfy with no Error and only accepted warnings."""
    assert paths, "no DICOM object to validate"
    for path in paths:
        errors, warnings = dciodvfy(path)
        assert errors == [], f"{path.name}: {errors}"
        assert set(warnings) <= ACCEPTED_WARNINGS, f"{path.name}: {set(warnings) - ACCEPTED_WARNINGS}"
