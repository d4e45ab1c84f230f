"""Read models shared by the REST API and the dashboard: rows → plain dicts (JSON-ready).

Report text only leaves here when the caller says the principal may see it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pgsam_node.assemble.readiness import MODEL_ROLES, missing_roles
from pgsam_node.deliver.progress import format_delivery, pending_delivery
from pgsam_node.flow.retention import is_purged
from pgsam_node.db.models import AuditLog, OutboxItem, OutboxState, Report, Run, Series, Study, StudyState, utcnow

FindingsFn = Callable[[str], Any]


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() + "Z" if t is not None else None


def age_seconds(t: dt.datetime | None, now: dt.datetime | None = None) -> float | None:
    if t is None:
        return None
    return max(0.0, ((now or utcnow()) - t).total_seconds())


def human_age(seconds: float | None) -> str:
    """``42 s``, ``5 min``, ``3 h``, ``2 d``."""
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{int(seconds)} s"
    if seconds < 5400:
        return f"{int(seconds // 60)} min"
    if seconds < 172800:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"


def study_summary(st: Study, now: dt.datetime | None = None, series_count: int | None = None) -> dict:
    age = age_seconds(st.state_changed_at, now)
    return {
        "id": st.id,
        "study_uid": st.study_uid,
        "accession_number": st.accession_number,
        "study_date": st.study_date,
        "study_description": st.study_description,
        "state": st.state,
        "state_reason": st.state_reason,
        "state_changed_at": _iso(st.state_changed_at),
        "state_age_seconds": age,
        "state_age": human_age(age),
        "age_seconds": age_seconds(st.first_instance_at, now),
        "first_instance_at": _iso(st.first_instance_at),
        "last_instance_at": _iso(st.last_instance_at),
        "version": st.version,
        "series_count": series_count,
        "purged": is_purged(st),
    }


def list_studies(s: Session, state: str | None = None, limit: int = 100, offset: int = 0) -> tuple[int, list[dict]]:
    q = select(Study)
    cq = select(func.count(Study.id))
    if state:
        q = q.where(Study.state == state)
        cq = cq.where(Study.state == state)
    total = s.scalar(cq) or 0
    rows = s.scalars(q.order_by(Study.last_instance_at.desc(), Study.id.desc()).limit(limit).offset(offset)).all()
    counts = dict(
        s.execute(
            select(Series.study_id, func.count(Series.id)).where(Series.study_id.in_([r.id for r in rows])).group_by(Series.study_id)
        ).all()
    ) if rows else {}
    now = utcnow()
    delivery = pending_delivery(s, [r.id for r in rows])
    out = [study_summary(r, now, counts.get(r.id, 0)) for r in rows]
    for d in out:
        d["delivery"] = delivery.get(d["id"], [])
        d["delivery_text"] = format_delivery(d["delivery"]) if d["delivery"] else ""
    return total, out


def state_counts(s: Session) -> dict[str, int]:
    got = dict(s.execute(select(Study.state, func.count(Study.id)).group_by(Study.state)).all())
    return {st.value: got.get(st.value, 0) for st in StudyState}


def study_detail(s: Session, st: Study, required_roles=MODEL_ROLES) -> dict:
    d = study_summary(st, series_count=len(st.series))
    d.update(
        missing_roles=missing_roles(st, required_roles),
        patient_id=st.patient_id,
        notes=list(st.notes or []),
        report_ref=st.report_ref,
        report_note=st.report_note,
        attempts=st.attempts,
        lease_owner=st.lease_owner,
        lease_expires_at=_iso(st.lease_expires_at),
        created_at=_iso(st.created_at),
    )
    return d


def series_list(st: Study) -> list[dict]:
    rows = sorted(st.series, key=lambda x: (x.series_number is None, x.series_number or 0, x.id))
    return [
        {
            "id": r.id,
            "series_uid": r.series_uid,
            "series_number": r.series_number,
            "description": r.description,
            "modality": r.modality,
            "role": r.role,
            "role_selected": bool(r.role_selected),
            "role_reason": r.role_reason,
            "instance_count": r.instance_count,
            "frame_of_reference_uid": r.frame_of_reference_uid,
        }
        for r in rows
    ]


def timeline(st: Study) -> list[dict]:
    return [
        {"at": _iso(e.at), "from_state": e.from_state, "to_state": e.to_state, "reason": e.reason, "actor": e.actor}
        for e in sorted(st.events, key=lambda e: e.id)
    ]


def run_dict(r: Run) -> dict:
    return {
        "id": r.id,
        "study_id": r.study_id,
        "version": r.version,
        "status": r.status,
        "model_version": r.model_version,
        "worker": r.worker,
        "error": r.error,
        "stage_seconds": dict(r.stage_seconds or {}),
        "metrics": {k: v for k, v in (r.metrics or {}).items() if k != "findings"},
        "output_uids": list(r.output_uids or []),
        "output_paths": list(r.output_paths or []),
        "input_count": len(r.input_uids or []),
        "idempotency_key": r.idempotency_key,
        "report_hash": r.report_hash,
        "started_at": _iso(r.started_at),
        "finished_at": _iso(r.finished_at),
    }


def runs_of(s: Session, study_id: int) -> list[dict]:
    return [run_dict(r) for r in s.scalars(select(Run).where(Run.study_id == study_id).order_by(Run.id.desc())).all()]


def outbox_dict(o: OutboxItem) -> dict:
    return {
        "id": o.id,
        "study_id": o.study_id,
        "run_id": o.run_id,
        "destination": o.destination,
        "sop_class_uid": o.sop_class_uid,
        "sop_instance_uid": o.sop_instance_uid,
        "state": o.state,
        "attempts": o.attempts,
        "next_attempt_at": _iso(o.next_attempt_at),
        "last_error": o.last_error,
        "last_status": o.last_status,
        "permanent_failure": bool(o.permanent_failure),
        "committed": o.committed,
        "created_at": _iso(o.created_at),
        "sent_at": _iso(o.sent_at),
    }


def outbox_items(s: Session, study_id: int | None = None, state: str | None = None, limit: int = 200) -> list[dict]:
    q = select(OutboxItem)
    if study_id is not None:
        q = q.where(OutboxItem.study_id == study_id)
    if state:
        q = q.where(OutboxItem.state == state)
    return [outbox_dict(o) for o in s.scalars(q.order_by(OutboxItem.id.desc()).limit(limit)).all()]


def errors(s: Session, limit: int = 200) -> dict:
    failed = s.scalars(
        select(Study).where(Study.state == StudyState.FAILED.value).order_by(Study.state_changed_at.desc()).limit(limit)
    ).all()
    now = utcnow()
    return {
        "failed_studies": [study_summary(x, now) for x in failed],
        "dead_outbox": outbox_items(s, state=OutboxState.DEAD.value, limit=limit),
    }


def matched_report(s: Session, st: Study) -> Report | None:
    """The report row matched to the study in the embedded reports table.

    ``Study.report_ref`` is ``reports:<id>`` for the embedded table (a bare id is accepted too);
    a report from an external RIS (``ris:<table>:<key>@<version>``) has no row here, so no text.
    """
    ref = st.report_ref
    if not ref:
        return None
    key = ref.split(":", 1)[1] if ref.startswith("reports:") else ref
    if key.isdigit():
        return s.get(Report, int(key))
    return None


def _findings_dict(f: Any) -> dict | None:
    if f is None:
        return None
    if dataclasses.is_dataclass(f):
        return dataclasses.asdict(f)
    if isinstance(f, dict):
        return dict(f)
    return None


def report_view(s: Session, st: Study, with_text: bool, findings_fn: FindingsFn | None = None) -> dict:
    """The matched report: reference, status, structured findings; ``text`` only ``with_text``.

    Findings come from the newest run (``Run.metrics["findings"]``: what the model was given), or
    else from ``findings_fn(report_text)`` (the report parser) when the app was given one.
    """
    rep = matched_report(s, st)
    out: dict[str, Any] = {
        "matched": st.report_ref is not None,
        "report_ref": st.report_ref,
        "report_hash": st.report_hash,
        "note": st.report_note,
        "status": rep.status if rep else None,
        "version": rep.version if rep else None,
        "report_time": _iso(rep.report_time) if rep else None,
        "source": rep.source if rep else None,
        "findings": None,
        "findings_source": None,
        "text_available": rep is not None,
        "text_included": False,
    }
    run = s.scalars(select(Run).where(Run.study_id == st.id).order_by(Run.id.desc())).first()
    f = _findings_dict((run.metrics or {}).get("findings")) if run is not None else None
    if f is not None:
        out["findings"], out["findings_source"] = f, f"run {run.id}"
    elif rep is not None and findings_fn is not None:
        out["findings"], out["findings_source"] = _findings_dict(findings_fn(rep.report_text)), "report parser"
    if with_text and rep is not None:
        out["text"] = rep.report_text
        out["text_included"] = True
    return out


def audit_entries(s: Session, limit: int = 200) -> list[dict]:
    rows = s.scalars(select(AuditLog).order_by(AuditLog.id.desc()).limit(limit)).all()
    return [
        {"at": _iso(a.at), "actor": a.actor, "action": a.action, "target": a.target, "detail": a.detail, "remote_addr": a.remote_addr}
        for a in rows
    ]
