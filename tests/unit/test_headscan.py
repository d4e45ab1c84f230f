"""Equivalence of :func:`pgsam_node.ingest.headscan.scan_identity` with pydicom.

A seeded generator builds a few hundred data sets with pydicom (Explicit VR Little Endian, Implicit
VR Little Endian and an encapsulated JPEG Baseline transfer syntax whose header is Explicit VR LE),
with sequences of defined and undefined length nested inside each other, decoy identifying tags
inside sequence items, private elements, a VR UN element of undefined length holding an Implicit
VR sequence, long and odd-length values, UIDs padded with NULs or spaces, Instance Numbers with
spaces, missing identifying elements and long runs of group 0018 elements. Each encoding is
scanned and compared with what pydicom reads back from the same bytes; every prefix of some data
sets is scanned as an incomplete buffer (the scan must answer ``None`` or exactly the right
values, never wrong ones); big endian, deflated, malformed and random bytes must give ``None`` (or
``{}``) without raising.
"""

from __future__ import annotations

import random
import string
import struct
import zlib
from io import BytesIO

import pytest
from pydicom.datadict import DicomDictionary
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_data_element, write_dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from pgsam_node.ingest.headscan import (
    INSTANCE_NUMBER,
    SERIES_INSTANCE_UID,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    WANTED,
    scan_identity,
)

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
SYNTAXES = (EXPLICIT, IMPLICIT, JPEG_BASELINE)

N_DATASETS = 240  # 80 per transfer syntax
_ROOT = "1.2.826.0.1.3680043.8.498."

#: Group 0018 attributes with a single value of a VR the generator can fill (not retired).
_SIMPLE_VRS = ("DS", "IS", "SH", "LO", "CS", "US", "SS", "UL", "SL", "FD", "FL", "ST", "LT", "DA", "TM", "UI")
_G18 = sorted(
    (tag, entry[0]) for tag, entry in DicomDictionary.items()
    if tag >> 16 == 0x0018 and entry[1] == "1" and entry[0] in _SIMPLE_VRS and not entry[3]
)


# --------------------------------------------------------------------------------------------
# Encoding and pydicom's reading
# --------------------------------------------------------------------------------------------


def _encode(ds: Dataset, ts: str) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = ts != BIG_ENDIAN
    fp.is_implicit_VR = ts == IMPLICIT
    write_dataset(fp, ds)
    return fp.getvalue()


def _pydicom_identity(data: bytes, ts: str) -> dict[int, str]:
    """The five identifying values as pydicom reads them back from ``data`` (str, stripped)."""
    ds = read_dataset(BytesIO(data), is_implicit_VR=ts == IMPLICIT, is_little_endian=True)
    out = {}
    for tag in WANTED:
        if tag in ds:
            value = ds[tag].value
            out[tag] = "" if value is None else str(value).strip(" \x00")
    return out


# --------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------


def _uid(rng: random.Random) -> str:
    """A UID of random length (odd and even, so pydicom pads some with a NUL)."""
    return _ROOT + ".".join(str(rng.randint(1, 10 ** rng.randint(1, 9))) for _ in range(rng.randint(1, 4)))


def _text(rng: random.Random, n: int, alphabet: str = string.ascii_uppercase + string.digits + " ") -> str:
    return "".join(rng.choice(alphabet) for _ in range(n)).strip() or "X"


def _value(rng: random.Random, vr: str):
    if vr == "DS":
        return f"{rng.uniform(-1000, 1000):.6g}"
    if vr == "IS":
        return str(rng.randint(-99999, 99999))
    if vr in ("SH", "CS"):
        return _text(rng, rng.randint(1, 16), string.ascii_uppercase + string.digits + "_")
    if vr == "LO":
        return _text(rng, rng.randint(1, 64))
    if vr == "ST":
        return _text(rng, rng.randint(1, 1024))
    if vr == "LT":
        return _text(rng, rng.randint(1, 3000))
    if vr == "US":
        return rng.randint(0, 0xFFFF)
    if vr == "SS":
        return rng.randint(-0x8000, 0x7FFF)
    if vr == "UL":
        return rng.randint(0, 0xFFFFFFFF)
    if vr == "SL":
        return rng.randint(-0x80000000, 0x7FFFFFFF)
    if vr in ("FD", "FL"):
        return float(rng.randint(-1000, 1000)) / 4
    if vr == "DA":
        return f"20{rng.randint(0, 29):02d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    if vr == "TM":
        return f"{rng.randint(0, 23):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}.{rng.randint(0, 999)}"
    if vr == "UI":
        return _uid(rng)
    raise AssertionError(vr)


