"""Index of received instances: Study / Series / Instance rows, one small transaction each.

:func:`parse_header` reads only the header elements the node needs from the received bytes
(no pixel data), :func:`index_instance` upserts the rows. A re-sent SOP Instance UID updates its
row (no duplicate), a late instance re-opens a study that already left RECEIVING.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError

from pgsam_node.db import lifecycle as state
from pgsam_node.db.models import Instance, Series, Study, StudyEvent, StudyState, utcnow
from pgsam_node.errors import UnparseableDatasetError
from pgsam_node.ingest.evidence import HEADER_KEYWORDS, classification_headers
from pgsam_node.ingest.uids import uid_problem
from pgsam_node.logsetup import redact_values, uid_hash

log = logging.getLogger(__name__)

_IDENTITY_KEYWORDS = (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality", "InstanceNumber",
    "SeriesNumber", "SeriesDescription", "FrameOfReferenceUID", "PatientID", "AccessionNumber", "StudyDate",
    "StudyDescription",
)
#: Everything parse_header reads (pydicom ``specific_tags``): identity + classification evidence.
PARSE_KEYWORDS = sorted(set(_IDENTITY_KEYWORDS) | set(HEADER_KEYWORDS))


@dataclass
class InstanceHeader:
    """What the index needs from one instance (no pixel data)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str | None = None
    instance_number: int | None = None
    series_number: int | None = None
    series_description: str | None = None
    frame_of_reference_uid: str | None = None
    patient_id: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    study_description: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    #: From the file meta when parsed from a Part-10 stream.
    transfer_syntax_uid: str | None = None


def _s(ds, kw: str, maxlen: int | None = 64) -> str | None:
    try:
        v = ds.get(kw)
    except Exception:  # noqa: BLE001 - a malformed optional element is treated as absent
        return None
    if v is None:
        return None
    s = str(v).strip().rstrip("\x00").strip()
    return (s if maxlen is None else s[:maxlen]) or None


def _i(ds, kw: str) -> int | None:
    try:
        v = ds.get(kw)
        return int(v) if v not in (None, "") else None
    except Exception:  # noqa: BLE001 - IS that is not an integer: treat as absent
        return None


def _valid_or_none(uid: str | None) -> str | None:
    """An optional reference UID: kept whole when valid, dropped (never cut) when not."""
    return uid if uid and uid_problem(uid, "UID") is None else None


def header_from_dataset(ds, sop_class_uid: str | None = None) -> InstanceHeader:
    """Build an :class:`InstanceHeader` from a (partially read) dataset.

    Raises
    ------
    UnparseableDatasetError
        Study, Series or SOP Instance UID missing (PS3.4 B.2.3: 0xC210 cannot understand).
    """
    try:
        # Identifiers are never truncated (a cut UID can collide with another): read in full,
        # validated by the caller (pgsam_node.ingest.uids).
        study = _s(ds, "StudyInstanceUID", None)
        series = _s(ds, "SeriesInstanceUID", None)
        sop = _s(ds, "SOPInstanceUID", None)
        sop_class = _s(ds, "SOPClassUID", None) or sop_class_uid
    except Exception as exc:  # noqa: BLE001 - any decoding failure means we cannot understand it
        raise UnparseableDatasetError(f"cannot read the identifying UIDs: {redact_values(str(exc))}") from exc
    missing = [n for n, v in (("StudyInstanceUID", study), ("SeriesInstanceUID", series), ("SOPInstanceUID", sop), ("SOPClassUID", sop_class)) if not v]
    if missing:
        raise UnparseableDatasetError(f"dataset lacks {', '.join(missing)}")
    try:
        headers = classification_headers(ds)
    except Exception as exc:  # noqa: BLE001
        raise UnparseableDatasetError(f"cannot read the classification headers: {redact_values(str(exc))}") from exc
    headers.setdefault("SOPClassUID", sop_class)
    return InstanceHeader(
        study_uid=study, series_uid=series, sop_uid=sop, sop_class_uid=sop_class,
        modality=_s(ds, "Modality", 16), instance_number=_i(ds, "InstanceNumber"),
        series_number=_i(ds, "SeriesNumber"), series_description=_s(ds, "SeriesDescription", 128),
        frame_of_reference_uid=_valid_or_none(_s(ds, "FrameOfReferenceUID", None)), patient_id=_s(ds, "PatientID"),
        accession_number=_s(ds, "AccessionNumber"), study_date=_s(ds, "StudyDate", 8),
        study_description=_s(ds, "StudyDescription", 128), headers=headers,
    )


