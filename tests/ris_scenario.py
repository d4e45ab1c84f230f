"""One RIS content, loadable into a site RIS table with custom column names or the embedded table.

Reports (patient → accession):
* A1 (P1): preliminary v1, final v2, amended v3          → v3 (amended, newest)
* A2 (P2): preliminary only                              → none, unless ris.use_preliminary
* A3 (P3): final v1 and final v2 (re-signed)             → v2
* S4 (P4): no accession in the RIS, only the UID        → found by UID
* A5 (P5): exam 2026-11-20, study has no accession/UID  → found by PatientID (window 3 days)
* A6a, A6b (P6): two exams within the window            → ambiguous, nothing chosen
* A7 (P7): exam 10 days before the study                 → outside the window: none
* A8 (OTHER): accession collides, patient differs        → ignored
* A9 (P9): status X (cancelled)                          → none
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Column, Date, DateTime, Integer, MetaData, String, Table, Text, create_engine

from pgsam_node.reports.store import IncomingReport, store_report

T = dt.datetime
ROWS = [
    # acc, suid, mrn, body, status, signed_at, rev, exam_date
    ("A1", "1.2.840.1.1", "P1", "Prelim: left parotid mass.", "P", T(2026, 11, 20, 9), 1, dt.date(2026, 11, 20)),
    ("A1", "1.2.840.1.1", "P1", "Final: left parotid 2.3 cm mass, pleomorphic adenoma.", "F", T(2026, 11, 20, 12), 2, dt.date(2026, 11, 20)),
    ("A1", "1.2.840.1.1", "P1", "Amended: left parotid 2.3 cm mass, Warthin tumour.", "C", T(2026, 11, 21, 8), 3, dt.date(2026, 11, 20)),
    ("A2", "1.2.840.1.2", "P2", "Prelim only: right parotid nodule.", "P", T(2026, 11, 20, 9), 1, dt.date(2026, 11, 20)),
    ("A3", "1.2.840.1.3", "P3", "Final v1.", "F", T(2026, 11, 20, 9), 1, dt.date(2026, 11, 20)),
    ("A3", "1.2.840.1.3", "P3", "Final v2 re-signed.", "F", T(2026, 11, 20, 11), 2, dt.date(2026, 11, 20)),
    (None, "1.2.840.1.4", "P4", "Report by UID.", "F", T(2026, 11, 20, 9), 1, dt.date(2026, 11, 20)),
    ("A5", "1.2.840.1.5", "P5", "Report by patient.", "F", T(2026, 11, 20, 9), 1, dt.date(2026, 11, 20)),
    ("A6a", "1.2.840.1.61", "P6", "Exam one.", "F", T(2026, 11, 19, 9), 1, dt.date(2026, 11, 19)),
    ("A6b", "1.2.840.1.62", "P6", "Exam two.", "F", T(2026, 11, 21, 9), 1, dt.date(2026, 11, 21)),
    ("A7", "1.2.840.1.7", "P7", "Old exam.", "F", T(2026, 11, 10, 9), 1, dt.date(2026, 11, 10)),
    ("A8", "1.2.840.1.8", "OTHER", "Someone else's report.", "F", T(2026, 11, 20, 9), 1, dt.date(2026, 11, 20)),
    ("A9", "1.2.840.1.9", "P9", "Cancelled.", "X", T(2026, 11, 20, 9), 1, dt.date(2026, 11, 20)),
]

CUSTOM_COLUMNS = dict(
    accession_number="acc_no",
    study_instance_uid="suid",
    patient_id="mrn",
    report_text="body",
    status="rstatus",
    report_time="signed_at",
    version="rev",
    study_date="exam_date",
)


def create_site_ris(url: str, table: str = "ris_reports", version_column: bool = True) -> None:
    """Create and fill a RIS table with the site's own column names."""
    engine = create_engine(url)
    md = MetaData()
    cols = [
        Column("id", Integer, primary_key=True),
        Column("acc_no", String(32)),
        Column("suid", String(64)),
        Column("mrn", String(32)),
        Column("body", Text),
        Column("rstatus", String(8)),
        Column("signed_at", DateTime),
        Column("exam_date", Date),
    ]
    if version_column:
        cols.append(Column("rev", Integer))
    t = Table(table, md, *cols)
    md.create_all(engine)
    with engine.begin() as c:
        for acc, suid, mrn, body, st, at, rev, day in ROWS:
            row = dict(acc_no=acc, suid=suid, mrn=mrn, body=body, rstatus=st, signed_at=at, exam_date=day)
            if version_column:
                row["rev"] = rev
            c.execute(t.insert().values(**row))
    engine.dispose()


def fill_embedded(db) -> None:
    """The same reports in the node's embedded table (unknown status X stored as is)."""
    with db.transaction() as s:
        for acc, suid, mrn, body, st, at, rev, day in ROWS:
            store_report(
                s,
                IncomingReport(
                    status=st,
                    report_text=body,
                    accession_number=acc,
                    study_instance_uid=suid,
                    patient_id=mrn,
                    study_date=day.strftime("%Y%m%d"),
                    report_time=at,
                    version=rev,
                ),
                source="csv",
            )
