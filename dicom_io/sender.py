"""C-STORE SCU: deliver result objects to a DICOM destination (pynetdicom).

One association per batch. :func:`send` never raises for network or peer
problems: every instance gets an :class:`InstanceOutcome`; when the association
cannot be established (connection refused, rejected, timed out) or is aborted,
every instance not yet stored is a ``failure`` whose ``error`` says why.

Files are streamed: the association is negotiated from each file's meta header
(SOP class, transfer syntax), and a file is opened only when its turn comes. When
the peer accepted the file's own transfer syntax its bytes go out as they are, read
in PDU-sized pieces (pynetdicom's chunked send, nothing decoded); otherwise that
one file is read, converted to a syntax the peer accepted and released before the
next. Memory per batch is thus that of one instance at most (pynetdicom may queue a
message's PDUs for its network thread), whatever the batch size.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import build_context

from dicom_io.scu_guard import guard_responses

logger = logging.getLogger(__name__)

Category = Literal["success", "warning", "failure"]
# Storage warnings (PS3.4 B.2.3) plus the generic warning 0x0001.
WARNING_STATUSES = {0x0001, 0xB000, 0xB006, 0xB007}
NO_RESPONSE = "no C-STORE response (timeout or association aborted)"


@dataclass(frozen=True)
class TLSParams:
    """TLS for DICOM (PS3.15 B.1): CA bundle, optional client certificate."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_hostname: str | None = None
    verify: bool = True

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


@dataclass(frozen=True)
class Destination:
    """A C-STORE SCP to deliver to."""

    ae_title: str
    host: str
    port: int
    calling_ae: str = "PACSAI"
    tls: TLSParams | None = None


@dataclass(frozen=True)
class InstanceOutcome:
    """What the peer said about one instance (``status`` None: no response)."""

    sop_instance_uid: str
    status: int | None
    category: Category
    error: str | None = None


class AssociationFailed(Exception):
    """The association could not be established; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def categorise(status: int | None) -> Category:
    """0x0000 success; 0x0001 and 0xB000/0xB006/0xB007 warning; anything else failure."""
    if status == 0x0000:
        return "success"
    if status in WARNING_STATUSES:
        return "warning"
    return "failure"


def _nodelay(event: evt.Event) -> None:
    """Disable Nagle on the SCU socket: DCMTK peers delay ACKs, and Nagle then
    stalls every small PDU (measured 9.8 s instead of 2.8 s)."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass(frozen=True)
class _Item:
    """One object to send: where it is and what its header says."""

    index: int
    source: Dataset | Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str | None


def _header(index: int, item: Dataset | str | Path) -> _Item:
    """SOP class, instance and transfer syntax, without reading the data set."""
    if isinstance(item, Dataset):
        ts = getattr(getattr(item, "file_meta", None), "TransferSyntaxUID", None)
        return _Item(index, item, str(item.SOPClassUID), str(item.SOPInstanceUID),
                     str(ts) if ts else None)
    path = Path(item)
    try:
        meta = read_file_meta_info(path)
        return _Item(index, path, str(meta.MediaStorageSOPClassUID),
                     str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID))
    except AttributeError:  # a file meta header without those elements: read the top
        ds = dcmread(path, stop_before_pixels=True)
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        return _Item(index, path, str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                     str(ts) if ts else None)


_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def _contexts(items: Sequence[_Item]) -> list:
    """Per SOP class: one presentation context per transfer syntax the files are in
    (so the peer can accept each exactly and the file is sent as it is), plus one
    offering the uncompressed syntaxes not already offered (conversion fallback)."""
    native: dict[str, list[str]] = {}
    for item in items:
        wanted = native.setdefault(item.sop_class, [])
        if item.transfer_syntax and item.transfer_syntax not in wanted:
            wanted.append(item.transfer_syntax)
    contexts = []
    for cls, syntaxes in native.items():
        contexts.extend(build_context(cls, ts) for ts in syntaxes)
        rest = [ts for ts in _UNCOMPRESSED if ts not in syntaxes]
        if rest:
            contexts.append(build_context(cls, rest))
    if len(contexts) > 128:
        raise ValueError(f"{len(contexts)} presentation contexts needed for one batch "
                         "(SOP classes x transfer syntaxes); at most 128")
    return contexts


_chunked_lock = threading.Lock()
_chunked_users = 0
_chunked_before = False


@contextmanager
def _chunked_send() -> Iterator[None]:
    """pynetdicom sends a file path in PDU-sized reads, undecoded, only while its
    process-wide ``STORE_SEND_CHUNKED_DATASET`` is on: on for our sends, then as it was."""
    global _chunked_users, _chunked_before
    with _chunked_lock:
        if _chunked_users == 0:
            _chunked_before = _config.STORE_SEND_CHUNKED_DATASET
            _config.STORE_SEND_CHUNKED_DATASET = True
        _chunked_users += 1
    try:
        yield
    finally:
        with _chunked_lock:
            _chunked_users -= 1
            if _chunked_users == 0:
                _config.STORE_SEND_CHUNKED_DATASET = _chunked_before


