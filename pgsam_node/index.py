"""Index of received instances: Study / Series / Instance rows, one small transaction each.

:func:`parse_header` reads only the header elements the node needs from the received bytes
(no pixel data), :func:`index_instance` upserts the rows. A re-sent SOP Instance UID updates its
row (no duplicate), a late instance re-opens a study that already left RECEIVING.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from . import state
from .classify import HEADER_KEYWORDS, classification_headers, classify_series, rules_for
from .db.models import Instance, Series, Study, StudyEvent, StudyState, utcnow
from .errors import UnparseableDatasetError
from .logsetup import uid_hash

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


def _s(ds, kw: str, maxlen: int = 64) -> str | None:
    try:
        v = ds.get(kw)
    except Exception:  # noqa: BLE001 - a malformed optional element is treated as absent
        return None
    if v is None:
        return None
    s = str(v).strip().rstrip("\x00").strip()
    return s[:maxlen] or None


def _i(ds, kw: str) -> int | None:
    try:
        v = ds.get(kw)
        return int(v) if v not in (None, "") else None
    except Exception:  # noqa: BLE001 - IS that is not an integer: treat as absent
        return None


def header_from_dataset(ds, sop_class_uid: str | None = None) -> InstanceHeader:
    """Build an :class:`InstanceHeader` from a (partially read) dataset.

    Raises
    ------
    UnparseableDatasetError
        Study, Series or SOP Instance UID missing (PS3.4 B.2.3: 0xC210 cannot understand).
    """
    try:
        study = _s(ds, "StudyInstanceUID")
        series = _s(ds, "SeriesInstanceUID")
        sop = _s(ds, "SOPInstanceUID")
        sop_class = _s(ds, "SOPClassUID") or sop_class_uid
    except Exception as exc:  # noqa: BLE001 - any decoding failure means we cannot understand it
        raise UnparseableDatasetError(f"cannot read the identifying UIDs: {exc}") from exc
    missing = [n for n, v in (("StudyInstanceUID", study), ("SeriesInstanceUID", series), ("SOPInstanceUID", sop), ("SOPClassUID", sop_class)) if not v]
    if missing:
        raise UnparseableDatasetError(f"dataset lacks {', '.join(missing)}")
    try:
        headers = classification_headers(ds)
    except Exception as exc:  # noqa: BLE001
        raise UnparseableDatasetError(f"cannot read the classification headers: {exc}") from exc
    headers.setdefault("SOPClassUID", sop_class)
    return InstanceHeader(
        study_uid=study, series_uid=series, sop_uid=sop, sop_class_uid=sop_class,
        modality=_s(ds, "Modality", 16), instance_number=_i(ds, "InstanceNumber"),
        series_number=_i(ds, "SeriesNumber"), series_description=_s(ds, "SeriesDescription", 128),
        frame_of_reference_uid=_s(ds, "FrameOfReferenceUID"), patient_id=_s(ds, "PatientID"),
        accession_number=_s(ds, "AccessionNumber"), study_date=_s(ds, "StudyDate", 8),
        study_description=_s(ds, "StudyDescription", 128), headers=headers,
    )


def parse_header(part10: bytes | BytesIO, sop_class_uid: str | None = None) -> InstanceHeader:
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
    stream = part10 if isinstance(part10, BytesIO) else BytesIO(part10)
    try:
        ds = dcmread(stream, stop_before_pixels=True, specific_tags=PARSE_KEYWORDS)
    except (InvalidDicomError, Exception) as exc:  # noqa: BLE001 - pydicom raises many types
        raise UnparseableDatasetError(f"cannot parse the dataset: {type(exc).__name__}: {exc}") from exc
    return header_from_dataset(ds, sop_class_uid)


@dataclass
class IndexResult:
    """Outcome of :func:`index_instance`."""

    study_id: int
    series_id: int
    new_study: bool
    new_series: bool
    replaced: bool
    reopened: bool


#: SQLite has one writer: serialise our writes in-process rather than spin on busy errors.
_sqlite_write_lock = threading.Lock()


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

    Returns
    -------
    IndexResult
    """
    for attempt in range(1, attempts + 1):
        try:
            if db.is_sqlite:
                with _sqlite_write_lock:
                    return _index_once(db, settings, h, rel_path, size, transfer_syntax_uid, calling_aet, now)
            return _index_once(db, settings, h, rel_path, size, transfer_syntax_uid, calling_aet, now)
        except (IntegrityError, OperationalError) as exc:
            # Two associations created the same study/series at once (unique constraint), or
            # the database was busy: the transaction rolled back; try again.
            if attempt == attempts:
                raise
            log.info("index retry %d for instance %s: %s", attempt, uid_hash(h.sop_uid), type(exc).__name__)
            time.sleep(0.01 * attempt)
    raise AssertionError("unreachable")


