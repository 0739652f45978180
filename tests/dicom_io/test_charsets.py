"""Character sets: received descriptions decoded with the instance's own set, and SR,
SC and PM written from every defined term with the names preserved, dciodvfy-clean."""

from __future__ import annotations

import io
import logging
import struct
from functools import cache
from pathlib import Path

import pytest
from conftest import dciodvfy, requires_dciodvfy
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from test_charsets_corpus import BY_ID, CORPUS, IDS, Case, apply, encode, expected_output_set

import dicomio_samples as samples
from dicom_io import charset
from dicom_io.pm import write_parametric_map
from dicom_io.sc import SCOptions, write_heatmap_scs
from dicom_io.sr import SROptions, write_sr
from dicom_io.wire import inspect_dataset

SMALL = SCOptions(top_k=1, min_size=64, max_size=64)


def dataset_stream(raw: bytes) -> bytes:
    """The data set of an encoded file, without preamble and file meta (as on the wire)."""
    assert raw[128:132] == b"DICM" and raw[132:136] == b"\x02\x00\x00\x00"
    (meta_length,) = struct.unpack_from("<I", raw, 140)
    return raw[144 + meta_length:]


# -- received: what routing sees ------------------------------------------------------------

@pytest.mark.parametrize("cid", IDS)
def test_wire_decodes_descriptions_with_the_instance_set(cid: str) -> None:
    case = BY_ID[cid]
    raw = encode(apply(case, samples.cr()))
    header = inspect_dataset(dataset_stream(raw), ExplicitVRLittleEndian)
    assert header.study_description == case.description
    assert header.series_description == case.description
    assert header.specific_character_set == case.value
    # what routing sees is what the worker (pydicom) reads from the spooled file
    assert dcmread(io.BytesIO(raw)).StudyDescription == header.study_description


def test_unknown_or_broken_sets_fall_back_and_never_raise(caplog: pytest.LogCaptureFixture) -> None:
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    def header(value: str | None, description: bytes):  # type: ignore[no-untyped-def]
        ds = dcmread(io.BytesIO(encode(samples.cr())))
        if value is None:
            del ds.SpecificCharacterSet
        else:
            ds.SpecificCharacterSet = value.split("\\") if "\\" in value else value
        if len(description) % 2:
            description += b" "
        ds[0x00081030] = RawDataElement(Tag(0x00081030), "LO", len(description), description,
                                        0, False, True)
        ds.set_original_encoding(False, True, ds._character_set)
        return inspect_dataset(dataset_stream(encode(ds)), ExplicitVRLittleEndian)

    with caplog.at_level(logging.WARNING, logger="dicom_io.charset"):
        assert header("ISO_IR 999", "Thorax Übersicht".encode()).study_description == \
            "Thorax Übersicht"
        assert header("ISO_IR 999", "Thorax Übersicht".encode("latin-1")).study_description == \
            "Thorax Übersicht"
    assert "unknown Specific Character Set term 'ISO_IR 999'" in caplog.text
    # no set declared, yet UTF-8 (a common misconfiguration): read as UTF-8, else Latin-1
    assert header(None, "Brust ü".encode()).study_description == "Brust ü"
    assert header(None, "Brust ü".encode("latin-1")).study_description == "Brust ü"
    # misspelt but recognisable terms, and bytes that do not fit the declared set
    assert header("ISO-IR 100", "Brust ü".encode("latin-1")).study_description == "Brust ü"
    broken = header("\\ISO 2022 IR 87", b"\x1b$B\xff\xfe\x1b(B")
    assert isinstance(broken.study_description, str)
    assert header("ISO_IR 192", b"\xff\xfe abc").study_description.endswith("abc")


# -- written: SR, SC, PM ----------------------------------------------------------------------

def _sources(case: Case) -> list[Dataset]:
    """Two CT slices as the worker reads them from the spool (raw values, own set)."""
    return [dcmread(io.BytesIO(encode(apply(case, ds)))) for ds in samples.ct_series(2)]


def _write(kind: str, sources: list[Dataset], sr_options: SROptions = SROptions()) -> Dataset:
    result = samples.result_for(sources)
    if kind == "sr":
        return write_sr(result, sources, sr_options)
    if kind == "sc":
        return write_heatmap_scs(result, sources, SMALL)[0]
    return write_parametric_map(result, result.findings[0], sources)


