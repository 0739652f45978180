"""IHE AI Results: how every result object names the algorithm that made it.

Shared by the SR, SC and Parametric Map writers: the Contributing Equipment item
(purpose "Processing Algorithm", 99IHE 1630) and the SR's device observer.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.sr.codedict import codes

from dicom_io.coding import PROCESSING_ALGORITHM
from dicom_io.results import AnalysisResult


def algorithm_equipment(result: AnalysisResult) -> hd.ContributingEquipment:
    """IHE AIR Contributing Equipment item describing the algorithm."""
    algo = result.algorithm
    item = hd.ContributingEquipment(
        manufacturer=algo.manufacturer,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=algo.manufacturer_model_name,
        software_versions=algo.software_versions,
        institution_name=algo.institution_name,
        contribution_datetime=result.analysed_at,
        contribution_description=f"{algo.name} {algo.version} ({result.pipeline})"[:64],
    )
    # highdicom only accepts DCM purposes; IHE AIR asks for (1630, 99IHE).
    item.PurposeOfReferenceCodeSequence = [PROCESSING_ALGORITHM]
    item.DeviceUID = algo.device_uid
    return item


def device_observer(result: AnalysisResult) -> hd.sr.ObserverContext:
    """TID 1004 Device Observer Identifying Attributes for the algorithm."""
    algo = result.algorithm
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=algo.device_uid,
            name=algo.name[:64],
            manufacturer_name=algo.manufacturer[:64],
            model_name=algo.manufacturer_model_name[:64],
        ),
    )