@contextmanager
def open_association(
    destination: Destination, contexts: list, timeout: float = 30.0
) -> Iterator[Association]:
    """An established association to ``destination`` (TCP_NODELAY set), released
    on exit. Raises :class:`AssociationFailed` with the reason otherwise."""
    ae = AE(ae_title=destination.calling_ae)
    ae.requested_contexts = contexts
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.maximum_pdu_size = 0
    rejection: dict[str, str] = {}
    connected: list[bool] = []

    def _on_open(event: evt.Event) -> None:
        connected.append(True)
        _nodelay(event)

    def _on_acse(event: evt.Event) -> None:
        prim = event.primitive
        # Only an A-ASSOCIATE carries a rejection; an A-RELEASE's ``result`` is
        # "affirmative" and it has no ``result_str``.
        if isinstance(prim, A_ASSOCIATE) and prim.result not in (None, 0x00):
            rejection["reason"] = (
                f"association rejected ({prim.result_str}, {prim.source_str}): {prim.reason_str}"
            )

    tls_args = None
    if destination.tls is not None:
        tls_args = (destination.tls.context(), destination.tls.server_hostname or destination.host)
    try:
        assoc = ae.associate(
            destination.host,
            destination.port,
            ae_title=destination.ae_title,
            tls_args=tls_args,
            evt_handlers=[(evt.EVT_CONN_OPEN, _on_open), (evt.EVT_ACSE_RECV, _on_acse)],
        )
    except (OSError, ValueError) as exc:
        raise AssociationFailed(f"association request failed: {exc}") from exc
    if not assoc.is_established:
        if not connected:
            reason = (
                f"could not connect to {destination.host}:{destination.port} "
                "(connection refused, unreachable, timed out or TLS handshake failed)"
            )
        elif assoc.is_rejected:
            reason = rejection.get("reason", "association rejected")
        elif assoc.is_aborted:
            # A peer that rejects and closes at once (DCMTK --refuse) can be
            # seen as an abort when the close wins the race with the A-ASSOCIATE-RJ.
            reason = "association aborted or rejected by peer during negotiation"
        else:
            reason = "association not established (no response from peer)"
        raise AssociationFailed(reason)
    guard_responses(assoc)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def send(
    items: Sequence[Dataset | str | Path],
    destination: Destination,
    timeout: float = 30.0,
    progress: Callable[[InstanceOutcome], None] | None = None,
) -> list[InstanceOutcome]:
    """C-STORE ``items`` (datasets or file paths) over one association.

    Returns one outcome per readable item, in order (unreadable files are
    failures with ``status`` None). Never raises for peer or network errors.
    Files are read one at a time as they are sent (see the module's docstring).
    ``progress`` is called with each outcome as the peer answers.
    """
    outcomes: list[InstanceOutcome | None] = [None] * len(items)
    headers: list[_Item] = []
    for i, item in enumerate(items):
        try:
            headers.append(_header(i, item))
        except Exception as exc:  # unreadable file
            outcomes[i] = InstanceOutcome(str(item), None, "failure", f"cannot read: {exc}")
            if progress is not None:
                progress(outcomes[i])
    if headers:
        _send_batch(headers, destination, timeout, outcomes, progress)
    done = [o for o in outcomes if o is not None]
    counts = {c: sum(o.category == c for o in done) for c in ("success", "warning", "failure")}
    logger.info(
        "sent %d instance(s) to %s@%s:%s: %s",
        len(done), destination.ae_title, destination.host, destination.port, counts,
    )
    return done


def _send_batch(
    items: list[_Item],
    destination: Destination,
    timeout: float,
    outcomes: list[InstanceOutcome | None],
    progress: Callable[[InstanceOutcome], None] | None = None,
) -> None:
    def tell(outcome: InstanceOutcome) -> None:
        if progress is not None:
            progress(outcome)

    def fail_rest(reason: str) -> None:
        for item in items:
            if outcomes[item.index] is None:
                outcomes[item.index] = InstanceOutcome(item.sop_instance, None, "failure", reason)
                tell(outcomes[item.index])

    try:
        contexts = _contexts(items)
        with open_association(destination, contexts, timeout) as assoc, _chunked_send():
            exact = {(cx.abstract_syntax, cx.transfer_syntax[0])
                     for cx in assoc.accepted_contexts}
            for item in items:
                if not assoc.is_established:
                    fail_rest("association aborted or released before sending")
                    return
                outcomes[item.index] = outcome = _store_one(assoc, item, exact)
                tell(outcome)
                if outcome.status is None and outcome.error == NO_RESPONSE:
                    # The association is in an unknown state: stop, don't wait
                    # a DIMSE timeout per remaining instance.
                    if assoc.is_established:
                        assoc.abort()
                    fail_rest("not sent: association aborted after an unanswered C-STORE")
                    return
    except AssociationFailed as exc:
        logger.warning("delivery to %s failed: %s", destination.ae_title, exc.reason)
        fail_rest(exc.reason)
    except ValueError as exc:
        fail_rest(str(exc))


def _store_one(assoc: Association, item: _Item, exact: set[tuple[str, str]]) -> InstanceOutcome:
    uid = item.sop_instance
    try:
        if isinstance(item.source, Path) and (item.sop_class, item.transfer_syntax) in exact:
            rsp = assoc.send_c_store(item.source)  # streamed from the file, as it is
        else:
            # A data set in memory, or a file the peer takes only in another syntax:
            # this one file is decoded, converted and released.
            ds = item.source if isinstance(item.source, Dataset) else dcmread(item.source)
            rsp = assoc.send_c_store(ds)
            del ds
    except (OSError, InvalidDicomError) as exc:  # the file went or changed since its header
        return InstanceOutcome(uid, None, "failure", f"cannot read: {exc}")
    except (ValueError, AttributeError, RuntimeError) as exc:  # no accepted context etc.
        return InstanceOutcome(uid, None, "failure", str(exc))
    if "Status" not in rsp:
        return InstanceOutcome(uid, None, "failure", NO_RESPONSE)
    status = int(rsp.Status)
    category = categorise(status)
    error = None
    if category != "success":
        comment = rsp.get("ErrorComment")
        error = f"status 0x{status:04X}" + (f": {comment}" if comment else "")
        logger.log(logging.WARNING if category == "failure" else logging.INFO,
                   "C-STORE %s: %s", uid, error)
    return InstanceOutcome(uid, status, category, error)
