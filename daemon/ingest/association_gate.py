"""The listener's front door: a connection waits here, with no thread, until it asks to associate.

pynetdicom gives each accepted TCP connection an acceptor thread and a DUL thread at
once, counts them toward ``max_associations`` and waits ``acse_timeout`` for the
A-ASSOCIATE-RQ, even after the peer has gone; with TLS it also runs the handshake in
the accept loop itself. Idle or half-open connections (a port scanner, a hung
modality, a slow-loris attacker) could so lock every PACS out. The
:class:`GatedAssociationServer` instead

* refuses a connection at accept time when its address already holds
  ``max_connections_per_address`` connections, or when ``max_pending_connections``
  connections from anyone are still to send their request;
* runs the TLS handshake and reads the A-ASSOCIATE-RQ in one selector thread, without
  blocking, and closes a connection that has not sent a whole request within
  ``association_request_timeout`` seconds, or that sends anything else first;
* hands only a complete request to pynetdicom, which negotiates as usual; from then on
  every read and write on the socket has ``network_timeout``;
* logs one line per offending address and reason per minute, with a count, not one
  per socket;
* collects finished associations (pynetdicom's objects hold reference cycles, and
  with them the last data set received) and gives freed memory back to the system.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import gc
import logging
import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ as AssociateRequestPDU

from daemon.ingest import metrics
from daemon.ingest.offenders import OffenderLog

log = logging.getLogger(__name__)

A_ASSOCIATE_RQ = 0x01
UNRECOGNIZED_PDU = 0x01
INVALID_PDU_PARAMETER = 0x06


@dataclass(frozen=True)
class GateLimits:
    """What one peer may hold before its association is negotiated."""

    request_timeout: float = 5.0
    per_address: int = 16
    max_pending: int = 128
    max_request_bytes: int = 256 << 10
    network_timeout: float | None = 60.0


@dataclass
class _Pending:
    sock: socket.socket
    address: tuple[Any, ...]
    deadline: float
    tls: bool
    buffer: bytearray = field(default_factory=bytearray)
    need: int = 6  # the PDU header first: type, reserved, length
    events: int = selectors.EVENT_READ

    @property
    def host(self) -> str:
        return str(self.address[0])


def _release_memory() -> Callable[[], None]:
    """``malloc_trim(0)`` where glibc has it (freed arenas back to the system), else nothing."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


