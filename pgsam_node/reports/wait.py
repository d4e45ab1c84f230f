"""Waiting for the report: plain functions over the study rows, driven by an explicit clock.

* :func:`attach_report_or_wait` — when a study becomes complete: report found → READY, else
  WAITING_REPORT (``waiting_since`` = now).
* :func:`check_waiting` — periodically for WAITING_REPORT studies: report found → READY; RIS down
  → stay (note); deadline (``waiting_since + ris.wait_seconds``) passed → ``ris.on_missing_report``
  (``run_without_text`` → READY, ``fail`` → FAILED).
* :func:`check_amendments` — periodically for DONE / NO_FINDING studies finished within
  ``ris.amendment_window_days``: the matched report has a new hash (amended, or a report arrived
  after a run without text) and ``ris.rerun_on_amendment`` → ``version`` + 1, READY.

A RIS that is down never fails a study: while lookups fail with :class:`RisError` the study stays
in WAITING_REPORT, even past its deadline; the policy applies at the first check after the
deadline where the RIS answered. An ambiguous PatientID match is treated like "no report yet"
with its note recorded (never guessed). Every state change goes through
:func:`pgsam_node.db.lifecycle.transition`.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from pgsam_node.config import Settings
from pgsam_node.db.models import Study, StudyState
from pgsam_node.db.session import Database
from pgsam_node.errors import RisError
from pgsam_node.logsetup import uid_hash
from pgsam_node.reports.ris import AmbiguousReportError, ReportMatch, StudyKey, lookup_report
from pgsam_node.db.lifecycle import transition

log = logging.getLogger(__name__)

REASON_FOUND = "report found"
REASON_DEADLINE = "no report by deadline; running without text"
REASON_DEADLINE_FAIL = "no report by deadline"
REASON_AMENDED = "amended report"
REASON_LATE = "report arrived after a run without text"


@dataclass
class WaitSummary:
    """What one periodic check did (counts; study ids per outcome)."""

    ready: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    still_waiting: list[int] = field(default_factory=list)
    ris_down: list[int] = field(default_factory=list)
    rerun: list[int] = field(default_factory=list)


def _naive(now: dt.datetime) -> dt.datetime:
    return now.astimezone(dt.timezone.utc).replace(tzinfo=None) if now.tzinfo else now


def _lookup(study: Study, settings: Settings, node_db: Database | None) -> tuple[ReportMatch | None, str | None]:
    """(match, note); raises RisError when the RIS is down."""
    try:
        return lookup_report(StudyKey.from_study(study), settings, node_db)
    except AmbiguousReportError as exc:
        return None, exc.note


def _attach(study: Study, match: ReportMatch) -> None:
    # The match travels on the study row (identity, version hash and text): the run uses exactly
    # this report, and a later amendment is found by check_amendments (new hash), never hidden.
    study.report_ref = match.ref
    study.report_hash = match.hash
    study.report_text = match.text
    study.report_note = match.note


def detach_report(study: Study) -> None:
    """Forget the matched report: the study runs without report text."""
    study.report_ref = None
    study.report_hash = None
    study.report_text = None


def attach_report_or_wait(
    session: Session, study: Study, settings: Settings, node_db: Database | None, now: dt.datetime
) -> ReportMatch | None:
    """Decide READY vs WAITING_REPORT for a study whose images are complete.

    Parameters
    ----------
    session
        The caller's session (the study row belongs to it; the caller commits).
    study
        A study in STABLE / WAITING_SEQUENCES (or already WAITING_REPORT).
    node_db
        The node database, for the embedded report table.
    now
        The current time (naive UTC or aware); the clock is the caller's.

    Returns
    -------
    ReportMatch or None
        The report attached (study now READY), or None (study now WAITING_REPORT; with
        ``ris.wait_seconds`` 0 the missing-report policy applies at once).
    """
    now = _naive(now)
    try:
        match, note = _lookup(study, settings, node_db)
    except RisError as exc:
        _wait(session, study, now, f"RIS unavailable: {exc}")
        return None
    if match is not None:
        _attach(study, match)
        transition(session, study, StudyState.READY, f"{REASON_FOUND} (matched by {match.matched_by})")
        return match
    _wait(session, study, now, note)
    if settings.ris.wait_seconds <= 0:
        _apply_deadline(session, study, settings)
    return None


def _wait(session: Session, study: Study, now: dt.datetime, note: str | None) -> None:
    study.report_note = note
    if study.waiting_since is None or StudyState(study.state) != StudyState.WAITING_REPORT:
        study.waiting_since = now
    if StudyState(study.state) != StudyState.WAITING_REPORT:
        transition(session, study, StudyState.WAITING_REPORT, "waiting for the report" + (f" ({note})" if note else ""))


def _apply_deadline(session: Session, study: Study, settings: Settings) -> str:
    if settings.ris.on_missing_report == "fail":
        transition(session, study, StudyState.FAILED, REASON_DEADLINE_FAIL + (f" ({study.report_note})" if study.report_note else ""))
        return "failed"
    detach_report(study)
    transition(session, study, StudyState.READY, REASON_DEADLINE)
    return "ready"


def check_waiting(db: Database, settings: Settings, now: dt.datetime) -> WaitSummary:
    """Look again for the reports of WAITING_REPORT studies; apply the deadline policy.

    Each study is handled in its own transaction, so one study's trouble does not hold back
    the others.
    """
    now = _naive(now)
    out = WaitSummary()
    with db.session() as s:
        ids = s.scalars(select(Study.id).where(Study.state == StudyState.WAITING_REPORT.value).order_by(Study.id)).all()
    deadline_after = dt.timedelta(seconds=settings.ris.wait_seconds)
    for sid in ids:
        with db.transaction() as s:
            # Row lock on PostgreSQL (no-op on SQLite): two nodes checking at once cannot both
            # move the study.
            study = s.get(Study, sid, with_for_update=True)
            if study is None or study.state != StudyState.WAITING_REPORT.value:
                continue  # another worker moved it meanwhile
            if study.waiting_since is None:
                study.waiting_since = now
            try:
                match, note = _lookup(study, settings, db)
            except RisError as exc:
                study.report_note = f"RIS unavailable: {exc}"
                out.ris_down.append(sid)
                log.warning("study %s: RIS unavailable; still waiting", uid_hash(study.study_uid))
                continue
            if match is not None:
                _attach(study, match)
                transition(s, study, StudyState.READY, f"{REASON_FOUND} (matched by {match.matched_by})")
                out.ready.append(sid)
                continue
            study.report_note = note
            if now >= study.waiting_since + deadline_after:
                if _apply_deadline(s, study, settings) == "failed":
                    out.failed.append(sid)
                else:
                    out.ready.append(sid)
            else:
                out.still_waiting.append(sid)
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
    now = _naive(now)
    since = now - dt.timedelta(days=settings.ris.amendment_window_days)
    with db.session() as s:
        ids = s.scalars(
            select(Study.id)
            .where(Study.state.in_([StudyState.DONE.value, StudyState.NO_FINDING.value]), Study.state_changed_at >= since)
            .order_by(Study.id)
        ).all()
    for sid in ids:
        with db.transaction() as s:
            study = s.get(Study, sid, with_for_update=True)
            if study is None or study.state not in (StudyState.DONE.value, StudyState.NO_FINDING.value):
                continue
            try:
                match, _ = _lookup(study, settings, db)
            except RisError:
                out.ris_down.append(sid)
                continue
            if match is None or match.hash == study.report_hash:
                continue
            reason = REASON_AMENDED if study.report_hash else REASON_LATE
            _attach(study, match)
            study.version = (study.version or 0) + 1
            transition(s, study, StudyState.READY, reason)
            out.rerun.append(sid)
            log.info("study %s: %s; run version %d", uid_hash(study.study_uid), reason, study.version)
    return out
