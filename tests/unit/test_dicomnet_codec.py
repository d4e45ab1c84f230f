"""The Upper Layer PDU codec (:mod:`pgsam_node.ingest.dicomnet.pdu`) and the DIMSE command set codec
(:mod:`pgsam_node.ingest.dicomnet.dimse`), checked against pynetdicom and pydicom.

A-ASSOCIATE-RQs encoded by pynetdicom (presentation contexts, maximum length, implementation
class UID and version name, SCP/SCU role selection, user identity, asynchronous operations window)
are decoded and compared field by field; the A-ASSOCIATE-AC, -RJ, A-RELEASE-RP and A-ABORT we
encode are decoded (or re-encoded) by pynetdicom; P-DATA-TF fragmentation respects the peer's
maximum PDU length; malformed PDUs and PDV items raise :class:`PDUError`; command sets round trip,
match pydicom's Implicit VR Little Endian encoding byte for byte and are rejected when malformed.
"""

from __future__ import annotations

import random
import struct
from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ, A_RELEASE_RP, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    P_DATA,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import build_context

from pgsam_node.ingest.dicomnet import dimse
from pgsam_node.ingest.dicomnet.pdu import (
    APPLICATION_CONTEXT,
    PC_ABSTRACT_SYNTAX_NOT_SUPPORTED,
    PC_ACCEPTANCE,
    PC_NO_REASON,
    PC_TRANSFER_SYNTAXES_NOT_SUPPORTED,
    PC_USER_REJECTION,
    AssociateRQ,
    PDUError,
    PresentationContextAC,
    RoleSelection,
    decode_associate_rq,
    encode_abort,
    encode_associate_ac,
    encode_associate_rj,
    encode_p_data,
    encode_release_rp,
    iter_pdvs,
)

MR = "1.2.840.10008.5.1.4.1.1.4"
CT = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"


# --------------------------------------------------------------------------------------------
# A-ASSOCIATE-RQ: pynetdicom encodes, we decode
# --------------------------------------------------------------------------------------------


def _pynetdicom_rq(calling: str, called: str, contexts: list[tuple[int, str, list[str]]], max_length: int | None,
                   impl_uid: str, impl_version: str | None, roles: list[tuple[str, bool, bool]],
                   identity: tuple[int, bytes, bytes] | None = None, async_ops: bool = False) -> bytes:
    prim = A_ASSOCIATE()
    prim.application_context_name = APPLICATION_CONTEXT
    prim.calling_ae_title = calling
    prim.called_ae_title = called
    cxs = []
    for cid, abstract, syntaxes in contexts:
        cx = build_context(abstract, syntaxes)
        cx.context_id = cid
        cxs.append(cx)
    prim.presentation_context_definition_list = cxs
    user = []
    if max_length is not None:
        ml = MaximumLengthNotification()
        ml.maximum_length_received = max_length
        user.append(ml)
    ic = ImplementationClassUIDNotification()
    ic.implementation_class_uid = impl_uid
    user.append(ic)
    if async_ops:
        aw = AsynchronousOperationsWindowNegotiation()
        aw.maximum_number_operations_invoked, aw.maximum_number_operations_performed = 3, 2
        user.append(aw)
    for uid, scu, scp in roles:
        rs = SCP_SCU_RoleSelectionNegotiation()
        rs.sop_class_uid, rs.scu_role, rs.scp_role = uid, scu, scp
        user.append(rs)
    if impl_version is not None:
        iv = ImplementationVersionNameNotification()
        iv.implementation_version_name = impl_version
        user.append(iv)
    if identity is not None:
        ui = UserIdentityNegotiation()
        ui.user_identity_type, ui.primary_field = identity[0], identity[1]
        if identity[0] == 2:
            ui.secondary_field = identity[2]
        ui.positive_response_requested = True
        user.append(ui)
    prim.user_information = user
    return A_ASSOCIATE_RQ(prim).encode()


