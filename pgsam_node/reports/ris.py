"""Report lookup in the RIS: an external SQL table (read-only) or the node's embedded table.

Matching rules (docs/reports.md):

1. AccessionNumber, then StudyInstanceUID, then PatientID with the report's study date (or,
   lacking a study-date column, its report date) within ``ris.study_date_window_days`` of the
   study date. A key that finds an acceptable report ends the search.
2. A report found by accession or UID whose patient ID differs from the study's is never used
   (accession numbers collide across sites and mergers); the skip is recorded in the note.
3. At the PatientID step, reports under another accession number / StudyInstanceUID than the
   study's own (both known) belong to another examination and are left out.
4. Final and amended reports win over preliminary ones; preliminary ones count only with
   ``ris.use_preliminary``; any other status (cancelled, unknown) is ignored.
5. Among the versions of one report the newest wins: highest version column, else the latest
   report time.
6. Ambiguity is never guessed: when the PatientID step finds acceptable reports of two or more
   different examinations, :class:`AmbiguousReportError` is raised with a note; the caller keeps
   the study waiting (an operator can pin the report) and applies the missing-report policy at
   the deadline.

A RIS that cannot be reached or queried raises :class:`~pgsam_node.errors.RisError`; the caller
delays the study and never fails it for that. No report text or patient identifier is logged.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import MetaData, Table, create_engine, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import NoSuchTableError, SQLAlchemyError

from pgsam_node.config import RisSettings
from pgsam_node.db.models import Report
from pgsam_node.db.session import Database
from pgsam_node.errors import ReportError, RisError
from pgsam_node.logsetup import uid_hash
from pgsam_node.reports.parse import report_hash

log = logging.getLogger(__name__)

#: Rows read for one key at most (a patient with more reports than this in the RIS is unusual;
#: the newest ones are read first).
MAX_ROWS = 500


@dataclass(frozen=True)
class StudyKey:
    """The identifiers of a study that can find its report."""

    accession_number: str | None
    study_instance_uid: str | None
    patient_id: str | None
    #: DICOM StudyDate, ``YYYYMMDD``.
    study_date: str | None

    @classmethod
    def from_study(cls, study: Any) -> StudyKey:
        return cls(study.accession_number, study.study_uid, study.patient_id, study.study_date)


@dataclass
class ReportMatch:
    """The report chosen for a study. ``text`` is patient data: never log it (not in repr)."""

    text: str = field(repr=False)
    #: The status as the RIS wrote it (e.g. "F", "FINAL", "C").
    status: str
    version: int | None
    report_time: dt.datetime | None
    #: Identity of this report version: ``reports:<id>`` (embedded) or ``ris:<table>:<key>@<version>``.
    ref: str = field(repr=False)
    #: :func:`~pgsam_node.reports.parse.report_hash` of text and version.
    hash: str
    #: "accession_number", "study_instance_uid" or "patient_id".
    matched_by: str
    note: str | None = None
    #: "final", "amended" or "preliminary".
    status_class: str = "final"


class AmbiguousReportError(ReportError):
    """Several different examinations' reports match the study; none is chosen.

    ``note`` says why (safe to store on the study and to log: no identifiers).
    """

    def __init__(self, note: str, candidates: int):
        super().__init__(note)
        self.note = note
        self.candidates = candidates


@dataclass
class _Row:
    ref: str
    group: str
    accession_number: str | None
    study_instance_uid: str | None
    patient_id: str | None
    study_date: str | None
    status: str
    report_time: dt.datetime | None
    version: int | None
    text: str


# ---------------------------------------------------------------------------------------------
# Value normalisation
# ---------------------------------------------------------------------------------------------
def _clean(v: Any) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def parse_date(v: Any) -> dt.date | None:
    """A date from ``date``/``datetime`` values or ``YYYYMMDD`` / ``YYYY-MM-DD`` text."""
    if v is None:
        return None
    if isinstance(v, dt.datetime):
        return v.date()
    if isinstance(v, dt.date):
        return v
    s = str(v).strip()
    for fmt, n in (("%Y%m%d", 8), ("%Y-%m-%d", 10), ("%Y/%m/%d", 10), ("%Y.%m.%d", 10)):
        try:
            return dt.datetime.strptime(s[:n], fmt).date()
        except ValueError:
            continue
    return None


def parse_datetime(v: Any) -> dt.datetime | None:
    """Naive UTC datetime from a datetime or ISO 8601 / HL7 ``YYYYMMDDHHMM[SS][+ZZZZ]`` text."""
    if v is None or v == "":
        return None
    if isinstance(v, dt.datetime):
        d = v
    elif isinstance(v, dt.date):
        d = dt.datetime(v.year, v.month, v.day)
    else:
        s = str(v).strip()
        d = None
        try:
            d = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError:
            m = re.fullmatch(r"(\d{8})(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?([+-]\d{4})?", s)
            if m:
                base = m.group(1) + (m.group(2) or "00") + (m.group(3) or "00") + (m.group(4) or "00")
                d = dt.datetime.strptime(base, "%Y%m%d%H%M%S")
                if m.group(5):
                    sign = 1 if m.group(5)[0] == "+" else -1
                    off = dt.timedelta(hours=int(m.group(5)[1:3]), minutes=int(m.group(5)[3:5]))
                    d = d.replace(tzinfo=dt.timezone(sign * off))
        if d is None:
            return None
    if d.tzinfo is not None:
        d = d.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return d


def _to_int(v: Any) -> int | None:
    if v is None or v == "":
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        try:
            return int(float(v))
        except (TypeError, ValueError):
            return None


def status_class(status: str | None, ris: RisSettings) -> str | None:
    """"final", "amended", "preliminary" or None (unknown / not usable) for a RIS status."""
    s = (status or "").strip().upper()
    if s in {x.upper() for x in ris.final_statuses}:
        return "final"
    if s in {x.upper() for x in ris.amended_statuses}:
        return "amended"
    if s in {x.upper() for x in ris.preliminary_statuses}:
        return "preliminary"
    return None


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------
class _EmbeddedSource:
    """The ``reports`` table of the node database (CSV import, HL7)."""

    def __init__(self, node_db: Database):
        self.db = node_db

    def rows(self, field_name: str, value: str) -> list[_Row]:
        col = getattr(Report, field_name)
        try:
            with self.db.session() as s:
                recs = s.scalars(select(Report).where(col == value).order_by(Report.id.desc()).limit(MAX_ROWS)).all()
        except SQLAlchemyError as exc:
            raise RisError(f"embedded report table cannot be read: {_safe_exc(exc)}") from None
        return [
            _Row(
                ref=f"reports:{r.id}",
                group=r.source_key,
                accession_number=_clean(r.accession_number),
                study_instance_uid=_clean(r.study_instance_uid),
                patient_id=_clean(r.patient_id),
                study_date=_clean(r.study_date),
                status=r.status,
                report_time=r.report_time,
                version=r.version,
                text=r.report_text,
            )
            for r in recs
        ]


_ENGINES: dict[tuple[Any, ...], tuple[Engine, Table, dict[str, str | None]]] = {}
_ENGINES_LOCK = threading.Lock()


def dispose_engines() -> None:
    """Close every cached external-RIS engine (tests, shutdown)."""
    with _ENGINES_LOCK:
        for engine, _, _ in _ENGINES.values():
            engine.dispose()
        _ENGINES.clear()


def _safe_exc(exc: BaseException) -> str:
    # SQLAlchemy messages carry the statement and its parameters (patient IDs): keep only the
    # driver's own first line.
    orig = getattr(exc, "orig", None) or exc
    first = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    if isinstance(exc, SQLAlchemyError) and orig is exc:
        first = first.split("[SQL:")[0].strip()
    return f"{type(orig).__name__}: {first}"[:300]


def _make_ris_engine(ris: RisSettings) -> Engine:
    url = ris.url
    assert url is not None
    connect_timeout = max(1, int(round(ris.connect_timeout_seconds)))
    stmt_ms = int(ris.query_timeout_seconds * 1000)
    if url.startswith("sqlite"):
        # Read-only: open the file with mode=ro (the node never writes to a RIS).
        path = url.split("///", 1)[-1]
        if path and not path.startswith("file:") and path != ":memory:":
            url = f"sqlite:///file:{path}?mode=ro&uri=true"
        return create_engine(url, connect_args={"timeout": ris.query_timeout_seconds, "check_same_thread": False})
    if url.startswith("postgresql"):
        # PostgreSQL: statement_timeout bounds each query; read-only transactions by default.
        opts = f"-c statement_timeout={stmt_ms} -c default_transaction_read_only=on"
        return create_engine(
            url,
            pool_pre_ping=True,
            pool_size=2,
            max_overflow=2,
            pool_timeout=ris.connect_timeout_seconds,
            connect_args={"connect_timeout": connect_timeout, "options": opts},
        )
    if url.startswith(("mysql", "mariadb")):
        return create_engine(
            url,
            pool_pre_ping=True,
            connect_args={"connect_timeout": connect_timeout, "read_timeout": int(ris.query_timeout_seconds) or 1},
        )
    if url.startswith("mssql"):
        return create_engine(url, pool_pre_ping=True, connect_args={"timeout": connect_timeout})
    return create_engine(url, pool_pre_ping=True)


_REQUIRED = ("accession_number", "study_instance_uid", "patient_id", "report_text", "status", "report_time")
_OPTIONAL = ("version", "study_date")


class _ExternalSource:
    """A table in the site's RIS database, named by ``ris.table`` and ``ris.columns.*``."""

    def __init__(self, ris: RisSettings):
        self.ris = ris
        key = (ris.url, ris.table, tuple(ris.columns.model_dump().items()), ris.connect_timeout_seconds, ris.query_timeout_seconds)
        with _ENGINES_LOCK:
            cached = _ENGINES.get(key)
        if cached is None:
            cached = self._open()
            with _ENGINES_LOCK:
                _ENGINES[key] = cached
        self.engine, self.table, self.colmap = cached

    def _open(self) -> tuple[Engine, Table, dict[str, str | None]]:
        ris = self.ris
        engine = _make_ris_engine(ris)
        schema, _, name = ris.table.rpartition(".")
        try:
            table = Table(name, MetaData(), schema=schema or None, autoload_with=engine)
        except NoSuchTableError:
            engine.dispose()
            raise RisError(f"RIS table {ris.table!r} (ris.table) does not exist") from None
        except SQLAlchemyError as exc:
            engine.dispose()
            raise RisError(f"RIS unavailable: {_safe_exc(exc)}") from None
        names = {c.name.lower(): c.name for c in table.columns}
        colmap: dict[str, str | None] = {}
        for key in _REQUIRED + _OPTIONAL:
            configured = getattr(ris.columns, key)
            if configured is None:
                colmap[key] = None
                continue
            actual = names.get(configured.lower())
            if actual is None:
                if key in _REQUIRED:
                    engine.dispose()
                    raise RisError(
                        f"ris.columns.{key} = {configured!r} is not a column of RIS table {ris.table!r} "
                        f"(columns: {', '.join(sorted(names.values()))})"
                    )
                log.warning("ris.columns.%s = %r not in RIS table; not used", key, configured)
            colmap[key] = actual
        return engine, table, colmap

    def rows(self, field_name: str, value: str) -> list[_Row]:
        cm = self.colmap
        t = self.table
        col = t.c[cm[field_name]]
        order = []
        if cm["version"]:
            order.append(t.c[cm["version"]].desc())
        order.append(t.c[cm["report_time"]].desc())
        stmt = select(t).where(col == value).order_by(*order).limit(MAX_ROWS)
        try:
            with self.engine.connect() as conn:
                result = conn.execute(stmt).mappings().all()
        except SQLAlchemyError as exc:
            raise RisError(f"RIS unavailable: {_safe_exc(exc)}") from None
        out = []
        for i, r in enumerate(result):
            acc = _clean(r[cm["accession_number"]])
            suid = _clean(r[cm["study_instance_uid"]])
            version = _to_int(r[cm["version"]]) if cm["version"] else None
            rtime = parse_datetime(r[cm["report_time"]])
            sdate = parse_date(r[cm["study_date"]]) if cm["study_date"] else None
            ident = acc or suid or "-"
            out.append(
                _Row(
                    ref=f"ris:{self.ris.table}:{ident}@{version if version is not None else (rtime.isoformat() if rtime else '-')}"[:128],
                    group=f"acc:{acc}" if acc else (f"uid:{suid}" if suid else f"row:{field_name}:{i}"),
                    accession_number=acc,
                    study_instance_uid=suid,
                    patient_id=_clean(r[cm["patient_id"]]),
                    study_date=sdate.strftime("%Y%m%d") if sdate else None,
                    status=str(r[cm["status"]] or "").strip(),
                    report_time=rtime,
                    version=version,
                    text=str(r[cm["report_text"]] or ""),
                )
            )
        return out


