"""Readiness: which series fill the model's roles of a study (chosen when the study became STABLE)."""

from __future__ import annotations

import logging

from pgsam_node.config import RisSettings
from pgsam_node.db import SequenceRole, Series, Study

log = logging.getLogger(__name__)
MODEL_ROLES = (SequenceRole.T1.value, SequenceRole.T2.value, SequenceRole.T1C.value)


def selected_series(study: Study) -> dict[str, Series]:
    """The series chosen for each model role (``role_selected``), keyed by role."""
    out: dict[str, Series] = {}
    for se in study.series:
        if se.role in MODEL_ROLES and se.role_selected:
            out[se.role] = se
    return out


#: States in which an operator needs to know which roles are missing and why.
_EXPLAIN_STATES = ("STABLE", "WAITING_SEQUENCES", "FAILED")


def _label(se: Series) -> str:
    n = "-" if se.series_number is None else str(se.series_number)
    return f"#{n} '{se.description or ''}'"


def missing_roles(study: Study, required_roles=MODEL_ROLES) -> list[dict]:
    """Roles the model needs that no series fills, with the series rejected for each and why.

    Parameters
    ----------
    study
        A study whose series were classified (at STABLE).
    required_roles
        ``assembly.required_roles``.

    Returns
    -------
    list of dict
        ``{"role", "rejected": [{"series", "series_uid", "role", "reason"}]}`` per missing role;
        empty when nothing is missing or the study was not classified yet. A series is listed
        for a role when it is not selected for any other role (for T1C also the selected T1,
        which lacked contrast evidence; for T1 the selected T1C).
    """
    if study.state not in _EXPLAIN_STATES and not any(se.role_selected for se in study.series):
        return []
    if any(se.role is None for se in study.series):
        return []
    chosen = selected_series(study)
    out = []
    for role in required_roles:
        if role in chosen:
            continue
        extra = {"T1C": "T1", "T1": "T1C"}.get(role)
        rejected = [
            {"series": _label(se), "series_uid": se.series_uid, "role": se.role,
             "reason": (se.role_reason or "").split(" | selection: ")[0]}
            for se in sorted(study.series, key=lambda x: (x.series_number is None, x.series_number or 0, x.series_uid))
            if not se.role_selected or se.role == extra
        ]
        out.append({"role": role, "rejected": rejected})
    return out


def format_missing(missing: list[dict], indent: str = "  ") -> list[str]:
    """Plain-text lines for :func:`missing_roles` (``status``, logs without UIDs)."""
    lines = []
    for m in missing:
        lines.append(f"{indent}missing {m['role']}: " + ("no series was classified " + m["role"] if not m["rejected"]
                                                           else "rejected series:"))
        for r in m["rejected"]:
            lines.append(f"{indent}  {r['series']} -> {r['reason']}")
    return lines


def report_wait(study: Study, ris: RisSettings) -> str | None:
    """For a WAITING_REPORT study: when the wait ends and what happens then (None otherwise)."""
    if study.state != "WAITING_REPORT" or study.waiting_since is None:
        return None
    import datetime as dt

    end = study.waiting_since + dt.timedelta(seconds=ris.wait_seconds)
    then = ("the study FAILS (ris.on_missing_report: fail)" if ris.on_missing_report == "fail"
            else "it runs without report text (ris.on_missing_report: run_without_text)")
    return (f"waiting for the report until {end.isoformat(timespec='seconds')} UTC "
            f"(ris.wait_seconds={ris.wait_seconds:g}); then {then}; "
            f"run now without it: pgsam-node run-now --study UID, or the dashboard's 'Run now without report'")