def _raw(tag: int, vr: str, value: bytes) -> RawDataElement:
    """An element whose bytes are written exactly as given (padding included)."""
    return RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def _item(rng: random.Random, depth: int, decoys: bool) -> Dataset:
    """A sequence item; with ``decoys`` it holds identifying tags with values that must not leak
    into the top-level answer, and tags past (0020,0013) that must not stop the scan."""
    item = Dataset()
    item.ReferencedSOPClassUID = _uid(rng)
    item.ReferencedSOPInstanceUID = _uid(rng)
    if decoys and rng.random() < 0.7:
        item.SOPClassUID = "9.9.1." + str(rng.randint(1, 999))
        item.SOPInstanceUID = "9.9.2." + str(rng.randint(1, 999))
        item.StudyInstanceUID = "9.9.3." + str(rng.randint(1, 999))
        item.SeriesInstanceUID = "9.9.4." + str(rng.randint(1, 999))
        item.InstanceNumber = rng.randint(1000, 2000)
        item.Rows = 7  # (0028,0010): past the stop tag, but nested
        item.CodeMeaning = _text(rng, rng.randint(1, 64))
    if depth < 3 and rng.random() < 0.5:
        tag = rng.choice((0x00081140, 0x00081115, 0x00400260))
        item.add(_sequence(rng, tag, depth + 1, decoys))
    item.is_undefined_length_sequence_item = rng.random() < 0.5
    return item


def _sequence(rng: random.Random, tag: int, depth: int = 0, decoys: bool = True,
              undefined: bool | None = None, min_items: int = 0) -> DataElement:
    seq = Sequence([_item(rng, depth, decoys) for _ in range(rng.randint(min_items, 3))])
    elem = DataElement(tag, "SQ", seq)
    elem.is_undefined_length = rng.random() < 0.5 if undefined is None else undefined
    return elem


def _un_undefined(rng: random.Random, tag: int) -> DataElement:
    """VR UN of undefined length whose content is an Implicit VR LE sequence (PS3.5 6.2.2)."""
    seq = _sequence(rng, tag, depth=1, undefined=True, min_items=1)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_data_element(fp, seq)
    content = fp.getvalue()[8:-8]  # without the implicit element header and the sequence delimiter
    elem = DataElement(tag, "UN", content)
    elem.is_undefined_length = True
    return elem


_INSTANCE_NUMBERS = ("1", "12", " 12", "12 ", "  3 ", "104", "")


