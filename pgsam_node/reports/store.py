"""Storing reports in the embedded ``reports`` table (CSV import and HL7 intake share this).

Identity and versions: a report is identified across versions by ``source_key`` —
``acc:<AccessionNumber>`` when there is one, else ``uid:<StudyInstanceUID>``, else
``order:<order number>`` (HL7). A record whose text and status equal those of any stored version
of the same report is a duplicate (re-import, re-sent message) and changes nothing; anything else
(a final after a preliminary, a corrected "C" report) becomes the next version. An explicit
version (CSV ``version`` column) is kept as given; the same version with other content is an
error, never a silent overwrite.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from pgsam_node.db.models import Report, utcnow
from pgsam_node.errors import ReportError


@dataclass
class IncomingReport:
    """One report as received; ``report_text`` is patient data (not in repr)."""

    status: str
    report_text: str = field(repr=False)
    accession_number: str | None = None
    study_instance_uid: str | None = None
    patient_id: str | None = None
    study_date: str | None = None  # YYYYMMDD
    report_time: dt.datetime | None = None
    version: int | None = None
    order_number: str | None = None

    def source_key(self) -> str:
        if self.accession_number:
            return f"acc:{self.accession_number}"[:128]
        if self.study_instance_uid:
            return f"uid:{self.study_instance_uid}"[:128]
        if self.order_number:
            return f"order:{self.order_number}"[:128]
        raise ReportError("a report needs an accession number, a StudyInstanceUID or an order number")


@dataclass
class StoreResult:
    #: "inserted" (first version), "new_version" or "duplicate".
    action: str
    report_id: int
    version: int
    source_key: str = field(repr=False)


def store_report(session: Session, rep: IncomingReport, source: str) -> StoreResult:
    """Insert ``rep`` as a new version of its report unless it duplicates a stored one.

    Runs in the caller's transaction (flushes, does not commit).

    Raises
    ------
    ReportError
        No identifier, empty text, or an explicit version already stored with other content.
    """
    if not rep.report_text or not rep.report_text.strip():
        raise ReportError("empty report text")
    key = rep.source_key()
    status = rep.status.strip().upper()
    existing = session.scalars(select(Report).where(Report.source_key == key).order_by(Report.version)).all()
    for r in existing:
        if r.report_text == rep.report_text and r.status.upper() == status and (rep.version is None or r.version == rep.version):
            return StoreResult("duplicate", r.id, r.version, key)
    if rep.version is not None:
        if any(r.version == rep.version for r in existing):
            raise ReportError(f"version {rep.version} of this report is already stored with different text or status")
        version = rep.version
    else:
        version = (max((r.version for r in existing), default=0)) + 1
    # Keep the version monotonic even under concurrent writers: the unique constraint
    # (source_key, version) makes a racing duplicate fail instead of overwrite.
    rec = Report(
        source_key=key,
        accession_number=rep.accession_number,
        study_instance_uid=rep.study_instance_uid,
        patient_id=rep.patient_id,
        study_date=rep.study_date,
        status=status,
        report_time=rep.report_time,
        report_text=rep.report_text,
        version=version,
        source=source,
        received_at=utcnow(),
    )
    session.add(rec)
    session.flush()
    return StoreResult("inserted" if not existing else "new_version", rec.id, version, key)
