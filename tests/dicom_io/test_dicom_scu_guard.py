"""pynetdicom's reactor can take a response meant for a waiting sender: the guard hands it back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from dicom_io.scu_guard import MAX_REQUEUES, guard_responses
from dicom_io.synthetic_study import ct_series
from pacsai_process import free_port, wait_until


def _scp(port: int):  # type: ignore[no-untyped-def]
    ae = AE(ae_title="SCP")
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage)
    return ae.start_server(("127.0.0.1", port), block=False,
                           evt_handlers=[(evt.EVT_C_STORE, lambda e: 0x0000)])


def _response(message_id: int) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = CTImageStorage
    rsp.AffectedSOPInstanceUID = "1.2.3.4"
    rsp.Status = 0x0000
    return rsp


def _associate(port: int):  # type: ignore[no-untyped-def]
    ae = AE(ae_title="SCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="SCP")
    assert assoc.is_established
    return assoc


@pytest.mark.raw_pynetdicom
def test_a_response_the_reactor_takes_reaches_the_sender(tmp_path: Path) -> None:
    port = free_port()
    server = _scp(port)
    try:
        # What the race looks like: a response sits in the queue while the reactor runs.
        plain = _associate(port)
        plain.dimse.msg_queue.put((1, _response(7)))
        wait_until(lambda: plain.dimse.msg_queue.empty(), 5, 0.01)  # the reactor took it ...
        plain._reactor_checkpoint.clear()
        wait_until(lambda: plain._is_paused, 5, 0.001)
        plain.dimse_timeout = 0.5
        assert plain.dimse.get_msg(block=True) == (None, None)  # ... and dropped it
        plain._reactor_checkpoint.set()
        plain.release()

        guarded = guard_responses(_associate(port))
        guarded.dimse.msg_queue.put((1, _response(8)))
        time.sleep(0.05)  # the reactor takes it and hands it back, pass after pass
        guarded._reactor_checkpoint.clear()  # what send_c_store() does before waiting
        wait_until(lambda: guarded._is_paused, 5, 0.001)
        guarded.dimse_timeout = 5
        context_id, rsp = guarded.dimse.get_msg(block=True)
        assert context_id == 1 and rsp.MessageIDBeingRespondedTo == 8
        guarded._reactor_checkpoint.set()
        guarded.release()
    finally:
        server.shutdown()


@pytest.mark.raw_pynetdicom
def test_a_response_nobody_waits_for_is_dropped_in_the_end(tmp_path: Path) -> None:
    port = free_port()
    server = _scp(port)
    try:
        guarded = guard_responses(_associate(port))
        stray = _response(9)
        guarded.dimse.msg_queue.put((1, stray))
        wait_until(lambda: getattr(stray, "_pacsai_requeues", 0) >= MAX_REQUEUES
                   and guarded.dimse.msg_queue.empty(), 10, 0.01)
        ds = next(iter(ct_series(1, 32)))
        assert guarded.send_c_store(ds).Status == 0  # the association works on
        guarded.release()
        assert guarded.is_released
    finally:
        server.shutdown()