def _make(rng: random.Random, ts: str, rich: bool = False) -> Dataset:
    """One data set; ``rich`` forces every feature (used for the every-prefix checks)."""
    def maybe(p: float) -> bool:
        return rich or rng.random() < p

    ds = Dataset()
    if maybe(0.5):
        ds.SpecificCharacterSet = "ISO_IR 100"
    if maybe(0.4):  # (0008,0006) sorts before (0008,0016): decoys ahead of the real values
        ds.add(_sequence(rng, 0x00080006, min_items=1 if rich else 0))
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    ds.InstanceCreationDate = "20240131"
    # The identifying values, sometimes as raw bytes with odd padding, sometimes missing.
    for tag in (SOP_CLASS_UID, SOP_INSTANCE_UID, STUDY_INSTANCE_UID, SERIES_INSTANCE_UID):
        if not rich and rng.random() < (0.15 if tag == SERIES_INSTANCE_UID else 0.04):
            continue
        uid = _uid(rng)
        style = rng.random()
        if style < 0.6:
            ds.add_new(tag, "UI", uid)  # pydicom pads an odd length with one NUL
        elif style < 0.8:
            pad = b"\x00" * (2 - len(uid) % 2 + 2 * rng.randint(0, 2))
            ds[tag] = _raw(tag, "UI", uid.encode() + pad)  # trailing NULs beyond one
        elif style < 0.95:
            ds[tag] = _raw(tag, "UI", uid.encode() + b" " * (1 if len(uid) % 2 else 2))  # space-padded
        else:
            ds[tag] = _raw(tag, "UI", b"")  # present but empty
    ds.StudyDate = "20240131"
    ds.Modality = "MR"
    ds.ReferringPhysicianName = "Doe^John"
    if maybe(0.5):
        ds.StudyDescription = _text(rng, 64)  # long, 64 characters
    if maybe(0.5):
        ds.SeriesDescription = _text(rng, rng.randint(1, 63))  # odd or even, space-padded
    if maybe(0.5):
        ds.add(_sequence(rng, 0x00081140))
    if maybe(0.3):
        ds.DerivationDescription = _text(rng, rng.randint(500, 1024))  # ST
    if maybe(0.2):
        ds.add_new(0x00084000, "LT", _text(rng, rng.randint(3000, 9000)))  # IdentifyingComments
    if maybe(0.5):
        block = ds.private_block(0x0009, "ACME 1.0", create=True)
        block.add_new(0x01, "LO", _text(rng, rng.randint(1, 64)))
        block.add_new(0x02, "UN", bytes(rng.randrange(256) for _ in range(rng.randint(1, 33))))
        if maybe(0.5):
            block.add_new(0x03, "UT", _text(rng, rng.randint(100, 5000)))
        if maybe(0.5):
            ds.add(_sequence(rng, 0x00091004))
    ds.PatientName = "Test^" + _text(rng, rng.randint(1, 20), string.ascii_uppercase)
    ds.PatientID = _text(rng, rng.randint(1, 16))
    if maybe(0.3):
        ds.add_new(0x001021B0, "LT", _text(rng, rng.randint(100, 2000)))  # AdditionalPatientHistory
    for tag, vr in rng.sample(_G18, rng.randint(0, 60) if not rich else 40):
        ds.add_new(tag, vr, _value(rng, vr))
    if maybe(0.4):
        ds.private_block(0x0019, "ACME 2.0", create=True)
        if ts != IMPLICIT and maybe(0.6):
            ds.add(_un_undefined(rng, 0x00191010))
        else:
            ds.add(_sequence(rng, 0x00191010))
    ds.StudyID = _text(rng, rng.randint(1, 16))
    ds.SeriesNumber = rng.randint(1, 999)
    if maybe(0.5):
        ds.AcquisitionNumber = rng.randint(1, 99)
    if rich or rng.random() > 0.2:
        number = rng.choice(_INSTANCE_NUMBERS).encode()
        ds[INSTANCE_NUMBER] = _raw(INSTANCE_NUMBER, "IS", number + b" " * (len(number) % 2))
    # The tail, past the stop tag.
    if not rich and rng.random() < 0.1:
        pass  # nothing after (0020,0013): the scan must reach the end of a complete buffer
    else:
        if rng.random() < 0.7:
            ds.ImagePositionPatient = [0, 0, rng.randint(0, 100)]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.FrameOfReferenceUID = _uid(rng)
            ds.Rows, ds.Columns = 4, 4
            ds.add(_sequence(rng, 0x00400275))  # RequestAttributesSequence, past the stop tag
        _add_pixel_data(rng, ds, ts)
    return ds


def _add_pixel_data(rng: random.Random, ds: Dataset, ts: str) -> None:
    if ts == JPEG_BASELINE:
        frame = b"\xff\xd8" + bytes(rng.randrange(256) for _ in range(rng.randint(10, 200))) + b"\xff\xd9"
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.add_new(0x7FE00010, "OW", bytes(rng.randrange(256) for _ in range(32)))


def _corpus():
    rng = random.Random(20240131)
    for i in range(N_DATASETS):
        ts = SYNTAXES[i % len(SYNTAXES)]
        yield ts, _encode(_make(rng, ts), ts)


