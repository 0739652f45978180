"""A sender that goes silent mid-study (hung modality, pulled cable) does not leave it open."""

from __future__ import annotations

from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dicom_io.synthetic_study import ct_series
from pacsai_process import PacsaiProcess, wait_until
from test_daemon_e2e import db_of, study_row


def test_silent_peer_is_dropped_and_its_study_completes(tmp_path: Path) -> None:
    cfg = {"PACSAI_LISTENER__NETWORK_TIMEOUT": "2", "PACSAI_STUDY__QUIET_SECONDS": "0.5"}
    with PacsaiProcess(tmp_path / "data", command="listener", config=cfg) as proc:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", proc.port, ae_title="PACSAI")
        assert assoc.is_established
        datasets = list(ct_series(3, 32, seed=5))
        for ds in datasets[:2]:
            assert assoc.send_c_store(ds).Status == 0
        # ... and then nothing: no third instance, no release
        uid = datasets[0].StudyInstanceUID
        db = db_of(proc)
        wait_until(lambda: "went silent" in proc.log(), 15, 0.1)
        row = wait_until(lambda: (r := study_row(db, uid)) is not None and r.state != "receiving"
                         and r, 15, 0.1)
        assert row.num_instances == 2  # what was acknowledged is kept and analysed
        assert not assoc.is_established  # we aborted it
        db.dispose()
