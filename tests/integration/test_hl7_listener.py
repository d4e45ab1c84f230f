"""HL7 MLLP listener over real TCP connections on localhost."""

from __future__ import annotations

import socket

import pytest

from pgsam_node.db import Database, Report
from pgsam_node.reports.hl7 import FS, CR, VT, Hl7Listener, mllp_frame, read_frame
from pgsam_node.reports.ris import StudyKey, find_report

from ..helpers import free_port, wait_for
from ..hl7_messages import adt, oru, segments


@pytest.fixture
def listener(settings):
    settings.hl7.port = free_port()
    db = Database(settings.database_url)
    seen = []
    lst = Hl7Listener(settings, db, on_report=seen.append).start()
    lst.seen = seen
    yield lst
    lst.stop()
    db.dispose()


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def _reports(db: Database) -> list[tuple[int, str]]:
    with db.session() as s:
        return [(r.version, r.status) for r in s.query(Report).order_by(Report.id)]


def test_valid_oru_is_acknowledged_and_stored(listener, settings):
    with _connect(listener.port) as s:
        s.sendall(mllp_frame(oru(control="M1")))
        ack = segments(read_frame(s))
    assert ack["MSA"][1:3] == ["AA", "M1"]
    assert _reports(listener.db) == [(1, "F")]
    # The stored report is what find_report returns for the study.
    m = find_report(StudyKey("ACC1001", None, "PAT123", "20261120"), settings.ris, listener.db)
    assert m is not None and m.matched_by == "accession_number" and "pleomorphic adenoma" in m.text
    assert len(listener.seen) == 1


def test_malformed_gets_ae_and_wrong_type_ar(listener):
    with _connect(listener.port) as s:
        s.sendall(mllp_frame("this is not HL7"))
        assert segments(read_frame(s))["MSA"][1] == "AE"
        s.sendall(mllp_frame(adt(control="A1")))
        ack = segments(read_frame(s))
        assert ack["MSA"][1:3] == ["AR", "A1"]
        assert ack["ERR"][3].startswith("200^")
        s.sendall(mllp_frame(oru(control="M2", patient_id="")))
        ack = segments(read_frame(s))
        assert ack["MSA"][1:3] == ["AE", "M2"] and ack["ERR"][2] == "PID^1^3"
    assert _reports(listener.db) == []