CORPUS = list(_corpus())


# --------------------------------------------------------------------------------------------
# Equivalence with pydicom
# --------------------------------------------------------------------------------------------


def test_corpus_covers_the_variations():
    """The generator really produces what the equivalence tests rely on."""
    seen = {ts: 0 for ts in SYNTAXES}
    missing_series = missing_number = un_undefined = nul_padded = 0
    for ts, data in CORPUS:
        seen[ts] += 1
        expected = _pydicom_identity(data, ts)
        missing_series += SERIES_INSTANCE_UID not in expected
        missing_number += INSTANCE_NUMBER not in expected
        un_undefined += b"UN\x00\x00\xff\xff\xff\xff" in data
        nul_padded += b"\x00\x00\x20\x00\x0d\x00" in data  # NUL-padded value followed by (0020,000D)
    assert all(n >= 70 for n in seen.values()), seen
    assert missing_series >= 10 and missing_number >= 10
    assert un_undefined >= 5
    assert nul_padded >= 1
    assert sum(b"\xfe\xff\x00\xe0\xff\xff\xff\xff" in data for _, data in CORPUS) >= 50  # undefined items


@pytest.mark.parametrize("index", range(0, N_DATASETS, 1), ids=lambda i: f"ds{i}")
def test_scan_equals_pydicom(index):
    ts, data = CORPUS[index]
    expected = _pydicom_identity(data, ts)
    got = scan_identity(data, ts, complete=True)
    assert got == expected
    # The identifying elements of the data set itself, never the decoys nested in sequences.
    assert not any(v.startswith("9.9.") for v in got.values())
    # bytes, bytearray and memoryview read the same
    assert scan_identity(bytearray(data), ts, complete=True) == expected
    assert scan_identity(memoryview(data), ts, complete=True) == expected


def test_incomplete_full_buffer_needs_the_stop_tag():
    """complete=False on the whole data set: the values when an element follows (0020,0013),
    ``None`` when the buffer ends without one (the scan cannot know nothing else follows)."""
    with_tail = without_tail = 0
    for ts, data in CORPUS:
        ds = read_dataset(BytesIO(data), is_implicit_VR=ts == IMPLICIT, is_little_endian=True)
        got = scan_identity(data, ts, complete=False)
        if any(tag > INSTANCE_NUMBER for tag in ds.keys()):
            with_tail += 1
            assert got == _pydicom_identity(data, ts)
        else:
            without_tail += 1
            assert got is None
    assert with_tail and without_tail


def test_random_prefixes_are_none_or_exact():
    rng = random.Random(7)
    answered = 0
    for ts, data in CORPUS:
        expected = _pydicom_identity(data, ts)
        for n in {rng.randrange(len(data) + 1) for _ in range(25)} | {0, 1, 7, 8, 11, 12}:
            got = scan_identity(data[:n], ts, complete=False)
            assert got is None or got == expected, (ts, n)
            answered += got is not None
    assert answered > 100  # the scan does answer from prefixes that hold the stop tag


@pytest.mark.parametrize("ts", SYNTAXES)
@pytest.mark.parametrize("seed", (1, 2))
def test_every_prefix_is_none_or_exact(ts, seed):
    """Every prefix length of a data set with all the features: never a wrong answer, and the
    answer appears as soon as the stop tag's header is in the buffer."""
    rng = random.Random(seed)
    data = _encode(_make(rng, ts, rich=True), ts)
    expected = _pydicom_identity(data, ts)
    assert set(expected) == set(WANTED)
    ds = read_dataset(BytesIO(data), is_implicit_VR=ts == IMPLICIT, is_little_endian=True)
    first_answer = None
    for n in range(len(data) + 1):
        got = scan_identity(data[:n], ts, complete=False)
        assert got is None or got == expected, n
        if got is not None and first_answer is None:
            first_answer = n
        if first_answer is not None:
            assert got == expected, n  # once answered, longer prefixes answer too
    # The stop tag is the first element past (0020,0013); its header is 8 (short VR / implicit)
    # or 12 bytes (long VR), so the scan answers at most 12 bytes after it begins.
    stop_tag = min(t for t in ds.keys() if t > INSTANCE_NUMBER)
    offset = _offset_of(data, stop_tag, ts)
    assert first_answer is not None and offset + 8 <= first_answer <= offset + 12
    assert scan_identity(data, ts, complete=True) == expected


