"""``pgsam-node ris import FILE.csv`` and ``pgsam-node ris lookup``: the embedded RIS.

Import is all-or-nothing: every row is checked first and the file is stored in one transaction
only when no row has an error; errors name the CSV line. Re-importing the same file changes
nothing (rows equal to a stored version are duplicates); a changed row becomes a new version.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pgsam_node.commands import add_config_arg
from pgsam_node.config import Settings
from pgsam_node.db.session import open_database
from pgsam_node.errors import ReportError, RisError
from pgsam_node.reports.store import IncomingReport, store_report
from pgsam_node.reports.ris import StudyKey, lookup_report, parse_date, parse_datetime, status_class
from pgsam_node.commands import load

REQUIRED_COLUMNS = ("accession_number", "study_instance_uid", "patient_id", "status", "report_time", "report_text")
OPTIONAL_COLUMNS = ("version", "study_date")
MAX_ERRORS_SHOWN = 50


def register(sub) -> None:
    p = sub.add_parser("ris", help="embedded RIS: import reports, look up a study's report")
    rsub = p.add_subparsers(dest="ris_action", metavar="ACTION")
    rsub.required = True
    imp = rsub.add_parser("import", help="import reports from a CSV file (header row required)")
    imp.add_argument("file", metavar="FILE.csv")
    imp.add_argument("--encoding", default="utf-8-sig", help="file encoding (default utf-8, BOM allowed)")
    add_config_arg(imp)
    imp.set_defaults(func=run_import)
    lk = rsub.add_parser("lookup", help="show which report a study would get (text not printed)")
    lk.add_argument("--accession", default=None)
    lk.add_argument("--study-uid", default=None)
    lk.add_argument("--patient-id", default=None)
    lk.add_argument("--study-date", default=None, help="YYYYMMDD")
    add_config_arg(lk)
    lk.set_defaults(func=run_lookup)


@dataclass
class ImportSummary:
    rows: int = 0
    inserted: int = 0
    new_versions: int = 0
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)


def _rows(path: Path, encoding: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ReportError(f"{path} is not valid {encoding} (byte {exc.start}); pass --encoding") from None
    # Delimiter from the header line only (report text is full of commas and semicolons).
    first = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=first.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise ReportError(f"{path} is empty (a header row is required)") from None
    header = [h.strip().lower() for h in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ReportError(f"{path}: header lacks column(s) {', '.join(missing)} (required: {', '.join(REQUIRED_COLUMNS)})")
    rows = []
    try:
        for rec in reader:
            line = reader.line_num
            if not any(x.strip() for x in rec):
                continue
            if len(rec) != len(header):
                rows.append((line, {"__error__": f"{len(rec)} fields, header has {len(header)}"}))
                continue
            rows.append((line, dict(zip(header, rec))))
    except csv.Error as exc:
        raise ReportError(f"{path} line {reader.line_num}: {exc}") from None
    return header, rows


def _to_incoming(row: dict[str, str], settings: Settings) -> IncomingReport:
    if "__error__" in row:
        raise ReportError(row["__error__"])

    def val(k: str) -> str | None:
        v = (row.get(k) or "").strip()
        return v or None

    status = (val("status") or "").upper()
    if not status:
        raise ReportError("status is empty")
    if status_class(status, settings.ris) is None:
        allowed = settings.ris.final_statuses + settings.ris.amended_statuses + settings.ris.preliminary_statuses
        raise ReportError(f"status {status!r} is not one of {', '.join(allowed)} (ris.*_statuses)")
    text = row.get("report_text") or ""
    if not text.strip():
        raise ReportError("report_text is empty")
    acc, suid, pid = val("accession_number"), val("study_instance_uid"), val("patient_id")
    if not (acc or suid):
        raise ReportError("accession_number and study_instance_uid are both empty")
    if suid and (len(suid) > 64 or not all(p.isdigit() for p in suid.split("."))):
        raise ReportError("study_instance_uid is not a valid DICOM UID")
    for name, v in (("accession_number", acc), ("patient_id", pid)):
        if v and len(v) > 64:
            raise ReportError(f"{name} is longer than 64 characters")
    rtime = None
    if val("report_time"):
        rtime = parse_datetime(val("report_time"))
        if rtime is None:
            raise ReportError("report_time is not a date-time (ISO 8601 or YYYYMMDDHHMMSS)")
    sdate = None
    if val("study_date"):
        d = parse_date(val("study_date"))
        if d is None:
            raise ReportError("study_date is not a date (YYYYMMDD or YYYY-MM-DD)")
        sdate = d.strftime("%Y%m%d")
    version = None
    if val("version"):
        try:
            version = int(val("version") or "")
        except ValueError:
            raise ReportError("version is not a whole number") from None
        if version < 1:
            raise ReportError("version must be 1 or more")
    return IncomingReport(
        status=status,
        report_text=text.replace("\r\n", "\n"),
        accession_number=acc,
        study_instance_uid=suid,
        patient_id=pid,
        study_date=sdate,
        report_time=rtime,
        version=version,
    )


def import_csv(path: Path, settings: Settings, db, encoding: str = "utf-8-sig") -> ImportSummary:
    """Import a CSV of reports into the embedded table (all rows or none).

    Raises
    ------
    ReportError
        The file cannot be read, lacks required columns, or a row is invalid; the message lists
        every bad row by line number and nothing is stored.
    """
    _, rows = _rows(path, encoding)
    summary = ImportSummary(rows=len(rows))
    parsed: list[tuple[int, IncomingReport]] = []
    for line, row in rows:
        try:
            parsed.append((line, _to_incoming(row, settings)))
        except ReportError as exc:
            summary.errors.append(f"line {line}: {exc}")
    if summary.errors:
        raise ReportError(_errors_message(path, summary.errors))
    # Without a version column, versions follow report time (then file order), so a file listing
    # the final report before the preliminary one still makes the final one the newer version.
    parsed.sort(key=lambda li: (li[1].report_time is None, li[1].report_time or dt.datetime.min, li[0]))
    with db.transaction() as s:
        for line, inc in parsed:
            try:
                res = store_report(s, inc, source="csv")
            except ReportError as exc:
                summary.errors.append(f"line {line}: {exc}")
                continue
            if res.action == "inserted":
                summary.inserted += 1
            elif res.action == "new_version":
                summary.new_versions += 1
            else:
                summary.duplicates += 1
        if summary.errors:
            # Roll the whole file back: nothing half-imported.
            raise ReportError(_errors_message(path, summary.errors))
    return summary


def _errors_message(path: Path, errors: list[str]) -> str:
    shown = errors[:MAX_ERRORS_SHOWN]
    more = f"\n  … and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
    return f"{path}: {len(errors)} bad row(s), nothing imported:\n  " + "\n  ".join(shown) + more


def run_import(args) -> int:
    settings = load(args)
    if settings.ris.url:
        print(
            "pgsam-node: note: ris.url is set, so lookups use the external RIS; imported reports are "
            "stored in the embedded table and used only when ris.url is unset",
            file=sys.stderr,
        )
    db = open_database(settings)
    try:
        summary = import_csv(Path(args.file), settings, db, args.encoding)
    finally:
        db.dispose()
    print(
        f"imported {args.file}: {summary.rows} row(s): {summary.inserted} new report(s), "
        f"{summary.new_versions} new version(s), {summary.duplicates} already present"
    )
    return 0


def run_lookup(args) -> int:
    settings = load(args)
    db = open_database(settings) if not settings.ris.url else None
    try:
        key = StudyKey(args.accession, args.study_uid, args.patient_id, args.study_date)
        try:
            match, note = lookup_report(key, settings.ris, db)
        except RisError as exc:
            print(f"pgsam-node: RIS unavailable: {exc}", file=sys.stderr)
            return 3
        except ReportError as exc:
            print(json.dumps({"found": False, "note": str(exc)}))
            return 1
    finally:
        if db is not None:
            db.dispose()
    if match is None:
        print(json.dumps({"found": False, "note": note}))
        return 1
    print(
        json.dumps(
            {
                "found": True,
                "matched_by": match.matched_by,
                "status": match.status,
                "version": match.version,
                "report_time": match.report_time.isoformat() if match.report_time else None,
                "hash": match.hash,
                "chars": len(match.text),
                "note": match.note,
            }
        )
    )
    return 0
