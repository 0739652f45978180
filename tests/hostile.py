"""Hostile peers for tests and benchmarks: connections from another loopback address that
hold, half-send or flood (all of 127/8 is loopback on Linux, so 127.0.0.2 is a different
source address from a valid peer's 127.0.0.1)."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from pathlib import Path
from collections.abc import Iterator
from contextlib import contextmanager

from pydicom import dcmread
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification  # type: ignore[attr-defined]

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


class Fuzzer:
    """Hostile inputs from ATTACKER, each on its own connection, from several threads."""

    def __init__(self, port: int, files: list[Path], work: Path, seed: int) -> None:
        self.port, self.files, self.work = port, files, work
        self.rq = association_request()
        self.sent: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.seed = seed

    def _sock(self) -> socket.socket:
        s = socket.socket()
        s.bind((ATTACKER, 0))
        s.settimeout(3)
        s.connect(("127.0.0.1", self.port))
        return s

    def _raw(self, payload: bytes, linger: float = 0.0) -> None:
        with self._sock() as s:
            s.sendall(payload)
            if linger:
                time.sleep(linger)

    def random_bytes(self, rng: random.Random) -> None:
        self._raw(rng.randbytes(rng.randint(1, 8192)))

    def truncated_pdu(self, rng: random.Random) -> None:
        self._raw(self.rq[:rng.randint(1, len(self.rq) - 1)])

    def huge_declared(self, rng: random.Random) -> None:
        self._raw(struct.pack(">BBL", rng.randint(1, 7), 0, 0xFFFF_FFFF) + rng.randbytes(1024))

    def garbage_items(self, rng: random.Random) -> None:
        body = self.rq[:74] + rng.randbytes(rng.randint(10, 4000))
        self._raw(struct.pack(">BBL", 1, 0, len(body) - 6) + body[6:], linger=0.05)

    def _file_variant(self, rng: random.Random, kind: str) -> Path:
        src = rng.choice(self.files)
        ds = dcmread(src)
        if kind == "class_mismatch":
            ds.SOPClassUID = MRImageStorage
        elif kind == "instance_mismatch":
            ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
        path = self.work / f"{kind}-{threading.get_ident()}.dcm"
        ds.save_as(path)  # the file meta (what the command says) is kept as it was
        data = bytearray(path.read_bytes())
        meta_end = 132 + 12 + struct.unpack_from("<L", data, 140)[0]
        if kind == "bit_flip":
            for _ in range(rng.randint(1, 64)):
                i = rng.randrange(meta_end, len(data))
                data[i] ^= 1 << rng.randrange(8)
        elif kind == "truncated":
            data = data[:rng.randrange(meta_end + 1, len(data))]
        path.write_bytes(bytes(data))
        return path

    def associated(self, rng: random.Random, kind: str) -> None:
        ae = AE(ae_title="FUZZER")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
        ae.add_requested_context(CTImageStorage)
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", self.port, ae_title="PACSAI", bind_address=(ATTACKER, 0))
        if not assoc.is_established:
            return
        try:
            if kind in ("drop_mid", "abort_mid"):
                path = rng.choice(self.files)
                t = threading.Thread(target=self._quietly, args=(assoc.send_c_store, path))
                t.start()
                time.sleep(rng.uniform(0.001, 0.02))
                if kind == "abort_mid":
                    assoc.abort()
                else:
                    raw = assoc.dul.socket.socket if assoc.dul.socket else None
                    if raw is not None:
                        raw.shutdown(socket.SHUT_RDWR)
                t.join(10)
                return
            path = self._file_variant(rng, kind)
            self._quietly(assoc.send_c_store, path)
        finally:
            if assoc.is_established:
                assoc.release()

    @staticmethod
    def _quietly(fn, *args) -> None:  # type: ignore[no-untyped-def]
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - the listener is the one under test
            pass

    KINDS = ("random_bytes", "truncated_pdu", "huge_declared", "garbage_items", "bit_flip",
             "truncated", "drop_mid", "abort_mid", "class_mismatch", "instance_mismatch")

    def run(self, seconds: float, workers: int) -> None:
        _config.STORE_SEND_CHUNKED_DATASET = True  # files as they are: the command from the meta
        stop = time.monotonic() + seconds

        def worker(n: int) -> None:
            rng = random.Random(self.seed + n)
            while time.monotonic() < stop:
                kind = rng.choice(self.KINDS)
                try:
                    if kind in ("random_bytes", "truncated_pdu", "huge_declared", "garbage_items"):
                        getattr(self, kind)(rng)
                    else:
                        self.associated(rng, kind)
                except OSError:
                    pass
                with self.lock:
                    self.sent[kind] += 1

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