def quick_header(values: dict[int, str], sop_class_uid: str | None = None) -> InstanceHeader:
    """An :class:`InstanceHeader` with only the identifying values, from
    :func:`pgsam_node.ingest.headscan.scan_identity` (normalised exactly as :func:`header_from_dataset`).

    Raises
    ------
    UnparseableDatasetError
        A UID is missing.
    """
    from pgsam_node.ingest import headscan

    def text(tag: int) -> str | None:
        v = values.get(tag)
        return (v.strip() or None) if v else None  # never truncated: see header_from_dataset

    study, series, sop = (text(headscan.STUDY_INSTANCE_UID), text(headscan.SERIES_INSTANCE_UID),
                          text(headscan.SOP_INSTANCE_UID))
    sop_class = text(headscan.SOP_CLASS_UID) or sop_class_uid
    missing = [n for n, v in (("StudyInstanceUID", study), ("SeriesInstanceUID", series), ("SOPInstanceUID", sop),
                              ("SOPClassUID", sop_class)) if not v]
    if missing:
        raise UnparseableDatasetError(f"dataset lacks {', '.join(missing)}")
    try:
        raw = values.get(headscan.INSTANCE_NUMBER, "").strip()
        number = int(raw) if raw.lstrip("+-").isdigit() else int(float(raw)) if float(raw).is_integer() else None
    except ValueError:
        number = None
    return InstanceHeader(study_uid=study, series_uid=series, sop_uid=sop, sop_class_uid=sop_class,
                          instance_number=number)


def parse_header(part10: bytes | BytesIO | BinaryIO, sop_class_uid: str | None = None) -> InstanceHeader:
    """Parse the header of a Part-10 byte stream without reading pixel data.

    Parameters
    ----------
    part10
        Preamble + file meta + data set (what the spool writes).
    sop_class_uid
        Fallback SOP Class UID (the C-STORE Affected SOP Class UID).

    Raises
    ------
    UnparseableDatasetError
    """
    stream = BytesIO(part10) if isinstance(part10, (bytes, bytearray)) else part10
    try:
        ds = dcmread(stream, stop_before_pixels=True, specific_tags=PARSE_KEYWORDS)
    except (InvalidDicomError, Exception) as exc:  # noqa: BLE001 - pydicom raises many types
        raise UnparseableDatasetError(
            f"cannot parse the dataset: {type(exc).__name__}: {redact_values(str(exc))}") from exc
    h = header_from_dataset(ds, sop_class_uid)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        h.transfer_syntax_uid = str(meta.TransferSyntaxUID)
    return h