# ---------------------------------------------------------------------------------------------
# Choice
# ---------------------------------------------------------------------------------------------
def _acceptable(rows: list[_Row], ris: RisSettings) -> list[tuple[_Row, str]]:
    out = []
    for r in rows:
        cls = status_class(r.status, ris)
        if cls is None or (cls == "preliminary" and not ris.use_preliminary):
            continue
        if not r.text.strip():
            continue
        out.append((r, cls))
    return out


def _newest(cands: list[tuple[_Row, str]]) -> tuple[_Row, str]:
    # Final/amended beat preliminary; then the highest version; then the latest report time.
    def key(rc: tuple[_Row, str]):
        r, cls = rc
        return (
            0 if cls == "preliminary" else 1,
            r.version if r.version is not None else -1,
            r.report_time or dt.datetime.min,
        )

    return max(cands, key=key)


def _match(rows: list[_Row], matched_by: str, ris: RisSettings, notes: list[str]) -> ReportMatch | None:
    cands = _acceptable(rows, ris)
    if not cands:
        if rows:
            prelim = sum(1 for r in rows if status_class(r.status, ris) == "preliminary")
            if prelim and not ris.use_preliminary:
                notes.append(f"only a preliminary report found by {matched_by} (ris.use_preliminary is off)")
            else:
                notes.append(f"report found by {matched_by} has no usable status or text")
        return None
    groups: dict[str, list[tuple[_Row, str]]] = {}
    for rc in cands:
        groups.setdefault(rc[0].group, []).append(rc)
    if len(groups) > 1:
        # Several reports (not versions of one) for one accession/UID (e.g. one from a CSV, one
        # over HL7): still one examination. Versions of different records are not comparable, so
        # the newest of each record competes by status class and report time.
        notes.append(f"{len(groups)} report records found by {matched_by}; the newest final one is used")
        heads = [_newest(g) for g in groups.values()]
        row, cls = max(heads, key=lambda rc: (rc[1] != "preliminary", rc[0].report_time or dt.datetime.min))
    else:
        row, cls = _newest(cands)
    version_for_hash: Any = row.version if row.version is not None else (row.report_time.isoformat() if row.report_time else None)
    return ReportMatch(
        text=row.text,
        status=row.status,
        version=row.version,
        report_time=row.report_time,
        ref=row.ref,
        hash=report_hash(row.text, version_for_hash),
        matched_by=matched_by,
        note="; ".join(notes) if notes else None,
        status_class=cls,
    )


