"""HL7 v2 parsing, escapes and ACK construction (no sockets)."""

from __future__ import annotations

import pytest

from pgsam_node.reports.hl7 import Hl7Reject, Message, build_ack, decode_bytes, handle_message, parse_oru
from pgsam_node.db import Database, Report

from ..hl7_messages import adt, oru, segments

FIELDS = ["OBR-18", "OBR-3"]


def test_oru_mapping():
    rep = parse_oru(Message(oru()), FIELDS).incoming
    assert rep.patient_id == "PAT123"
    assert rep.accession_number == "ACC1001"
    assert rep.order_number == "FL1001"
    assert rep.status == "F"
    assert rep.study_instance_uid == "1.2.826.0.1.3680043.8.498.1"
    assert rep.study_date == "20261120"
    assert rep.report_time.isoformat() == "2026-11-20T10:10:00"
    assert rep.report_text.splitlines() == [
        "Left parotid: 2.3 x 1.8 cm well-defined mass in the superficial lobe.",
        "IMPRESSION: pleomorphic adenoma.",
    ]


def test_accession_falls_back_to_filler_order_and_config_order():
    rep = parse_oru(Message(oru(accession="")), FIELDS).incoming
    assert rep.accession_number == "FL1001"  # OBR-18 empty → OBR-3
    rep = parse_oru(Message(oru()), ["OBR-2"]).incoming
    assert rep.accession_number == "PL1001"


def test_study_uid_from_zds():
    rep = parse_oru(Message(oru(study_uid="1.2.3.44", study_uid_in_zds=True)), FIELDS).incoming
    assert rep.study_instance_uid == "1.2.3.44"


def test_escape_sequences_decoded():
    line = r"Size 2.3 x 1.8 cm \T\ margins: well\F\defined\S\smooth\R\x \E\ ok\.br\Second line \X41\ " + "\\H\\end"
    rep = parse_oru(Message(oru(lines=(line, "右侧腮腺未见异常。"))), FIELDS).incoming
    assert rep.report_text == "Size 2.3 x 1.8 cm & margins: well|defined^smooth~x \\ ok\nSecond line A end\n右侧腮腺未见异常。"


def test_repetitions_in_obx5_are_lines():
    msg = oru(lines=("first~second~third",))
    assert parse_oru(Message(msg), FIELDS).incoming.report_text == "first\nsecond\nthird"


def test_status_from_obx11_when_obr25_empty():
    msg = oru(status="P").replace("20261120101000|||P", "20261120101000|||")
    assert parse_oru(Message(msg), FIELDS).incoming.status == "P"


@pytest.mark.parametrize(
    "msg,code,location",
    [
        (adt(), "AR", "MSH-9"),
        (oru(patient_id=""), "AE", "PID-3"),
        (oru(lines=()), "AE", "OBX-5"),
        (oru(control=""), "AE", "MSH-10"),
        (oru(status=""), "AE", "OBR-25"),
        (oru(accession="", placer="", filler="", study_uid=None), "AE", "OBR-3"),
        (oru(study_uid="1.2.abc"), "AE", "OBX-5"),
        ("PID|1||X\rOBR|1\r", "AE", "MSH"),
    ],
)
def test_rejections(msg, code, location):
    with pytest.raises(Hl7Reject) as ei:
        parse_oru(Message(msg), FIELDS)
    assert ei.value.code == code
    assert ei.value.location == location


def test_charsets():
    text = oru(lines=("左侧腮腺浅叶结节，约2.3cm。",), charset="GB 18030-2000")
    rep = parse_oru(Message(decode_bytes(text.encode("gb18030"))), FIELDS).incoming
    assert rep.report_text == "左侧腮腺浅叶结节，约2.3cm。"
    latin = oru(lines=("Läsion",), charset="8859/1")
    assert parse_oru(Message(decode_bytes(latin.encode("latin-1"))), FIELDS).incoming.report_text == "Läsion"
    with pytest.raises(Hl7Reject, match="character set"):
        decode_bytes(oru(charset="EBCDIC").encode())