def reindex_spool(db, settings) -> int:
    """Index spool files that have no row; run at start-up before the listener.

    A file reaches the spool (fsynced) before its row is committed, so a crash in between, or a
    power loss that rolls back the last SQLite commits (``synchronous=NORMAL``), leaves files
    without rows. The spool is the source of truth: such files are parsed and indexed here. A
    file that cannot be parsed is left in place and logged (it was never acknowledged).

    Returns
    -------
    int
        Number of files indexed.
    """
    spool_dir = settings.spool_dir
    if not spool_dir.is_dir():
        return 0
    with db.session() as s:
        known = set(s.scalars(select(Instance.path)))
    n = 0
    for study_dir in sorted(os.scandir(spool_dir), key=lambda e: e.name):
        if not study_dir.is_dir():
            continue
        for series_dir in os.scandir(study_dir.path):
            if not series_dir.is_dir():
                continue
            for f in os.scandir(series_dir.path):
                rel = f"spool/{study_dir.name}/{series_dir.name}/{f.name}"
                if rel in known or not f.name.endswith(".dcm"):
                    continue
                try:
                    with open(f.path, "rb") as fh:
                        h = parse_header(BytesIO(fh.read()))
                    res = index_instance(db, settings, h, rel, f.stat().st_size, h.transfer_syntax_uid, None)
                    if res.conflict:
                        log.error("spool file %s/%s/%s left unindexed: SOP Instance UID %s", uid_hash(study_dir.name),
                                  uid_hash(series_dir.name), uid_hash(f.name), res.conflict)
                        continue
                    n += 1
                except (UnparseableDatasetError, OSError) as exc:
                    log.error("spool file %s/%s/%s cannot be indexed: %s", uid_hash(study_dir.name),
                              uid_hash(series_dir.name), uid_hash(f.name), exc)
    if n:
        log.warning("re-indexed %d spool file(s) that had no database row", n)
    return n


@dataclass
class IndexResult:
    """Outcome of :func:`index_instance`."""

    study_id: int
    series_id: int
    new_study: bool
    new_series: bool
    replaced: bool
    reopened: bool
    #: Spool path the re-sent instance had before, when it differs (its file was removed).
    old_path: str | None = None
    #: Set when the instance conflicts with the one already indexed under its SOP Instance UID
    #: (another study or series; ``dicom.resend_policy``): nothing was changed, and
    #: ``existing_path`` is the kept instance's file.
    conflict: str | None = None
    existing_path: str | None = None


class _WriterLock:
    """The SQLite ingest writer lock: a thread lock, and with acceptor worker processes
    (``dicom.acceptor_processes`` > 1) also an exclusive ``flock`` on a file of the storage root,
    so that the processes indexing instances and the assembly step exclude each other as threads
    of one process do. Each process opens its own descriptor (an inherited one would share the
    lock)."""

    def __init__(self) -> None:
        self._thread_lock = threading.Lock()
        self._path: str | None = None
        self._fd: int | None = None
        self._pid = 0

    def share_between_processes(self, path: str | os.PathLike[str] | None) -> None:
        """Take the file lock too (``path``), or only the thread lock again (None)."""
        with self._thread_lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._path, self._fd = (os.fspath(path) if path is not None else None), None

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        if self._path is None:
            return
        try:
            import fcntl

            if self._fd is None or self._pid != os.getpid():
                self._fd, self._pid = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o640), os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *exc) -> None:
        try:
            if self._path is not None and self._fd is not None:
                import fcntl

                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


#: SQLite has one writer: serialise our writes rather than spin on busy errors.
_sqlite_write_lock = _WriterLock()
#: The file of the cross-process writer lock, in the storage root.
WRITER_LOCK_NAME = ".index-writer.lock"


def share_write_lock(settings, on: bool = True) -> None:
    """Make :func:`write_lock` exclude other processes of this storage root (acceptor worker
    processes index instances themselves), or stop doing so."""
    _sqlite_write_lock.share_between_processes(settings.storage_root / WRITER_LOCK_NAME if on else None)


def write_lock(db) -> AbstractContextManager:
    """The lock under which no instance is indexed (SQLite; PostgreSQL relies on row locks): held
    by the assembly step between its stability check and the study's state change."""
    return _sqlite_write_lock if db.is_sqlite else nullcontext()


