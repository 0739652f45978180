"""Orthanc (a real PACS) accepts our SR and SC and files them in the source study."""

from __future__ import annotations

from conftest import requires_orthanc
import dicomio_samples as samples

from dicom_io.sc import SCOptions, write_heatmap_scs
from dicom_io.sender import Destination, send
from dicom_io.sr import write_sr


@requires_orthanc
def test_orthanc_files_sr_and_sc_in_source_study(orthanc, tmp_path):
    sources = samples.ct_series(3)
    for i, ds in enumerate(sources):
        path = tmp_path / f"src{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        orthanc.upload(path)
    result = samples.result_for(sources)
    sr = write_sr(result, sources)
    scs = write_heatmap_scs(result, sources, SCOptions(top_k=2, min_size=128, max_size=256))

    dest = Destination(orthanc.aet, "127.0.0.1", orthanc.dicom_port, calling_ae="PACSAI")
    outcomes = send([sr, *scs], dest, timeout=20)
    assert {o.category for o in outcomes} == {"success"}, outcomes

    series = orthanc.series_of_study(sources[0].StudyInstanceUID)
    by_uid = {s["MainDicomTags"]["SeriesInstanceUID"]: s for s in series}
    assert set(by_uid) == {sources[0].SeriesInstanceUID, sr.SeriesInstanceUID,
                           scs[0].SeriesInstanceUID}
    assert by_uid[sr.SeriesInstanceUID]["MainDicomTags"]["Modality"] == "SR"
    assert len(by_uid[scs[0].SeriesInstanceUID]["Instances"]) == 2
    # Re-sending identical objects does not create duplicates.
    assert {o.category for o in send([sr, *scs], dest, timeout=20)} == {"success"}
    series = orthanc.series_of_study(sources[0].StudyInstanceUID)
    assert sum(len(s["Instances"]) for s in series) == 3 + 1 + 2
    stored = orthanc.get(f"/instances/{by_uid[sr.SeriesInstanceUID]['Instances'][0]}/simplified-tags")
    assert stored["SOPInstanceUID"] == sr.SOPInstanceUID
    assert stored["PatientID"] == sources[0].PatientID