def _offset_of(data: bytes, tag: int, ts: str) -> int:
    """Offset of a top-level element, found by walking pydicom's element positions."""
    fp = BytesIO(data)
    ds = read_dataset(fp, is_implicit_VR=ts == IMPLICIT, is_little_endian=True)
    raw = ds.get_item(tag)
    header = 8 if ts == IMPLICIT or raw.VR not in ("OB", "OW", "SQ", "UN", "UT", "UC", "UR", "OD", "OF", "OL",
                                                   "OV", "SV", "UV") else 12
    return raw.value_tell - header


@pytest.mark.parametrize("ts", SYNTAXES)
def test_pixel_data_right_after_the_identity(ts):
    """Pixel Data as the first element past (0020,0013): the scan stops at its header."""
    rng = random.Random(3)
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = _uid(rng)
    ds.StudyInstanceUID = _uid(rng)
    ds.SeriesInstanceUID = _uid(rng)
    ds.InstanceNumber = 17
    _add_pixel_data(rng, ds, ts)
    data = _encode(ds, ts)
    expected = {SOP_CLASS_UID: ds.SOPClassUID, SOP_INSTANCE_UID: ds.SOPInstanceUID,
                STUDY_INSTANCE_UID: ds.StudyInstanceUID, SERIES_INSTANCE_UID: ds.SeriesInstanceUID,
                INSTANCE_NUMBER: "17"}
    assert _pydicom_identity(data, ts) == expected
    assert scan_identity(data, ts, complete=True) == expected
    pixel_at = data.index(b"\xe0\x7f\x10\x00")
    header = 8 if ts == IMPLICIT else 12
    for n in range(len(data) + 1):
        got = scan_identity(data[:n], ts, complete=False)
        assert got == (expected if n >= pixel_at + header else None), n


# --------------------------------------------------------------------------------------------
# Encodings the scan must leave to pydicom
# --------------------------------------------------------------------------------------------


def test_big_endian_is_not_scanned():
    rng = random.Random(11)
    for _ in range(5):
        ds = _make(rng, EXPLICIT)
        if "PixelData" in ds:
            del ds.PixelData
        data = _encode(ds, BIG_ENDIAN)
        assert read_dataset(BytesIO(data), is_implicit_VR=False, is_little_endian=False).StudyInstanceUID
        assert scan_identity(data, BIG_ENDIAN, complete=True) is None
        assert scan_identity(data, BIG_ENDIAN, complete=False) is None


def test_deflated_is_not_scanned():
    for ts, data in CORPUS[:30]:
        if ts != EXPLICIT:
            continue
        co = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        deflated = co.compress(data) + co.flush()
        assert scan_identity(deflated, DEFLATED, complete=True) is None
        assert scan_identity(deflated, DEFLATED, complete=False) is None
        # The transfer syntax decides, not the bytes: even readable bytes are left to pydicom.
        assert scan_identity(data, DEFLATED, complete=True) is None


# --------------------------------------------------------------------------------------------
# Malformed and random bytes
# --------------------------------------------------------------------------------------------


def _el(tag: int, value: bytes, vr: bytes | None = None) -> bytes:
    g, e = tag >> 16, tag & 0xFFFF
    if vr is None:
        return struct.pack("<HHI", g, e, len(value)) + value
    return struct.pack("<HH2sH", g, e, vr, len(value)) + value


def test_empty_buffer():
    assert scan_identity(b"", EXPLICIT, complete=True) == {}
    assert scan_identity(b"", IMPLICIT, complete=True) == {}
    assert scan_identity(b"", EXPLICIT, complete=False) is None


