"""DICOM Upper Layer PDUs (PS3.8 section 9.3): decoding what an acceptor receives, encoding what it
sends.

Only the acceptor's side is implemented: A-ASSOCIATE-RQ is decoded; A-ASSOCIATE-AC/RJ,
P-DATA-TF, A-RELEASE-RP and A-ABORT are encoded; P-DATA-TF, A-RELEASE-RQ and A-ABORT are decoded.
Every length is checked against the bytes actually present, so a malformed PDU raises
:class:`PDUError` instead of reading past its end.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# PS3.8 9.3.1: PDU types.
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

#: PS3.7 Annex A.2.1: the only DICOM application context name.
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# PS3.8 9.3.3.2 presentation context results.
PC_ACCEPTANCE = 0
PC_USER_REJECTION = 1
PC_NO_REASON = 2
PC_ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
PC_TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


class PDUError(ValueError):
    """A PDU that does not follow PS3.8 section 9.3 (the association is aborted)."""


@dataclass
class PresentationContextRQ:
    """One proposed presentation context (PS3.8 9.3.2.2)."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: list[str]


@dataclass
class RoleSelection:
    """SCP/SCU Role Selection sub-item (PS3.7 D.3.3.4): the roles the requestor proposes for itself."""

    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass
class AssociateRQ:
    """A decoded A-ASSOCIATE-RQ (PS3.8 9.3.2)."""

    protocol_version: int
    called_ae: str
    calling_ae: str
    application_context: str
    contexts: list[PresentationContextRQ]
    max_pdu_length: int = 0
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    roles: dict[str, RoleSelection] = field(default_factory=dict)


@dataclass
class PresentationContextAC:
    """Our answer to one proposed context (PS3.8 9.3.3.2)."""

    context_id: int
    result: int
    transfer_syntax: str


def safe_ae(ae: str) -> str:
    """An AE title (or any peer-supplied text) fit for a log line: control and non-ASCII characters
    escaped, so that a newline in an AE title cannot forge a log record."""
    return "".join(c if 32 <= ord(c) < 127 and c != "\\" else f"\\x{ord(c):02x}" for c in ae)


def _text(raw: bytes) -> str:
    return raw.decode("ascii", "replace").strip(" \x00")


def _uid(raw: bytes) -> str:
    return raw.decode("ascii", "replace").rstrip("\x00 ").strip()


def _items(body: bytes | memoryview, pos: int, end: int):
    """Yield (item_type, value) for the variable items between pos and end (2-byte lengths)."""
    while pos < end:
        if pos + 4 > end:
            raise PDUError("truncated item header")
        item_type = body[pos]
        (length,) = struct.unpack_from(">H", body, pos + 2)
        start = pos + 4
        if start + length > end:
            raise PDUError(f"item 0x{item_type:02X} runs past the end of its PDU")
        yield item_type, bytes(body[start:start + length])
        pos = start + length


def decode_associate_rq(body: bytes) -> AssociateRQ:
    """Decode the body (after the 6-byte header) of an A-ASSOCIATE-RQ PDU.

    Raises
    ------
    PDUError
        Malformed PDU.
    """
    if len(body) < 68:
        raise PDUError("A-ASSOCIATE-RQ shorter than its fixed fields")
    (version,) = struct.unpack_from(">H", body, 0)
    rq = AssociateRQ(
        protocol_version=version, called_ae=_text(body[4:20]), calling_ae=_text(body[20:36]),
        application_context="", contexts=[],
    )
    for item_type, value in _items(body, 68, len(body)):
        if item_type == 0x10:
            rq.application_context = _uid(value)
        elif item_type == 0x20:
            if len(value) < 4:
                raise PDUError("presentation context item too short")
            abstract, syntaxes = "", []
            for sub_type, sub in _items(value, 4, len(value)):
                if sub_type == 0x30:
                    abstract = _uid(sub)
                elif sub_type == 0x40:
                    syntaxes.append(_uid(sub))
            rq.contexts.append(PresentationContextRQ(value[0], abstract, syntaxes))
        elif item_type == 0x50:
            for sub_type, sub in _items(value, 0, len(value)):
                if sub_type == 0x51 and len(sub) == 4:
                    (rq.max_pdu_length,) = struct.unpack(">I", sub)
                elif sub_type == 0x52:
                    rq.implementation_class_uid = _uid(sub)
                elif sub_type == 0x55:
                    rq.implementation_version_name = _text(sub)
                elif sub_type == 0x54 and len(sub) >= 2:
                    (n,) = struct.unpack_from(">H", sub, 0)
                    if len(sub) < 2 + n + 2:
                        raise PDUError("role selection item too short")
                    uid = _uid(sub[2:2 + n])
                    rq.roles[uid] = RoleSelection(uid, bool(sub[2 + n]), bool(sub[3 + n]))
                # 0x53 asynchronous operations window, 0x56/0x57 extended negotiation and 0x58 user
                # identity are optional; not answering them means "not supported" (PS3.7 D.3.3).
    return rq