RQ_CASES = {
    "minimal": dict(calling="A", called="B", contexts=[(1, VERIFICATION, [IMPLICIT])], max_length=16384,
                    impl_uid="1.2.3", impl_version=None, roles=[]),
    "typical": dict(calling="MODALITY_01", called="PGSAM", contexts=[
        (1, MR, [EXPLICIT, IMPLICIT]), (3, ENHANCED_MR, [JPEG_BASELINE, JPEG_LOSSLESS, EXPLICIT]),
        (5, VERIFICATION, [IMPLICIT])], max_length=32768, impl_uid="1.2.826.0.1.3680043.9.3811.2.1.0",
        impl_version="PYNETDICOM_204", roles=[(MR, False, True), (CT, True, True)],
        identity=(2, b"alice", b"s3cret"), async_ops=True),
    "sixteen_char_aes": dict(calling="ABCDEFGHIJKLMNOP", called="0123456789ABCDEF", contexts=[
        (255, CT, [EXPLICIT])], max_length=0, impl_uid="1.2.840.10008.1", impl_version="0123456789ABCDEF",
        roles=[(CT, True, False)], identity=(1, b"bob", b"")),
    "no_max_length": dict(calling="SCU", called="ANY", contexts=[(7, MR, [IMPLICIT])], max_length=None,
                          impl_uid="1.2.3.4.5.6.7", impl_version="V1", roles=[]),
    "many_contexts": dict(calling="BULK", called="PGSAM", contexts=[
        (2 * i + 1, f"1.2.840.10008.5.1.4.1.1.{i + 1}", [EXPLICIT, IMPLICIT, JPEG_BASELINE][: 1 + i % 3])
        for i in range(128)], max_length=0xFFFFFFFF, impl_uid="1.2.3", impl_version="X", roles=[
        (f"1.2.840.10008.5.1.4.1.1.{i + 1}", i % 2 == 0, i % 2 == 1 or i % 3 == 0) for i in range(10)]),
}


@pytest.mark.parametrize("case", sorted(RQ_CASES))
def test_associate_rq_from_pynetdicom_decodes_every_field(case):
    kw = RQ_CASES[case]
    raw = _pynetdicom_rq(**kw)
    assert raw[0] == 0x01 and struct.unpack(">I", raw[2:6])[0] == len(raw) - 6
    rq = decode_associate_rq(raw[6:])
    assert rq.protocol_version == 1
    assert rq.calling_ae == kw["calling"]
    assert rq.called_ae == kw["called"]
    assert rq.application_context == APPLICATION_CONTEXT
    assert [(c.context_id, c.abstract_syntax, c.transfer_syntaxes) for c in rq.contexts] == \
        [(cid, abstract, list(syntaxes)) for cid, abstract, syntaxes in kw["contexts"]]
    assert rq.max_pdu_length == (kw["max_length"] or 0)
    assert rq.implementation_class_uid == kw["impl_uid"]
    assert rq.implementation_version_name == (kw["impl_version"] or "")
    assert rq.roles == {uid: RoleSelection(uid, scu, scp) for uid, scu, scp in kw["roles"]}
    # and pynetdicom's own reading agrees
    back = A_ASSOCIATE_RQ()
    back.decode(raw)
    assert back.calling_ae_title == rq.calling_ae and back.called_ae_title == rq.called_ae
    assert [c.context_id for c in back.presentation_context] == [c.context_id for c in rq.contexts]


def _hand_rq(called: bytes, calling: bytes, items: list[bytes], version: int = 1) -> bytes:
    """An A-ASSOCIATE-RQ body assembled byte by byte (for encodings pynetdicom would not produce)."""
    return struct.pack(">HH", version, 0) + called.ljust(16, b" ") + calling.ljust(16, b" ") + b"\x00" * 32 \
        + b"".join(items)


