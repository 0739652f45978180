"""Specific Character Set (0008,0005): reading received text, choosing the outputs' set.

Two jobs, one place:

* :func:`decode_text` decodes a text value received on the wire with the instance's
  own Specific Character Set (every defined term of PS3.3 C.12.1.1.2: the single-byte
  sets, their ISO 2022 code-extension forms, multi-valued with an empty first value
  as Japanese and Korean modalities send them, GB18030, GBK, ISO_IR 192). An unknown
  term never raises: the value is read as UTF-8 when it is valid UTF-8, else as
  Latin-1, and one warning per distinct term is logged.
* :func:`apply_output_character_set` is the writers' policy (SR, SC and PM all call
  it). The values copied from the source are decoded Unicode strings; the output keeps
  the source's Specific Character Set when it is one of :data:`KEPT_AS_IS` and every
  text value of the output can be written in it; when all text is ASCII and the source
  declared no set of those, the output declares none (the default repertoire);
  otherwise the output is ``ISO_IR 192`` (UTF-8), which can carry every name. So an
  ISO 2022 source (``\\ISO 2022 IR 87``, ``\\ISO 2022 IR 149``, ...), ``ISO_IR 13``,
  ``ISO_IR 203``, ``GBK`` or an unknown term gives a UTF-8 output whose names read
  back identical.

Importing this module also completes pydicom 3.0's tables where they fall short:
``ISO_IR 203`` / ``ISO 2022 IR 203`` (Latin-9) are unknown to it, and it neither
strips nor writes the ``ESC $ ) A`` designation of ``ISO 2022 IR 58`` (GB 2312).
Each fix is applied only when the installed pydicom still lacks it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Sequence

import pydicom.charset as pc
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

log = logging.getLogger(__name__)

UTF8 = "ISO_IR 192"

#: Single defined terms written unchanged into outputs: highdicom accepts them,
#: pydicom encodes them with a plain codec, and dciodvfy validates them.
KEPT_AS_IS = frozenset({
    "ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 126", "ISO_IR 127",
    "ISO_IR 138", "ISO_IR 144", "ISO_IR 148", "ISO_IR 166", UTF8, "GB18030",
})

#: VRs whose values Specific Character Set governs (PS3.5 6.1.2.3).
TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})

_TEXT_DELIMS = {0x09, 0x0A, 0x0C, 0x0D}
_ESC = b"\x1b"
_DEFAULT_TERMS = ("", "ISO_IR 6", "ISO 2022 IR 6")


# -- pydicom completions -------------------------------------------------------------------

def _extend_pydicom() -> None:
    if "ISO_IR 203" not in pc.python_encoding:  # Latin alphabet No. 9
        pc.python_encoding["ISO_IR 203"] = "iso8859_15"
        pc.python_encoding["ISO 2022 IR 203"] = "iso8859_15"
        pc.CODES_TO_ENCODINGS.setdefault(_ESC + b"-b", "iso8859_15")
        pc.ENCODINGS_TO_CODES.setdefault("iso8859_15", _ESC + b"-b")
    # GB 2312 in G1 (ESC $ ) A): Python's gb2312 codec knows no escape sequences, so
    # pydicom must strip (and, writing, add) it as it does for the other G1 sets.
    sample = _ESC + b"$)A" + "王".encode("gb2312")
    try:
        broken = "\x1b" in pc.decode_bytes(sample, ["iso8859", "iso_ir_58"], set())
    except Exception:  # noqa: BLE001 - any failure: apply the fix
        broken = True
    if broken and "iso_ir_58" in pc.handled_encodings:
        pc.handled_encodings = tuple(e for e in pc.handled_encodings if e != "iso_ir_58")


_extend_pydicom()


# -- terms ---------------------------------------------------------------------------------

def terms_of(value: object) -> list[str]:
    """The values of a Specific Character Set, as a list; the first may be empty.

    Accepts raw bytes (``b"\\\\ISO 2022 IR 87 "``), a string, a pydicom MultiValue or
    list, or None.
    """
    if value is None:
        return []
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode("ascii", "replace")
    if isinstance(value, str):
        parts = value.split("\\")
    elif isinstance(value, Iterable):
        parts = [str(v) for v in value]
    else:
        parts = [str(value)]
    parts = [p.strip(" \x00") for p in parts]
    return [] if parts in ([], [""]) else parts


_SPELLINGS = (
    (re.compile(r"^ISO[ _-]?IR[ _-]?(\d+)$"), "ISO_IR {}"),
    (re.compile(r"^ISO[ _-]?2022[ _-]?IR[ _-]?(\d+)$"), "ISO 2022 IR {}"),
)
_warned: set[str] = set()
_warned_lock = threading.Lock()


def _normalise(term: str) -> str:
    if term in pc.python_encoding:
        return term
    upper = term.upper()
    for pattern, form in _SPELLINGS:
        m = pattern.match(upper)
        if m:
            return form.format(m.group(1))
    return upper


def _warn_unknown(term: str) -> None:
    with _warned_lock:
        if term in _warned:
            return
        _warned.add(term)
    log.warning("unknown Specific Character Set term %r: its text is read as UTF-8 "
                "where valid, else as Latin-1", term[:64])


def python_encodings(terms: Sequence[str]) -> list[str] | None:
    """pydicom's Python encodings for ``terms``; None when a term is unknown."""
    if not terms:
        return [pc.default_encoding]
    names = [_normalise(t) for t in terms]
    if not names[0]:
        names[0] = "ISO_IR 6"
    out = []
    for name in names:
        encoding = pc.python_encoding.get(name)
        if encoding is None:
            _warn_unknown(name)
            return None
        out.append(encoding)
    if names[0] in pc.STAND_ALONE_ENCODINGS:  # the others cannot be used with it
        return out[:1]
    return [e for n, e in zip(names, out) if n not in pc.STAND_ALONE_ENCODINGS] or out[:1]