def test_ack_fields_and_escaping():
    msg = Message(oru(control="C42"))
    ack = segments(build_ack(msg, "AA", "PGSAM"))
    assert ack["MSH"][9] == "ACK^R01^ACK"
    assert ack["MSH"][5] == "RIS" and ack["MSH"][3] == "PGSAM"
    assert ack["MSA"][1:3] == ["AA", "C42"]
    assert "ERR" not in ack
    nak = segments(build_ack(msg, "AE", "PGSAM", "bad | field ^ here", "101^Required field missing", "PID-3"))
    assert nak["MSA"][1] == "AE"
    assert nak["MSA"][3] == r"bad \F\ field \S\ here"
    assert nak["ERR"][2] == "PID^1^3"
    assert nak["ERR"][3] == "101^Required field missing^HL70357"
    assert nak["ERR"][4] == "E"


def test_handle_message_stores_and_versions(settings, caplog):
    db = Database(settings.database_url)
    caplog.set_level("DEBUG")
    try:
        assert segments(handle_message(oru(control="1").encode(), settings.hl7, db))["MSA"][1] == "AA"
        # The same message again: a duplicate, still AA, no new row.
        assert segments(handle_message(oru(control="2").encode(), settings.hl7, db))["MSA"][1] == "AA"
        corrected = oru(control="3", status="C", lines=("Left parotid: 2.5 cm mass.", "IMPRESSION: Warthin tumour."))
        assert segments(handle_message(corrected.encode(), settings.hl7, db))["MSA"][1] == "AA"
        with db.session() as s:
            rows = s.query(Report).order_by(Report.version).all()
            assert [(r.version, r.status, r.source) for r in rows] == [(1, "F", "hl7"), (2, "C", "hl7")]
            assert rows[1].source_key == "acc:ACC1001"
        ack = segments(handle_message(b"garbage without MSH", settings.hl7, db))
        assert ack["MSA"][1] == "AE"
    finally:
        db.dispose()
    # Neither report text nor the patient ID reaches the log.
    assert "pleomorphic" not in caplog.text and "Warthin" not in caplog.text and "PAT123" not in caplog.text


def test_two_orders_in_one_message_are_two_reports():
    one = oru(control="M", accession="ACC1", placer="PL1", filler="FL1", lines=("Left parotid mass.",), study_uid="1.2.3.1")
    two = oru(accession="ACC2", placer="PL2", filler="FL2", lines=("Right parotid normal.",), study_uid="1.2.3.2")
    # The second message's OBR group appended to the first message.
    msg = one + "\r".join(s for s in two.split("\r") if s.startswith(("OBR", "OBX"))) + "\r"
    reps = parse_oru(Message(msg), FIELDS).reports
    assert [(r.accession_number, r.study_instance_uid, r.report_text) for r in reps] == [
        ("ACC1", "1.2.3.1", "Left parotid mass."),
        ("ACC2", "1.2.3.2", "Right parotid normal."),
    ]
    assert {r.patient_id for r in reps} == {"PAT123"}


def test_read_frame_consumes_one_frame_at_a_time():
    """Two ACKs in one TCP segment, and a frame end split across reads, are read in order."""
    import socket
    import threading

    from pgsam_node.reports.hl7 import mllp_frame, read_frame

    a, b = socket.socketpair()
    with a, b:
        b.sendall(b"\r\n" + mllp_frame("ONE") + mllp_frame("TWO") + mllp_frame("THREE")[:-1])
        assert read_frame(a) == b"ONE" and read_frame(a) == b"TWO"
        t = threading.Timer(0.1, lambda: b.sendall(b"\r"))
        t.start()
        assert read_frame(a) == b"THREE"
        t.join()


