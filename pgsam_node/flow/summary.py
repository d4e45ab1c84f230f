"""The one study summary: what the REST API, the dashboard, ``pgsam-node status --json`` and the
demo say about a study, with one key set.

It reads every stage's rows (series roles, the report wait, delivery progress, runs), so it lives in
``flow/``, the lowest package that may import them all; ``web`` and ``commands`` use it. Nothing here
writes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pgsam_node.assemble.readiness import MODEL_ROLES, missing_roles, report_wait
from pgsam_node.config import Settings
from pgsam_node.db.models import Run, Series, Study, utcnow
from pgsam_node.deliver.progress import format_delivery, pending_delivery
from pgsam_node.flow.retention import is_purged


def iso(t: dt.datetime | None) -> str | None:
    """A stored (naive UTC) time as ISO 8601 with ``Z``."""
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


def series_list(st: Study) -> list[dict]:
    """The study's series in series-number order, with their sequence role and why."""
    rows = sorted(st.series, key=lambda x: (x.series_number is None, x.series_number or 0, x.id))
    return [
        {
            "id": r.id,
            "series_uid": r.series_uid,
            "series_number": r.series_number,
            "description": r.description,
            "modality": r.modality,
            "sop_class_uid": r.sop_class_uid,
            "role": r.role,
            "role_selected": bool(r.role_selected),
            "role_reason": r.role_reason,
            "instance_count": r.instance_count,
            "frame_of_reference_uid": r.frame_of_reference_uid,
        }
        for r in rows
    ]


def timeline(st: Study) -> list[dict]:
    """The study's state changes, oldest first."""
    return [
        {"at": iso(e.at), "from_state": e.from_state, "to_state": e.to_state, "reason": e.reason, "actor": e.actor}
        for e in sorted(st.events, key=lambda e: e.id)
    ]


def run_dict(r: Run) -> dict:
    """One run's audit record (the findings the model was given are in the report view, not here)."""
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
        "started_at": iso(r.started_at),
        "finished_at": iso(r.finished_at),
    }


def runs_of(s: Session, study_id: int) -> list[dict]:
    """The study's runs, newest first."""
    return [run_dict(r) for r in s.scalars(select(Run).where(Run.study_id == study_id).order_by(Run.id.desc())).all()]


def study_summaries(
    s: Session,
    studies: Sequence[Study],
    *,
    detail: bool = False,
    settings: Settings | None = None,
    now: dt.datetime | None = None,
) -> list[dict]:
    """One summary per study, in the order given, with one key set for every reader.

    Parameters
    ----------
    s
        An open session the study rows belong to.
    studies
        The studies (one for a study page, a page of them for a list).
    detail
        Add the study's parts: roles, report wait, series, timeline and runs (one page's worth of
        queries per study; lists leave it off).
    settings
        The node's settings: ``assembly.required_roles`` for ``missing_roles`` (default T1, T2, T1C)
        and ``ris`` for ``report_wait`` (None without settings).
    now
        The clock for the ages (naive UTC; default now).

    Returns
    -------
    list of dict
        Always: ``id``, ``study_uid``, ``accession_number``, ``study_date``, ``study_description``,
        ``state``, ``state_reason``, ``state_changed_at``, ``state_age_seconds``, ``state_age``,
        ``age_seconds``, ``first_instance_at``, ``last_instance_at``, ``version``, ``series_count``,
        ``purged``, ``delivery`` (open outbox items per destination and state) and
        ``delivery_text``. With ``detail`` also ``missing_roles``, ``report_wait``, ``patient_id``,
        ``notes``, ``report_ref``, ``report_note``, ``attempts``, ``lease_owner``,
        ``lease_expires_at``, ``created_at``, ``series`` (:func:`series_list`), ``timeline``
        (:func:`timeline`) and ``runs`` (:func:`runs_of`, newest first). Times are ISO 8601 UTC
        with ``Z``.
    """
    now = now or utcnow()
    ids = [st.id for st in studies]
    counts = dict(
        s.execute(select(Series.study_id, func.count(Series.id)).where(Series.study_id.in_(ids)).group_by(Series.study_id)).all()
    ) if ids else {}
    delivery = pending_delivery(s, ids)
    roles = settings.assembly.required_roles if settings is not None else MODEL_ROLES
    out = []
    for st in studies:
        age = age_seconds(st.state_changed_at, now)
        d = {
            "id": st.id,
            "study_uid": st.study_uid,
            "accession_number": st.accession_number,
            "study_date": st.study_date,
            "study_description": st.study_description,
            "state": st.state,
            "state_reason": st.state_reason,
            "state_changed_at": iso(st.state_changed_at),
            "state_age_seconds": age,
            "state_age": human_age(age),
            "age_seconds": age_seconds(st.first_instance_at, now),
            "first_instance_at": iso(st.first_instance_at),
            "last_instance_at": iso(st.last_instance_at),
            "version": st.version,
            "series_count": counts.get(st.id, 0),
            "purged": is_purged(st),
            "delivery": delivery.get(st.id, []),
        }
        d["delivery_text"] = format_delivery(d["delivery"]) if d["delivery"] else ""
        if detail:
            d.update(
                missing_roles=missing_roles(st, roles),
                report_wait=report_wait(st, settings.ris) if settings is not None else None,
                patient_id=st.patient_id,
                notes=list(st.notes or []),
                report_ref=st.report_ref,
                report_note=st.report_note,
                attempts=st.attempts,
                lease_owner=st.lease_owner,
                lease_expires_at=iso(st.lease_expires_at),
                created_at=iso(st.created_at),
                series=series_list(st),
                timeline=timeline(st),
                runs=runs_of(s, st.id),
            )
        out.append(d)
    return out
