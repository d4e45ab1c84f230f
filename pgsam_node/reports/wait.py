"""Waiting for the report: what the report stage concludes about one study, driven by an explicit clock.

The stage looks the report up, keeps the report bookkeeping on the study row (the match, its note,
``waiting_since``) and says where the study should go; ``flow.advance`` applies that (the state
change and its event), so only ``flow/`` sequences stages:

* :func:`decide_on_arrival` — the study's images are complete: report found → READY, else
  WAITING_REPORT (``waiting_since`` = now; with ``ris.wait_seconds`` 0 the missing-report policy
  follows at once).
* :func:`decide_waiting` — a WAITING_REPORT study, periodically: report found → READY; RIS down →
  stay (note); deadline (``waiting_since + ris.wait_seconds``) passed → ``ris.on_missing_report``
  (``run_without_text`` → READY, ``fail`` → FAILED).
* :func:`decide_amendment` — a DONE / NO_FINDING study: the matched report has a new hash (amended,
  or a report arrived after a run without text) → READY as a new run version.

A RIS that is down never fails a study: while lookups fail with :class:`RisError` the study stays
in WAITING_REPORT, even past its deadline; the policy applies at the first check after the
deadline where the RIS answered. An ambiguous PatientID match is treated like "no report yet"
with its note recorded (never guessed).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from pgsam_node.config import RisSettings
from pgsam_node.db.models import Study, StudyState
from pgsam_node.db.session import Database
from pgsam_node.errors import RisError
from pgsam_node.reports.ris import AmbiguousReportError, ReportMatch, StudyKey, lookup_report

REASON_FOUND = "report found"
REASON_DEADLINE = "no report by deadline; running without text"
REASON_DEADLINE_FAIL = "no report by deadline"
REASON_AMENDED = "amended report"
REASON_LATE = "report arrived after a run without text"


@dataclass
class ReportDecision:
    """Where the report stage says a study goes; ``flow`` applies it.

    Attributes
    ----------
    outcome : str
        ``ready``, ``failed``, ``waiting`` (WAITING_REPORT, new or still), ``ris_down`` or
        ``unchanged`` (amendment check: nothing new).
    moves : list of (StudyState, str)
        The state changes to record, in order, each with its reason (empty: the study stays).
    match : ReportMatch or None
        The report attached, if any.
    """

    outcome: str
    moves: list[tuple[StudyState, str]] = field(default_factory=list)
    match: ReportMatch | None = None


def naive_utc(now: dt.datetime) -> dt.datetime:
    """``now`` as naive UTC (the node stores naive UTC times)."""
    return now.astimezone(dt.timezone.utc).replace(tzinfo=None) if now.tzinfo else now


def _lookup(study: Study, ris: RisSettings, node_db: Database | None) -> tuple[ReportMatch | None, str | None]:
    """(match, note); raises RisError when the RIS is down."""
    try:
        return lookup_report(StudyKey.from_study(study), ris, node_db)
    except AmbiguousReportError as exc:
        return None, exc.note


def _attach(study: Study, match: ReportMatch) -> None:
    # The match travels on the study row (identity, version hash and text): the run uses exactly
    # this report, and a later amendment is found by decide_amendment (new hash), never hidden.
    study.report_ref = match.ref
    study.report_hash = match.hash
    study.report_text = match.text
    study.report_note = match.note


def detach_report(study: Study) -> None:
    """Forget the matched report: the study runs without report text."""
    study.report_ref = None
    study.report_hash = None
    study.report_text = None


def _found(study: Study, match: ReportMatch) -> ReportDecision:
    _attach(study, match)
    return ReportDecision("ready", [(StudyState.READY, f"{REASON_FOUND} (matched by {match.matched_by})")], match)


def _deadline(study: Study, ris: RisSettings) -> tuple[str, tuple[StudyState, str]]:
    if ris.on_missing_report == "fail":
        return "failed", (StudyState.FAILED, REASON_DEADLINE_FAIL + (f" ({study.report_note})" if study.report_note else ""))
    detach_report(study)
    return "ready", (StudyState.READY, REASON_DEADLINE)


def decide_on_arrival(study: Study, ris: RisSettings, node_db: Database | None, now: dt.datetime) -> ReportDecision:
    """READY vs WAITING_REPORT for a study whose images are complete (STABLE / WAITING_SEQUENCES,
    or already WAITING_REPORT).

    Parameters
    ----------
    study
        The study row (in the caller's session; the caller commits).
    ris
        The ``ris`` settings (``wait_seconds``, ``on_missing_report`` and the matching rules).
    node_db
        The node database, for the embedded report table.
    now
        The current time (naive UTC or aware); the clock is the caller's.
    """
    now = naive_utc(now)
    ris_down = False
    try:
        match, note = _lookup(study, ris, node_db)
    except RisError as exc:
        match, note, ris_down = None, f"RIS unavailable: {exc}", True
    if match is not None:
        return _found(study, match)
    study.report_note = note
    moves: list[tuple[StudyState, str]] = []
    waiting = StudyState(study.state) == StudyState.WAITING_REPORT
    if study.waiting_since is None or not waiting:
        study.waiting_since = now
    if not waiting:
        moves.append((StudyState.WAITING_REPORT, "waiting for the report" + (f" ({note})" if note else "")))
    if ris.wait_seconds <= 0 and not ris_down:  # a RIS that is down never ends the wait
        outcome, move = _deadline(study, ris)
        return ReportDecision(outcome, [*moves, move])
    return ReportDecision("waiting", moves)


def decide_waiting(study: Study, ris: RisSettings, node_db: Database | None, now: dt.datetime) -> ReportDecision:
    """A WAITING_REPORT study, looked at again: found, still waiting, RIS down, or past its deadline."""
    now = naive_utc(now)
    if study.waiting_since is None:
        study.waiting_since = now
    try:
        match, note = _lookup(study, ris, node_db)
    except RisError as exc:
        study.report_note = f"RIS unavailable: {exc}"
        return ReportDecision("ris_down")
    if match is not None:
        return _found(study, match)
    study.report_note = note
    if now >= study.waiting_since + dt.timedelta(seconds=ris.wait_seconds):
        outcome, move = _deadline(study, ris)
        return ReportDecision(outcome, [move])
    return ReportDecision("waiting")


def decide_amendment(study: Study, ris: RisSettings, node_db: Database | None) -> ReportDecision:
    """A finished study whose matched report may have changed: a new hash → READY (a re-run).

    A RIS that is down or an ambiguous match changes nothing.
    """
    try:
        match, _ = _lookup(study, ris, node_db)
    except RisError:
        return ReportDecision("ris_down")
    if match is None or match.hash == study.report_hash:
        return ReportDecision("unchanged")
    reason = REASON_AMENDED if study.report_hash else REASON_LATE
    _attach(study, match)
    return ReportDecision("rerun", [(StudyState.READY, reason)], match)
