"""``multipart/related`` bodies as DICOMweb sends them (PS3.18 8.6.1.2), streamed both ways.

Writing: :func:`stream_parts` yields a body chunk by chunk from files (one chunk of one
file in memory at a time). Reading: :class:`PartReader` is fed a body chunk by chunk
and hands each part's headers, data and end to a :class:`PartSink`; the boundary
scanning is python-multipart's (the streaming parser Starlette uses), the rules a
DICOMweb body must follow (a final boundary, whole parts) are checked here.
"""

from __future__ import annotations

import email.message
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

DICOM = "application/dicom"
CHUNK = 1 << 20


class MultipartError(ValueError):
    """The body is not a well-formed multipart/related message (or it stopped half-way)."""


def new_boundary() -> str:
    return f"pacsai-{secrets.token_hex(16)}"


def related_type(boundary: str, part_type: str = DICOM) -> str:
    """The Content-Type of a multipart/related body of ``part_type`` parts."""
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """``multipart/related; type="application/dicom"; boundary=x`` -> (mime, {param: value})."""
    msg = email.message.Message()
    msg["content-type"] = value or ""
    params = {k.lower(): v for k, v in (msg.get_params() or [])[1:]}
    return msg.get_content_type(), params


def boundary_of(content_type: str) -> str:
    """The boundary of a multipart/related Content-Type; MultipartError if it has none."""
    mime, params = parse_content_type(content_type)
    if mime != "multipart/related":
        raise MultipartError(f"expected multipart/related, got {mime}")
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 70:
        raise MultipartError("multipart/related without a valid boundary")
    return boundary


@dataclass(frozen=True)
class FilePart:
    """One part to send: a file's bytes under ``headers``."""

    path: Path
    headers: dict[str, str] = field(default_factory=dict)


def stream_parts(parts: Iterable[FilePart], boundary: str, *,
                 chunk_size: int = CHUNK) -> Iterator[bytes]:
    """The body: each part's headers, then its file read in ``chunk_size`` pieces.

    Small pieces (headers, files smaller than a chunk) are gathered into chunks of about
    ``chunk_size``, so a study of many small instances is sent in few writes; at most about
    two chunks are in memory. A file that cannot be opened or shrinks while read raises: the
    body then ends without its closing boundary, which a reader treats as a broken transfer
    (never as a whole one).
    """
    dash = f"--{boundary}".encode()
    pending = bytearray()
    for part in parts:
        with part.path.open("rb") as fh:
            size = _size(fh)
            pending += dash + b"\r\n" + b"".join(
                f"{k}: {v}\r\n".encode("latin-1") for k, v in
                {**part.headers, "Content-Length": str(size)}.items()) + b"\r\n"
            left = size
            while left > 0:
                data = fh.read(min(chunk_size, left))
                if not data:
                    raise OSError(f"{part.path.name} shrank while it was sent")
                left -= len(data)
                pending += data
                if len(pending) >= chunk_size:
                    yield bytes(pending)
                    pending.clear()
        pending += b"\r\n"
    yield bytes(pending + dash + b"--\r\n")


def _size(fh) -> int:  # type: ignore[no-untyped-def]
    import os

    return os.fstat(fh.fileno()).st_size


class PartSink(Protocol):
    """What a :class:`PartReader` hands each part to."""

    def begin(self, headers: dict[str, str]) -> None: ...  # header names lower-case
    def data(self, chunk: bytes) -> None: ...
    def end(self) -> None: ...


class PartReader:
    """Parse a multipart/related body fed in pieces; parts go to ``sink`` as they arrive.

    ``close()`` raises :class:`MultipartError` unless the closing boundary was seen and the
    last part ended, so a body cut off mid-transfer is never taken for a whole one.
    Exceptions raised by the sink propagate out of :meth:`feed`.
    """

    def __init__(self, boundary: str, sink: PartSink, *, max_bytes: float = float("inf")) -> None:
        self.sink = sink
        self.parts = 0
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[str, str] = {}
        self._in_part = False
        self._ended = False
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": lambda d, s, e: self.sink.data(bytes(d[s:e])),
            "on_part_end": self._part_end,
            "on_end": self._end,
        }, max_size=max_bytes, max_header_count=32)

    def feed(self, chunk: bytes) -> None:
        if self._ended or not chunk:
            return  # an epilogue after the closing boundary is ignored (RFC 2046)
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise MultipartError(f"malformed multipart body: {exc}") from None

    def close(self) -> None:
        if not self._ended or self._in_part:
            raise MultipartError("the multipart body ended before its closing boundary "
                                 f"(after {self.parts} whole parts)")

    # -- callbacks --------------------------------------------------------------------------
    def _part_begin(self) -> None:
        self._headers = {}
        self._in_part = True

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        self.sink.begin(dict(self._headers))

    def _part_end(self) -> None:
        self._in_part = False
        self.parts += 1
        self.sink.end()

    def _end(self) -> None:
        self._ended = True
