"""The DICOM listener: a pynetdicom C-STORE / C-ECHO SCP in front of the spool.

Connections pass :mod:`daemon.ingest.association_gate` first and read through
:mod:`daemon.ingest.transport`; the event handlers are :mod:`daemon.ingest.handlers`.
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Any

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    HTJ2K,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.presentation import AllStoragePresentationContexts

from daemon.config import ListenerSettings
from daemon.ingest import handlers as handlers_
from daemon.ingest.association_gate import GateLimits
from daemon.ingest.handlers import Reception
from daemon.ingest.offenders import OffenderLog
from daemon.ingest.server import gated_server_class
from daemon.ingest.spool import Spool
from daemon.ingest.tracker import StudyTracker
from daemon.ingest.transport import InflightBudget, bounded_request_handler
from dicom_io.compat import check_versions, register_server

log = logging.getLogger(__name__)

#: Accepted as received and stored undecoded.
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
]


def tls_server_context(cert_file: str, key_file: str, ca_file: str | None) -> ssl.SSLContext:
    """Server-side TLS; with a CA bundle, peers must present a certificate it signed."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    if ca_file:
        ctx.load_verify_locations(ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class Listener:
    """Accepts associations and stores what they send (see module docstring)."""

    def __init__(self, settings: ListenerSettings, spool: Spool, tracker: StudyTracker) -> None:
        self.settings = settings
        self.reception = Reception(settings, spool, tracker, OffenderLog())
        self._server: Any = None
        self.ae = self._make_ae()

    def _make_ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.maximum_pdu_size = s.max_pdu_size
        ae.maximum_associations = s.max_associations
        ae.acse_timeout = s.acse_timeout
        ae.dimse_timeout = s.dimse_timeout
        ae.network_timeout = s.network_timeout
        if s.allowed_calling_aets:
            ae.require_calling_aet = list(s.allowed_calling_aets)
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
        return ae

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        check_versions()  # warns when pynetdicom or highdicom is not what dicom_io.compat expects
        ctx = None
        if s.tls.enabled:
            ctx = tls_server_context(str(s.tls.cert_file), str(s.tls.key_file),
                                     str(s.tls.ca_file) if s.tls.ca_file else None)
        r = [self.reception]
        handlers = [
            (evt.EVT_C_ECHO, handlers_.on_echo),
            (evt.EVT_C_STORE, handlers_.on_store, r),
            (evt.EVT_ACCEPTED, handlers_.on_accepted, r),
            (evt.EVT_REJECTED, handlers_.on_rejected, r),
            (evt.EVT_RELEASED, handlers_.on_closed, r),
            (evt.EVT_ABORTED, handlers_.on_aborted, r),
            (evt.EVT_CONN_CLOSE, handlers_.on_closed, r),
        ]
        handler = bounded_request_handler(max_pdu_length=s.max_pdu_size,
                                          max_dataset_bytes=s.max_dataset_bytes,
                                          budget=InflightBudget(s.max_inflight_dataset_bytes))
        limits = GateLimits(request_timeout=s.association_request_timeout,
                            per_address=s.max_connections_per_address,
                            max_pending=s.max_pending_connections,
                            network_timeout=s.network_timeout)
        self._server = self.ae.make_server(
            (s.host, s.port), evt_handlers=handlers, ssl_context=ctx,
            server_class=gated_server_class(limits, self.reception.offenders), request_handler=handler,
        )
        register_server(self.ae, self._server)  # as start_server() does; shutdown() expects it
        threading.Thread(target=self._server.serve_forever, name="dicom-listener",
                         daemon=True).start()
        log.info("listening as %s on %s:%d%s", s.ae_title, s.host, self.port,
                 " with TLS" if ctx else "")

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server else self.settings.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
