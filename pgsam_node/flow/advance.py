"""Moves complete studies towards READY: sequences present? report found?

``STABLE → WAITING_SEQUENCES | WAITING_REPORT | READY``. Run by a scheduler job after the
assembly job; plain functions with an explicit ``now`` so tests drive the clock.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select

from pgsam_node.assemble.readiness import selected_series
from pgsam_node.config import Settings
from pgsam_node.db import Database, Study, StudyState, utcnow
from pgsam_node.db.lifecycle import transition
from pgsam_node.logsetup import uid_hash
from pgsam_node.reports.wait import attach_report_or_wait

log = logging.getLogger(__name__)


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
