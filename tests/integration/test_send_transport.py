"""Transport details of delivery against pynetdicom SCPs: TLS, Implicit VR fallback, an SCP that
aborts mid-store, and a DIMSE timeout."""

from __future__ import annotations

import datetime as dt
import subprocess
import threading

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from pgsam_node.config import TlsSettings, load_settings
from pgsam_node.db import open_database
from pgsam_node.db.models import OutboxItem
from pgsam_node.encode import algorithm_info, build_seg
from pgsam_node.deliver.outbox import enqueue, process_due, write_output
from pgsam_node.tls import server_context

from ..dicom_tools import assert_dciodvfy_clean, blob_mask
from ..factories import Geometry, MRSeries
from ..helpers import free_port

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
T0 = dt.datetime(2030, 1, 1)
ALG = algorithm_info("beef" * 16)


class Scp:
    def __init__(self, transfer_syntaxes, on_store=None, ssl_context=None):
        self.port = free_port()
        self.received: list[pydicom.Dataset] = []
        self.release = threading.Event()
        ae = AE(ae_title="STORESCP")
        ae.add_supported_context(SEG, transfer_syntaxes)

        def _store(event):
            if on_store is not None:
                return on_store(self, event)
            ds = event.dataset
            ds.file_meta = event.file_meta
            self.received.append(ds)
            return 0x0000

        self.server = ae.start_server(("127.0.0.1", self.port), block=False, ssl_context=ssl_context,
                                      evt_handlers=[(evt.EVT_C_STORE, _store)])

    def stop(self):
        self.release.set()
        self.server.shutdown()


def _run(tmp_path, scp, tls=None, **send):
    source = MRSeries(n_slices=4, geometry=Geometry(rows=16, columns=16), instance_numbers="shuffled")
    paths = source.write(tmp_path / "mr")
    mask = blob_mask((4, 16, 16))
    settings = load_settings(
        None, storage={"root": str(tmp_path / "node"), "fsync": False},
        dicom={"tls": tls or {}},
        destinations=[{"name": "pacs", "ae_title": "STORESCP", "host": "127.0.0.1", "port": scp.port, "tls": tls is not None}],
        send={"timeout_seconds": 5, **send},
    )
    db = open_database(settings)
    seg = build_seg(mask, paths, None, settings, ALG, 1)
    with db.transaction() as s:
        rel = write_output(settings, seg, seg.StudyInstanceUID)
        assert_dciodvfy_clean(settings.storage_root / rel)
        (item,) = enqueue(s, None, None, rel, seg, ["pacs"], now=T0)
        item_id = item.id
    summary = process_due(db, settings, now=T0)
    with db.session() as s:
        item = s.get(OutboxItem, item_id)
    db.dispose()
    return summary, item, seg


def test_implicit_vr_only_destination(tmp_path):
    scp = Scp([ImplicitVRLittleEndian])
    try:
        summary, item, seg = _run(tmp_path, scp)
        assert summary["sent"] == 1 and item.state == "SENT"
        assert len(scp.received) == 1
        got = scp.received[0]
        assert got.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert got.SOPInstanceUID == seg.SOPInstanceUID
        assert got.PixelData == seg.PixelData
    finally:
        scp.stop()


def test_abort_during_store_is_transient(tmp_path):
    def abort(scp, event):
        event.assoc.abort()
        return 0x0000

    scp = Scp([ExplicitVRLittleEndian], on_store=abort)
    try:
        summary, item, _ = _run(tmp_path, scp)
        assert summary["retry"] == 1
        assert (item.state, item.attempts, item.permanent_failure) == ("PENDING", 1, False)
        assert item.next_attempt_at > T0
    finally:
        scp.stop()


def test_dimse_timeout_is_transient(tmp_path):
    def stall(scp, event):
        scp.release.wait(10)  # holds the response past the node's 1 s DIMSE timeout
        return 0x0000

    scp = Scp([ExplicitVRLittleEndian], on_store=stall)
    try:
        summary, item, _ = _run(tmp_path, scp, timeout_seconds=1)
        assert summary["retry"] == 1 and item.state == "PENDING" and not item.permanent_failure
    finally:
        scp.stop()


@pytest.fixture
def pki(tmp_path):
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl command not installed (needed to make test certificates)")
    d = tmp_path / "pki"
    d.mkdir()

    def ssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=localhost")
    ssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "srv.pem", "-days", "2")
    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.pem", "-days", "2", "-subj", "/CN=other")
    return d


def test_tls_destination(tmp_path, pki):
    ctx = server_context(TlsSettings(enabled=True, cert_file=pki / "srv.pem", key_file=pki / "srv.key"))
    scp = Scp([ExplicitVRLittleEndian], ssl_context=ctx)
    try:
        summary, item, seg = _run(tmp_path, scp, tls={"ca_file": str(pki / "ca.pem")})
        assert summary["sent"] == 1 and item.state == "SENT"
        assert scp.received[0].SOPInstanceUID == seg.SOPInstanceUID
    finally:
        scp.stop()


def test_tls_untrusted_server_is_not_sent(tmp_path, pki):
    ctx = server_context(TlsSettings(enabled=True, cert_file=pki / "srv.pem", key_file=pki / "srv.key"))
    scp = Scp([ExplicitVRLittleEndian], ssl_context=ctx)
    try:
        # the node trusts another CA: the handshake fails, nothing is delivered, the item waits
        summary, item, _ = _run(tmp_path / "x", scp, tls={"ca_file": str(pki / "other.pem")})
        assert summary["sent"] == 0
        # a failed handshake looks like a failed connection: retried with backoff until max_attempts
        assert (item.state, item.attempts, item.permanent_failure) == ("PENDING", 1, False)
        assert scp.received == []
    finally:
        scp.stop()
