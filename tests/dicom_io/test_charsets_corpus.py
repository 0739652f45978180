"""A corpus of instances, one per Specific Character Set defined term (PS3.3 C.12.1.1.2),
as real modalities encode them, and checks that each file holds the intended bytes.

The names and descriptions are encoded here with Python's codecs and the escape
sequences of PS3.3 Tables C.12-3/C.12-4 written out by hand, not by pydicom's encoder,
and placed in the data set as raw bytes: the corpus does not depend on the code it
tests. Multi-valued sets with an empty first value (``\\ISO 2022 IR 87``,
``\\ISO 2022 IR 149``) are what Japanese and Korean modalities send.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dicom_io.charset  # noqa: E402,F401 - completes pydicom's tables (ISO_IR 203, IR 58)

ESC = b"\x1b"
TO_ASCII = ESC + b"(B"      # G0 back to ISO 646 (IR 6)
TO_ROMAJI = ESC + b"(J"     # G0 back to JIS X 0201 romaji (IR 14), when IR 13 is value 1


def _jis(text: str, back: bytes = TO_ASCII) -> bytes:
    """JIS X 0208 in G0: ESC $ B, the 7-bit codes, then back to the initial G0."""
    body = text.encode("iso2022_jp")
    assert body.startswith(ESC + b"$B") and body.endswith(TO_ASCII)
    return ESC + b"$B" + body[3:-3] + back


def _jis212(text: str) -> bytes:
    """JIS X 0212 (supplementary kanji) in G0: ESC $ ( D."""
    body = text.encode("iso2022_jp_2")
    assert body.startswith(ESC + b"$(D") and body.endswith(TO_ASCII)
    return ESC + b"$(D" + body[4:-3] + TO_ASCII


def _g1(escape: bytes, codec: str, text: str) -> bytes:
    return escape + text.encode(codec)


@dataclass(frozen=True)
class Case:
    id: str
    terms: tuple[str, ...]  # Specific Character Set values, as sent ("" first = default)
    name: str               # Patient's Name, as Unicode
    name_bytes: bytes       # ... as encoded on the wire
    description: str        # Study and Series Description, as Unicode
    description_bytes: bytes
    escapes: tuple[bytes, ...] = ()  # escape sequences the encoded file must contain

    @property
    def value(self) -> str:
        return "\\".join(self.terms)


def _single(term: str, codec: str, name: str, description: str, cid: str | None = None) -> Case:
    return Case(cid or term, (term,), name, name.encode(codec), description,
                description.encode(codec))


_LATIN = [  # (number, codec, name, description)
    ("100", "latin_1", "Müller^Jürgen", "Thorax Übersicht"),
    ("101", "iso8859_2", "Dvořák^Antonín", "Hrudník snímek"),
    ("109", "iso8859_3", "Ħaġar^Ċikku", "Sider ħafif"),
    ("110", "iso8859_4", "Šķēle^Ģirts", "Krūškurvis ūdens"),
    ("144", "iso8859_5", "Иванов^Иван", "Грудная клетка"),
    ("127", "iso8859_6", "قباني^لنزار", "صدر شعاعي"),
    ("126", "iso8859_7", "Διονυσιος^Γιωργος", "Θώρακας ακτινογραφία"),
    ("138", "iso8859_8", "שרון^דבורה", "צילום חזה"),
    ("148", "iso8859_9", "Öztürk^Şükrü", "Göğüs ışını"),
    ("203", "iso8859_15", "Bœuf^Zoë", "Thorax œdème €"),
    ("166", "iso8859_11", "สมชาย^ใจดี", "ทรวงอก"),
]
_G1_ESCAPE = {"100": b"-A", "101": b"-B", "109": b"-C", "110": b"-D", "144": b"-L",
              "127": b"-G", "126": b"-F", "138": b"-H", "148": b"-M", "203": b"-b",
              "166": b"-T"}

CORPUS: list[Case] = [
    Case("default", (), "Smith^John", b"Smith^John", "Chest PA", b"Chest PA"),
    Case("ISO_IR 6", ("ISO_IR 6",), "Smith^Jane", b"Smith^Jane", "Chest AP", b"Chest AP"),
    Case("ISO 2022 IR 6", ("ISO 2022 IR 6",), "Smith^Joe", b"Smith^Joe", "Chest LAT",
         b"Chest LAT"),
    *[_single(f"ISO_IR {n}", codec, name, desc) for n, codec, name, desc in _LATIN],
    # code extensions, single-valued: the value is the initial state, no escape needed
    *[_single(f"ISO 2022 IR {n}", codec, name, desc) for n, codec, name, desc in _LATIN],
    # ... and as some modalities still write them, with the G1 designation
    *[Case(f"ISO 2022 IR {n} escaped", (f"ISO 2022 IR {n}",), name,
           b"^".join(_g1(ESC + _G1_ESCAPE[n], codec, part) for part in name.split("^")),
           desc, _g1(ESC + _G1_ESCAPE[n], codec, desc), (ESC + _G1_ESCAPE[n],))
      for n, codec, name, desc in _LATIN if n in ("100", "144", "203")],
    _single("ISO_IR 13", "shift_jis", "ﾔﾏﾀﾞ^ﾀﾛｳ", "ｷｮｳﾌﾞ ｼｬｼﾝ"),
    _single("ISO 2022 IR 13", "shift_jis", "ﾔﾏﾀﾞ^ﾊﾅｺ", "ｷｮｳﾌﾞ ﾀﾝｼﾞｭﾝ"),
    _single("ISO_IR 192", "utf-8", "Wang^XiaoDong=王^小東", "胸部 Übersicht ✓"),
    _single("GB18030", "gb18030", "Wang^XiaoDong=王^小东", "胸部正位片"),
    _single("GBK", "gbk", "Li^Hua=李^华", "胸部侧位片"),
    Case("\\ISO 2022 IR 87", ("", "ISO 2022 IR 87"),
         "Yamada^Tarou=山田^太郎=やまだ^たろう",
         b"Yamada^Tarou=" + _jis("山田") + b"^" + _jis("太郎") + b"="
         + _jis("やまだ") + b"^" + _jis("たろう"),
         "胸部単純撮影", _jis("胸部単純撮影"), (ESC + b"$B", TO_ASCII)),
    Case("ISO 2022 IR 6\\ISO 2022 IR 87", ("ISO 2022 IR 6", "ISO 2022 IR 87"),
         "Suzuki^Ichiro=鈴木^一郎", b"Suzuki^Ichiro=" + _jis("鈴木") + b"^" + _jis("一郎"),
         "胸部正面", _jis("胸部正面"), (ESC + b"$B",)),
    Case("ISO 2022 IR 13\\ISO 2022 IR 87", ("ISO 2022 IR 13", "ISO 2022 IR 87"),
         "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう",
         "ﾔﾏﾀﾞ^ﾀﾛｳ".encode("shift_jis") + b"=" + _jis("山田", TO_ROMAJI) + b"^"
         + _jis("太郎", TO_ROMAJI) + b"=" + _jis("やまだ", TO_ROMAJI) + b"^"
         + _jis("たろう", TO_ROMAJI),
         "ｷｮｳﾌﾞ 胸部", "ｷｮｳﾌﾞ ".encode("shift_jis") + _jis("胸部", TO_ROMAJI),
         (ESC + b"$B", TO_ROMAJI)),
    Case("\\ISO 2022 IR 87\\ISO 2022 IR 159", ("", "ISO 2022 IR 87", "ISO 2022 IR 159"),
         "Yamada^Tarou=山田^丂郎",
         b"Yamada^Tarou=" + _jis("山田") + b"^" + _jis212("丂") + _jis("郎"),
         "胸部丂", _jis("胸部") + _jis212("丂"), (ESC + b"$B", ESC + b"$(D")),
    Case("ISO 2022 IR 13\\ISO 2022 IR 87\\ISO 2022 IR 159",
         ("ISO 2022 IR 13", "ISO 2022 IR 87", "ISO 2022 IR 159"),
         "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^丂郎",
         "ﾔﾏﾀﾞ^ﾀﾛｳ".encode("shift_jis") + b"=" + _jis("山田", TO_ROMAJI) + b"^"
         + _jis212("丂")[:-3] + TO_ROMAJI + _jis("郎", TO_ROMAJI),
         "ｷｮｳﾌﾞ", "ｷｮｳﾌﾞ".encode("shift_jis"), (ESC + b"$(D", TO_ROMAJI)),
    Case("\\ISO 2022 IR 149", ("", "ISO 2022 IR 149"), "Hong^Gildong=洪^吉洞=홍^길동",
         b"Hong^Gildong=" + b"^".join(_g1(ESC + b"$)C", "euc_kr", p) for p in ("洪", "吉洞"))
         + b"=" + b"^".join(_g1(ESC + b"$)C", "euc_kr", p) for p in ("홍", "길동")),
         "흉부 촬영", _g1(ESC + b"$)C", "euc_kr", "흉부 촬영"), (ESC + b"$)C",)),
    Case("\\ISO 2022 IR 58", ("", "ISO 2022 IR 58"), "Zhang^XiaoDong=张^小东",
         b"Zhang^XiaoDong=" + _g1(ESC + b"$)A", "gb2312", "张") + b"^"
         + _g1(ESC + b"$)A", "gb2312", "小东"),
         "胸部正位", _g1(ESC + b"$)A", "gb2312", "胸部正位"), (ESC + b"$)A",)),
    Case("ISO 2022 IR 100\\ISO 2022 IR 144", ("ISO 2022 IR 100", "ISO 2022 IR 144"),
         "Müller^Иван", "Müller".encode("latin_1") + b"^" + _g1(ESC + b"-L", "iso8859_5", "Иван"),
         "Thorax Грудь", b"Thorax " + _g1(ESC + b"-L", "iso8859_5", "Грудь"), (ESC + b"-L",)),
]
IDS = [c.id for c in CORPUS]
BY_ID = {c.id: c for c in CORPUS}


def _raw(tag: int, vr: str, value: bytes) -> RawDataElement:
    if len(value) % 2:
        value += b" "
    return RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def apply(case: Case, ds: Dataset, marker: str = "") -> Dataset:
    """A copy of ``ds`` with the case's Specific Character Set, name and descriptions
    (raw bytes). ``marker`` (ASCII) is appended to the descriptions, e.g. to make them
    unique.
    """
    ds = dcmread(io.BytesIO(encode(ds)))  # read back: a data set whose VRs are all known
    if case.terms:
        ds.SpecificCharacterSet = list(case.terms) if len(case.terms) > 1 else case.terms[0]
    elif "SpecificCharacterSet" in ds:
        del ds.SpecificCharacterSet
    ds[0x00100010] = _raw(0x00100010, "PN", case.name_bytes)
    description = case.description_bytes + marker.encode("ascii")
    ds[0x00081030] = _raw(0x00081030, "LO", description)
    ds[0x0008103E] = _raw(0x0008103E, "LO", description)
    # written as they are: pydicom would otherwise decode and re-encode the raw values
    ds.set_original_encoding(False, True, ds._character_set)
    return ds


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# The writers' policy (docs/dicom-output.md), stated from the case alone: these single
# terms are kept as they are, the default repertoire stays default while all text is
# ASCII, everything else is re-encoded to ISO_IR 192.
PLAIN = {"ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 126", "ISO_IR 127",
         "ISO_IR 138", "ISO_IR 144", "ISO_IR 148", "ISO_IR 166", "ISO_IR 192", "GB18030"}


def expected_output_set(case: Case) -> str | None:
    if len(case.terms) == 1 and case.terms[0] in PLAIN:
        return case.terms[0]
    if case.name.isascii() and case.description.isascii():
        return None
    return "ISO_IR 192"


@pytest.fixture
def dx() -> Dataset:
    from dicom_io.synthetic_study import radiograph

    return radiograph(size=64, seed=1)


@pytest.mark.parametrize("cid", IDS)
def test_corpus_file_holds_the_intended_bytes(cid: str, dx: Dataset) -> None:
    case = BY_ID[cid]
    raw = encode(apply(case, dx))
    assert case.name_bytes in raw and case.description_bytes in raw
    for escape in case.escapes:
        assert escape in case.name_bytes or escape in case.description_bytes
    if case.terms:
        assert case.value.encode("ascii") in raw  # (0008,0005) as sent, empty first value kept
    if case.id not in ("default", "ISO_IR 6", "ISO 2022 IR 6"):
        assert not case.name_bytes.isascii() or ESC in case.name_bytes  # really non-ASCII
    back = dcmread(io.BytesIO(raw))
    assert list(back.get("SpecificCharacterSet") or []) == list(case.terms) or \
        back.SpecificCharacterSet == case.value
    assert str(back.PatientName) == case.name
    assert back.StudyDescription == case.description


def test_corpus_covers_every_defined_term() -> None:
    terms = {t for c in CORPUS for t in c.terms}
    single = {f"ISO_IR {n}" for n in ("100", "101", "109", "110", "126", "127", "138", "144",
                                       "148", "203", "13", "166", "192")}
    extensions = {f"ISO 2022 IR {n}" for n in ("6", "100", "101", "109", "110", "126", "127",
                                                "138", "144", "148", "203", "13", "166", "87",
                                                "159", "149", "58")}
    assert single | extensions | {"GB18030", "GBK"} <= terms
    assert any(c.terms and c.terms[0] == "" for c in CORPUS)
