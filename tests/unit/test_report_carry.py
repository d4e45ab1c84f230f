"""The report the wait step matched travels to the run: no second RIS search, amendments still re-run."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import create_engine, text

from pgsam_node.config import load_settings
from pgsam_node.db import Database, Series, Study, StudyState
from pgsam_node.db.lifecycle import transition
from pgsam_node.flow.pipeline import gather_inputs
from pgsam_node.reports.ris import dispose_engines
from pgsam_node.flow.advance import attach_report_or_wait, check_amendments
from pgsam_node.reports.wait import REASON_AMENDED

from ..ris_scenario import CUSTOM_COLUMNS, create_site_ris

T0 = dt.datetime(2026, 11, 20, 13, 0, 0)


@pytest.fixture
def site(tmp_path):
    """A node database and a site RIS (SQLite file) with the scenario's reports."""
    ris = tmp_path / "ris.sqlite3"
    create_site_ris(f"sqlite:///{ris}")
    settings = load_settings(None, storage={"root": str(tmp_path / "storage"), "min_free_bytes": 0},
                             ris={"url": f"sqlite:///{ris}", "table": "ris_reports", "columns": dict(CUSTOM_COLUMNS)})
    db = Database(f"sqlite:///{tmp_path / 'node.sqlite3'}")
    yield settings, db, ris
    db.dispose()
    dispose_engines()


def _study(db, acc: str, pid: str) -> int:
    with db.transaction() as s:
        st = Study(study_uid=f"1.2.840.77.{acc[1:]}", accession_number=acc, patient_id=pid, study_date="20261120")
        s.add(st)
        s.flush()
        s.add(Series(study_id=st.id, series_uid=f"{st.study_uid}.1", role="T2", role_selected=True))
        transition(s, st, StudyState.STABLE, "stable")
        return st.id


def _ris_down(settings, ris) -> None:
    """The site RIS can no longer be read: any search from now on raises RisError."""
    dispose_engines()
    ris.unlink()
    settings.ris.url = f"sqlite:///{ris.parent / 'gone' / 'ris.sqlite3'}"


def test_run_reads_the_matched_report_without_searching_the_ris(site):
    settings, db, ris = site
    sid = _study(db, "A3", "P3")
    with db.transaction() as s:
        match = attach_report_or_wait(s, s.get(Study, sid), settings, db, T0)
    assert match is not None and match.version == 2
    _ris_down(settings, ris)
    inputs = gather_inputs(db, settings, sid)
    assert inputs.report_text == "Final v2 re-signed."
    assert inputs.report_hash == match.hash
    assert inputs.findings is not None


def test_amendment_replaces_the_carried_report(site):
    settings, db, ris = site
    sid = _study(db, "A3", "P3")
    with db.transaction() as s:
        attach_report_or_wait(s, s.get(Study, sid), settings, db, T0)
        st = s.get(Study, sid)
        for to in (StudyState.RUNNING, StudyState.ENCODED, StudyState.DONE):
            transition(s, st, to, "test")
        first_hash = st.report_hash
    engine = create_engine(f"sqlite:///{ris}")
    with engine.begin() as c:
        c.execute(text("INSERT INTO ris_reports (acc_no, suid, mrn, body, rstatus, signed_at, exam_date, rev) VALUES "
                       "('A3', '1.2.840.1.3', 'P3', 'Amended: right parotid 1.1 cm cyst.', 'C', '2026-11-21 08:00:00.000000', "
                       "'2026-11-20', 3)"))
    engine.dispose()
    assert check_amendments(db, settings, dt.datetime.utcnow()).rerun == [sid]
    with db.session() as s:
        st = s.get(Study, sid)
        assert (st.state, st.state_reason, st.version) == ("READY", REASON_AMENDED, 1)
        assert st.report_hash != first_hash
    _ris_down(settings, ris)
    assert gather_inputs(db, settings, sid).report_text == "Amended: right parotid 1.1 cm cyst."


def test_deadline_and_run_now_forget_the_carried_text(site):
    from pgsam_node.flow.actions import run_now

    settings, db, _ = site
    sid = _study(db, "A2", "P2")  # preliminary only: waits
    with db.transaction() as s:
        assert attach_report_or_wait(s, s.get(Study, sid), settings, db, T0) is None
        st = s.get(Study, sid)
        st.report_ref, st.report_hash, st.report_text = "ris:x", "h", "stale text"
        run_now(s, st, "tester")
    with db.session() as s:
        st = s.get(Study, sid)
        assert (st.state, st.report_ref, st.report_hash, st.report_text) == ("READY", None, None, None)
    assert gather_inputs(db, settings, sid).report_text is None


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_migration_carries_reports_matched_before_the_upgrade(tmp_path, request, backend):
    """Embedded matches get their text from the reports table; an external match not yet run goes
    back to WAITING_REPORT (matched again, now with its text); finished studies keep their state."""
    from pgsam_node.db.session import make_engine, upgrade_schema

    url = f"sqlite:///{tmp_path / 'old.sqlite3'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    engine = make_engine(url)
    upgrade_schema(engine, "ops_pause_switches")
    now = dt.datetime(2026, 11, 20, 12)
    study_cols = ("id, study_uid, state, state_changed_at, first_instance_at, last_instance_at, version, notes, "
                  "attempts, created_at, updated_at, report_ref, report_hash, lease_owner")
    with engine.begin() as c:
        c.execute(text("INSERT INTO reports (id, source_key, status, report_text, version, source, received_at) "
                       "VALUES (7, 'acc:A1', 'F', 'Embedded report text.', 1, 'csv', :t)"), {"t": now})
        for sid, state, ref, owner in ((1, "READY", "reports:7", None), (2, "READY", "ris:t:A3@2", None),
                                       (3, "RUNNING", "ris:t:A4@1", "w1"), (4, "DONE", "ris:t:A5@1", None),
                                       (5, "READY", None, None)):
            c.execute(text(f"INSERT INTO studies ({study_cols}) VALUES (:id, :uid, :state, :t, :t, :t, 0, '[]', 0, :t, :t, "
                           ":ref, :hash, :owner)"),
                      {"id": sid, "uid": f"1.2.9.{sid}", "state": state, "t": now, "ref": ref,
                       "hash": "h" if ref else None, "owner": owner})
    upgrade_schema(engine)
    with engine.connect() as c:
        rows = {r.id: r for r in c.execute(text("SELECT id, state, report_ref, report_hash, report_text, lease_owner, "
                                                "waiting_since FROM studies"))}
        events = c.execute(text("SELECT study_id, from_state, to_state, actor FROM study_events ORDER BY study_id")).all()
    engine.dispose()
    assert (rows[1].state, rows[1].report_ref, rows[1].report_text) == ("READY", "reports:7", "Embedded report text.")
    for sid in (2, 3):
        r = rows[sid]
        assert (r.state, r.report_ref, r.report_hash, r.report_text, r.lease_owner) == ("WAITING_REPORT", None, None, None, None)
        assert r.waiting_since is not None
    assert (rows[4].state, rows[4].report_ref, rows[4].report_text) == ("DONE", "ris:t:A5@1", None)
    assert (rows[5].state, rows[5].report_text) == ("READY", None)
    assert [tuple(e) for e in events] == [(2, "READY", "WAITING_REPORT", "migration"), (3, "RUNNING", "WAITING_REPORT", "migration")]
