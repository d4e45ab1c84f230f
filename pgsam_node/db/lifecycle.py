"""The persisted study state machine (DESIGN.md): one row per study, every transition recorded.

``RECEIVING → STABLE → (WAITING_SEQUENCES | WAITING_REPORT) → READY → RUNNING → ENCODED → SENDING
→ DONE`` with ``FAILED`` and ``NO_FINDING`` as ends, and re-entry (back to ``RECEIVING`` on late
instances, to ``READY`` on an amended report, retry or reprocess).
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from pgsam_node.db.models import Study, StudyEvent, StudyState, utcnow
from pgsam_node.errors import PipelineError
from pgsam_node.logsetup import uid_hash

log = logging.getLogger(__name__)
S = StudyState

#: Allowed transitions. Any state may go to FAILED; RECEIVING is re-entered on late instances.
ALLOWED: dict[StudyState, set[StudyState]] = {
    S.RECEIVING: {S.STABLE},
    S.STABLE: {S.WAITING_SEQUENCES, S.WAITING_REPORT, S.READY},
    S.WAITING_SEQUENCES: {S.WAITING_REPORT, S.READY},
    S.WAITING_REPORT: {S.READY, S.WAITING_SEQUENCES},
    S.READY: {S.RUNNING, S.WAITING_REPORT, S.WAITING_SEQUENCES},
    S.RUNNING: {S.ENCODED, S.NO_FINDING, S.READY},
    S.ENCODED: {S.SENDING, S.DONE, S.READY},
    S.SENDING: {S.DONE, S.READY},
    S.DONE: {S.READY},
    S.NO_FINDING: {S.READY},
    S.FAILED: {S.READY, S.STABLE},
}
for _s in S:
    ALLOWED.setdefault(_s, set()).update({S.FAILED, S.RECEIVING})


def transition(
    session: Session,
    study: Study,
    to: StudyState | str,
    reason: str | None = None,
    actor: str = "node",
    force: bool = False,
) -> StudyEvent:
    """Move ``study`` to state ``to`` and record the event (in the caller's transaction).

    Raises
    ------
    PipelineError
        The transition is not allowed (unless ``force``, used by operator actions).
    """
    to = S(to)
    frm = S(study.state)
    if frm == to and not force:
        raise PipelineError(f"study already in {to.value}", reason="same_state")
    if to not in ALLOWED[frm] and not force:
        raise PipelineError(f"transition {frm.value} -> {to.value} not allowed", reason="bad_transition")
    now = utcnow()
    study.state = to.value
    study.state_reason = reason
    study.state_changed_at = now
    ev = StudyEvent(study_id=study.id, at=now, from_state=frm.value, to_state=to.value, reason=reason, actor=actor)
    session.add(ev)
    study.events.append(ev)
    log.info("study %s: %s -> %s", uid_hash(study.study_uid), frm.value, to.value, extra={"study": uid_hash(study.study_uid), "reason": reason})
    return ev
