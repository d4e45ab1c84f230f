"""Moves complete studies towards READY: sequences present? report found? report amended?

* :func:`mark_stable` — ``RECEIVING → STABLE`` once no instance arrived for ``assembly.stable_seconds``
  (the assembly job; :func:`pgsam_node.assemble.stability.settle` decides and selects the roles);
* :func:`advance_stable` — ``STABLE / WAITING_SEQUENCES → WAITING_SEQUENCES | WAITING_REPORT | READY``
  (run by a scheduler job after the assembly job);
* :func:`check_waiting` — ``WAITING_REPORT → READY | FAILED`` (report found, or the deadline policy);
* :func:`check_amendments` — ``DONE / NO_FINDING → READY`` as a new run version when the matched
  report changed (``ris.rerun_on_amendment``).

The report stage (:mod:`pgsam_node.reports.wait`) looks the report up and says where a study goes;
the state changes are made here. Plain functions with an explicit ``now`` so tests drive the clock;
each study in its own transaction (one study's trouble does not hold back the others), with a row
lock on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from pgsam_node.assemble.readiness import selected_series
from pgsam_node.assemble.stability import settle
from pgsam_node.config import Settings
from pgsam_node.db import Database, Study, StudyState, utcnow
from pgsam_node.db.lifecycle import transition
from pgsam_node.ingest.index import write_lock
from pgsam_node.logsetup import uid_hash
from pgsam_node.reports.ris import ReportMatch
from pgsam_node.reports.wait import ReportDecision, decide_amendment, decide_on_arrival, decide_waiting, naive_utc

log = logging.getLogger(__name__)


@dataclass
class WaitSummary:
    """What one periodic report check did (study ids per outcome)."""

    ready: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    still_waiting: list[int] = field(default_factory=list)
    ris_down: list[int] = field(default_factory=list)
    rerun: list[int] = field(default_factory=list)


def mark_stable(db: Database, settings: Settings, now: dt.datetime | None = None) -> list[str]:
    """Move RECEIVING studies quiet for ``assembly.stable_seconds`` to STABLE.

    Parameters
    ----------
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
        # Hold the ingest writer lock (SQLite) and the row lock: no instance commits between the
        # stability check and the move.
        with write_lock(db), db.transaction() as s:
            study = s.scalars(
                select(Study).where(Study.id == study_id).with_for_update().options(selectinload(Study.series))
            ).first()
            reason = settle(study, settings, now) if study is not None else None
            if reason is None:
                continue  # an instance arrived since the query above
            transition(s, study, StudyState.STABLE, reason, actor="assemble")
            moved.append(study.study_uid)
    return moved


def _apply(session: Session, study: Study, decision: ReportDecision) -> None:
    for to, reason in decision.moves:
        transition(session, study, to, reason)


def attach_report_or_wait(
    session: Session, study: Study, settings: Settings, node_db: Database | None, now: dt.datetime
) -> ReportMatch | None:
    """READY vs WAITING_REPORT for a study whose images are complete (see
    :func:`pgsam_node.reports.wait.decide_on_arrival`), applied in the caller's session.

    Returns
    -------
    ReportMatch or None
        The report attached (study now READY), or None (study now WAITING_REPORT; with
        ``ris.wait_seconds`` 0 the missing-report policy applied at once).
    """
    decision = decide_on_arrival(study, settings.ris, node_db, now)
    _apply(session, study, decision)
    return decision.match


def advance_study(session, study: Study, settings: Settings, db: Database, now: dt.datetime) -> str:
    """One decision for a STABLE or WAITING_SEQUENCES study; returns the new state."""
    # Roles were classified and selected when the study became STABLE (assemble.mark_stable);
    # any new series re-opens the study, so the selection is current here.
    chosen = selected_series(study)
    missing = [r for r in settings.assembly.required_roles if r not in chosen]
    if missing:
        if study.state != StudyState.WAITING_SEQUENCES.value:
            study.waiting_since = now
            transition(session, study, StudyState.WAITING_SEQUENCES, f"missing sequences: {', '.join(missing)}")
            return study.state
        waited = (now - (study.waiting_since or now)).total_seconds()
        if waited < settings.assembly.sequence_wait_seconds:
            return study.state
        if not chosen:
            transition(session, study, StudyState.FAILED, "no T1, T2 or post-contrast T1 series in the study")
            return study.state
        if settings.assembly.on_missing_sequences == "fail":
            transition(session, study, StudyState.FAILED, f"sequences still missing after {int(waited)} s: {', '.join(missing)}")
            return study.state
        study.notes = list(study.notes or []) + [
            {"code": "missing_sequences", "message": f"running without {', '.join(missing)}"}
        ]
    study.waiting_since = None
    attach_report_or_wait(session, study, settings, db, now)
    return study.state


