"""Hostile peers for tests and benchmarks: connections from another loopback address that
hold, half-send or flood (all of 127/8 is loopback on Linux, so 127.0.0.2 is a different
source address from a valid peer's 127.0.0.1)."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

ATTACKER = "127.0.0.2"


def association_request(calling: str = "HOSTILE", called: str = "PACSAI",
                        abstract_syntax: str = Verification) -> bytes:
    """The A-ASSOCIATE-RQ pynetdicom sends (one context, Implicit VR Little Endian), captured
    on a raw socket."""
    server = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def capture() -> None:
        conn, _ = server.accept()
        with conn:
            head = conn.recv(6, socket.MSG_WAITALL)
            got.append(head + conn.recv(struct.unpack(">L", head[2:])[0], socket.MSG_WAITALL))

    t = threading.Thread(target=capture)
    t.start()
    ae = AE(ae_title=calling)
    ae.acse_timeout = 1
    ae.add_requested_context(abstract_syntax, ImplicitVRLittleEndian)
    ae.associate("127.0.0.1", server.getsockname()[1], ae_title=called)
    t.join(5)
    server.close()
    return got[0]


def connect_from_attacker(port: int, source: str = ATTACKER) -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s


@contextmanager
def held_connections(port: int, n: int, payload: bytes = b"") -> Iterator[list[int]]:
    """Keep ``n`` connections from ATTACKER open, each sending ``payload`` then nothing;
    reconnect whichever the listener closes (as a slow-loris attacker does). Yields a
    list holding the number of reconnections so far."""
    stop = threading.Event()
    reconnects = [0]

    def hold() -> None:
        socks: list[socket.socket | None] = [None] * n
        while not stop.is_set():
            for i in range(n):
                s = socks[i]
                if s is not None:
                    try:
                        s.setblocking(False)
                        if s.recv(4096) == b"":  # closed by the listener
                            s.close()
                            s = socks[i] = None
                    except BlockingIOError:
                        pass
                    except OSError:
                        s.close()
                        s = socks[i] = None
                if s is None:
                    try:
                        s = connect_from_attacker(port)
                        if payload:
                            s.sendall(payload)
                        socks[i] = s
                        reconnects[0] += 1
                    except OSError:
                        pass
            stop.wait(0.05)
        for s in socks:
            if s is not None:
                s.close()

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    try:
        yield reconnects
    finally:
        stop.set()
        t.join(10)




def associate_raw(port: int, abstract_syntax: str, source: str = ATTACKER) -> socket.socket:
    """A raw socket with an established association (presentation context 1)."""
    s = connect_from_attacker(port, source)
    s.sendall(association_request(abstract_syntax=abstract_syntax))
    head = s.recv(6, socket.MSG_WAITALL)
    assert head[0] == 0x02, head  # A-ASSOCIATE-AC
    s.recv(struct.unpack(">L", head[2:])[0], socket.MSG_WAITALL)
    return s


def p_data(control: int, payload: bytes, context_id: int = 1) -> bytes:
    """One P-DATA-TF PDU holding one PDV (control: bit 0 command, bit 1 last fragment)."""
    item = bytes([context_id, control]) + payload
    return struct.pack(">BBL", 0x04, 0, 4 + len(item)) + struct.pack(">L", len(item)) + item


def c_store_command(sop_class: str, sop_instance: str) -> bytes:
    """A C-STORE-RQ command set as one last command fragment."""
    req = C_STORE()
    req.MessageID, req.Priority = 1, 2
    req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = sop_class, sop_instance
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    return p_data(0x03, encode(msg.command_set, True, True))
