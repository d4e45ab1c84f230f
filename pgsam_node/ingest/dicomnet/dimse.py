"""DIMSE command sets (PS3.7 section 9.3 / 10.3): Implicit VR Little Endian group 0000.

A command set is small (about a hundred bytes), so it is decoded into a plain ``{tag: value}``
dict and encoded from one; only the value representations that group 0000 uses are handled.
"""

from __future__ import annotations

import struct

from pgsam_node.ingest.dicomnet.pdu import PDUError

# PS3.7 E.1: command elements.
AFFECTED_SOP_CLASS_UID = 0x00000002
REQUESTED_SOP_CLASS_UID = 0x00000003
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
MESSAGE_ID_RESPONDED_TO = 0x00000120
PRIORITY = 0x00000700
COMMAND_DATA_SET_TYPE = 0x00000800
STATUS = 0x00000900
ERROR_COMMENT = 0x00000902
AFFECTED_SOP_INSTANCE_UID = 0x00001000
EVENT_TYPE_ID = 0x00001002

# PS3.7 E.1 command field values.
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
N_EVENT_REPORT_RQ, N_EVENT_REPORT_RSP = 0x0100, 0x8100
#: Command Data Set Type: no data set follows (any other value means one does).
NO_DATA_SET = 0x0101

_US = {COMMAND_FIELD, MESSAGE_ID, MESSAGE_ID_RESPONDED_TO, PRIORITY, COMMAND_DATA_SET_TYPE, STATUS, EVENT_TYPE_ID,
       0x00001031}
_UI = {AFFECTED_SOP_CLASS_UID, REQUESTED_SOP_CLASS_UID, AFFECTED_SOP_INSTANCE_UID, 0x00001001}


def decode_command(raw: bytes) -> dict[int, object]:
    """Decode a command set; US values become ints, UIDs and texts stripped strings.

    Raises
    ------
    PDUError
        Element lengths that do not fit, or no Command Field.
    """
    out: dict[int, object] = {}
    pos, end = 0, len(raw)
    while pos < end:
        if pos + 8 > end:
            raise PDUError("truncated command element")
        group, elem, length = struct.unpack_from("<HHI", raw, pos)
        pos += 8
        if pos + length > end:
            raise PDUError("command element runs past the command set")
        tag = (group << 16) | elem
        value = raw[pos:pos + length]
        pos += length
        if group != 0x0000:
            raise PDUError("command set holds an element outside group 0000")
        if tag in _US:
            if length != 2:
                # PS3.7 E.1: these are US (2 bytes); any other length is a malformed command.
                raise PDUError(f"command element ({group:04X},{elem:04X}) has length {length}, not 2")
            out[tag] = struct.unpack("<H", value)[0]
        elif tag == 0x00000000:
            if length != 4:
                raise PDUError(f"command group length has length {length}, not 4")
            out[tag] = struct.unpack("<I", value)[0]
        else:
            out[tag] = value.decode("ascii", "replace").rstrip("\x00 ").strip()
    if COMMAND_FIELD not in out:
        raise PDUError("command set without a Command Field (0000,0100)")
    return out


def _el(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _text(value: str, pad: bytes) -> bytes:
    b = value.encode("ascii", "replace")
    return b + pad if len(b) % 2 else b


def encode_command(elements: dict[int, object]) -> bytes:
    """Encode a command set with its group length (PS3.7 E.1), elements in tag order."""
    parts = []
    for tag in sorted(elements):
        value = elements[tag]
        if tag in _US:
            parts.append(_el(tag, struct.pack("<H", int(value))))
        elif tag in _UI:
            parts.append(_el(tag, _text(str(value), b"\x00")))
        else:
            parts.append(_el(tag, _text(str(value), b" ")))
    body = b"".join(parts)
    return _el(0x00000000, struct.pack("<I", len(body))) + body


def response(command: dict[int, object], rsp_field: int, status: int, comment: str | None = None) -> bytes:
    """The response to ``command`` (same SOP class and instance), without a data set."""
    els: dict[int, object] = {
        COMMAND_FIELD: rsp_field,
        MESSAGE_ID_RESPONDED_TO: command.get(MESSAGE_ID, 0),
        COMMAND_DATA_SET_TYPE: NO_DATA_SET,
        STATUS: status,
    }
    if command.get(AFFECTED_SOP_CLASS_UID):
        els[AFFECTED_SOP_CLASS_UID] = command[AFFECTED_SOP_CLASS_UID]
    if command.get(AFFECTED_SOP_INSTANCE_UID):
        els[AFFECTED_SOP_INSTANCE_UID] = command[AFFECTED_SOP_INSTANCE_UID]
    if rsp_field == N_EVENT_REPORT_RSP and EVENT_TYPE_ID in command:
        els[EVENT_TYPE_ID] = command[EVENT_TYPE_ID]
    if comment and status != 0x0000:
        # Error Comment (LO, 64 chars): tells the sender's operator why (PS3.7 C.4.2).
        els[ERROR_COMMENT] = comment[:64]
    return encode_command(els)