def _it(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def test_associate_rq_strips_padded_uids_and_titles():
    """UIDs padded with a NUL or spaces, AE titles with leading spaces: stripped."""
    pc = _it(0x20, bytes((9, 0, 0, 0)) + _it(0x30, MR.encode() + b"\x00") + _it(0x40, b"1.2.840.10008.1.2\x00")
             + _it(0x40, EXPLICIT.encode() + b" "))
    role = _it(0x54, struct.pack(">H", len(MR) + 1) + MR.encode() + b"\x00" + b"\x01\x00")
    user = _it(0x50, _it(0x51, struct.pack(">I", 65536)) + _it(0x52, b"1.2.3.4\x00") + role + _it(0x55, b"VER "))
    body = _hand_rq(b"  PGSAM", b"SCU", [_it(0x10, APPLICATION_CONTEXT.encode() + b"\x00"), pc, user], version=1)
    rq = decode_associate_rq(body)
    assert (rq.called_ae, rq.calling_ae) == ("PGSAM", "SCU")
    assert rq.application_context == APPLICATION_CONTEXT
    assert [(c.context_id, c.abstract_syntax, c.transfer_syntaxes) for c in rq.contexts] == [
        (9, MR, [IMPLICIT, EXPLICIT])]
    assert rq.max_pdu_length == 65536
    assert rq.implementation_class_uid == "1.2.3.4"
    assert rq.implementation_version_name == "VER"
    assert rq.roles == {MR: RoleSelection(MR, True, False)}


def test_associate_rq_ignores_unknown_items():
    """Unknown and optional items (extended negotiation, user identity, 0x7F) are skipped."""
    pc = _it(0x20, bytes((1, 0, 0, 0)) + _it(0x30, CT.encode()) + _it(0x40, IMPLICIT.encode()))
    user = _it(0x50, _it(0x56, struct.pack(">H", len(CT)) + CT.encode() + b"\x01") + _it(0x58, b"\x01\x00" + b"\x00"
               + b"\x03abc" + b"\x00\x00") + _it(0x51, struct.pack(">I", 1234)))
    body = _hand_rq(b"A", b"B", [_it(0x7F, b"whatever"), _it(0x10, APPLICATION_CONTEXT.encode()), pc, user])
    rq = decode_associate_rq(body)
    assert rq.max_pdu_length == 1234
    assert [c.abstract_syntax for c in rq.contexts] == [CT]


def test_associate_rq_malformed_raises_pdu_error():
    good = _pynetdicom_rq(**RQ_CASES["typical"])[6:]
    with pytest.raises(PDUError):
        decode_associate_rq(good[:67])  # shorter than the fixed fields
    with pytest.raises(PDUError):
        decode_associate_rq(good[:68] + b"\x10\x00")  # truncated item header
    with pytest.raises(PDUError):
        decode_associate_rq(good[:68] + b"\x10\x00\x00\x30" + b"1.2")  # item longer than the PDU
    with pytest.raises(PDUError):
        decode_associate_rq(_hand_rq(b"A", b"B", [_it(0x20, b"\x01\x00")]))  # context item < 4 bytes
    with pytest.raises(PDUError):  # sub-item running past its presentation context item
        decode_associate_rq(_hand_rq(b"A", b"B", [_it(0x20, b"\x01\x00\x00\x00" + b"\x30\x00\x00\x09" + b"1.2")]))
    with pytest.raises(PDUError):  # role selection whose UID length overruns the sub-item
        decode_associate_rq(_hand_rq(b"A", b"B", [_it(0x50, _it(0x54, struct.pack(">H", 40) + b"1.2.3\x01\x01"))]))


def test_associate_rq_every_truncation_is_pdu_error_or_a_prefix():
    """Cutting a valid RQ anywhere: PDUError inside an item, a consistent shorter RQ at an item
    boundary; never another exception."""
    good = _pynetdicom_rq(**RQ_CASES["typical"])[6:]
    full = decode_associate_rq(good)
    boundaries = 0
    for n in range(len(good)):
        try:
            rq = decode_associate_rq(good[:n])
        except PDUError:
            continue
        boundaries += 1
        assert n >= 68
        assert rq.contexts == full.contexts[:len(rq.contexts)]
    assert boundaries == 5  # after the fixed fields, the application context and each context


def test_associate_rq_random_corruption_only_raises_pdu_error():
    rng = random.Random(8)
    good = bytearray(_pynetdicom_rq(**RQ_CASES["typical"])[6:])
    for _ in range(3000):
        buf = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        try:
            decode_associate_rq(bytes(buf))
        except PDUError:
            pass


# --------------------------------------------------------------------------------------------
# A-ASSOCIATE-AC / -RJ, A-RELEASE-RP, A-ABORT: we encode, pynetdicom decodes
# --------------------------------------------------------------------------------------------


def _rq(called="PGSAM", calling="MODALITY") -> AssociateRQ:
    return AssociateRQ(protocol_version=1, called_ae=called, calling_ae=calling,
                       application_context=APPLICATION_CONTEXT, contexts=[])


@pytest.mark.parametrize("max_length", (0, 16384, 0xFFFFFFFF))
def test_associate_ac_decoded_by_pynetdicom(max_length):
    contexts = [
        PresentationContextAC(1, PC_ACCEPTANCE, EXPLICIT),
        PresentationContextAC(3, PC_USER_REJECTION, IMPLICIT),
        PresentationContextAC(5, PC_NO_REASON, IMPLICIT),
        PresentationContextAC(7, PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, IMPLICIT),
        PresentationContextAC(9, PC_TRANSFER_SYNTAXES_NOT_SUPPORTED, IMPLICIT),
        PresentationContextAC(255, PC_ACCEPTANCE, JPEG_BASELINE),
    ]
    roles = [RoleSelection(MR, False, True), RoleSelection(CT, True, False), RoleSelection(ENHANCED_MR, True, True)]
    raw = encode_associate_ac(_rq("PGSAM", "ABCDEFGHIJKLMNOP"), contexts, max_length, "1.2.826.0.1.3680043.10.1",
                              "PGSAM_NODE_1", roles)
    assert raw[0] == 0x02 and struct.unpack(">I", raw[2:6])[0] == len(raw) - 6
    ac = A_ASSOCIATE_AC()
    ac.decode(raw)
    assert ac.encode() == raw  # pynetdicom re-encodes exactly the same bytes
    assert ac.protocol_version == 1
    assert ac.reserved_aet == "PGSAM" and ac.reserved_aec == "ABCDEFGHIJKLMNOP"
    assert ac.application_context_name == APPLICATION_CONTEXT
    assert [(c.context_id, c.result_reason, c.transfer_syntax) for c in ac.presentation_context] == \
        [(c.context_id, c.result, c.transfer_syntax) for c in contexts]
    ui = ac.user_information
    assert ui.maximum_length == max_length
    assert ui.implementation_class_uid == "1.2.826.0.1.3680043.10.1"
    assert ui.implementation_version_name == "PGSAM_NODE_1"
    got_roles = {uid: (item.scu_role, item.scp_role) for uid, item in ui.role_selection.items()}
    assert got_roles == {MR: (0, 1), CT: (1, 0), ENHANCED_MR: (1, 1)}
    prim = ac.to_primitive()
    assert [(c.context_id, c.result, c.transfer_syntax) for c in prim.presentation_context_definition_results_list] \
        == [(c.context_id, c.result, [c.transfer_syntax]) for c in contexts]


def test_associate_ac_answers_a_pynetdicom_rq():
    """Decode pynetdicom's RQ, answer it, and let pynetdicom read the answer."""
    rq = decode_associate_rq(_pynetdicom_rq(**RQ_CASES["typical"])[6:])
    contexts = [PresentationContextAC(c.context_id, PC_ACCEPTANCE, c.transfer_syntaxes[0]) for c in rq.contexts]
    raw = encode_associate_ac(rq, contexts, 65536, "1.2.3", "A_VERY_LONG_VERSION_NAME", list(rq.roles.values()))
    ac = A_ASSOCIATE_AC()
    ac.decode(raw)
    assert (ac.reserved_aet, ac.reserved_aec) == ("PGSAM", "MODALITY_01")
    assert [(c.context_id, c.transfer_syntax) for c in ac.presentation_context] == [
        (1, EXPLICIT), (3, JPEG_BASELINE), (5, IMPLICIT)]
    assert ac.user_information.implementation_version_name == "A_VERY_LONG_VERS"  # 16 characters at most
    assert set(ac.user_information.role_selection) == {MR, CT}


def test_associate_ac_without_roles_has_no_role_items():
    raw = encode_associate_ac(_rq(), [PresentationContextAC(1, PC_ACCEPTANCE, IMPLICIT)], 16384, "1.2.3", "V")
    ac = A_ASSOCIATE_AC()
    ac.decode(raw)
    assert ac.user_information.role_selection == {}
    assert ac.user_information.maximum_length == 16384


@pytest.mark.parametrize("result,source,reason", [
    (1, 1, 1), (1, 1, 2), (1, 1, 3), (1, 1, 7), (2, 1, 1),
    (1, 2, 1), (1, 2, 2), (2, 3, 1), (2, 3, 2), (1, 3, 2),
])
def test_associate_rj_matches_pynetdicom(result, source, reason):
    raw = encode_associate_rj(result, source, reason)
    rj = A_ASSOCIATE_RJ()
    rj.decode(raw)
    assert (rj.result, rj.source, rj.reason_diagnostic) == (result, source, reason)
    mine = A_ASSOCIATE_RJ()
    mine.result, mine.source, mine.reason_diagnostic = result, source, reason
    assert mine.encode() == raw
    prim = rj.to_primitive()
    assert (prim.result, prim.result_source, prim.diagnostic) == (result, source, reason)


def test_release_rp_matches_pynetdicom():
    raw = encode_release_rp()
    assert raw == A_RELEASE_RP().encode() == b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
    A_RELEASE_RP().decode(raw)


@pytest.mark.parametrize("source,reason", [(0, 0), (2, 0), (2, 1), (2, 2), (2, 4), (2, 5), (2, 6)])
def test_abort_matches_pynetdicom(source, reason):
    raw = encode_abort(source, reason)
    ab = A_ABORT_RQ()
    ab.decode(raw)
    assert (ab.source, ab.reason_diagnostic) == (source, reason)
    mine = A_ABORT_RQ()
    mine.source, mine.reason_diagnostic = source, reason
    assert mine.encode() == raw


def test_abort_defaults_to_service_provider():
    assert encode_abort() == b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00"


# --------------------------------------------------------------------------------------------
# P-DATA-TF
# --------------------------------------------------------------------------------------------


def _check_fragments(pdus: list[bytes], context_id: int, is_command: bool, payload: bytes, max_length: int):
    reassembled = bytearray()
    for i, raw in enumerate(pdus):
        assert raw[0] == 0x04 and raw[1] == 0
        (length,) = struct.unpack(">I", raw[2:6])
        assert length == len(raw) - 6
        if max_length:
            assert length <= max_length, (i, length, max_length)
        pdvs = list(iter_pdvs(memoryview(raw)[6:]))
        assert len(pdvs) == 1
        cid, control, data = pdvs[0]
        assert cid == context_id
        assert control & 0x01 == int(is_command)
        assert bool(control & 0x02) == (i == len(pdus) - 1)  # last-fragment bit on the last only
        assert control & 0xFC == 0
        reassembled += data
        # pynetdicom reads the same PDV
        tf = P_DATA_TF()
        tf.decode(raw)
        assert tf.to_primitive().presentation_data_value_list == [(context_id, bytes((control,)) + bytes(data))]
    assert bytes(reassembled) == payload


@pytest.mark.parametrize("max_length", (0, 7, 8, 16, 100, 4096, 16384, 16390))
@pytest.mark.parametrize("size", (0, 1, 2, 9, 10, 11, 94, 95, 4090, 16378, 16379, 50_000))
def test_p_data_fragmentation(size, max_length):
    payload = random.Random(size * 31 + max_length).randbytes(size)
    for context_id, is_command in ((1, True), (255, False)):
        pdus = encode_p_data(context_id, is_command, payload, max_length)
        _check_fragments(pdus, context_id, is_command, payload, max_length)
        if max_length == 0:
            assert len(pdus) == 1
        else:
            per_pdu = max_length - 6
            assert len(pdus) == max(1, -(-size // per_pdu))  # as few PDUs as the limit allows
            assert all(len(p) == max_length + 6 for p in pdus[:-1])  # every fragment but the last is full


def test_p_data_from_pynetdicom_is_read_by_iter_pdvs():
    prim = P_DATA()
    prim.presentation_data_value_list = [[1, b"\x03" + b"cmd!"], [3, b"\x00" + b"data" * 10], [3, b"\x02" + b""]]
    tf = P_DATA_TF()
    tf.from_primitive(prim)
    raw = tf.encode()
    got = [(cid, ctl, bytes(data)) for cid, ctl, data in iter_pdvs(memoryview(raw)[6:])]
    assert got == [(1, 3, b"cmd!"), (3, 0, b"data" * 10), (3, 2, b"")]


def test_iter_pdvs_yields_views_without_copying():
    body = bytearray(struct.pack(">IBB", 5, 1, 3) + b"abc")
    (cid, ctl, data), = list(iter_pdvs(memoryview(body)))
    assert isinstance(data, memoryview) and bytes(data) == b"abc"
    body[6] = ord("X")
    assert bytes(data) == b"Xbc"


@pytest.mark.parametrize("body", [
    b"\x00",
    b"\x00\x00\x00",
    b"\x00\x00\x00\x05\x01",  # 5 bytes: shorter than a PDV header
    struct.pack(">IBB", 0, 1, 3),  # length 0
    # length 1 (no room for the message control header), followed by bytes that would parse as a
    # valid PDV if the first item were accepted
    struct.pack(">IB", 1, 1) + struct.pack(">IBB", 2, 1, 3),
    struct.pack(">IBB", 10, 1, 3) + b"abc",  # length past the end
    struct.pack(">IBB", 0xFFFFFFFF, 1, 3) + b"abc",
], ids=["1B", "3B", "5B", "len0", "len1", "past_end", "huge"])
def test_iter_pdvs_malformed_raises(body):
    with pytest.raises(PDUError):
        list(iter_pdvs(memoryview(body)))


def test_iter_pdvs_malformed_after_a_good_item():
    body = struct.pack(">IBB", 4, 1, 2) + b"ok" + struct.pack(">IBB", 9, 1, 2) + b"x"
    it = iter_pdvs(memoryview(body))
    cid, ctl, data = next(it)
    assert (cid, ctl, bytes(data)) == (1, 2, b"ok")
    with pytest.raises(PDUError):
        next(it)


def test_iter_pdvs_empty_body_yields_nothing():
    assert list(iter_pdvs(memoryview(b""))) == []


# --------------------------------------------------------------------------------------------
# DIMSE command sets
# --------------------------------------------------------------------------------------------


def _store_rq(sop_class=MR, sop_instance="1.2.826.0.1.3680043.8.498.12345", message_id=7) -> dict:
    return {
        dimse.AFFECTED_SOP_CLASS_UID: sop_class,
        dimse.COMMAND_FIELD: dimse.C_STORE_RQ,
        dimse.MESSAGE_ID: message_id,
        dimse.PRIORITY: 0,
        dimse.COMMAND_DATA_SET_TYPE: 0x0000,
        dimse.AFFECTED_SOP_INSTANCE_UID: sop_instance,
    }


def _pydicom_command(raw: bytes) -> Dataset:
    return read_dataset(BytesIO(raw), is_implicit_VR=True, is_little_endian=True)


def _pydicom_encode(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    return fp.getvalue()


@pytest.mark.parametrize("sop_instance", ["1.2.3.4", "1.2.3.45", "1.2.826.0.1.3680043.8.498.1234567890123"])
def test_command_round_trip_and_pydicom_agree(sop_instance):
    cmd = _store_rq(sop_instance=sop_instance)
    cmd[0x00001030] = "PACS1"  # Move Originator AE Title: odd text, space padded
    cmd[0x00001031] = 99  # Move Originator Message ID
    raw = dimse.encode_command(cmd)
    back = dimse.decode_command(raw)
    assert back == {0x00000000: len(raw) - 12, **cmd}
    # every element has an even length; odd UIDs end with a NUL, odd texts with a space
    pos = 0
    while pos < len(raw):
        _, _, length = struct.unpack_from("<HHI", raw, pos)
        assert length % 2 == 0
        pos += 8 + length
    assert pos == len(raw)
    if len(sop_instance) % 2:
        assert sop_instance.encode() + b"\x00" in raw
    assert b"PACS1 " in raw
    # pydicom reads the same values
    ds = _pydicom_command(raw)
    assert ds.CommandGroupLength == len(raw) - 12
    assert ds.AffectedSOPClassUID == MR
    assert ds.CommandField == dimse.C_STORE_RQ
    assert ds.MessageID == 7
    assert ds.Priority == 0
    assert ds.CommandDataSetType == 0
    assert ds.AffectedSOPInstanceUID == sop_instance
    assert ds.MoveOriginatorApplicationEntityTitle == "PACS1"
    assert ds.MoveOriginatorMessageID == 99
    # and pydicom encodes the same command set to the same bytes (tag order, padding, lengths)
    assert _pydicom_encode(ds) == raw


def test_command_encoded_by_pydicom_decodes():
    ds = Dataset()
    ds.AffectedSOPClassUID = VERIFICATION
    ds.CommandField = dimse.C_ECHO_RQ
    ds.MessageID = 65535
    ds.CommandDataSetType = dimse.NO_DATA_SET
    body = _pydicom_encode(ds)
    ds.CommandGroupLength = len(body)
    raw = _pydicom_encode(ds)
    assert dimse.decode_command(raw) == {
        0x00000000: len(body), dimse.AFFECTED_SOP_CLASS_UID: VERIFICATION, dimse.COMMAND_FIELD: dimse.C_ECHO_RQ,
        dimse.MESSAGE_ID: 65535, dimse.COMMAND_DATA_SET_TYPE: dimse.NO_DATA_SET}


def test_command_elements_written_in_tag_order():
    cmd = _store_rq()
    shuffled = dict(reversed(list(cmd.items())))
    raw = dimse.encode_command(shuffled)
    assert raw == dimse.encode_command(cmd)
    tags, pos = [], 0
    while pos < len(raw):
        g, e, length = struct.unpack_from("<HHI", raw, pos)
        tags.append((g << 16) | e)
        pos += 8 + length
    assert tags == sorted(tags) and tags[0] == 0


def test_response_to_c_store():
    cmd = dimse.decode_command(dimse.encode_command(_store_rq(sop_instance="1.2.3.45", message_id=4242)))
    raw = dimse.response(cmd, dimse.C_STORE_RSP, 0x0000, comment="ignored on success")
    rsp = dimse.decode_command(raw)
    assert rsp == {
        0x00000000: len(raw) - 12,
        dimse.AFFECTED_SOP_CLASS_UID: MR,
        dimse.COMMAND_FIELD: dimse.C_STORE_RSP,
        dimse.MESSAGE_ID_RESPONDED_TO: 4242,
        dimse.COMMAND_DATA_SET_TYPE: dimse.NO_DATA_SET,
        dimse.STATUS: 0x0000,
        dimse.AFFECTED_SOP_INSTANCE_UID: "1.2.3.45",
    }
    ds = _pydicom_command(raw)
    assert ds.MessageIDBeingRespondedTo == 4242
    assert ds.Status == 0
    assert "ErrorComment" not in ds
    assert "MessageID" not in ds


def test_response_failure_carries_a_truncated_error_comment():
    cmd = _store_rq()
    long_comment = "Out of resources: " + "x" * 100
    ds = _pydicom_command(dimse.response(cmd, dimse.C_STORE_RSP, 0xA700, comment=long_comment))
    assert ds.Status == 0xA700
    assert ds.ErrorComment == long_comment[:64]
    assert len(ds.ErrorComment) == 64
    odd = _pydicom_command(dimse.response(cmd, dimse.C_STORE_RSP, 0xC210, comment="bad"))
    assert odd.ErrorComment == "bad"
    assert "ErrorComment" not in _pydicom_command(dimse.response(cmd, dimse.C_STORE_RSP, 0xA700))
    assert "ErrorComment" not in _pydicom_command(dimse.response(cmd, dimse.C_STORE_RSP, 0xA700, comment=""))


def test_response_to_c_echo_and_n_event_report():
    echo = {dimse.AFFECTED_SOP_CLASS_UID: VERIFICATION, dimse.COMMAND_FIELD: dimse.C_ECHO_RQ, dimse.MESSAGE_ID: 3,
            dimse.COMMAND_DATA_SET_TYPE: dimse.NO_DATA_SET}
    rsp = dimse.decode_command(dimse.response(echo, dimse.C_ECHO_RSP, 0))
    assert rsp[dimse.COMMAND_FIELD] == dimse.C_ECHO_RSP
    assert rsp[dimse.AFFECTED_SOP_CLASS_UID] == VERIFICATION
    assert rsp[dimse.MESSAGE_ID_RESPONDED_TO] == 3
    assert dimse.AFFECTED_SOP_INSTANCE_UID not in rsp
    assert dimse.EVENT_TYPE_ID not in rsp
    event = {dimse.AFFECTED_SOP_CLASS_UID: "1.2.840.10008.1.20.1", dimse.COMMAND_FIELD: dimse.N_EVENT_REPORT_RQ,
             dimse.MESSAGE_ID: 11, dimse.COMMAND_DATA_SET_TYPE: 0x0001, dimse.AFFECTED_SOP_INSTANCE_UID:
             "1.2.840.10008.1.20.1.1", dimse.EVENT_TYPE_ID: 2}
    rsp = dimse.decode_command(dimse.response(event, dimse.N_EVENT_REPORT_RSP, 0))
    assert rsp[dimse.EVENT_TYPE_ID] == 2
    assert rsp[dimse.AFFECTED_SOP_INSTANCE_UID] == "1.2.840.10008.1.20.1.1"
    assert rsp[dimse.MESSAGE_ID_RESPONDED_TO] == 11
    # a command without a Message ID is answered with 0
    assert dimse.decode_command(dimse.response({dimse.COMMAND_FIELD: 1}, dimse.C_STORE_RSP, 0))[
        dimse.MESSAGE_ID_RESPONDED_TO] == 0


def test_decode_command_strips_padding():
    raw = (struct.pack("<HHI", 0, 0x0002, 6) + b"1.2.3\x00" + struct.pack("<HHI", 0, 0x0100, 2) + b"\x01\x00"
           + struct.pack("<HHI", 0, 0x1030, 6) + b"PACS  " + struct.pack("<HHI", 0, 0x1000, 8) + b"1.2.34 \x00")
    assert dimse.decode_command(raw) == {dimse.AFFECTED_SOP_CLASS_UID: "1.2.3", dimse.COMMAND_FIELD: 1,
                                         0x00001030: "PACS", dimse.AFFECTED_SOP_INSTANCE_UID: "1.2.34"}


def test_decode_command_rejects_malformed():
    good = dimse.encode_command(_store_rq())
    with pytest.raises(PDUError):
        dimse.decode_command(good[:-1])  # last element truncated
    with pytest.raises(PDUError):
        dimse.decode_command(good + b"\x00\x00\x00")  # a truncated element header
    with pytest.raises(PDUError):  # an element outside group 0000
        dimse.decode_command(good + struct.pack("<HHI", 0x0008, 0x0016, 2) + b"12")
    with pytest.raises(PDUError):  # an element length past the end
        dimse.decode_command(struct.pack("<HHI", 0, 0x0100, 2) + b"\x01\x00" + struct.pack("<HHI", 0, 0x0110, 100))
    no_field = dict(_store_rq())
    del no_field[dimse.COMMAND_FIELD]
    with pytest.raises(PDUError):
        dimse.decode_command(dimse.encode_command(no_field))
    with pytest.raises(PDUError):
        dimse.decode_command(b"")


def test_decode_command_every_truncation():
    """Cut anywhere: PDUError, or (at an element boundary past the Command Field) the elements so far."""
    cmd = _store_rq()
    good = dimse.encode_command(cmd)
    full = dimse.decode_command(good)
    ok = 0
    for n in range(len(good)):
        try:
            got = dimse.decode_command(good[:n])
        except PDUError:
            continue
        ok += 1
        assert got == {k: v for k, v in full.items() if k in got}
        assert dimse.COMMAND_FIELD in got
    assert ok == 4  # after Command Field, Message ID, Priority and Command Data Set Type