def test_result_group_limit_refuses_the_whole_message(settings):
    base = oru(control="G")
    group = "\r".join(s for s in base.split("\r") if s.startswith(("OBR", "OBX")))
    many = base + "\r".join([group] * 5) + "\r"  # 6 groups
    assert len(parse_oru(Message(many), FIELDS, max_groups=6).reports) == 6
    with pytest.raises(Hl7Reject, match="max_result_groups") as ei:
        parse_oru(Message(many), FIELDS, max_groups=5)
    assert ei.value.code == "AR"
    settings.hl7.max_result_groups = 5
    db = Database(settings.database_url)
    try:
        assert segments(handle_message(many.encode(), settings.hl7, db))["MSA"][1] == "AR"
        with db.session() as s:
            assert s.query(Report).count() == 0  # nothing of it stored
    finally:
        db.dispose()


def test_sender_and_host_allow_lists(settings):
    from pgsam_node.reports.hl7 import host_allowed, sender_allowed

    msg = Message(oru())  # MSH-3 RIS, MSH-4 HOSP
    assert sender_allowed([], msg)
    assert sender_allowed(["RIS"], msg) and sender_allowed(["RIS^HOSP"], msg)
    assert not sender_allowed(["RIS^OTHER"], msg) and not sender_allowed(["PACS"], msg)
    assert host_allowed(["127.0.0.1/32"], "127.0.0.1") and host_allowed(["10.0.0.0/8"], "::ffff:10.1.2.3")
    assert not host_allowed(["127.0.0.1/32"], "10.1.2.3") and not host_allowed(["127.0.0.1/32"], "not-an-ip")
    settings.hl7.allowed_senders = ["EMR^HOSP"]
    db = Database(settings.database_url)
    try:
        ack = segments(handle_message(oru().encode(), settings.hl7, db))
        assert ack["MSA"][1] == "AR" and "allowed_senders" in ack["MSA"][3]
        with db.session() as s:
            assert s.query(Report).count() == 0
    finally:
        db.dispose()


MARK_NAME, MARK_ID, MARK_TEXT = "ZZMARKERNAME", "ZZMARKERID77", "ZZMARKERTEXT"


@pytest.mark.parametrize(
    "text",
    [
        # a broken segment separator puts PID content where a segment name should be
        oru(patient_id=MARK_ID).replace("\rPID|", f"\r{MARK_NAME}|").replace("DOE^JANE", MARK_NAME),
        oru(patient_id=MARK_ID, lines=()).replace("DOE^JANE", MARK_NAME),
        oru(patient_id=MARK_ID, msg_type=f"{MARK_NAME}^{MARK_ID}").replace("DOE^JANE", MARK_NAME),
        oru(patient_id=MARK_ID, study_uid=f"{MARK_ID}.1", lines=(MARK_TEXT,)).replace("DOE^JANE", MARK_NAME),
        oru(patient_id=MARK_ID, status="", lines=(MARK_TEXT,)).replace("DOE^JANE", MARK_NAME),
        f"MSH|^~\\&|RIS|HOSP\r{MARK_NAME}{MARK_ID}{MARK_TEXT}\r",
    ],
)
def test_rejects_never_echo_patient_fields_or_text(settings, caplog, text):
    caplog.set_level("DEBUG")
    db = Database(settings.database_url)
    try:
        ack = handle_message(text.encode(), settings.hl7, db).decode()
    finally:
        db.dispose()
    assert segments(ack)["MSA"][1] in ("AE", "AR")
    for marker in (MARK_NAME, MARK_ID, MARK_TEXT):
        assert marker not in ack, f"ACK echoes {marker}"
        assert marker not in caplog.text, f"log echoes {marker}"


def test_undecodable_escapes_keep_the_report_and_withhold_the_field(settings, caplog):
    """python-hl7 logs the whole field when it cannot decode an escape: the filter withholds it."""
    caplog.set_level("DEBUG")
    line = f"{MARK_TEXT} \\Q\\ odd \\XZZ\\ hex \\\\ empty"
    db = Database(settings.database_url)
    try:
        ack = segments(handle_message(oru(lines=(line,)).encode(), settings.hl7, db))
        with db.session() as s:
            stored = s.query(Report).one().report_text
    finally:
        db.dispose()
    assert ack["MSA"][1] == "AA"
    assert stored.startswith(MARK_TEXT) and "odd" in stored and "hex" in stored
    assert MARK_TEXT not in caplog.text
    assert "field contents withheld" in caplog.text