def index_instance(
    db,
    settings,
    h: InstanceHeader,
    rel_path: str,
    size: int,
    transfer_syntax_uid: str | None,
    calling_aet: str | None = None,
    now: dt.datetime | None = None,
    attempts: int = 5,
    full_header: Callable[[], InstanceHeader] | None = None,
    fast: FastIndexSession | None = None,
) -> IndexResult:
    """Record one stored instance (upsert) in one transaction; retried on a lost race.

    Parameters
    ----------
    db
        :class:`~pgsam_node.db.Database`.
    settings
        Node settings (classification rules).
    h
        Parsed header.
    rel_path, size
        Spool file relative to the storage root, and its size.
    full_header
        When ``h`` holds only the identifying values (:func:`quick_header`): a callable returning
        the complete header, called only if the instance opens a new study or series or re-opens
        one (classification evidence is needed then, and only then).
    fast
        A :class:`FastIndexSession` to reuse (its series-id cache); a new one otherwise.

    Returns
    -------
    IndexResult
    """
    for attempt in range(1, attempts + 1):
        try:
            if db.is_sqlite:
                with _sqlite_write_lock:
                    return _index_once(db, settings, h, rel_path, size, transfer_syntax_uid, calling_aet, now,
                                       full_header, fast)
            return _index_once(db, settings, h, rel_path, size, transfer_syntax_uid, calling_aet, now, full_header,
                               fast)
        except (IntegrityError, OperationalError) as exc:
            # Two associations created the same study/series at once (unique constraint), or
            # the database was busy: the transaction rolled back; try again.
            if attempt == attempts:
                raise
            log.info("index retry %d for instance %s: %s", attempt, uid_hash(h.sop_uid), type(exc).__name__)
            time.sleep(0.01 * attempt)
    raise AssertionError("unreachable")


