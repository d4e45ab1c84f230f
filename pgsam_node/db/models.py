"""SQLAlchemy 2 models of the node database (SQLite embedded, PostgreSQL shared).

Schema changes go through Alembic revisions in ``pgsam_node/db/migrations/versions``; the tests
check that the migrated schema equals these models.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    """Timezone-aware now in UTC (stored as naive UTC for SQLite/PostgreSQL parity)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class StudyState(str, enum.Enum):
    """Persisted study state machine (see DESIGN.md)."""

    RECEIVING = "RECEIVING"
    STABLE = "STABLE"
    WAITING_SEQUENCES = "WAITING_SEQUENCES"
    WAITING_REPORT = "WAITING_REPORT"
    READY = "READY"
    RUNNING = "RUNNING"
    ENCODED = "ENCODED"
    SENDING = "SENDING"
    DONE = "DONE"
    NO_FINDING = "NO_FINDING"
    FAILED = "FAILED"


class SequenceRole(str, enum.Enum):
    T1 = "T1"
    T2 = "T2"
    T1C = "T1C"
    OTHER = "OTHER"


class OutboxState(str, enum.Enum):
    PENDING = "PENDING"
    SENDING = "SENDING"
    SENT = "SENT"
    DEAD = "DEAD"


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_description: Mapped[str | None] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(32), default=StudyState.RECEIVING.value, index=True)
    state_reason: Mapped[str | None] = mapped_column(Text)
    state_changed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    first_instance_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_instance_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    #: When the study started waiting for its report (deadline = this + ris.wait_seconds).
    waiting_since: Mapped[dt.datetime | None] = mapped_column(DateTime)
    #: Run version: bumped by each re-run (late series, amended report); used in SEG series number.
    version: Mapped[int] = mapped_column(Integer, default=0)
    #: Matched report (reports.id in the embedded table, or the RIS key as text) and its hash.
    report_ref: Mapped[str | None] = mapped_column(String(128))
    report_hash: Mapped[str | None] = mapped_column(String(64))
    #: The matched report's text, exactly as the wait step matched it (patient data: never logged):
    #: the run reads it here instead of searching the RIS again. Set and cleared with ``report_ref``.
    report_text: Mapped[str | None] = mapped_column(Text)
    report_note: Mapped[str | None] = mapped_column(Text)
    #: Geometry / assembly warnings recorded on the study (list of {code, message}).
    notes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # Worker lease (DESIGN.md: claim atomically, heartbeat, expiry re-queues).
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    series: Mapped[list[Series]] = relationship(back_populates="study", cascade="all, delete-orphan")
    events: Mapped[list[StudyEvent]] = relationship(
        back_populates="study", cascade="all, delete-orphan", order_by="StudyEvent.id"
    )


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    series_number: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(String(128))
    frame_of_reference_uid: Mapped[str | None] = mapped_column(String(64))
    #: Classification headers kept for re-classification without re-reading files.
    headers: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    role: Mapped[str | None] = mapped_column(String(16))
    role_reason: Mapped[str | None] = mapped_column(Text)
    #: Whether this series is the one chosen for its role (deterministic tie-break).
    role_selected: Mapped[bool] = mapped_column(Boolean, default=False)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    last_instance_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series", cascade="all, delete-orphan")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    #: Path relative to the storage root.
    path: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    calling_aet: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    series: Mapped[Series] = relationship(back_populates="instances")


class StudyEvent(Base):
    """One state transition (the study timeline)."""

    __tablename__ = "study_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    from_state: Mapped[str | None] = mapped_column(String(32))
    to_state: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str | None] = mapped_column(String(128))

    study: Mapped[Study] = relationship(back_populates="events")


class Report(Base):
    """Embedded RIS: reports imported from CSV or received over HL7."""

    __tablename__ = "reports"
    __table_args__ = (
        UniqueConstraint("source_key", "version", name="uq_reports_source_version"),
        Index("ix_reports_study_uid", "study_instance_uid"),
        Index("ix_reports_patient", "patient_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Identity of the report across versions (e.g. HL7 filler order number, or accession).
    source_key: Mapped[str] = mapped_column(String(128))
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[str | None] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    report_time: Mapped[dt.datetime | None] = mapped_column(DateTime)
    report_text: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, default=1)
    source: Mapped[str] = mapped_column(String(16), default="csv")
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Run(Base):
    """Audit record of one model run for a study version."""

    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("idempotency_key", name="uq_runs_idempotency"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    #: sha256 of (StudyInstanceUID, sorted input SOP UIDs, report hash, model version).
    idempotency_key: Mapped[str] = mapped_column(String(64))
    input_uids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    report_hash: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(128))
    worker: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="RUNNING")
    error: Mapped[str | None] = mapped_column(Text)
    stage_seconds: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    output_uids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    output_paths: Mapped[list[Any]] = mapped_column(JSON, default=list)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class OutboxItem(Base):
    """One object to deliver to one destination; survives restarts."""

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "destination", name="uq_outbox_sop_dest"),
        Index("ix_outbox_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id", ondelete="SET NULL"), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    destination: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    #: Path relative to the storage root.
    path: Mapped[str] = mapped_column(String(512))
    state: Mapped[str] = mapped_column(String(16), default=OutboxState.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_status: Mapped[int | None] = mapped_column(Integer)
    permanent_failure: Mapped[bool] = mapped_column(Boolean, default=False)
    commitment_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    committed: Mapped[bool | None] = mapped_column(Boolean)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class AuditLog(Base):
    """Who did what (operator actions, sign-ins)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(128))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    remote_addr: Mapped[str | None] = mapped_column(String(64))


class ApiToken(Base):
    """Hashed API / dashboard credentials (no default password; first-run secret shown once)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(128))
    #: Public part of the token (``pgsam_<key_id>_<secret>``) used to find the row to verify.
    key_id: Mapped[str | None] = mapped_column(String(32), unique=True, index=True)
    #: Scopes: ``read``, ``actions``, ``report-text``, ``admin`` (= all).
    scopes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Metric(Base):
    """Counters persisted across processes (workers on other machines report here)."""

    __tablename__ = "metrics"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class NodeSwitch(Base):
    """An operator pause switch (``receiving``, ``processing``, ``sending``); no row = running.

    See :mod:`pgsam_node.db.switches`. Kept in the database so every process (listener, workers
    on other machines, the outbox job) obeys the same switch, and a restart keeps it.
    """

    __tablename__ = "node_switches"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    changed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    changed_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