def _insert_instance_stmt(dialect: str, values: dict[str, Any]):
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    return (dialect_insert(Instance).values(**values)
            .on_conflict_do_nothing(index_elements=[Instance.sop_instance_uid]).returning(Instance.id))


def _fast_path(s, dialect: str, h: InstanceHeader, rel_path, size, ts_uid, calling_aet, now) -> IndexResult | None:
    """The common case in three short statements: a new instance of a known series of a study
    still RECEIVING. Returns None (nothing changed but timestamps) when the slow path is needed."""
    study_id = s.execute(
        update(Study).where(Study.study_uid == h.study_uid, Study.state == StudyState.RECEIVING.value)
        .values(last_instance_at=now, updated_at=now).returning(Study.id)
    ).scalar()
    if study_id is None:
        return None
    series_id = s.execute(select(Series.id).where(Series.series_uid == h.series_uid, Series.study_id == study_id)).scalar()
    if series_id is None:
        return None
    inst_id = s.execute(_insert_instance_stmt(dialect, dict(
        series_id=series_id, sop_instance_uid=h.sop_uid, sop_class_uid=h.sop_class_uid, transfer_syntax_uid=ts_uid,
        instance_number=h.instance_number, path=rel_path, size_bytes=size, calling_aet=calling_aet, received_at=now,
    ))).scalar()
    if inst_id is None:
        return None  # re-sent instance: the slow path updates it
    s.execute(update(Series).where(Series.id == series_id)
              .values(instance_count=Series.instance_count + 1, last_instance_at=now))
    return IndexResult(study_id, series_id, False, False, False, False)


def _index_once(db, settings, h, rel_path, size, ts_uid, calling_aet, now) -> IndexResult:
    now = now or utcnow()
    new_study = new_series = replaced = reopened = False
    with db.transaction() as s:
        fast = _fast_path(s, db.engine.dialect.name, h, rel_path, size, ts_uid, calling_aet, now)
        if fast is not None:
            return fast
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
            role, reason = classify_series(h.headers, rules_for(settings))
            series = Series(
                study_id=study.id, series_uid=h.series_uid, modality=h.modality, sop_class_uid=h.sop_class_uid,
                series_number=h.series_number, description=h.series_description,
                frame_of_reference_uid=h.frame_of_reference_uid, headers=h.headers, role=role,
                role_reason=reason, role_selected=False, instance_count=0, last_instance_at=now,
            )
            s.add(series)
            s.flush()
            new_series = True
            log.info("series %s of study %s classified %s", uid_hash(h.series_uid), uid_hash(h.study_uid), role,
                     extra={"reason": reason})
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
            inst.sop_class_uid = h.sop_class_uid
            inst.transfer_syntax_uid = ts_uid
            inst.instance_number = h.instance_number
            inst.path = rel_path
            inst.size_bytes = size
            inst.calling_aet = calling_aet
            inst.received_at = now
        return IndexResult(study.id, series.id, new_study, new_series, replaced, reopened)
