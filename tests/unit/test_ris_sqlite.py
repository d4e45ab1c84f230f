"""Report lookup against a site RIS in an SQLite file and against the embedded table."""

from __future__ import annotations

import pytest

from pgsam_node.config import load_settings
from pgsam_node.db import Database
from pgsam_node.errors import RisError
from pgsam_node.reports.ris import StudyKey, dispose_engines, find_report

from ..ris_checks import check_matching
from ..ris_scenario import CUSTOM_COLUMNS, create_site_ris, fill_embedded


@pytest.fixture(autouse=True)
def _engines():
    yield
    dispose_engines()


def _ris_settings(tmp_path, url, **ris):
    return load_settings(
        None,
        storage={"root": str(tmp_path / "storage"), "min_free_bytes": 0},
        ris={"url": url, "table": "ris_reports", "columns": dict(CUSTOM_COLUMNS), **ris},
    )


def test_external_sqlite_ris_custom_columns(tmp_path):
    path = tmp_path / "ris.sqlite3"
    create_site_ris(f"sqlite:///{path}")
    before = path.read_bytes()
    settings = _ris_settings(tmp_path, f"sqlite:///{path}")
    check_matching(settings, None)
    assert path.read_bytes() == before  # opened read-only, never written


def test_embedded_table(settings):
    db = Database(settings.database_url)
    try:
        fill_embedded(db)
        check_matching(settings, db)
    finally:
        db.dispose()


def test_without_version_column_newest_report_time_wins(tmp_path):
    path = tmp_path / "ris.sqlite3"
    create_site_ris(f"sqlite:///{path}", version_column=False)
    cols = dict(CUSTOM_COLUMNS, version=None)
    settings = load_settings(None, ris={"url": f"sqlite:///{path}", "table": "ris_reports", "columns": cols})
    m = find_report(StudyKey("A1", None, "P1", "20261120"), settings.ris, None)
    assert m.version is None and m.text.startswith("Amended")
    assert find_report(StudyKey("A3", None, "P3", "20261120"), settings.ris, None).text == "Final v2 re-signed."


def test_missing_required_column_is_named(tmp_path):
    path = tmp_path / "ris.sqlite3"
    create_site_ris(f"sqlite:///{path}")
    settings = _ris_settings(tmp_path, f"sqlite:///{path}")
    settings.ris.columns.report_text = "report_body"
    with pytest.raises(RisError, match=r"ris\.columns\.report_text = 'report_body'"):
        find_report(StudyKey("A1", None, "P1", "20261120"), settings.ris, None)


def test_missing_table_and_missing_file(tmp_path):
    path = tmp_path / "ris.sqlite3"
    create_site_ris(f"sqlite:///{path}")
    settings = _ris_settings(tmp_path, f"sqlite:///{path}", table="no_such_table")
    with pytest.raises(RisError, match="no_such_table"):
        find_report(StudyKey("A1", None, "P1", "20261120"), settings.ris, None)
    settings = _ris_settings(tmp_path, f"sqlite:///{tmp_path / 'absent' / 'ris.sqlite3'}")
    with pytest.raises(RisError, match="RIS unavailable"):
        find_report(StudyKey("A1", None, "P1", "20261120"), settings.ris, None)


def test_no_report_text_or_identifiers_in_logs(tmp_path, caplog):
    from ..ris_scenario import ROWS

    caplog.set_level("DEBUG")
    path = tmp_path / "ris.sqlite3"
    create_site_ris(f"sqlite:///{path}")
    check_matching(_ris_settings(tmp_path, f"sqlite:///{path}"), None)
    assert caplog.records  # the lookups did log (ambiguity, notes)
    for _acc, suid, mrn, body, *_ in ROWS:
        assert body not in caplog.text
        assert mrn not in caplog.text
        assert suid not in caplog.text


def test_two_records_for_one_accession_newest_by_time(settings):
    import datetime as dt

    from pgsam_node.reports.store import IncomingReport, store_report

    db = Database(settings.database_url)
    try:
        with db.transaction() as s:
            # A CSV record (3 versions) and a later HL7 record of the same study keyed by order.
            for v, hour in ((1, 8), (2, 9), (3, 10)):
                store_report(s, IncomingReport("F", f"csv v{v}", accession_number="A1", study_instance_uid="1.2.3",
                                               patient_id="P1", report_time=dt.datetime(2026, 11, 20, hour)), "csv")
            store_report(s, IncomingReport("C", "hl7 corrected", study_instance_uid="1.2.3", patient_id="P1",
                                           order_number="ORD9", report_time=dt.datetime(2026, 11, 21, 7)), "hl7")
        m = find_report(StudyKey("NOPE", "1.2.3", "P1", "20261120"), settings.ris, db)
        assert m.text == "hl7 corrected" and "2 report records" in m.note
    finally:
        db.dispose()