@cache
def _baseline_warnings(kind: str, tmp: Path) -> frozenset[str]:
    """dciodvfy's warnings for the same object from a plain ASCII ISO_IR 100 source."""
    path = tmp / f"baseline-{kind}.dcm"
    _write(kind, samples.ct_series(2)).save_as(path, enforce_file_format=True)
    errors, warnings = dciodvfy(path)
    assert errors == []
    return frozenset(warnings)


@requires_dciodvfy
@pytest.mark.parametrize("kind", ["sr", "sc", "pm"])
@pytest.mark.parametrize("cid", IDS)
def test_outputs_keep_names_and_stay_valid(tmp_path_factory: pytest.TempPathFactory, cid: str,
                                           kind: str) -> None:
    case = BY_ID[cid]
    tmp = tmp_path_factory.getbasetemp()
    obj = _write(kind, _sources(case))
    path = tmp_path_factory.mktemp("out") / f"{kind}.dcm"
    obj.save_as(path, enforce_file_format=True)
    errors, warnings = dciodvfy(path)
    assert errors == []
    assert set(warnings) == _baseline_warnings(kind, tmp)
    back = dcmread(path)
    assert str(back.PatientName) == case.name
    expected = expected_output_set(case)
    if expected is None:
        assert "SpecificCharacterSet" not in back
    else:
        assert back.SpecificCharacterSet == expected
    if "StudyDescription" in back:
        assert back.StudyDescription == case.description


@requires_dciodvfy
def test_text_the_source_set_cannot_hold_gives_utf8(tmp_path: Path) -> None:
    """A Latin-1 source and a disclaimer in Cyrillic: the SR is UTF-8, nothing is lost."""
    sources = _sources(BY_ID["ISO_IR 100"])
    disclaimer = "ИИ-результат"  # short: dciodvfy counts LO lengths in bytes
    sr = _write("sr", sources, SROptions(disclaimer=disclaimer))
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    errors, _ = dciodvfy(tmp_path / "sr.dcm")
    assert errors == []
    back = dcmread(tmp_path / "sr.dcm")
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert disclaimer in back.SeriesDescription
    assert str(back.PatientName) == "Müller^Jürgen"


@requires_dciodvfy
def test_unknown_source_set_still_writes_valid_objects(tmp_path: Path) -> None:
    sources = _sources(BY_ID["ISO_IR 100"])
    for ds in sources:
        ds.SpecificCharacterSet = "ISO_IR 999"
    for kind in ("sr", "sc", "pm"):
        _write(kind, sources).save_as(tmp_path / f"{kind}.dcm", enforce_file_format=True)
        errors, _ = dciodvfy(tmp_path / f"{kind}.dcm")
        assert errors == [], kind
        assert dcmread(tmp_path / f"{kind}.dcm").SpecificCharacterSet == "ISO_IR 192"


@pytest.mark.parametrize(("source", "texts", "expected"), [
    ("ISO_IR 100", ["Müller", "abc"], "ISO_IR 100"),
    ("ISO_IR 100", ["Müller", "Грудь"], "ISO_IR 192"),
    ("ISO_IR 100", ["abc"], "ISO_IR 100"),
    (None, ["abc"], None),
    ("ISO_IR 6", ["abc"], None),
    ("", ["Müller"], "ISO_IR 192"),
    ("ISO 2022 IR 100", ["Müller"], "ISO_IR 192"),
    (["", "ISO 2022 IR 87"], ["山田"], "ISO_IR 192"),
    (["", "ISO 2022 IR 87"], ["Yamada"], None),
    ("GBK", ["王"], "ISO_IR 192"),
    ("GB18030", ["王"], "GB18030"),
    ("ISO_IR 13", ["ﾔﾏﾀﾞ"], "ISO_IR 192"),
    ("ISO_IR 999", ["Müller"], "ISO_IR 192"),
])
def test_output_policy(source, texts, expected) -> None:  # type: ignore[no-untyped-def]
    assert charset.output_character_set(source, texts) == expected


def test_corpus_is_the_whole_corpus() -> None:
    assert len(CORPUS) == len(IDS) == len(set(IDS))