def advance_stable(db: Database, settings: Settings, now: dt.datetime | None = None) -> dict[str, str]:
    """Advance every STABLE / WAITING_SEQUENCES study; returns {study_uid: new_state}."""
    now = now or utcnow()
    out: dict[str, str] = {}
    with db.session() as s:
        ids = s.scalars(
            select(Study.id).where(Study.state.in_([StudyState.STABLE.value, StudyState.WAITING_SEQUENCES.value]))
        ).all()
    for sid in ids:
        try:
            with db.transaction() as s:
                study = s.get(Study, sid)
                if study is None or study.state not in (StudyState.STABLE.value, StudyState.WAITING_SEQUENCES.value):
                    continue
                out[study.study_uid] = advance_study(s, study, settings, db, now)
        except Exception:  # noqa: BLE001 - one bad study must not block the others
            log.exception("cannot advance study id=%s", sid)
    for uid, state in out.items():
        log.debug("study %s -> %s", uid_hash(uid), state)
    return out


def check_waiting(db: Database, settings: Settings, now: dt.datetime) -> WaitSummary:
    """Look again for the reports of WAITING_REPORT studies; apply the deadline policy."""
    now = naive_utc(now)
    out = WaitSummary()
    with db.session() as s:
        ids = s.scalars(select(Study.id).where(Study.state == StudyState.WAITING_REPORT.value).order_by(Study.id)).all()
    for sid in ids:
        with db.transaction() as s:
            # Row lock on PostgreSQL (no-op on SQLite): two nodes checking at once cannot both
            # move the study.
            study = s.get(Study, sid, with_for_update=True)
            if study is None or study.state != StudyState.WAITING_REPORT.value:
                continue  # another worker moved it meanwhile
            decision = decide_waiting(study, settings.ris, db, now)
            _apply(s, study, decision)
            if decision.outcome == "ris_down":
                log.warning("study %s: RIS unavailable; still waiting", uid_hash(study.study_uid))
            bucket = {"ready": out.ready, "failed": out.failed, "ris_down": out.ris_down}.get(decision.outcome, out.still_waiting)
            bucket.append(sid)
    return out


def check_amendments(db: Database, settings: Settings, now: dt.datetime) -> WaitSummary:
    """Re-run finished studies whose matched report changed (``ris.rerun_on_amendment``).

    Studies in DONE or NO_FINDING that finished within ``ris.amendment_window_days`` of ``now``
    are looked up again; a report hash different from the stored one (an amended or newer final
    report, or a first report after a run without text) bumps ``study.version`` and moves the
    study to READY. A RIS that is down or an ambiguous match changes nothing.
    """
    out = WaitSummary()
    if not settings.ris.rerun_on_amendment:
        return out
    now = naive_utc(now)
    since = now - dt.timedelta(days=settings.ris.amendment_window_days)
    finished = (StudyState.DONE.value, StudyState.NO_FINDING.value)
    with db.session() as s:
        ids = s.scalars(
            select(Study.id).where(Study.state.in_(finished), Study.state_changed_at >= since).order_by(Study.id)
        ).all()
    for sid in ids:
        with db.transaction() as s:
            study = s.get(Study, sid, with_for_update=True)
            if study is None or study.state not in finished:
                continue
            decision = decide_amendment(study, settings.ris, db)
            if decision.outcome == "ris_down":
                out.ris_down.append(sid)
            if decision.outcome != "rerun":
                continue
            study.version = (study.version or 0) + 1
            _apply(s, study, decision)
            out.rerun.append(sid)
            log.info("study %s: %s; run version %d", uid_hash(study.study_uid), study.state_reason, study.version)
    return out
