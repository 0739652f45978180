"""Structural check of an encoded DICOM data set, as received on the wire.

The C-STORE handler must not decode a whole data set, yet it must refuse a
truncated or malformed one before answering Success. ``inspect_dataset`` walks
the element stream once (lengths only, values skipped), verifies that every
element, item and sequence ends inside the buffer and that the stream ends on an
element boundary, and picks up the few top-level attributes the spool needs.
pydicom does not do this for us: it returns short values for a truncated stream
without complaint.

Text values (descriptions, body part) are decoded with the instance's own Specific
Character Set (:mod:`dicom_io.charset`), as routing rules must see them. A deflated
data set is inflated with a bound: past ``max_inflated_bytes`` it is refused with
:class:`DatasetTooLarge` before more is allocated.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from dicom_io import charset

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"

_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MAX_DEPTH = 32

# Top-level attributes the spool records: (group << 16 | element) -> name.
_WANTED = {
    0x00080005: "specific_character_set",
    0x00080016: "sop_class_uid",
    0x00080018: "sop_instance_uid",
    0x00080060: "modality",
    0x00081030: "study_description",
    0x0008103E: "series_description",
    0x00180015: "body_part_examined",
    0x0020000D: "study_instance_uid",
    0x0020000E: "series_instance_uid",
}
_TEXT = ("study_description", "series_description", "body_part_examined")
_PIXEL_DATA = 0x7FE00010


class MalformedDataset(ValueError):
    """The encoded data set is truncated or structurally invalid."""


class DatasetTooLarge(MalformedDataset):
    """The data set inflates past the size we accept (listener.max_dataset_bytes)."""


@dataclass(frozen=True, slots=True)
class DatasetHeader:
    """The identifying attributes of a received instance."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    has_pixel_data: bool
    study_description: str = ""
    series_description: str = ""
    body_part_examined: str = ""
    #: (0008,0005) as received, values joined with a backslash ("" when absent).
    specific_character_set: str = ""


class _Walker:
    def __init__(self, buf: bytes | memoryview, explicit: bool, little: bool) -> None:
        self.buf = buf
        self.explicit = explicit
        e = "<" if little else ">"
        self.tag_fmt = struct.Struct(e + "HH")
        self.u16 = struct.Struct(e + "H")
        self.u32 = struct.Struct(e + "I")
        self.found: dict[str, bytes] = {}
        self.has_pixel_data = False

    def _header(self, pos: int) -> tuple[int, bytes | None, int, int]:
        """Return (tag, vr, length, value offset) of the element at ``pos``."""
        buf = self.buf
        if pos + 8 > len(buf):
            raise MalformedDataset(f"truncated element header at offset {pos}")
        group, elem = self.tag_fmt.unpack_from(buf, pos)
        tag = group << 16 | elem
        if group == 0xFFFE:  # item / delimiters: always tag + 4-byte length, no VR
            return tag, None, self.u32.unpack_from(buf, pos + 4)[0], pos + 8
        if not self.explicit:
            return tag, None, self.u32.unpack_from(buf, pos + 4)[0], pos + 8
        vr = bytes(buf[pos + 4:pos + 6])
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise MalformedDataset(f"invalid VR {vr!r} in ({group:04X},{elem:04X}) at {pos}")
        if vr in _LONG_VRS:
            if pos + 12 > len(buf):
                raise MalformedDataset(f"truncated element header at offset {pos}")
            return tag, vr, self.u32.unpack_from(buf, pos + 8)[0], pos + 12
        return tag, vr, self.u16.unpack_from(buf, pos + 6)[0], pos + 8

    def walk(self, pos: int, end: int, depth: int, top: bool, stop_tag: int | None) -> int:
        """Walk elements from ``pos`` to ``end`` (or to ``stop_tag``); return the end offset."""
        if depth > _MAX_DEPTH:
            raise MalformedDataset("sequences nested too deeply")
        last_tag = -1
        while pos < end:
            tag, vr, length, value = self._header(pos)
            if stop_tag is not None and tag == stop_tag:
                if length != 0:
                    raise MalformedDataset(f"delimiter with non-zero length at {pos}")
                return value
            if tag >> 16 == 0xFFFE:
                raise MalformedDataset(f"unexpected item tag at offset {pos}")
            if top and tag <= last_tag:
                raise MalformedDataset(f"elements out of order at offset {pos}")
            last_tag = tag
            if length == _UNDEFINED:
                if tag == _PIXEL_DATA:
                    pos = self._fragments(value)
                elif vr in (None, b"SQ", b"UN"):
                    pos = self._sequence(value, depth)
                else:
                    raise MalformedDataset(f"undefined length on VR {vr!r} at {pos}")
            else:
                stop = value + length
                if stop > end:
                    raise MalformedDataset(
                        f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) runs past the end "
                        f"of the data ({stop} > {end})"
                    )
                if vr == b"SQ":
                    self._defined_sequence(value, stop, depth)
                elif top and tag in _WANTED:
                    self.found[_WANTED[tag]] = bytes(self.buf[value:stop])
                pos = stop
            if top and tag == _PIXEL_DATA:
                self.has_pixel_data = True
        if stop_tag is not None:
            raise MalformedDataset("missing delimiter: data ends inside a sequence or item")
        if pos != end:
            raise MalformedDataset("data does not end on an element boundary")
        return pos

    def _items(self, pos: int, end: int, depth: int, stop: int | None) -> int:
        while pos < end:
            tag, _, length, value = self._header(pos)
            if tag == _SEQ_END:
                if stop is None:
                    raise MalformedDataset(f"sequence delimiter in defined-length SQ at {pos}")
                return value
            if tag != _ITEM:
                raise MalformedDataset(f"expected an item at offset {pos}")
            if length == _UNDEFINED:
                pos = self.walk(value, len(self.buf), depth + 1, False, _ITEM_END)
            else:
                if value + length > end:
                    raise MalformedDataset(f"item runs past its sequence at {pos}")
                self.walk(value, value + length, depth + 1, False, None)
                pos = value + length
        if stop is not None:
            raise MalformedDataset("sequence without delimiter")
        return pos

    def _sequence(self, pos: int, depth: int) -> int:
        return self._items(pos, len(self.buf), depth, _SEQ_END)

    def _defined_sequence(self, pos: int, end: int, depth: int) -> None:
        self._items(pos, end, depth, None)

    def _fragments(self, pos: int) -> int:
        buf = self.buf
        while True:
            if pos + 8 > len(buf):
                raise MalformedDataset("encapsulated pixel data is truncated")
            group, elem = self.tag_fmt.unpack_from(buf, pos)
            tag = group << 16 | elem
            length = self.u32.unpack_from(buf, pos + 4)[0]
            pos += 8
            if tag == _SEQ_END:
                return pos
            if tag != _ITEM or pos + length > len(buf):
                raise MalformedDataset("encapsulated pixel data fragment is truncated")
            pos += length


