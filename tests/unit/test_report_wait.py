"""Waiting for the report, deadline policy and amendments, driven by an explicit clock."""

from __future__ import annotations

import datetime as dt

import pytest

from pgsam_node.db import Database, Study, StudyEvent, StudyState, utcnow
from pgsam_node.reports.store import IncomingReport, store_report
from pgsam_node.flow.advance import attach_report_or_wait, check_amendments, check_waiting
from pgsam_node.reports.wait import REASON_AMENDED, REASON_DEADLINE
from pgsam_node.reports.ris import dispose_engines
from pgsam_node.db.lifecycle import transition

UID = "1.2.840.99.1"


@pytest.fixture
def db(settings):
    d = Database(settings.database_url)
    yield d
    d.dispose()
    dispose_engines()


def _study(db, acc="ACC1", uid=UID, state=StudyState.STABLE) -> int:
    with db.transaction() as s:
        st = Study(study_uid=uid, accession_number=acc, patient_id="PID1", study_date="20261120")
        s.add(st)
        s.flush()
        transition(s, st, StudyState.STABLE, "stable")
        if state != StudyState.STABLE:
            transition(s, st, state, "test", force=True)
        return st.id


def _report(db, text="Left parotid 2 cm mass.", status="F", acc="ACC1"):
    with db.transaction() as s:
        return store_report(
            s, IncomingReport(status=status, report_text=text, accession_number=acc, patient_id="PID1", study_date="20261120"), "csv"
        )


def _get(db, sid) -> Study:
    with db.session() as s:
        st = s.get(Study, sid)
        _ = st.events  # load the events before the session closes
        return st


def _attach(db, settings, sid, now):
    with db.transaction() as s:
        st = s.get(Study, sid)
        return attach_report_or_wait(s, st, settings, db, now)


T0 = dt.datetime(2026, 11, 20, 10, 0, 0)


def test_report_already_there_goes_ready(db, settings):
    _report(db)
    sid = _study(db)
    m = _attach(db, settings, sid, T0)
    assert m is not None and m.matched_by == "accession_number"
    st = _get(db, sid)
    assert st.state == "READY" and st.report_hash == m.hash and st.report_ref == m.ref
    assert st.waiting_since is None
    assert st.events[-1].reason == "report found (matched by accession_number)"


def test_wait_then_report_arrives(db, settings):
    settings.ris.wait_seconds = 3600
    sid = _study(db)
    assert _attach(db, settings, sid, T0) is None
    st = _get(db, sid)
    assert st.state == "WAITING_REPORT" and st.waiting_since == T0
    # Checks before the report exists change nothing.
    out = check_waiting(db, settings, T0 + dt.timedelta(minutes=10))
    assert out.still_waiting == [sid] and _get(db, sid).state == "WAITING_REPORT"
    # A preliminary report is not enough (use_preliminary off) and is noted.
    _report(db, status="P")
    out = check_waiting(db, settings, T0 + dt.timedelta(minutes=20))
    assert out.still_waiting == [sid]
    assert "preliminary" in _get(db, sid).report_note
    _report(db, status="F", text="Final: left parotid 2 cm mass.")
    out = check_waiting(db, settings, T0 + dt.timedelta(minutes=30))
    assert out.ready == [sid]
    st = _get(db, sid)
    assert st.state == "READY" and st.report_hash
    assert st.waiting_since == T0  # kept: when it started waiting


def test_deadline_runs_without_text(db, settings):
    settings.ris.wait_seconds = 3600
    sid = _study(db)
    _attach(db, settings, sid, T0)
    assert check_waiting(db, settings, T0 + dt.timedelta(seconds=3599)).still_waiting == [sid]
    out = check_waiting(db, settings, T0 + dt.timedelta(seconds=3600))
    assert out.ready == [sid]
    st = _get(db, sid)
    assert st.state == "READY" and st.state_reason == REASON_DEADLINE and st.report_hash is None


def test_deadline_fail_policy(db, settings):
    settings.ris.wait_seconds = 60
    settings.ris.on_missing_report = "fail"
    sid = _study(db)
    _attach(db, settings, sid, T0)
    out = check_waiting(db, settings, T0 + dt.timedelta(seconds=61))
    assert out.failed == [sid]
    st = _get(db, sid)
    assert st.state == "FAILED" and st.state_reason.startswith("no report by deadline")


