"""The acceptor's limits against hostile peers (issue 14): memory and slots before association,
command set size, PDU and message deadlines, per-host limits, the called AE title.

Each test drives the in-process listener over real TCP with a byte-level client, and after each
attack a normal association must still store an instance.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time

import pytest
from pydicom.uid import generate_uid
from pynetdicom.sop_class import MRImageStorage

from pgsam_node.config import load_settings
from pgsam_node.ingest.dicomnet import dimse, pdu
from tests.helpers import free_port, wait_for

from .ingest_fixtures import running_listener
from .test_acceptor import RawClient, _associated, _ctx, _still_serves


def _rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _settings(tmp_path, **dicom):
    base = {"port": free_port(), "refuse_below_free_bytes": 0, "network_timeout": 5}
    base.update(dicom)
    return load_settings(None, dicom=base, storage={"root": str(tmp_path / "storage"), "min_free_bytes": 0})


def _closed_within(sock: socket.socket, seconds: float) -> bytes:
    """Read until the peer closes; what it sent (an A-ABORT or nothing). Fails after ``seconds``."""
    sock.settimeout(seconds)
    got = b""
    try:
        while chunk := sock.recv(4096):
            got += chunk
    except TimeoutError:
        raise AssertionError(f"connection still open after {seconds} s") from None
    except ConnectionResetError:
        pass
    return got


def test_declared_pdu_lengths_cost_no_memory_before_association(tmp_path):
    """Hundreds of connections each declaring a 250 KB first PDU and sending 6 bytes: the buffers
    grow only as bytes arrive and only dicom.max_pending_connections get a thread at all."""
    settings = _settings(tmp_path, max_pending_connections=32, max_pending_per_host=400,
                         associate_rq_deadline=30)
    with running_listener(settings) as (lst, _db):
        before = _rss_bytes()
        socks = []
        try:
            for _ in range(400):
                s = socket.create_connection(("127.0.0.1", lst.port), timeout=10)
                s.sendall(struct.pack(">BBI", 1, 0, 250_000))  # under dicom.max_associate_rq_bytes
                socks.append(s)
            wait_for(lambda: lst._server.refused_connections >= 400 - 32, what="connections past the limit closed")
            assert lst._server.pending_connections <= 32
            grew = _rss_bytes() - before
            # Old code: the declared 250 KB + a 256 KiB buffer per connection (~190 MB here).
            assert grew < 40 * 1024 * 1024, f"RSS grew by {grew / 2**20:.0f} MiB"
        finally:
            for s in socks:
                s.close()
        wait_for(lambda: lst._server.pending_connections == 0, what="pending connections gone")
        _still_serves(lst.port)


def test_unassociated_connections_count_against_the_per_host_limit(tmp_path):
    settings = _settings(tmp_path, max_pending_per_host=3, associate_rq_deadline=30)
    with running_listener(settings) as (lst, _db):
        idle = [socket.create_connection(("127.0.0.1", lst.port), timeout=10) for _ in range(3)]
        try:
            wait_for(lambda: lst._server.pending_connections == 3, what="three pending")
            extra = socket.create_connection(("127.0.0.1", lst.port), timeout=10)
            assert _closed_within(extra, 5) == b""  # closed at accept: no thread, no buffer
            extra.close()
            assert lst._server.refused_connections >= 1
        finally:
            for s in idle:
                s.close()
        wait_for(lambda: lst._server.pending_connections == 0, what="pending connections gone")
        _still_serves(lst.port)


def test_dripping_associate_request_hits_its_total_deadline(tmp_path):
    """One byte every 0.3 s never trips the 5 s idle timeout, but the A-ASSOCIATE-RQ deadline ends it."""
    settings = _settings(tmp_path, associate_rq_deadline=1.5)
    with running_listener(settings) as (lst, _db):
        s = socket.create_connection(("127.0.0.1", lst.port), timeout=10)
        t0 = time.monotonic()
        header = struct.pack(">BBI", 1, 0, 200) + b"\x00" * 200
        closed = False
        for b in header:
            try:
                s.sendall(bytes((b,)))
            except OSError:
                closed = True
                break
            s.settimeout(0.3)
            try:
                s.recv(4096)  # an A-ABORT or end of file: either way the node ended it
                closed = True
                break
            except TimeoutError:
                pass
            except OSError:
                closed = True
                break
            if time.monotonic() - t0 > 8:
                break
        assert closed, "dripping peer was never cut off"
        assert time.monotonic() - t0 < 6
        s.close()
        _still_serves(lst.port)


def test_dripping_pdu_hits_the_pdu_deadline(tmp_path):
    settings = _settings(tmp_path, pdu_deadline=1.5, network_timeout=5)
    with running_listener(settings) as (lst, _db):
        c = _associated(lst.port)
        c.send(struct.pack(">BBI", 4, 0, 400))
        t0 = time.monotonic()
        c.sock.settimeout(0.3)
        got = b""
        while time.monotonic() - t0 < 8:
            try:
                c.send(b"\x00")
                chunk = c.sock.recv(4096)
                got += chunk
                if not chunk or got[:1] == bytes((pdu.A_ABORT,)):
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        assert time.monotonic() - t0 < 6, "a PDU dripped byte by byte was never aborted"
        assert got[:1] in (bytes((pdu.A_ABORT,)), b"")
        c.close()
        _still_serves(lst.port)


def _command_fragment(ctx: int, payload: bytes, last: bool) -> bytes:
    pdv = struct.pack(">IBB", len(payload) + 2, ctx, 0x01 | (0x02 if last else 0)) + payload
    return struct.pack(">BBI", pdu.P_DATA_TF, 0, len(pdv)) + pdv


def test_command_fragments_past_the_cap_abort(tmp_path):
    settings = _settings(tmp_path, max_command_bytes=4096)
    with running_listener(settings) as (lst, _db):
        c = _associated(lst.port)
        got = b""
        try:
            for _ in range(200):  # 200 x 1 KiB without the last-fragment bit
                c.send(_command_fragment(1, b"\x00" * 1024, last=False))
        except OSError:
            pass
        got = _closed_within(c.sock, 5)
        assert got[:1] == bytes((pdu.A_ABORT,))
        c.close()
        _still_serves(lst.port)


def test_small_pdus_forever_hit_the_message_deadline(tmp_path):
    """Complete PDUs that never complete a message: the message deadline ends the association."""
    settings = _settings(tmp_path, message_deadline=1.5, network_timeout=5)
    with running_listener(settings) as (lst, _db):
        c = _associated(lst.port)
        t0 = time.monotonic()
        c.sock.settimeout(0.3)
        got = b""
        while time.monotonic() - t0 < 8:
            try:
                c.send(_command_fragment(1, b"\x00\x00", last=False))
                got += c.sock.recv(4096)
                break
            except TimeoutError:
                continue
            except OSError:
                break
        assert time.monotonic() - t0 < 6
        assert got[:1] in (bytes((pdu.A_ABORT,)), b"")
        c.close()
        _still_serves(lst.port)


def test_associations_per_calling_host_are_limited(tmp_path):
    settings = _settings(tmp_path, max_associations=8, max_associations_per_host=2)
    with running_listener(settings) as (lst, _db):
        held = [_associated(lst.port), _associated(lst.port)]
        try:
            c = RawClient(lst.port)
            kind, body = c.associate([_ctx(1, MRImageStorage)])
            assert kind == pdu.A_ASSOCIATE_RJ
            assert tuple(body[1:4]) == (2, 3, 2)  # transient, presentation, local limit exceeded
            c.close()
        finally:
            for h in held:
                h.release()
                h.close()
        wait_for(lambda: not lst.active_associations, what="associations ended")
        _still_serves(lst.port)


def test_called_ae_title_must_be_ours(tmp_path):
    settings = _settings(tmp_path)
    with running_listener(settings) as (lst, _db):
        c = RawClient(lst.port)
        kind, body = c.associate([_ctx(1, MRImageStorage)], called="WRONGAE")
        assert kind == pdu.A_ASSOCIATE_RJ
        assert tuple(body[1:4]) == (1, 1, 7)  # permanent, service user, called AE not recognised
        c.close()
        if shutil.which("/usr/bin/echoscu"):
            bad = subprocess.run(["/usr/bin/echoscu", "-aec", "WRONGAE", "127.0.0.1", str(lst.port)],
                                 capture_output=True, text=True, timeout=60)
            assert bad.returncode != 0
            assert "Called AE Title Not Recognized" in bad.stdout + bad.stderr
            good = subprocess.run(["/usr/bin/echoscu", "-aec", "PGSAM", "127.0.0.1", str(lst.port)],
                                  capture_output=True, text=True, timeout=60)
            assert good.returncode == 0, good.stderr
        _still_serves(lst.port)


def test_called_ae_check_can_be_turned_off(tmp_path):
    settings = _settings(tmp_path, require_called_aet=False)
    with running_listener(settings) as (lst, _db):
        c = RawClient(lst.port)
        kind, _ = c.associate([_ctx(1, MRImageStorage)], called="ANY-SCP")
        assert kind == pdu.A_ASSOCIATE_AC
        c.release()
        c.close()


@pytest.mark.parametrize("tag", [dimse.COMMAND_FIELD, dimse.MESSAGE_ID])
def test_wrong_length_command_field_or_message_id_aborts(tmp_path, tag):
    settings = _settings(tmp_path)
    with running_listener(settings) as (lst, _db):
        c = _associated(lst.port)
        els = {dimse.COMMAND_FIELD: dimse.C_ECHO_RQ, dimse.MESSAGE_ID: 1, dimse.COMMAND_DATA_SET_TYPE: dimse.NO_DATA_SET}
        raw = bytearray(dimse.encode_command(els))
        # Re-encode the chosen US element with 4 bytes instead of 2.
        out, pos = b"", 0
        while pos < len(raw):
            g, e, n = struct.unpack_from("<HHI", raw, pos)
            value = bytes(raw[pos + 8:pos + 8 + n])
            if (g << 16 | e) == tag:
                value += b"\x00\x00"
            out += struct.pack("<HHI", g, e, len(value)) + value
            pos += 8 + n
        c.send(_command_fragment(1, out, last=True))
        assert _closed_within(c.sock, 5)[:1] == bytes((pdu.A_ABORT,))
        c.close()
        _still_serves(lst.port)


def test_clean_storescu_after_the_attacks(tmp_path):
    """DCMTK's storescu is served normally by a listener with every limit at its default."""
    if not shutil.which("/usr/bin/storescu"):
        pytest.skip("DCMTK storescu not installed")
    from tests.factories import mr_instance

    settings = _settings(tmp_path)
    ds = mr_instance(generate_uid(), generate_uid(), 1)
    path = tmp_path / "one.dcm"
    ds.save_as(path, enforce_file_format=True)
    with running_listener(settings) as (lst, _db):
        r = subprocess.run(["/usr/bin/storescu", "-aec", "PGSAM", "127.0.0.1", str(lst.port), str(path)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert len(list(settings.spool_dir.rglob("*.dcm"))) == 1
