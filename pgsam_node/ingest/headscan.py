"""Fast scan of a data set's identifying elements, straight from its encoded bytes.

The listener needs five values from every instance before it can file and index it: SOP Class,
SOP Instance, Study and Series Instance UIDs and the Instance Number. They all sit in groups 0008
and 0020, ahead of the acquisition details and the pixel data, so the scan walks the top-level
elements in tag order (PS3.5 7.1: data elements are sorted) and stops at the first tag past
(0020,0013): it touches a few hundred bytes of header and none of the pixel data.

Only Little Endian encodings are scanned (Implicit and Explicit VR, PS3.5 7.1.2/7.1.3; the
compressed transfer syntaxes encode the header as Explicit VR Little Endian). Anything else, or
anything unexpected (an unknown VR, a length that does not fit, the buffer ending before the stop
tag), returns ``None`` and the caller parses with pydicom instead, so the scan can only be fast
or absent, never different.
"""

from __future__ import annotations

import struct

SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
INSTANCE_NUMBER = 0x00200013
WANTED = (SOP_CLASS_UID, SOP_INSTANCE_UID, STUDY_INSTANCE_UID, SERIES_INSTANCE_UID, INSTANCE_NUMBER)
_WANTED = frozenset(WANTED)
_STOP_AFTER = INSTANCE_NUMBER

#: PS3.5 Table 7.1-1: VRs with a 2-byte reserved field and a 4-byte length in Explicit VR.
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"))
_SHORT_VRS = frozenset((b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN",
                        b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"))
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
#: Big endian, deflate and JPIP Referenced Deflate: not scanned.
_NOT_EXPLICIT_LE = frozenset((IMPLICIT_VR_LE, "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"))

_unpack_tag_len = struct.Struct("<HHI").unpack_from
_unpack_tag_vr_len = struct.Struct("<HH2sH").unpack_from
_unpack_u32 = struct.Struct("<I").unpack_from


class _Incomplete(Exception):
    """The bytes end (or turn malformed) before the scan could finish."""


def _skip_undefined(buf, pos: int, end: int, explicit: bool) -> int:
    """Position after an undefined-length sequence value starting at ``pos`` (its first item)."""
    while True:
        if pos + 8 > end:
            raise _Incomplete
        g, e, length = _unpack_tag_len(buf, pos)
        tag = (g << 16) | e
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _Incomplete
        if length != _UNDEFINED:
            pos += length
            continue
        pos = _walk(buf, pos, end, explicit, nested=True)


def _walk(buf, pos: int, end: int, explicit: bool, nested: bool, found: dict | None = None) -> int:
    """Walk elements from ``pos``. Nested: until the item delimiter, returning the position after
    it. Top level: until the stop tag (returns -1) or ``end`` (returns ``end``)."""
    previous = -1
    while pos < end:
        if pos + 8 > end:
            raise _Incomplete
        if explicit:
            g, e, vr, short_len = _unpack_tag_vr_len(buf, pos)
            tag = (g << 16) | e
            if g == 0xFFFE:  # item delimiter: no VR (PS3.5 7.5)
                if nested and tag == _ITEM_END:
                    return pos + 8
                raise _Incomplete
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    raise _Incomplete
                (length,) = _unpack_u32(buf, pos + 8)
                start = pos + 12
            elif vr in _SHORT_VRS:
                length, start = short_len, pos + 8
            else:
                raise _Incomplete  # not a VR we know: let pydicom decide what this is
        else:
            g, e, length = _unpack_tag_len(buf, pos)
            tag = (g << 16) | e
            start = pos + 8
            vr = None
            if g == 0xFFFE:
                if nested and tag == _ITEM_END:
                    return start
                raise _Incomplete
        if not nested:
            if tag <= previous:
                # Out of order or repeated (PS3.5 7.1 forbids both), e.g. a second (0008,0018):
                # decline, so that pydicom's reading (the last value wins) is the only one.
                raise _Incomplete
            previous = tag
            if tag > _STOP_AFTER:
                return -1
        if length == _UNDEFINED:
            # A sequence (or UN holding one, whose content is Implicit VR Little Endian: PS3.5 6.2.2).
            if tag == 0x7FE00010:
                raise _Incomplete
            pos = _skip_undefined(buf, start, end, explicit and vr != b"UN")
            continue
        stop = start + length
        if stop > end:
            raise _Incomplete
        if found is not None and tag in _WANTED:
            found[tag] = bytes(buf[start:stop])
        pos = stop
    if nested:
        raise _Incomplete
    return end


def scan_identity(data, transfer_syntax_uid: str, complete: bool) -> dict[int, str] | None:
    """Scan the identifying elements of a data set (no file meta, no preamble).

    Parameters
    ----------
    data
        The data set's bytes, or a prefix of them (bytes, bytearray or memoryview).
    transfer_syntax_uid
        The transfer syntax the data set is encoded in.
    complete
        Whether ``data`` is the whole data set (then reaching its end also ends the scan).

    Returns
    -------
    dict or None
        ``{tag: value}`` for the elements of :data:`WANTED` that are present (values stripped of
        padding), or ``None`` when the bytes cannot be scanned with certainty.
        Top-level elements out of tag order or repeated also give ``None``.
    """
    if transfer_syntax_uid == IMPLICIT_VR_LE:
        explicit = False
    elif transfer_syntax_uid in _NOT_EXPLICIT_LE:
        return None  # big endian or deflated: pydicom handles those
    else:
        explicit = True
    found: dict[int, bytes] = {}
    try:
        pos = _walk(data, 0, len(data), explicit, nested=False, found=found)
    except (_Incomplete, struct.error, RecursionError):
        return None  # RecursionError: sequences nested hundreds deep; pydicom gets to say no
    if pos != -1 and not complete:
        return None
    return {tag: raw.decode("ascii", "replace").strip(" \x00") for tag, raw in found.items()}