def inflate(stream: bytes | memoryview, max_bytes: int = 0) -> bytes:
    """Inflate a Deflated Explicit VR Little Endian data set (raw deflate, PS3.5 A.5).

    At most ``max_bytes + 1`` bytes are ever produced (0: no bound); a stream that
    inflates past ``max_bytes`` raises :class:`DatasetTooLarge`. The pad byte that
    makes an odd-length stream even is ignored.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(stream, max_bytes + 1 if max_bytes else 0)
    except zlib.error as exc:
        raise MalformedDataset(f"deflated data set does not inflate: {exc}") from None
    if max_bytes and (len(out) > max_bytes or inflater.unconsumed_tail):
        raise DatasetTooLarge(
            f"deflated data set inflates past {max_bytes} bytes (the maximum, "
            f"listener.max_dataset_bytes; {len(stream)} bytes as sent)")
    if not inflater.eof:
        raise MalformedDataset("deflated data set does not inflate: truncated stream")
    return out


def _ascii(raw: bytes | None) -> str:
    return raw.strip(b"\x00 ").decode("ascii", "replace") if raw else ""


def inspect_dataset(stream: bytes | memoryview, transfer_syntax: str,
                    max_inflated_bytes: int = 0) -> DatasetHeader:
    """Validate the structure of an encoded data set and return its identifying UIDs.

    ``stream`` is the data set without preamble or file meta, encoded in
    ``transfer_syntax``. Raises :class:`MalformedDataset` with a reason, and its
    subclass :class:`DatasetTooLarge` when a deflated data set inflates past
    ``max_inflated_bytes`` (0: no bound).
    """
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LE:
        stream = inflate(stream, max_inflated_bytes)
    explicit = transfer_syntax != IMPLICIT_VR_LE
    little = transfer_syntax != EXPLICIT_VR_BE
    walker = _Walker(stream, explicit, little)
    if not stream:
        raise MalformedDataset("empty data set")
    walker.walk(0, len(stream), 0, True, None)
    raw = walker.found
    terms = charset.terms_of(raw.get("specific_character_set"))
    found = {k: _ascii(v) for k, v in raw.items() if k not in _TEXT}
    for key in _TEXT:
        if key in raw:
            found[key] = charset.decode_text(raw[key], terms).strip()
    missing = [k for k in ("sop_class_uid", "sop_instance_uid", "study_instance_uid")
               if not found.get(k)]
    if missing:
        raise MalformedDataset(f"missing required attribute(s): {', '.join(missing)}")
    return DatasetHeader(
        sop_class_uid=found["sop_class_uid"],
        sop_instance_uid=found["sop_instance_uid"],
        study_instance_uid=found["study_instance_uid"],
        series_instance_uid=found.get("series_instance_uid", ""),
        modality=found.get("modality", ""),
        has_pixel_data=walker.has_pixel_data,
        study_description=found.get("study_description", ""),
        series_description=found.get("series_description", ""),
        body_part_examined=found.get("body_part_examined", ""),
        specific_character_set="\\".join(terms),
    )
