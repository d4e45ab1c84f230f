"""Study assembly: when is a study complete, and which series plays which role.

A study is *stable* when no instance has arrived for ``assembly.stable_seconds`` (DESIGN.md: the
release of an association is only a hint, because a PACS may send one study over several
associations, or several studies over one). At stability the series are re-classified from their
stored headers (rules may have changed since the first instance) and one series per role is
selected.

Tie-break when two or more series compete for a role (:func:`select_roles`), first difference
wins:

1. more instances (a complete acquisition beats a partial or a single-slice one);
2. higher SeriesNumber (the later acquisition: a repeat after motion, or the later post-contrast
   phase); a series without SeriesNumber loses;
3. lower SeriesInstanceUID in string order (only to make the choice deterministic).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from pgsam_node.db import lifecycle as state
from pgsam_node.assemble.classify import classify_series, rules_for, shared_exam_values
from pgsam_node.db.models import Series, Study, StudyState, utcnow
from pgsam_node.ingest.index import _sqlite_write_lock
from pgsam_node.logsetup import uid_hash

log = logging.getLogger(__name__)

SEQUENCE_ROLES = ("T1", "T2", "T1C")


@dataclass
class Choice:
    """The selection for one role: the chosen series and why."""

    role: str
    series_uid: str
    reason: str
    competitors: list[str]


def _rank_key(s) -> tuple:
    # Sort ascending: more instances first, then higher series number, then lower UID.
    sn = s.series_number
    return (-(s.instance_count or 0), 0 if sn is not None else 1, -(sn or 0), s.series_uid)


def select_roles(series: Iterable) -> dict[str, Choice]:
    """Choose one series per role (T1, T2, T1C), deterministically.

    Parameters
    ----------
    series
        Objects with ``series_uid``, ``role``, ``instance_count``, ``series_number`` (e.g.
        :class:`~pgsam_node.db.Series` rows).

    Returns
    -------
    dict
        Role -> :class:`Choice`; roles without a candidate are absent.
    """
    by_role: dict[str, list] = {}
    for s in series:
        if s.role in SEQUENCE_ROLES:
            by_role.setdefault(s.role, []).append(s)
    out: dict[str, Choice] = {}
    for role, cands in by_role.items():
        ranked = sorted(cands, key=_rank_key)
        best = ranked[0]
        if len(ranked) == 1:
            why = "only candidate"
        else:
            nxt = ranked[1]
            if (best.instance_count or 0) != (nxt.instance_count or 0):
                why = f"most instances ({best.instance_count} vs {nxt.instance_count})"
            elif best.series_number != nxt.series_number:
                why = f"later series number ({best.series_number} vs {nxt.series_number})"
            else:
                why = "lowest SeriesInstanceUID (equal instances and series number)"
            why = f"chosen among {len(ranked)}: {why}"
        out[role] = Choice(role, best.series_uid, why, [c.series_uid for c in ranked[1:]])
    return out


def apply_roles(study: Study, settings) -> dict[str, Choice]:
    """Re-classify every series of ``study`` from its stored headers and mark the selection.

    Updates ``role``, ``role_reason`` and ``role_selected`` in place (caller's transaction).
    """
    rules = rules_for(settings)
    shared = shared_exam_values([dict(s.headers or {}) for s in study.series], rules)
    for s in study.series:
        headers = dict(s.headers or {})
        if headers:
            role, reason = classify_series(headers, rules, shared)
            if role != s.role:
                log.info("series %s re-classified %s -> %s", uid_hash(s.series_uid), s.role, role)
            s.role, s.role_reason = role, reason
    choices = select_roles(study.series)
    chosen = {c.series_uid: c for c in choices.values()}
    for s in study.series:
        c = chosen.get(s.series_uid)
        base = (s.role_reason or "").split(" | selection: ")[0]
        if c is not None:
            s.role_selected = True
            s.role_reason = f"{base} | selection: selected for {c.role}, {c.reason}"
        else:
            s.role_selected = False
            if s.role in SEQUENCE_ROLES:
                winner = choices[s.role].series_uid
                s.role_reason = f"{base} | selection: not selected, {s.role} taken by series {uid_hash(winner)} ({choices[s.role].reason})"
            else:
                s.role_reason = base
    return choices


def mark_stable(db, settings, now: dt.datetime | None = None) -> list[str]:
    """Move RECEIVING studies quiet for ``assembly.stable_seconds`` to STABLE.

    Parameters
    ----------
    db
        :class:`~pgsam_node.db.Database`.
    settings
        Node settings.
    now
        Naive UTC "now" (tests); default :func:`~pgsam_node.db.utcnow`.

    Returns
    -------
    list of str
        StudyInstanceUIDs moved to STABLE.
    """
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=settings.assembly.stable_seconds)
    with db.session() as s:
        candidates = list(s.scalars(
            select(Study.id).where(Study.state == StudyState.RECEIVING.value, Study.last_instance_at <= cutoff)
            .order_by(Study.last_instance_at)
        ))
    moved: list[str] = []
    for study_id in candidates:
        # SQLite: hold the index's writer lock so no instance commits between check and move.
        lock = _sqlite_write_lock if db.is_sqlite else nullcontext()
        with lock, db.transaction() as s:
            # Re-check under a row lock: an instance may have arrived since the query above.
            study = s.scalars(
                select(Study).where(Study.id == study_id).with_for_update()
                .options(selectinload(Study.series))
            ).first()
            if study is None or study.state != StudyState.RECEIVING.value or study.last_instance_at > cutoff:
                continue
            choices = apply_roles(study, settings)
            quiet = (now - study.last_instance_at).total_seconds()
            roles = ", ".join(f"{r}={'yes' if r in choices else 'missing'}" for r in SEQUENCE_ROLES)
            state.transition(s, study, StudyState.STABLE,
                             f"no instance for {quiet:.0f} s (stable_seconds={settings.assembly.stable_seconds:g}); {roles}",
                             actor="assemble")
            moved.append(study.study_uid)
    return moved


def role_summary(study: Study) -> dict[str, str | None]:
    """Selected SeriesInstanceUID per role (None when missing)."""
    out: dict[str, str | None] = {r: None for r in SEQUENCE_ROLES}
    for s in study.series:
        if s.role_selected and s.role in out:
            out[s.role] = s.series_uid
    return out


def series_rows(db, study_uid: str) -> list[Series]:
    """Series of a study, ordered by series number (helper for callers and tests)."""
    with db.session() as s:
        st = s.scalars(select(Study).where(Study.study_uid == study_uid).options(selectinload(Study.series))).first()
        if st is None:
            return []
        return sorted(st.series, key=lambda x: (x.series_number is None, x.series_number or 0, x.series_uid))