def test_message_split_across_packets(listener):
    data = mllp_frame(oru(control="SPLIT", lines=("右侧腮腺浅叶见一结节，大小约2.3cm×1.8cm。", "考虑多形性腺瘤。")))
    # Cut inside a multi-byte UTF-8 character and between FS and CR, and send with pauses: the
    # listener must not answer before the frame is complete.
    cuts = [0, 1, 7, len(data) // 2 + 1, len(data) - 1, len(data)]
    with _connect(listener.port) as s:
        s.settimeout(0.3)
        for a, b in zip(cuts, cuts[1:]):
            s.sendall(data[a:b])
            if b < len(data):
                # Nothing may come back yet: poll for up to 0.3 s (recv timeout), expect silence.
                with pytest.raises(TimeoutError):
                    s.recv(1)
        ack = segments(read_frame(s))
    assert ack["MSA"][1:3] == ["AA", "SPLIT"]
    with listener.db.session() as sess:
        assert sess.query(Report).one().report_text.startswith("右侧腮腺浅叶")


def test_two_messages_on_one_connection_and_amendment(listener, settings):
    first = mllp_frame(oru(control="V1"))
    corrected = mllp_frame(oru(control="V2", status="C", lines=("Left parotid 2.5 cm mass.", "IMPRESSION: Warthin tumour.")))
    with _connect(listener.port) as s:
        s.sendall(b"\r\n" + first + corrected)  # noise before the first frame is ignored
        a1 = segments(read_frame(s))
        a2 = segments(read_frame(s))
    assert (a1["MSA"][2], a2["MSA"][2]) == ("V1", "V2")
    assert a1["MSA"][1] == a2["MSA"][1] == "AA"
    assert _reports(listener.db) == [(1, "F"), (2, "C")]
    m = find_report(StudyKey("ACC1001", None, "PAT123", "20261120"), settings.ris, listener.db)
    assert m.version == 2 and m.status == "C" and "Warthin" in m.text


def test_oversized_frame_is_rejected_and_closed(settings):
    settings.hl7.port = free_port()
    settings.hl7.max_message_bytes = 2048
    db = Database(settings.database_url)
    with Hl7Listener(settings, db) as lst, _connect(lst.port) as s:
        s.sendall(VT + b"MSH|" + b"x" * 5000)
        ack = segments(read_frame(s))
        assert ack["MSA"][1] == "AR"
        s.settimeout(5)
        assert wait_for(lambda: s.recv(1) == b"", 5, what="listener closes the connection")
    db.dispose()


def test_idle_timeout_and_stop(settings):
    settings.hl7.port = free_port()
    settings.hl7.timeout_seconds = 0.5
    db = Database(settings.database_url)
    lst = Hl7Listener(settings, db).start()
    with _connect(lst.port) as s:
        s.settimeout(5)
        assert s.recv(1) == b""  # closed by the listener after 0.5 s of silence
    port = lst.port
    lst.stop()
    with socket.socket() as probe:
        probe.settimeout(1)
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    db.dispose()


def test_binds_only_configured_address(settings):
    settings.hl7.port = free_port()
    settings.hl7.bind = "127.0.0.1"
    db = Database(settings.database_url)
    with Hl7Listener(settings, db) as lst:
        assert lst.address[0] == "127.0.0.1"
        # Another local address of this host (127.0.0.2 is loopback on Linux but not bound here).
        with socket.socket() as probe:
            probe.settimeout(1)
            assert probe.connect_ex(("127.0.0.2", lst.port)) != 0
    db.dispose()


def test_stop_closes_open_connections(settings):
    settings.hl7.port = free_port()
    db = Database(settings.database_url)
    lst = Hl7Listener(settings, db).start()
    s = _connect(lst.port)
    s.sendall(mllp_frame(oru(control="S1")))
    assert segments(read_frame(s))["MSA"][1] == "AA"
    lst.stop()
    s.settimeout(5)
    assert s.recv(1) == b""  # the listener closed the idle connection on stop
    s.close()
    db.dispose()


def test_connection_limit(settings):
    settings.hl7.port = free_port()
    settings.hl7.max_connections = 1
    db = Database(settings.database_url)
    with Hl7Listener(settings, db) as lst, _connect(lst.port) as first:
        first.sendall(mllp_frame(oru(control="L1")))
        assert segments(read_frame(first))["MSA"][1] == "AA"  # the first connection is being served
        with _connect(lst.port) as second:
            second.settimeout(5)
            assert second.recv(1) == b""  # over the limit: closed at once
        first.sendall(mllp_frame(oru(control="L2")))
        assert segments(read_frame(first))["MSA"][2] == "L2"
    db.dispose()


def test_host_outside_the_allow_list_is_closed_unread(settings):
    settings.hl7.port = free_port()
    settings.hl7.allowed_hosts = ["10.0.0.0/8"]  # loopback not allowed
    db = Database(settings.database_url)
    try:
        with Hl7Listener(settings, db) as lst, _connect(lst.port) as s:
            try:
                s.sendall(mllp_frame(oru(control="H1")))
            except OSError:
                pass  # the listener may have closed already
            s.settimeout(10)
            try:
                got = s.recv(100)
            except ConnectionResetError:
                got = b""
            assert got == b""  # closed, no ACK
        assert _reports(db) == []
    finally:
        db.dispose()


def test_dripping_peers_do_not_block_a_valid_sender(settings):
    """Slow-drip connections are cut by the progress deadline and capped per host."""
    import time

    settings.hl7.port = free_port()
    settings.hl7.max_connections = 4
    settings.hl7.max_connections_per_host = 3
    settings.hl7.message_deadline_seconds = 1.0
    settings.hl7.timeout_seconds = 60
    db = Database(settings.database_url)
    drips: list[socket.socket] = []
    try:
        with Hl7Listener(settings, db) as lst:
            for _ in range(5):  # more than the per-host cap: the extra ones are closed at once
                d = _connect(lst.port)
                d.sendall(VT + b"MSH|^~\\&|")
                drips.append(d)
            # keep dripping: one byte each, well inside the idle timeout
            closed = set()
            end = time.monotonic() + 15
            while len(closed) < len(drips) and time.monotonic() < end:
                for i, d in enumerate(drips):
                    if i in closed:
                        continue
                    try:
                        d.sendall(b"X")
                        d.settimeout(0.05)
                        if d.recv(1) == b"":
                            closed.add(i)
                    except TimeoutError:
                        pass
                    except OSError:
                        closed.add(i)
                time.sleep(0.1)  # drip pacing (the test's own slow peer), not a wait for the listener
            assert len(closed) == len(drips), "dripping connections were not closed by the progress deadline"
            with _connect(lst.port) as s:
                s.sendall(mllp_frame(oru(control="V1")))
                assert segments(read_frame(s))["MSA"][1:3] == ["AA", "V1"]
        assert _reports(db) == [(1, "F")]
    finally:
        for d in drips:
            d.close()
        db.dispose()


def _read_tls_frame(s) -> bytes:
    """One MLLP frame from a TLS socket (read_frame peeks, which TLS sockets cannot)."""
    buf = b""
    while FS + CR not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("closed before a complete frame")
        buf += chunk
    return buf[buf.index(VT) + 1 : buf.index(FS + CR)]


def test_mllp_over_tls(settings, tmp_path):
    import ssl

    from pgsam_node.config import TlsSettings
    from pgsam_node.tls import client_context

    from ..pki import make_pki

    pki = make_pki(tmp_path)
    settings.hl7.port = free_port()
    settings.hl7.tls = TlsSettings(enabled=True, cert_file=pki / "server.pem", key_file=pki / "server.key",
                                   ca_file=pki / "ca.pem", require_client_cert=True)
    db = Database(settings.database_url)
    try:
        with Hl7Listener(settings, db) as lst:
            good = TlsSettings(cert_file=pki / "client.pem", key_file=pki / "client.key", ca_file=pki / "ca.pem")
            with _connect(lst.port) as raw, client_context(good).wrap_socket(raw) as s:
                s.sendall(mllp_frame(oru(control="T1")))
                assert segments(_read_tls_frame(s))["MSA"][1:3] == ["AA", "T1"]
            # plain MLLP on a TLS port: no ACK, nothing stored
            with _connect(lst.port) as s:
                s.sendall(mllp_frame(oru(control="T2", accession="ACC2", filler="FL2")))
                s.settimeout(10)
                try:
                    got = s.recv(100)
                except (ConnectionResetError, TimeoutError):
                    got = b""
                assert b"MSA" not in got
            # a client without a certificate is refused
            nocert = TlsSettings(ca_file=pki / "ca.pem")
            with pytest.raises((ssl.SSLError, OSError)):
                with _connect(lst.port) as raw, client_context(nocert).wrap_socket(raw) as s:
                    s.sendall(mllp_frame(oru(control="T3", accession="ACC3", filler="FL3")))
                    _read_tls_frame(s)
        assert _reports(db) == [(1, "F")]
    finally:
        db.dispose()