def test_zero_wait_applies_policy_at_once(db, settings):
    settings.ris.wait_seconds = 0
    sid = _study(db)
    assert _attach(db, settings, sid, T0) is None
    st = _get(db, sid)
    assert st.state == "READY" and st.state_reason == REASON_DEADLINE
    assert [e.to_state for e in st.events][-2:] == ["WAITING_REPORT", "READY"]


def test_ris_down_delays_never_fails(db, settings, tmp_path):
    settings.ris.wait_seconds = 60
    settings.ris.on_missing_report = "fail"
    settings.ris.url = f"sqlite:///{tmp_path / 'missing-dir' / 'ris.sqlite3'}"  # cannot be opened
    sid = _study(db)
    assert _attach(db, settings, sid, T0) is None
    st = _get(db, sid)
    assert st.state == "WAITING_REPORT" and st.report_note.startswith("RIS unavailable")
    # Far past the deadline, the RIS still down: the study keeps waiting.
    out = check_waiting(db, settings, T0 + dt.timedelta(days=2))
    assert out.ris_down == [sid] and _get(db, sid).state == "WAITING_REPORT"
    # The RIS is back (embedded table here) and has no report: now the policy applies.
    settings.ris.url = None
    out = check_waiting(db, settings, T0 + dt.timedelta(days=2, seconds=1))
    assert out.failed == [sid]


def test_ambiguous_match_waits_with_note(db, settings):
    settings.ris.wait_seconds = 600
    # The study has no accession or UID in the RIS; the patient has two exams in the window.
    for acc in ("X1", "X2"):
        _report(db, acc=acc, text=f"Report {acc}.")
    sid = _study(db, acc=None)
    assert _attach(db, settings, sid, T0) is None
    st = _get(db, sid)
    assert st.state == "WAITING_REPORT" and "ambiguous" in st.report_note


def _finish(db, sid, state=StudyState.DONE):
    with db.transaction() as s:
        st = s.get(Study, sid)
        for to in (StudyState.RUNNING, StudyState.ENCODED, state) if state == StudyState.DONE else (StudyState.RUNNING, state):
            transition(s, st, to, "test")


def test_amended_report_reruns(db, settings):
    _report(db)
    sid = _study(db)
    _attach(db, settings, sid, T0)
    _finish(db, sid)
    first_hash = _get(db, sid).report_hash
    now = utcnow()
    # Nothing changed: no re-run.
    assert check_amendments(db, settings, now).rerun == []
    _report(db, status="C", text="Amended: left parotid 2.4 cm mass, Warthin tumour.")
    out = check_amendments(db, settings, now)
    assert out.rerun == [sid]
    st = _get(db, sid)
    assert st.state == "READY" and st.state_reason == REASON_AMENDED
    assert st.version == 1 and st.report_hash != first_hash
    # Once re-run and finished with the new hash, no further re-run.
    _finish(db, sid)
    assert check_amendments(db, settings, now).rerun == []


def test_amendment_rules(db, settings):
    _report(db)
    sid = _study(db)
    _attach(db, settings, sid, T0)
    _finish(db, sid, StudyState.NO_FINDING)
    _report(db, status="C", text="Amended text.")
    # Disabled: nothing happens.
    settings.ris.rerun_on_amendment = False
    assert check_amendments(db, settings, utcnow()).rerun == []
    settings.ris.rerun_on_amendment = True
    # Outside the amendment window (finished too long ago): nothing happens.
    settings.ris.amendment_window_days = 1
    assert check_amendments(db, settings, utcnow() + dt.timedelta(days=2)).rerun == []
    assert check_amendments(db, settings, utcnow()).rerun == [sid]
    assert _get(db, sid).state == "READY"


def test_report_after_run_without_text_reruns(db, settings):
    settings.ris.wait_seconds = 0
    sid = _study(db)
    _attach(db, settings, sid, T0)  # no report: READY without text
    _finish(db, sid)
    _report(db)
    out = check_amendments(db, settings, utcnow())
    assert out.rerun == [sid]
    st = _get(db, sid)
    assert st.state_reason == "report arrived after a run without text" and st.version == 1


def test_every_change_is_an_event(db, settings):
    settings.ris.wait_seconds = 10
    sid = _study(db)
    _attach(db, settings, sid, T0)
    check_waiting(db, settings, T0 + dt.timedelta(seconds=11))
    with db.session() as s:
        events = [(e.from_state, e.to_state) for e in s.query(StudyEvent).filter_by(study_id=sid).order_by(StudyEvent.id)]
    assert events == [("RECEIVING", "STABLE"), ("STABLE", "WAITING_REPORT"), ("WAITING_REPORT", "READY")]