def _fallback(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def decode_text(value: bytes, terms: Sequence[str]) -> str:
    """A received SH/LO/ST/LT/UC/UT/PN value as text, trailing padding removed.

    ``terms`` is the instance's Specific Character Set (:func:`terms_of`). Never
    raises: an unknown term or undecodable bytes fall back (see the module doc).
    """
    value = bytes(value).rstrip(b"\x00 ")
    if value.isascii() and _ESC not in value:
        return value.decode("ascii")
    encodings = python_encodings(terms)
    if encodings is None or (all(_normalise(t) in _DEFAULT_TERMS for t in terms)
                             and _ESC not in value):
        # no set but the default declared, yet non-ASCII bytes: invalid, often UTF-8
        return _fallback(value).rstrip(" \x00")
    try:
        return pc.decode_bytes(value, encodings, _TEXT_DELIMS).rstrip(" \x00")
    except Exception:  # noqa: BLE001 - a modality's bad bytes never fail a C-STORE
        return _fallback(value).rstrip(" \x00")


# -- the outputs' set ----------------------------------------------------------------------

def _text_values(ds: Dataset) -> list[str]:
    values: list[str] = []
    for elem in ds.iterall():  # also converts raw elements with the set they were read with
        if elem.VR not in TEXT_VRS or elem.value is None:
            continue
        items = elem.value if isinstance(elem.value, MultiValue | list | tuple) else [elem.value]
        values.extend(str(v) for v in items if not isinstance(v, bytes | bytearray))
    return values


def _nested(ds: Dataset) -> Iterable[Dataset]:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield item
                yield from _nested(item)


def output_character_set(source_value: object, texts: Iterable[str]) -> str | None:
    """The Specific Character Set an output with ``texts`` gets from a source that
    declared ``source_value``; None means none (the default repertoire)."""
    texts = list(texts)
    terms = terms_of(source_value)
    if len(terms) == 1 and _normalise(terms[0]) in KEPT_AS_IS:
        term = _normalise(terms[0])
        codec = pc.python_encoding[term]
        try:
            for text in texts:
                text.encode(codec)
            return term
        except UnicodeError:
            pass
    if all(text.isascii() for text in texts):
        return None
    return UTF8


def apply_output_character_set(out: Dataset, source: Dataset) -> Dataset:
    """Give ``out`` its Specific Character Set by the policy above (in place).

    ``source`` is the dataset whose patient and study attributes ``out`` copied.
    Nested items lose any Specific Character Set of their own: their values are
    decoded text, written in the one set the top level declares.
    """
    texts = _text_values(out)
    chosen = output_character_set(source.get("SpecificCharacterSet"), texts)
    for item in _nested(out):
        if "SpecificCharacterSet" in item:
            del item.SpecificCharacterSet
    if chosen is None:
        if "SpecificCharacterSet" in out:
            del out.SpecificCharacterSet
    else:
        out.SpecificCharacterSet = chosen
    source_terms = terms_of(source.get("SpecificCharacterSet"))
    if source_terms and chosen != "\\".join(source_terms):
        log.debug("output written as %s (source: %s)", chosen or "default repertoire",
                  "\\".join(source_terms))
    return out


#: Passed to highdicom's constructors, which reject several defined terms (an empty
#: first value, single-valued ISO 2022 forms) and would otherwise copy the source's.
CONSTRUCTION_CHARACTER_SET = UTF8
