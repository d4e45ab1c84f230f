"""Read models shared by the REST API and the dashboard: rows → plain dicts (JSON-ready).

Report text only leaves here when the caller says the principal may see it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pgsam_node.db.models import AuditLog, OutboxItem, OutboxState, Report, Run, Study, StudyState
# The study summary and its parts are flow.summary's; the API and the dashboard read them through here.
from pgsam_node.flow.summary import human_age, iso as _iso, run_dict, runs_of, series_list, study_summaries, timeline  # noqa: F401

FindingsFn = Callable[[str], Any]


def list_studies(s: Session, state: str | None = None, limit: int = 100, offset: int = 0) -> tuple[int, list[dict]]:
    """(total, one page of :func:`~pgsam_node.flow.summary.study_summaries`), newest first."""
    q = select(Study)
    cq = select(func.count(Study.id))
    if state:
        q = q.where(Study.state == state)
        cq = cq.where(Study.state == state)
    total = s.scalar(cq) or 0
    rows = s.scalars(q.order_by(Study.last_instance_at.desc(), Study.id.desc()).limit(limit).offset(offset)).all()
    return total, study_summaries(s, rows)


def state_counts(s: Session) -> dict[str, int]:
    got = dict(s.execute(select(Study.state, func.count(Study.id)).group_by(Study.state)).all())
    return {st.value: got.get(st.value, 0) for st in StudyState}


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
    return {
        "failed_studies": study_summaries(s, failed),
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