class AssociationGate:
    """The selector thread that holds connections until they have sent an A-ASSOCIATE-RQ."""

    def __init__(self, limits: GateLimits, hand_over: Callable[[socket.socket, Any, bytes], None],
                 offenders: OffenderLog, live_associations: Callable[[], int] = lambda: 0) -> None:
        self.limits = limits
        self._live_associations = live_associations
        self._hand_over = hand_over
        self._offenders = offenders
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._incoming: collections.deque[_Pending] = collections.deque()
        self._pending: dict[int, _Pending] = {}
        self._by_host: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._trim = _release_memory()
        self._thread = threading.Thread(target=self._run, name="association-gate", daemon=True)

    # -- called from the accept thread ------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def pending(self, host: str | None = None) -> int:
        with self._lock:
            return self._by_host[host] if host is not None else sum(self._by_host.values())

    def admit(self, sock: socket.socket, address: tuple[Any, ...]) -> None:
        sock.setblocking(False)
        p = _Pending(sock, address, time.monotonic() + self.limits.request_timeout,
                     tls=isinstance(sock, ssl.SSLSocket))
        with self._lock:
            self._by_host[p.host] += 1
        self._incoming.append(p)
        self._wake()

    def stop(self) -> None:
        self._stopping.set()
        self._wake()
        self._thread.join(timeout=5)
        for p in list(self._pending.values()):
            self._close(p)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # the pipe is full: the gate is awake already
            pass

    # -- the gate's thread -----------------------------------------------------------------
    def _run(self) -> None:
        last_tidy, live = 0.0, 0
        while not self._stopping.is_set():
            now = time.monotonic()
            next_deadline = min((p.deadline for p in self._pending.values()), default=now + 1.0)
            for key, _ in self._selector.select(max(0.0, min(next_deadline - now, 1.0))):
                if key.data is None:
                    self._drain_wake()
                else:
                    self._advance(key.data)
            while self._incoming:
                p = self._incoming.popleft()
                self._pending[p.sock.fileno()] = p
                self._selector.register(p.sock, p.events, p)
                self._advance(p)  # its request may be there already
            now = time.monotonic()
            for p in [p for p in self._pending.values() if p.deadline <= now]:
                self._refuse(p, "request_timeout",
                             f"closed a connection from {p.host} that sent no complete "
                             f"A-ASSOCIATE-RQ within {self.limits.request_timeout:g} s "
                             "(listener.association_request_timeout)")
            if now - last_tidy >= 1.0:  # associations ended: collect what they left, once
                last_tidy, before, live = now, live, self._live_associations()
                if live < before:
                    gc.collect()
                    self._trim()
            self._offenders.flush()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _advance(self, p: _Pending) -> None:
        if p.sock.fileno() not in self._pending:
            return
        try:
            if p.tls and not self._handshake(p):
                return
            while len(p.buffer) < p.need:
                chunk = p.sock.recv(p.need - len(p.buffer))
                if not chunk:
                    self._close(p)  # gone before asking: nothing to say, nothing to log
                    return
                p.buffer += chunk
                if len(p.buffer) == 6 and p.need == 6 and not self._read_header(p):
                    return
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            self._want(p, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._want(p, selectors.EVENT_WRITE)
            return
        except (OSError, ValueError) as exc:
            reason = "tls" if isinstance(exc, ssl.SSLError) else "connection_error"
            self._refuse(p, reason, f"dropped a connection from {p.host} before association: "
                                    f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}")
            return
        self._pass_on(p)

    def _handshake(self, p: _Pending) -> bool:
        sock: ssl.SSLSocket = p.sock  # type: ignore[assignment]
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(p, selectors.EVENT_READ)
            return False
        except ssl.SSLWantWriteError:
            self._want(p, selectors.EVENT_WRITE)
            return False
        p.tls = False  # done: from here on plain reads through the TLS layer
        self._want(p, selectors.EVENT_READ)
        return True

    def _read_header(self, p: _Pending) -> bool:
        pdu_type, length = p.buffer[0], struct.unpack(">L", p.buffer[2:6])[0]
        if pdu_type != A_ASSOCIATE_RQ:
            self._abort(p)
            self._refuse(p, "not_a_request", f"dropped a connection from {p.host} that sent a "
                                             f"PDU of type 0x{pdu_type:02X} before associating")
            return False
        if length > self.limits.max_request_bytes:
            self._abort(p)
            self._refuse(p, "request_too_large",
                         f"dropped a connection from {p.host} whose A-ASSOCIATE-RQ declared "
                         f"{length} bytes (at most {self.limits.max_request_bytes})")
            return False
        p.need = 6 + length
        return True

    def _want(self, p: _Pending, events: int) -> None:
        if p.events != events and p.sock.fileno() in self._pending:
            p.events = events
            self._selector.modify(p.sock, events, p)

    def _forget(self, p: _Pending) -> bool:
        fd = p.sock.fileno()
        if self._pending.pop(fd, None) is None:
            return False
        try:
            self._selector.unregister(p.sock)
        except (KeyError, ValueError):
            pass
        with self._lock:
            self._by_host[p.host] -= 1
            if self._by_host[p.host] <= 0:
                del self._by_host[p.host]
        return True

    def _pass_on(self, p: _Pending) -> None:
        problem = _undecodable(bytes(p.buffer))
        if problem:  # pynetdicom would leave its acceptor waiting acse_timeout for it
            self._abort(p, INVALID_PDU_PARAMETER)
            self._refuse(p, "not_a_request", f"dropped a connection from {p.host} whose "
                                             f"A-ASSOCIATE-RQ cannot be decoded ({problem})")
            return
        if not self._forget(p):
            return
        try:
            p.sock.settimeout(self.limits.network_timeout)
            self._hand_over(p.sock, p.address, bytes(p.buffer))
        except Exception:  # noqa: BLE001 - one connection's trouble must not stop the gate
            log.exception("could not hand a connection from %s to the DICOM server", p.host)
            _close_quietly(p.sock)

    def _abort(self, p: _Pending, diagnostic: int = UNRECOGNIZED_PDU) -> None:
        abort = A_ABORT_RQ()
        abort.source = 0x02  # DICOM UL service provider
        abort.reason_diagnostic = diagnostic
        try:
            p.sock.send(abort.encode())
        except (OSError, ValueError):
            pass

    def _refuse(self, p: _Pending, reason: str, text: str) -> None:
        metrics.connection_refused(reason)
        self._offenders.note(p.host, reason, text)
        self._close(p)

    def _close(self, p: _Pending) -> None:
        self._forget(p)
        _close_quietly(p.sock)


def _undecodable(pdu: bytes) -> str | None:
    """Why pynetdicom could not decode this A-ASSOCIATE-RQ, or None when it can."""
    try:
        primitive = AssociateRequestPDU()
        primitive.decode(pdu)
        request = primitive.to_primitive()
    except Exception as exc:  # noqa: BLE001 - any decoding error: hostile or broken peer
        return type(exc).__name__
    if not request.presentation_context_definition_list:
        return "no presentation context"
    return None


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
