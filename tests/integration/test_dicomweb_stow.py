"""DICOMweb destinations (``type: dicomweb``) against a real Orthanc with Debian's
orthanc-dicomweb plugin: STOW-RS through the outbox, a partial failure (FailedSOPSequence),
idempotent resend, HTTPS with CA pinning plus basic or mutual-TLS authentication, and the
transient / permanent split on a plain HTTP server that answers 503 or 401."""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import ssl
import threading
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from pgsam_node.config import Destination
from pgsam_node.db import open_database
from pgsam_node.db.models import OutboxItem
from pgsam_node.deliver.outbox import enqueue, process_due, requeue, write_output
from pgsam_node.deliver.stow import capability_check, send_stow
from pgsam_node.errors import SendError

from ..helpers import free_port
from ..factories import MRSeries, mr_instance
from ..opsdata import make_seg
from ..orthanc import OrthancServer
from ..pki import make_pki

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB = {"Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
T0 = dt.datetime(2030, 1, 1)

pytestmark = pytest.mark.orthanc


@pytest.fixture
def need_plugin():
    if not PLUGIN.exists():
        pytest.skip("Debian package orthanc-dicomweb not installed (deploy/install-system-deps.sh)")


def _study():
    st = generate_uid()
    mr = MRSeries(study_uid=st, n_slices=3).datasets()
    seg, _ = make_seg(mr, [36, 64, 16])
    return mr, seg


def _with_dest(settings, dest: Destination):
    return settings.model_copy(update={"destinations": [dest]})


def _queue(settings, db, datasets, dest_name):
    with db.transaction() as s:
        for ds in datasets:
            rel = write_output(settings, ds, str(ds.StudyInstanceUID))
            enqueue(s, None, None, rel, ds, [dest_name], now=T0)


def _items(db) -> dict[str, OutboxItem]:
    with db.session() as s:
        return {it.sop_instance_uid: it for it in s.scalars(select(OutboxItem)).all()}


def test_outbox_stow_partial_failure_and_idempotent_resend(settings, tmp_path, need_plugin):
    with OrthancServer(tmp_path / "orthanc", extra=DICOMWEB) as orthanc:
        dest = Destination(name="web", type="dicomweb", url=orthanc.url + "/dicom-web")
        settings = _with_dest(settings, dest)
        db = open_database(settings)
        mr, seg = _study()
        broken = mr_instance(str(seg.StudyInstanceUID))
        del broken.SeriesInstanceUID  # Orthanc refuses it: FailureReason 0xC000 in FailedSOPSequence
        _queue(settings, db, [seg, broken], "web")

        summary = process_due(db, settings, now=T0)
        items = _items(db)
        assert summary == {"claimed": 2, "sent": 1, "retry": 0, "dead": 1}
        ok, bad = items[str(seg.SOPInstanceUID)], items[str(broken.SOPInstanceUID)]
        assert ok.state == "SENT"
        assert bad.state == "DEAD" and bad.permanent_failure
        assert "FailedSOPSequence" in bad.last_error and "0xC000" in bad.last_error
        assert len(orthanc.find_instance(str(seg.SOPInstanceUID))) == 1
        assert orthanc.find_instance(str(broken.SOPInstanceUID)) == []
        # The stored SEG is the one we sent, read back over WADO-RS metadata.
        meta = orthanc.get(f"/dicom-web/studies/{seg.StudyInstanceUID}/series/{seg.SeriesInstanceUID}/metadata")
        assert meta[0]["00080016"]["Value"] == ["1.2.840.10008.5.1.4.1.1.66.4"]

        with db.transaction() as s:
            assert len(requeue(s, item_id=ok.id)) == 1
        assert process_due(db, settings, now=T0 + dt.timedelta(seconds=1))["sent"] == 1
        assert len(orthanc.find_instance(str(seg.SOPInstanceUID))) == 1  # replaced, not duplicated
        assert "answered HTTP 200" in capability_check(settings, dest)


def test_stow_down_destination_is_retried(settings):
    dest = Destination(name="down", type="dicomweb", url=f"http://127.0.0.1:{free_port()}/dicom-web")
    settings = _with_dest(settings, dest)
    db = open_database(settings)
    _, seg = _study()
    _queue(settings, db, [seg], "down")
    assert process_due(db, settings, now=T0)["retry"] == 1
    it = _items(db)[str(seg.SOPInstanceUID)]
    assert it.state == "PENDING" and it.attempts == 1 and it.next_attempt_at > T0
    assert "connection failed or timed out" in it.last_error


class _Canned(http.server.BaseHTTPRequestHandler):
    """Answers every POST with ``status``; 401 unless the bearer token matches."""

    status = 503
    token = "s3cret-token"
    seen: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server API
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append(self.headers.get("Content-Type", ""))
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            code, body = 401, b'{"error": "invalid bearer token"}'
        else:
            code, body = self.status, b"busy, try later"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def canned():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()


def test_stow_5xx_is_transient_and_4xx_permanent_with_message(settings, tmp_path, canned):
    url = f"http://127.0.0.1:{canned.server_address[1]}/dicom-web"
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    _, seg = _study()
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    good = Destination(name="busy", type="dicomweb", url=url, auth="bearer", token_file=token)
    with pytest.raises(SendError) as exc:
        send_stow(settings, good, [path])
    assert not exc.value.permanent and "HTTP 503" in str(exc.value) and "busy, try later" in str(exc.value)
    assert _Canned.seen[-1].startswith("multipart/related") and 'type="application/dicom"' in _Canned.seen[-1]
    token.write_text("wrong")
    with pytest.raises(SendError) as exc:
        send_stow(settings, good, [path])
    assert exc.value.permanent and "HTTP 401" in str(exc.value) and "invalid bearer token" in str(exc.value)
    assert "wrong" not in str(exc.value)


class _TlsFront(http.server.BaseHTTPRequestHandler):
    """HTTPS front for Orthanc (Debian's Orthanc 1.10 crashes with SIGSEGV on its first HTTPS
    connection here, measured): TLS terminated by Python's ssl with client certificates required,
    basic auth checked, requests forwarded unchanged to Orthanc's plain HTTP port."""

    upstream = ""
    basic = "Basic " + base64.b64encode(b"node:pw-for-test").decode()

    def _forward(self, method: str) -> None:
        if self.headers.get("Authorization") != self.basic:
            body = b'{"Message": "bad credentials"}'
            self.send_response(401)
        else:
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else None
            if method == "POST" and data == b"" and self.headers.get("Transfer-Encoding") == "chunked":
                data = _read_chunked(self.rfile)
            r = httpx.request(method, self.upstream + self.path, content=data, timeout=30,
                              headers={k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")})
            body = r.content
            self.send_response(r.status_code)
            if r.headers.get("content-type"):
                self.send_header("Content-Type", r.headers["content-type"])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        self._forward("GET")

    def do_POST(self):  # noqa: N802
        self._forward("POST")

    def log_message(self, *args):
        pass


def _read_chunked(rfile) -> bytes:
    out = b""
    while True:
        size = int(rfile.readline().strip(), 16)
        if size == 0:
            rfile.readline()
            return out
        out += rfile.read(size)
        rfile.readline()


def test_stow_https_ca_pinning_basic_and_mutual_tls(settings, tmp_path, need_plugin):
    pki = make_pki(tmp_path)
    _, seg = _study()
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    (tmp_path / "pw").write_text("pw-for-test")
    (tmp_path / "bad-pw").write_text("nope")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    with OrthancServer(tmp_path / "orthanc", extra=DICOMWEB) as orthanc:
        _TlsFront.upstream = orthanc.url
        front = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TlsFront)
        front.socket = ctx.wrap_socket(front.socket, server_side=True)
        t = threading.Thread(target=front.serve_forever, daemon=True)
        t.start()
        try:
            url = f"https://127.0.0.1:{front.server_address[1]}/dicom-web"
            dest = Destination(name="tls", type="dicomweb", url=url, ca_file=pki / "ca.pem",
                               auth="basic", username="node", password_file=tmp_path / "pw",
                               client_cert_file=pki / "client.pem", client_key_file=pki / "client.key")
            assert [o.ok for o in send_stow(settings, dest, [path])] == [True]
            assert len(orthanc.find_instance(str(seg.SOPInstanceUID))) == 1
            assert "answered HTTP 200" in capability_check(settings, dest)
            # Wrong password: 401, permanent, the password never in the error.
            with pytest.raises(SendError) as exc:
                send_stow(settings, dest.model_copy(update={"password_file": tmp_path / "bad-pw"}), [path])
            assert exc.value.permanent and "HTTP 401" in str(exc.value) and "bad credentials" in str(exc.value)
            # Pinned to a CA that did not sign the server certificate: TLS fails, retried later.
            with pytest.raises(SendError, match="TLS failed") as exc:
                send_stow(settings, dest.model_copy(update={"ca_file": pki / "rogue.pem"}), [path])
            assert not exc.value.permanent
            # No client certificate while the server requires one: the handshake is refused.
            with pytest.raises(SendError):
                send_stow(settings, dest.model_copy(update={"client_cert_file": None, "client_key_file": None}), [path])
        finally:
            front.shutdown()
            front.server_close()