def _header(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _ae_field(ae: str) -> bytes:
    return ae.encode("ascii", "replace")[:16].ljust(16, b" ")


def encode_associate_ac(
    rq: AssociateRQ,
    contexts: list[PresentationContextAC],
    max_pdu_length: int,
    implementation_class_uid: str,
    implementation_version_name: str,
    roles: list[RoleSelection] = (),
) -> bytes:
    """Encode an A-ASSOCIATE-AC answering ``rq`` (PS3.8 9.3.3)."""
    body = [struct.pack(">HH", 1, 0), _ae_field(rq.called_ae), _ae_field(rq.calling_ae), b"\x00" * 32,
            _item(0x10, APPLICATION_CONTEXT.encode())]
    for cx in contexts:
        # The transfer syntax sub-item is present even for rejected contexts (PS3.8 9.3.3.2).
        sub = _item(0x40, cx.transfer_syntax.encode())
        body.append(_item(0x21, struct.pack(">BBBB", cx.context_id, 0, cx.result, 0) + sub))
    user = [_item(0x51, struct.pack(">I", max_pdu_length)), _item(0x52, implementation_class_uid.encode())]
    for r in roles:
        uid = r.sop_class_uid.encode()
        user.append(_item(0x54, struct.pack(">H", len(uid)) + uid + bytes((int(r.scu_role), int(r.scp_role)))))
    user.append(_item(0x55, implementation_version_name.encode()[:16]))
    body.append(_item(0x50, b"".join(user)))
    return _header(A_ASSOCIATE_AC, b"".join(body))


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4): result 1 permanent / 2 transient; source and reason per table 9-21."""
    return _header(A_ASSOCIATE_RJ, bytes((0, result, source, reason)))


def encode_release_rp() -> bytes:
    """A-RELEASE-RP (PS3.8 9.3.7)."""
    return _header(A_RELEASE_RP, b"\x00" * 4)


def encode_abort(source: int = 2, reason: int = 0) -> bytes:
    """A-ABORT (PS3.8 9.3.8); source 0 service-user, 2 service-provider (reason 2 = unexpected PDU)."""
    return _header(A_ABORT, bytes((0, 0, source, reason)))


def encode_p_data(context_id: int, is_command: bool, payload: bytes, max_pdu_length: int) -> list[bytes]:
    """Fragment one message part into P-DATA-TF PDUs that respect the peer's maximum PDU length
    (PS3.8 9.3.5: the limit counts the PDV items; 0 means no limit)."""
    control = 0x01 if is_command else 0x00
    limit = (max_pdu_length - 6) if max_pdu_length else len(payload) or 1
    limit = max(limit, 1)
    pdus = []
    pos = 0
    while True:
        chunk = payload[pos:pos + limit]
        pos += len(chunk)
        last = pos >= len(payload)
        pdv = struct.pack(">IBB", len(chunk) + 2, context_id, control | (0x02 if last else 0)) + chunk
        pdus.append(_header(P_DATA_TF, pdv))
        if last:
            return pdus


def iter_pdvs(body: memoryview):
    """Yield ``(context_id, control_header, data)`` for each PDV item of a P-DATA-TF body.

    ``data`` is a memoryview into ``body`` (no copy). Control bit 0 = command, bit 1 = last fragment.
    """
    pos, end = 0, len(body)
    while pos < end:
        if pos + 6 > end:
            raise PDUError("truncated PDV item")
        (length,) = struct.unpack_from(">I", body, pos)
        if length < 2 or pos + 4 + length > end:
            raise PDUError("PDV item length does not fit its PDU")
        yield body[pos + 4], body[pos + 5], body[pos + 6:pos + 4 + length]
        pos += 4 + length
