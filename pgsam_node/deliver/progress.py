"""Delivery progress per study for operators: what is still queued, how often it was tried, the last error.

Read-only summaries of the outbox (``status``, the dashboard's study list). A PACS outage shows
here as a growing attempt count, the next attempt time and the PACS's last answer.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select

from pgsam_node.db.models import OutboxItem, OutboxState

_OPEN = (OutboxState.PENDING.value, OutboxState.SENDING.value, OutboxState.DEAD.value)


def pending_delivery(session, study_ids: Iterable[int]) -> dict[int, list[dict]]:
    """Unsent outbox items per study, one entry per (destination, state).

    Returns
    -------
    dict
        study id -> ``[{"destination", "state", "items", "attempts", "next_attempt_at", "last_error"}]``
        where ``attempts`` is the highest attempt count, ``next_attempt_at`` the earliest (ISO, UTC)
        and ``last_error`` the newest recorded error. Studies with nothing open are absent.
    """
    ids = list(study_ids)
    if not ids:
        return {}
    rows = session.scalars(
        select(OutboxItem).where(OutboxItem.study_id.in_(ids), OutboxItem.state.in_(_OPEN)).order_by(OutboxItem.id)
    ).all()
    groups: dict[tuple[int, str, str], dict] = {}
    for r in rows:
        g = groups.setdefault((r.study_id, r.destination, r.state), {
            "destination": r.destination, "state": r.state, "items": 0, "attempts": 0,
            "next_attempt_at": None, "last_error": None})
        g["items"] += 1
        g["attempts"] = max(g["attempts"], r.attempts or 0)
        if r.state != OutboxState.DEAD.value and r.next_attempt_at is not None:
            t = r.next_attempt_at.isoformat(timespec="seconds")
            g["next_attempt_at"] = t if g["next_attempt_at"] is None else min(g["next_attempt_at"], t)
        if r.last_error:
            g["last_error"] = r.last_error
    out: dict[int, list[dict]] = {}
    for (sid, _d, _s), g in groups.items():
        out.setdefault(sid, []).append(g)
    return out


def format_delivery(entries: list[dict]) -> str:
    """One line: ``pacs: 1 PENDING, attempt 3, next 2026-01-01T10:00:00 UTC, last error: …``."""
    parts = []
    for g in entries:
        p = f"{g['destination']}: {g['items']} {g['state']}, attempt {g['attempts']}"
        if g["state"] == OutboxState.DEAD.value:
            p += ", no more attempts (pgsam-node resend --dead)"
        elif g["next_attempt_at"]:
            p += f", next attempt {g['next_attempt_at']} UTC"
        if g["last_error"]:
            p += f", last error: {g['last_error']}"
        parts.append(p)
    return "; ".join(parts)