class FastIndexSession:
    """The index fast path: the common case (a new instance of a known series of a study still
    RECEIVING, or the same instance sent again) in three or four plain SQL statements on a DB-API
    connection from the engine's pool, valid for SQLite >= 3.35 and PostgreSQL. Building ORM
    statements, or even SQLAlchemy ``text()`` executions, per instance cost more than the
    statements themselves. Series ids are cached for the session (the listener keeps one per
    association).

    :meth:`record` (called by :func:`index_instance`, under the SQLite write lock) returns None
    whenever the slow path is needed (new study or series, re-sent
    instance moved to another series, study to re-open, or any database error), after rolling
    back; :func:`index_instance` then takes the ORM path, which owns retries and error reporting.
    """

    def __init__(self, db):
        self.db = db
        self._series: dict[str, tuple[str, int]] = {}
        if db.is_sqlite:
            p = lambda name: f":{name}"  # noqa: E731 - sqlite3 named style
            self._fmt_now = lambda t: t.strftime("%Y-%m-%d %H:%M:%S.%f")  # SQLAlchemy's SQLite DateTime
        else:
            p = lambda name: f"%({name})s"  # noqa: E731 - psycopg pyformat
            self._fmt_now = lambda t: t
        self._touch_study = (f"UPDATE studies SET last_instance_at = {p('now')}, updated_at = {p('now')} "
                             f"WHERE study_uid = {p('study_uid')} AND state = 'RECEIVING' RETURNING id")
        self._series_id = f"SELECT id FROM series WHERE series_uid = {p('series_uid')} AND study_id = {p('study_id')}"
        self._insert = (
            "INSERT INTO instances (series_id, sop_instance_uid, sop_class_uid, transfer_syntax_uid, instance_number, "
            f"path, size_bytes, calling_aet, received_at) VALUES ({p('series_id')}, {p('sop_uid')}, "
            f"{p('sop_class_uid')}, {p('ts_uid')}, {p('instance_number')}, {p('path')}, {p('size')}, "
            f"{p('calling_aet')}, {p('now')}) ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING id")
        self._count = (f"UPDATE series SET instance_count = instance_count + 1, last_instance_at = {p('now')} "
                       f"WHERE id = {p('series_id')}")
        # A re-sent instance whose file was just replaced at the same path, in the same series.
        self._resent = (
            f"UPDATE instances SET sop_class_uid = {p('sop_class_uid')}, transfer_syntax_uid = {p('ts_uid')}, "
            f"instance_number = {p('instance_number')}, size_bytes = {p('size')}, calling_aet = {p('calling_aet')}, "
            f"received_at = {p('now')} WHERE sop_instance_uid = {p('sop_uid')} AND series_id = {p('series_id')} "
            f"AND path = {p('path')} RETURNING id")
        self._touch_series = f"UPDATE series SET last_instance_at = {p('now')} WHERE id = {p('series_id')}"

    def record(self, h: InstanceHeader, rel_path: str, size: int, ts_uid: str | None, calling_aet: str | None,
               now: dt.datetime) -> IndexResult | None:
        """Index the instance on the fast path, or return None (nothing changed)."""
        now = self._fmt_now(now)
        try:
            # Checked out per instance, not held per association: a held connection per
            # association could exhaust the pool when dicom.max_associations exceeds its size.
            conn = self.db.engine.raw_connection()
        except Exception as exc:  # noqa: BLE001 - the slow path retries and reports
            return self._fall_back(h, exc)
        try:
            cur = conn.cursor()
            try:
                cur.execute(self._touch_study, {"now": now, "study_uid": h.study_uid})
                row = cur.fetchone()
                if row is None:
                    return self._give_up(conn)
                study_id = row[0]
                cached = self._series.get(h.series_uid)
                if cached is not None and cached[0] == h.study_uid:
                    series_id = cached[1]
                else:
                    cur.execute(self._series_id, {"series_uid": h.series_uid, "study_id": study_id})
                    row = cur.fetchone()
                    if row is None:
                        return self._give_up(conn)
                    series_id = row[0]
                values = {
                    "series_id": series_id, "sop_uid": h.sop_uid, "sop_class_uid": h.sop_class_uid, "ts_uid": ts_uid,
                    "instance_number": h.instance_number, "path": rel_path, "size": size, "calling_aet": calling_aet,
                    "now": now,
                }
                cur.execute(self._insert, values)
                replaced = cur.fetchone() is None
                if replaced:
                    # Already indexed: the same instance sent again (its file was just replaced).
                    # Anything else (it moved to another series) takes the slow path.
                    cur.execute(self._resent, values)
                    if cur.fetchone() is None:
                        return self._give_up(conn)
                    cur.execute(self._touch_series, {"now": now, "series_id": series_id})
                else:
                    cur.execute(self._count, {"now": now, "series_id": series_id})
            finally:
                cur.close()
            conn.commit()
        except Exception as exc:  # noqa: BLE001 - the slow path retries and reports
            self._give_up(conn)
            return self._fall_back(h, exc)
        finally:
            try:
                conn.close()  # back to the pool
            except Exception:  # noqa: BLE001 - a broken connection is discarded by the pool
                pass
        self._series[h.series_uid] = (h.study_uid, series_id)
        return IndexResult(study_id, series_id, False, False, replaced, False)

    def _fall_back(self, h: InstanceHeader, exc: Exception) -> None:
        log.info("index fast path fell back for instance %s: %s", uid_hash(h.sop_uid), type(exc).__name__)
        self._series.clear()
        return None

    @staticmethod
    def _give_up(conn) -> None:
        try:
            conn.rollback()
        except Exception:  # noqa: BLE001 - a broken connection: the pool discards it
            pass
        return None

    def close(self) -> None:
        """Forget cached series ids (the session holds no connection between instances)."""
        self._series.clear()


def _index_once(db, settings, h, rel_path, size, ts_uid, calling_aet, now, full_header=None,
                fast: FastIndexSession | None = None) -> IndexResult:
    now = now or utcnow()
    done = (fast or FastIndexSession(db)).record(h, rel_path, size, ts_uid, calling_aet, now)
    if done is not None:
        return done
    if full_header is not None:
        h = full_header()
    result = _slow_path(db, settings, h, rel_path, size, ts_uid, calling_aet, now)
    if result.conflict:
        return result
    if result.old_path:
        # The instance moved (re-sent with another Study/Series UID): drop the stale file only
        # now that the row points at the new one.
        try:
            (settings.storage_root / result.old_path).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove the previous file of instance %s: %s", uid_hash(h.sop_uid), exc.strerror)
    return result


