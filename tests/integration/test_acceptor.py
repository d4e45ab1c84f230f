"""The listener's DICOM acceptor at the protocol level (PS3.8): what a misbehaving or unusual peer
gets, over real TCP on localhost.

A raw client built from pynetdicom's PDU encoders (A-ASSOCIATE-RQ) and our own P-DATA/command
encoders sends exactly the bytes each case needs; after every bad case a normal pynetdicom
association must still store an instance (the listener keeps serving).
"""

from __future__ import annotations

import socket
import struct
import time

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import MRImageStorage, Verification
from pynetdicom.transport import AddressInformation

from pgsam_node.ingest.spool import leftover_tmp
from pgsam_node.config import load_settings
from pgsam_node.ingest.dicomnet import dimse
from pgsam_node.ingest.dicomnet import pdu
from pgsam_node.ingest.index import parse_header
from tests.factories import mr_instance
from tests.helpers import free_port

from .ingest_fixtures import running_listener, scu


def _encode_dataset(ds, ts=ExplicitVRLittleEndian) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = ts == ImplicitVRLittleEndian
    write_dataset(buf, ds)
    return buf.getvalue()


class RawClient:
    """A byte-level association requestor."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.rfile = self.sock.makefile("rb")

    def associate(self, contexts, calling="RAWSCU", app_context="1.2.840.10008.3.1.1.1", version=1,
                  called="PGSAM") -> tuple[int, bytes]:
        prim = A_ASSOCIATE()
        prim.application_context_name = app_context
        prim.calling_ae_title = calling
        prim.called_ae_title = called
        prim.calling_presentation_address = AddressInformation("127.0.0.1", 0)
        prim.called_presentation_address = AddressInformation("127.0.0.1", 0)
        prim.presentation_context_definition_list = contexts
        ml = MaximumLengthNotification()
        ml.maximum_length_received = 16384
        prim.user_information = [ml]
        rq = A_ASSOCIATE_RQ()
        rq.from_primitive(prim)
        raw = bytearray(rq.encode())
        if version != 1:
            struct.pack_into(">H", raw, 6, version)
        self.sock.sendall(bytes(raw))
        return self.read_pdu()

    def read_pdu(self) -> tuple[int, bytes]:
        head = self.rfile.read(6)
        if len(head) < 6:
            return 0, b""
        kind, _, length = struct.unpack(">BBI", head)
        return kind, self.rfile.read(length)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def message(self, ctx_id: int, command: dict, dataset: bytes | None = None) -> dict:
        """Send a DIMSE message and return the decoded response command."""
        if dataset is None:
            command[dimse.COMMAND_DATA_SET_TYPE] = dimse.NO_DATA_SET
        else:
            command[dimse.COMMAND_DATA_SET_TYPE] = 0x0001
        for p in pdu.encode_p_data(ctx_id, True, dimse.encode_command(command), 16384):
            self.send(p)
        if dataset is not None:
            for p in pdu.encode_p_data(ctx_id, False, dataset, 16384):
                self.send(p)
        kind, body = self.read_pdu()
        assert kind == pdu.P_DATA_TF, f"expected P-DATA-TF, got PDU type {kind}"
        parts = [bytes(data) for _, _, data in pdu.iter_pdvs(memoryview(body))]
        return dimse.decode_command(b"".join(parts))

    def release(self) -> int:
        self.send(bytes((0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0)))
        return self.read_pdu()[0]

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


def _ac_results(body: bytes) -> dict[int, tuple[int, str]]:
    """Presentation context results of an A-ASSOCIATE-AC body: id -> (result, transfer syntax)."""
    out = {}
    for kind, value in pdu._items(body, 68, len(body)):
        if kind == 0x21:
            ts = ""
            for sub_kind, sub in pdu._items(value, 4, len(value)):
                if sub_kind == 0x40:
                    ts = sub.decode().rstrip("\x00")
            out[value[0]] = (value[2], ts)
    return out


def _ctx(cid: int, abstract: str, *syntaxes: str):
    cx = build_context(abstract, list(syntaxes) or [ExplicitVRLittleEndian])
    cx.context_id = cid
    return cx


@pytest.fixture
def listener(tmp_path):
    settings = load_settings(None, dicom={"port": free_port(), "refuse_below_free_bytes": 0, "network_timeout": 2},
                             storage={"root": str(tmp_path / "storage"), "min_free_bytes": 0})
    with running_listener(settings) as (lst, db):
        yield lst, db, settings


def _associated(port: int, *contexts) -> RawClient:
    """A raw client with an accepted association (default: MR storage, explicit VR LE)."""
    c = RawClient(port)
    kind, _ = c.associate(list(contexts) or [_ctx(1, MRImageStorage)])
    assert kind == pdu.A_ASSOCIATE_AC
    return c


def _still_serves(port: int) -> None:
    ae = scu()
    assoc = ae.associate("127.0.0.1", port, ae_title="PGSAM")
    assert assoc.is_established
    status = assoc.send_c_store(mr_instance(generate_uid(), generate_uid(), 0))
    assoc.release()
    assert status.Status == 0x0000


def test_negotiation_accepts_known_contexts_and_answers_each(listener):
    lst, _, _ = listener
    c = RawClient(lst.port)
    kind, body = c.associate([
        _ctx(1, MRImageStorage, "1.2.840.10008.1.2.4.50", ExplicitVRLittleEndian),  # peer's order wins
        _ctx(3, "1.2.3.4.5.6.7.8.9"),                                              # unknown SOP class
        _ctx(5, MRImageStorage, "1.2.3.999"),                                      # unknown syntax only
        _ctx(7, Verification, ImplicitVRLittleEndian),
    ])
    assert kind == pdu.A_ASSOCIATE_AC
    res = _ac_results(body)
    assert res[1] == (pdu.PC_ACCEPTANCE, "1.2.840.10008.1.2.4.50")
    assert res[3][0] == pdu.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED
    assert res[5][0] == pdu.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED
    assert res[7] == (pdu.PC_ACCEPTANCE, ImplicitVRLittleEndian)
    rsp = c.message(7, {dimse.COMMAND_FIELD: dimse.C_ECHO_RQ, dimse.MESSAGE_ID: 9,
                        dimse.AFFECTED_SOP_CLASS_UID: Verification})
    assert rsp[dimse.COMMAND_FIELD] == dimse.C_ECHO_RSP and rsp[dimse.STATUS] == 0
    assert rsp[dimse.MESSAGE_ID_RESPONDED_TO] == 9
    assert c.release() == pdu.A_RELEASE_RP
    c.close()


@pytest.mark.parametrize("kwargs, expect", [
    ({"app_context": "1.2.3.4"}, (1, 1, 2)),   # application context name not supported
    ({"version": 2}, (1, 2, 2)),               # protocol version not supported
])
def test_bad_association_requests_are_rejected_with_reason(listener, kwargs, expect):
    lst, _, _ = listener
    c = RawClient(lst.port)
    kind, body = c.associate([_ctx(1, MRImageStorage)], **kwargs)
    assert kind == pdu.A_ASSOCIATE_RJ
    assert tuple(body[1:4]) == expect
    c.close()
    _still_serves(lst.port)


def test_garbage_and_protocol_violations_abort_only_that_association(listener):
    lst, db, _ = listener
    # Not a PDU at all.
    c = RawClient(lst.port)
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    kind, body = c.read_pdu()
    assert kind in (pdu.A_ABORT, 0)
    c.close()
    # A PDV on a presentation context that was never accepted.
    c = _associated(lst.port)
    for p in pdu.encode_p_data(9, True, dimse.encode_command({dimse.COMMAND_FIELD: dimse.C_ECHO_RQ}), 0):
        c.send(p)
    assert c.read_pdu()[0] == pdu.A_ABORT
    c.close()
    # A P-DATA-TF whose PDV length runs past the PDU.
    c = _associated(lst.port)
    c.send(struct.pack(">BBI", 4, 0, 10) + struct.pack(">IBB", 500, 1, 3) + b"xxxx")
    assert c.read_pdu()[0] == pdu.A_ABORT
    c.close()
    _still_serves(lst.port)


def test_data_set_abandoned_mid_transfer_leaves_nothing(listener):
    lst, db, settings = listener
    c = _associated(lst.port)
    ds = mr_instance(generate_uid(), generate_uid(), 0)
    data = _encode_dataset(ds)
    cmd = {dimse.COMMAND_FIELD: dimse.C_STORE_RQ, dimse.MESSAGE_ID: 1, dimse.AFFECTED_SOP_CLASS_UID: MRImageStorage,
           dimse.AFFECTED_SOP_INSTANCE_UID: ds.SOPInstanceUID, dimse.PRIORITY: 0, dimse.COMMAND_DATA_SET_TYPE: 1}
    for p in pdu.encode_p_data(1, True, dimse.encode_command(cmd), 0):
        c.send(p)
    c.send(pdu.encode_p_data(1, False, data, 4096)[0])  # first fragment only, then vanish
    c.close()
    deadline = time.monotonic() + 10
    while lst.active_associations and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not lst.active_associations
    assert not leftover_tmp(settings.tmp_dir), "temporary file of the abandoned data set was left"
    assert not list(settings.spool_dir.rglob("*.dcm"))
    _still_serves(lst.port)


def test_silent_peer_is_aborted_after_network_timeout(listener):
    lst, _, _ = listener  # dicom.network_timeout = 2 s
    c = _associated(lst.port)
    c.sock.settimeout(15)
    t0 = time.monotonic()
    kind, _ = c.read_pdu()
    assert kind in (pdu.A_ABORT, 0)
    assert 1.5 <= time.monotonic() - t0 < 10
    c.close()
    _still_serves(lst.port)


def test_unsupported_operation_gets_0211_and_association_continues(listener):
    lst, _, _ = listener
    c = _associated(lst.port)
    find = {dimse.COMMAND_FIELD: 0x0020, dimse.MESSAGE_ID: 4, dimse.AFFECTED_SOP_CLASS_UID: MRImageStorage,
            dimse.PRIORITY: 0}
    rsp = c.message(1, find, _encode_dataset(mr_instance(generate_uid(), generate_uid(), 0)))
    assert rsp[dimse.COMMAND_FIELD] == 0x8020 and rsp[dimse.STATUS] == 0x0211
    assert rsp[dimse.ERROR_COMMENT]
    assert c.release() == pdu.A_RELEASE_RP
    c.close()


def test_request_and_data_set_uids_disagree_is_refused(listener):
    """The request names another instance than the data set carries: refused (0xA900, as DCMTK's
    storescp), filed under neither UID; the association continues."""
    lst, db, settings = listener
    c = _associated(lst.port, _ctx(1, MRImageStorage, ImplicitVRLittleEndian))
    ds = mr_instance(generate_uid(), generate_uid(), 0)
    wrong = generate_uid()
    cmd = {dimse.COMMAND_FIELD: dimse.C_STORE_RQ, dimse.MESSAGE_ID: 2, dimse.AFFECTED_SOP_CLASS_UID: MRImageStorage,
           dimse.AFFECTED_SOP_INSTANCE_UID: wrong, dimse.PRIORITY: 0}
    rsp = c.message(1, cmd, _encode_dataset(ds, ImplicitVRLittleEndian))
    assert rsp[dimse.STATUS] == 0xA900
    assert rsp[dimse.AFFECTED_SOP_INSTANCE_UID] == wrong  # the response answers the request
    cmd[dimse.AFFECTED_SOP_INSTANCE_UID] = ds.SOPInstanceUID
    cmd[dimse.MESSAGE_ID] = 3
    assert c.message(1, cmd, _encode_dataset(ds, ImplicitVRLittleEndian))[dimse.STATUS] == 0x0000
    c.release()
    c.close()
    files = list(settings.spool_dir.rglob("*.dcm"))
    assert [f.name for f in files] == [f"{ds.SOPInstanceUID}.dcm"]
    with open(files[0], "rb") as fh:
        h = parse_header(fh)
    assert h.sop_uid == ds.SOPInstanceUID and h.transfer_syntax_uid == ImplicitVRLittleEndian
    assert not leftover_tmp(settings.tmp_dir)


def test_series_after_its_first_instance_uses_the_scan_and_indexes_the_same(listener):
    """Later instances of a series are identified by the byte scan (no pydicom); every row must
    carry what pydicom would have read."""
    from sqlalchemy import select

    from pgsam_node.db.models import Instance

    lst, db, _ = listener
    study, series = generate_uid(), generate_uid()
    datasets = [mr_instance(study, series, i) for i in range(6)]
    ae = scu()
    assoc = ae.associate("127.0.0.1", lst.port, ae_title="PGSAM")
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    with db.session() as s:
        rows = {r.sop_instance_uid: r for r in s.scalars(select(Instance))}
    assert set(rows) == {d.SOPInstanceUID for d in datasets}
    for d in datasets:
        assert rows[d.SOPInstanceUID].instance_number == int(d.InstanceNumber)
        assert rows[d.SOPInstanceUID].sop_class_uid == d.SOPClassUID


def test_more_open_associations_than_database_pool_connections(tmp_path):
    """20 associations open at once (the SQLite engine pools 15 connections): every instance is
    indexed without waiting for a connection that an idle association holds."""
    import threading

    from sqlalchemy import func, select

    from pgsam_node.db.models import Instance

    # All 20 connect at once from one host: the pre-association limit (4 per host by default, a
    # hostile-input guard) is raised too, or the race between connecting threads decides the result.
    settings = load_settings(None, dicom={"port": free_port(), "refuse_below_free_bytes": 0, "max_associations": 24,
                                                   "max_associations_per_host": 24, "max_pending_per_host": 24},
                             storage={"root": str(tmp_path / "storage"), "min_free_bytes": 0})
    study, series = generate_uid(), generate_uid()
    n_assoc, per = 20, 3
    with running_listener(settings) as (lst, db):
        first = scu().associate("127.0.0.1", lst.port, ae_title="PGSAM")
        assert first.send_c_store(mr_instance(study, series, 0)).Status == 0  # study and series exist
        first.release()
        barrier = threading.Barrier(n_assoc)
        statuses: list[int] = []
        lock = threading.Lock()

        def sender(k: int) -> None:
            ae = scu()
            ae.dimse_timeout = 20  # the pool's own timeout is 30 s: a starved index would fail here
            assoc = ae.associate("127.0.0.1", lst.port, ae_title="PGSAM")
            barrier.wait(30)  # all associations open before anyone stores
            for i in range(per):
                st = assoc.send_c_store(mr_instance(study, series, 1 + k * per + i))
                with lock:
                    statuses.append(int(st.Status) if "Status" in st else -1)
            assoc.release()

        threads = [threading.Thread(target=sender, args=(k,)) for k in range(n_assoc)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert statuses == [0] * (n_assoc * per)
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Instance)) == 1 + n_assoc * per