def find_report(key: StudyKey, ris: RisSettings, node_db: Database | None) -> ReportMatch | None:
    """Find the report of a study (see :func:`lookup_report`, which also returns the notes)."""
    return lookup_report(key, ris, node_db)[0]


def lookup_report(key: StudyKey, ris: RisSettings, node_db: Database | None) -> tuple[ReportMatch | None, str | None]:
    """Find the report of a study and say why not when there is none.

    Parameters
    ----------
    key
        The study's AccessionNumber, StudyInstanceUID, PatientID and StudyDate.
    ris
        The ``ris`` settings: the source (``ris.url`` None = the embedded table of ``node_db``)
        and the matching rules.
    node_db
        The node database (embedded reports); unused with an external RIS.

    Returns
    -------
    (ReportMatch or None, str or None)
        The match (None when no acceptable report exists yet) and a note on what was skipped
        (preliminary only, another patient ID, another accession); no identifiers in it.

    Raises
    ------
    RisError
        The RIS cannot be reached or queried (transient: delay the study).
    AmbiguousReportError
        The PatientID step found reports of more than one examination.
    """
    if ris.url:
        source: Any = _ExternalSource(ris)
    else:
        if node_db is None:
            raise RisError("no external RIS configured (ris.url) and no node database given")
        source = _EmbeddedSource(node_db)
    notes: list[str] = []
    pid = _clean(key.patient_id)

    def same_patient(rows: list[_Row], by: str) -> list[_Row]:
        if not pid:
            return rows
        kept = [r for r in rows if not r.patient_id or r.patient_id == pid]
        if len(kept) < len(rows):
            notes.append(f"{len(rows) - len(kept)} report(s) found by {by} belong to another patient ID; ignored")
        return kept

    acc = _clean(key.accession_number)
    if acc:
        m = _match(same_patient(source.rows("accession_number", acc), "accession_number"), "accession_number", ris, notes)
        if m:
            return m, m.note
    suid = _clean(key.study_instance_uid)
    if suid:
        m = _match(same_patient(source.rows("study_instance_uid", suid), "study_instance_uid"), "study_instance_uid", ris, notes)
        if m:
            return m, m.note
    if pid:
        study_day = parse_date(key.study_date)
        if study_day is None:
            notes.append("no study date: PatientID matching skipped")
        else:
            window = dt.timedelta(days=ris.study_date_window_days)
            rows = []
            other_exam = 0
            for r in source.rows("patient_id", pid):
                day = parse_date(r.study_date) or (r.report_time.date() if r.report_time else None)
                if day is None or abs(day - study_day) > window:
                    continue
                if (acc and r.accession_number and r.accession_number != acc) or (
                    suid and r.study_instance_uid and r.study_instance_uid != suid
                ):
                    other_exam += 1
                    continue
                rows.append(r)
            if other_exam:
                notes.append(f"{other_exam} report(s) of the patient in the date window belong to another accession/study; not used")
            cands = _acceptable(rows, ris)
            exams = {r.group for r, _ in cands}
            if len(exams) > 1:
                note = (
                    f"ambiguous: PatientID matches reports of {len(exams)} different examinations within "
                    f"{ris.study_date_window_days} day(s) of the study date; none chosen"
                )
                log.warning("report lookup ambiguous for study %s (%d examinations)", uid_hash(suid), len(exams))
                raise AmbiguousReportError("; ".join(notes + [note]), len(exams))
            m = _match(rows, "patient_id", ris, notes)
            if m:
                return m, m.note
    note = "; ".join(notes) if notes else None
    if note:
        log.info("no report for study %s: %s", uid_hash(suid), note)
    return None, note
