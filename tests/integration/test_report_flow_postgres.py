"""A study waits in a PostgreSQL node database; its report arrives over HL7; the study goes READY."""

from __future__ import annotations

import datetime as dt
import socket

from pgsam_node.config import load_settings
from pgsam_node.db import Database, Study, StudyState
from pgsam_node.reports.hl7 import Hl7Listener, mllp_frame, read_frame
from pgsam_node.reports.parse import parse_report
from pgsam_node.flow.advance import attach_report_or_wait, check_amendments, check_waiting
from pgsam_node.reports.ris import StudyKey, find_report
from pgsam_node.db.lifecycle import transition

from ..helpers import free_port
from ..hl7_messages import oru, segments

UID = "1.2.826.0.1.3680043.8.498.77"


def test_hl7_report_releases_waiting_study(pg_url, tmp_path):
    settings = load_settings(None, storage={"root": str(tmp_path)}, database={"url": pg_url}, hl7={"port": free_port()}, ris={"wait_seconds": 3600})
    db = Database(pg_url)
    t0 = dt.datetime(2026, 11, 20, 10, 0)
    try:
        with db.transaction() as s:
            st = Study(study_uid=UID, accession_number="ACC77", patient_id="PAT77", study_date="20261120")
            s.add(st)
            s.flush()
            transition(s, st, StudyState.STABLE, "stable")
            assert attach_report_or_wait(s, st, settings, db, t0) is None
            sid = st.id
        assert check_waiting(db, settings, t0 + dt.timedelta(minutes=5)).still_waiting == [sid]

        text = ("右侧腮腺未见异常。左侧腮腺浅叶见一结节，大小约2.3cm×1.8cm，边界清楚。", "诊断意见：左侧腮腺多形性腺瘤。")
        with Hl7Listener(settings, db) as lst, socket.create_connection(("127.0.0.1", lst.port), timeout=10) as c:
            c.sendall(mllp_frame(oru(control="R1", patient_id="PAT77", accession="ACC77", study_uid=UID, lines=text)))
            assert segments(read_frame(c))["MSA"][1] == "AA"
            out = check_waiting(db, settings, t0 + dt.timedelta(minutes=10))
            assert out.ready == [sid]
            with db.session() as s:
                st = s.get(Study, sid)
                assert st.state == "READY" and st.report_hash

            m = find_report(StudyKey.from_study(st), settings.ris, db)
            f = parse_report(m.text)
            assert (f.side, f.lobe, f.size_mm, f.diagnosis, f.negated_sides) == ("left", "superficial", 23.0, "pleomorphic_adenoma", ["right"])

            # The study runs and is sent; then a corrected report arrives: a new run version.
            with db.transaction() as s:
                st = s.get(Study, sid)
                for to in ("RUNNING", "ENCODED", "DONE"):
                    transition(s, st, to, "test")
            c.sendall(mllp_frame(oru(control="R2", status="C", patient_id="PAT77", accession="ACC77", study_uid=UID,
                                     lines=("Corrected: Warthin tumour, left.",))))
            assert segments(read_frame(c))["MSA"][1] == "AA"
        out = check_amendments(db, settings, dt.datetime.now(dt.timezone.utc))
        assert out.rerun == [sid]
        with db.session() as s:
            st = s.get(Study, sid)
            assert (st.state, st.version, st.state_reason) == ("READY", 1, "amended report")
    finally:
        db.dispose()