def _slow_path(db, settings, h, rel_path, size, ts_uid, calling_aet, now) -> IndexResult:
    new_study = new_series = replaced = reopened = False
    old_path = None
    with db.transaction() as s:
        existing = s.scalars(select(Instance).where(Instance.sop_instance_uid == h.sop_uid)).first()
        if existing is not None and existing.path != rel_path:
            # The SOP Instance UID is already stored under another study or series. It moves only
            # under dicom.resend_policy overwrite_same_source from the same calling AE; otherwise
            # nothing changes here and the caller keeps or refuses the new copy (docs/ingest.md).
            same_source = (existing.calling_aet or None) == (calling_aet or None)
            if not (settings.dicom.resend_policy == "overwrite_same_source" and same_source):
                return IndexResult(0, 0, False, False, False, False, conflict="stored under another study or series",
                                   existing_path=existing.path)
        study = s.scalars(select(Study).where(Study.study_uid == h.study_uid).with_for_update()).first()
        if study is None:
            study = Study(
                study_uid=h.study_uid, patient_id=h.patient_id, accession_number=h.accession_number,
                study_date=h.study_date, study_description=h.study_description,
                state=StudyState.RECEIVING.value, state_reason="first instance", state_changed_at=now,
                first_instance_at=now, last_instance_at=now, notes=[],
            )
            s.add(study)
            s.flush()
            s.add(StudyEvent(study_id=study.id, at=now, from_state=None, to_state=StudyState.RECEIVING.value,
                             reason="first instance", actor="receive"))
            new_study = True
        else:
            if study.state != StudyState.RECEIVING.value:
                # A late instance: the study's inputs changed, so it must be assembled again.
                state.transition(s, study, StudyState.RECEIVING, "late instance", actor="receive", force=True)
                reopened = True
            study.last_instance_at = now
            for attr, val in (("accession_number", h.accession_number), ("patient_id", h.patient_id),
                              ("study_date", h.study_date), ("study_description", h.study_description)):
                if val and not getattr(study, attr):
                    setattr(study, attr, val)
        series = s.scalars(select(Series).where(Series.series_uid == h.series_uid)).first()
        if series is None:
            # Classified by assembly when the study becomes STABLE (it needs the whole study).
            series = Series(
                study_id=study.id, series_uid=h.series_uid, modality=h.modality, sop_class_uid=h.sop_class_uid,
                series_number=h.series_number, description=h.series_description,
                frame_of_reference_uid=h.frame_of_reference_uid, headers=h.headers, role=None,
                role_reason="classified when the study becomes stable", role_selected=False, instance_count=0,
                last_instance_at=now,
            )
            s.add(series)
            s.flush()
            new_series = True
            log.info("series %s of study %s: first instance", uid_hash(h.series_uid), uid_hash(h.study_uid))
        series.last_instance_at = now
        inst = s.scalars(select(Instance).where(Instance.sop_instance_uid == h.sop_uid)).first()
        if inst is None:
            s.add(Instance(
                series_id=series.id, sop_instance_uid=h.sop_uid, sop_class_uid=h.sop_class_uid,
                transfer_syntax_uid=ts_uid, instance_number=h.instance_number, path=rel_path, size_bytes=size,
                calling_aet=calling_aet, received_at=now,
            ))
            series.instance_count = (series.instance_count or 0) + 1
        else:
            replaced = True
            if inst.series_id != series.id:
                old = s.get(Series, inst.series_id)
                if old is not None:
                    old.instance_count = max(0, (old.instance_count or 1) - 1)
                series.instance_count = (series.instance_count or 0) + 1
                inst.series_id = series.id
            if inst.path != rel_path:
                old_path = inst.path
            inst.sop_class_uid = h.sop_class_uid
            inst.transfer_syntax_uid = ts_uid
            inst.instance_number = h.instance_number
            inst.path = rel_path
            inst.size_bytes = size
            inst.calling_aet = calling_aet
            inst.received_at = now
        return IndexResult(study.id, series.id, new_study, new_series, replaced, reopened, old_path)