def test_unknown_vr_before_the_stop_tag_is_none():
    data = _el(SOP_INSTANCE_UID, b"1.2.3\x00", b"UI") + _el(0x00100010, b"AB", b"ZZ") + _el(0x00280010, b"\x04\x00",
                                                                                           b"US")
    assert scan_identity(data, EXPLICIT, complete=True) is None


def test_length_past_the_end_is_none():
    data = _el(SOP_INSTANCE_UID, b"1.2.3\x00", b"UI")
    data += struct.pack("<HH2sH", 0x0020, 0x000D, b"UI", 200) + b"1.2.4\x00"
    assert scan_identity(data, EXPLICIT, complete=True) is None
    implicit = _el(SOP_INSTANCE_UID, b"1.2.3\x00") + struct.pack("<HHI", 0x0020, 0x000D, 0x7FFFFFF0) + b"1.2"
    assert scan_identity(implicit, IMPLICIT, complete=True) is None


def test_top_level_item_delimiter_is_none():
    data = _el(SOP_INSTANCE_UID, b"1.2.3\x00") + struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + _el(0x00280010, b"\x04\x00")
    assert scan_identity(data, IMPLICIT, complete=True) is None
    assert scan_identity(data, EXPLICIT, complete=True) is None


def test_unterminated_undefined_sequence_is_none():
    seq = struct.pack("<HHI", 0x0008, 0x0106, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    seq += _el(0x00080100, b"AB")  # an item that never ends
    assert scan_identity(_el(SOP_CLASS_UID, b"1.2\x00\x00") + seq, IMPLICIT, complete=True) is None


def test_values_are_stripped_of_spaces_and_nuls():
    data = (_el(SOP_CLASS_UID, b"1.2.3\x00\x00\x00", b"UI") + _el(SOP_INSTANCE_UID, b" 1.2.4 ", b"UI")
            + _el(INSTANCE_NUMBER, b"  42  ", b"IS") + _el(0x00280010, b"\x04\x00", b"US"))
    assert scan_identity(data, EXPLICIT, complete=False) == {
        SOP_CLASS_UID: "1.2.3", SOP_INSTANCE_UID: "1.2.4", INSTANCE_NUMBER: "42"}


def test_random_bytes_never_raise():
    rng = random.Random(99)
    for i in range(1500):
        data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        for ts in (EXPLICIT, IMPLICIT):
            for complete in (True, False):
                got = scan_identity(data, ts, complete)
                assert got is None or (isinstance(got, dict) and set(got) <= set(WANTED)
                                       and all(isinstance(v, str) for v in got.values())), (i, ts)


def test_mutated_data_sets_never_raise():
    """Valid encodings with a few bytes overwritten, inserted or removed."""
    rng = random.Random(5)
    for ts, data in CORPUS[:60]:
        for _ in range(30):
            buf = bytearray(data[:rng.randint(0, min(len(data), 4000))])
            for _ in range(rng.randint(1, 4)):
                pos = rng.randrange(len(buf) + 1)
                op = rng.random()
                if op < 0.5 and pos < len(buf):
                    buf[pos] = rng.randrange(256)
                elif op < 0.75:
                    buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
                else:
                    del buf[pos:pos + rng.randint(1, 8)]
            for complete in (True, False):
                got = scan_identity(bytes(buf), ts, complete)
                assert got is None or set(got) <= set(WANTED)


def test_deeply_nested_sequences_do_not_raise():
    """A data set (here 1000 levels of undefined-length sequences: 32 kB, well inside the receive
    head buffer) nested past Python's recursion limit must give ``None`` (left to pydicom) or the
    right values, not a RecursionError."""
    depth = 1000
    data = (struct.pack("<HHI", 0x0008, 0x0006, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)) * depth
    data += (struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)) * depth
    data += _el(SOP_INSTANCE_UID, b"1.2.3\x00") + _el(INSTANCE_NUMBER, b"5 ") + _el(0x00280010, b"\x04\x00")
    assert len(data) < 64 * 1024
    got = scan_identity(data, IMPLICIT, complete=False)
    assert got is None or got == {SOP_INSTANCE_UID: "1.2.3", INSTANCE_NUMBER: "5"}
