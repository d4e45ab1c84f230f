"""Operator actions on a study: retry, reprocess, resend.

Each action changes the study through :func:`pgsam_node.db.lifecycle.transition` (``actor`` = the
operator) and writes an :class:`~pgsam_node.db.models.AuditLog` row, in the caller's transaction.
They refuse (``ActionError``) what they cannot do, with a message meant for the operator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from pgsam_node.db.models import AuditLog, OutboxItem, OutboxState, Run, Study, StudyState
from pgsam_node.errors import PipelineError
from pgsam_node.flow.retention import is_purged
from pgsam_node.flow.worker import release
from pgsam_node.logsetup import uid_hash
from pgsam_node.reports.wait import detach_report
from pgsam_node.db.lifecycle import transition

log = logging.getLogger(__name__)
S = StudyState

class ActionError(PipelineError):
    """An operator action cannot be applied to the study in its current state (the web answers 409)."""

    def __init__(self, message: str):
        super().__init__(message, reason="action_refused")


@dataclass
class ActionResult:
    action: str
    study_id: int
    from_state: str
    to_state: str
    message: str
    outbox_requeued: int = 0


def _audit(session: Session, actor: str, action: str, study: Study, detail: dict, remote_addr: str | None) -> None:
    session.add(
        AuditLog(actor=actor, action=f"study.{action}", target=f"study:{study.id}", detail=detail, remote_addr=remote_addr)
    )
    log.info(
        "operator %s: %s on study %s", actor, action, uid_hash(study.study_uid),
        extra={"study": uid_hash(study.study_uid), "action": action, "actor": actor},
    )


def _latest_items(session: Session, study: Study) -> list[OutboxItem]:
    """Outbox items of the study's newest run (older SEG versions are not sent again)."""
    items = session.scalars(select(OutboxItem).where(OutboxItem.study_id == study.id).order_by(OutboxItem.id)).all()
    run_ids = [i.run_id for i in items if i.run_id is not None]
    if run_ids:
        newest = max(run_ids)
        items = [i for i in items if i.run_id in (newest, None)]
    return list(items)


def _requeue(session: Session, items: list[OutboxItem]) -> int:
    """Items back to PENDING and their run back to ENCODED (see :func:`outbox.reset_items`)."""
    from pgsam_node.deliver.outbox import reset_items

    return reset_items(session, items)


def _failed_in_delivery(session: Session, study: Study, items: list[OutboxItem]) -> bool:
    """The study failed because its newest run's results could not be delivered (DEAD items),
    not because the run itself failed: retrying means sending again, not running again."""
    if not any(i.state == OutboxState.DEAD.value for i in items):
        return False
    newest = session.scalars(select(Run).where(Run.study_id == study.id).order_by(Run.id.desc())).first()
    return newest is not None and newest.id in {i.run_id for i in items} and newest.status in ("ENCODED", "SENT")


def retry(session: Session, study: Study, actor: str, remote_addr: str | None = None) -> ActionResult:
    """Retry a failed or stuck study: re-run the stage where it stopped.

    ``FAILED`` in delivery (its newest run has ``DEAD`` outbox items) → the items are queued again
    and the study goes to ``SENDING``; ``FAILED`` otherwise → ``READY`` (runs again);
    ``RUNNING`` (stuck worker) → ``READY`` with its lease released (the old worker loses the lease
    and discards its result); ``ENCODED``/``SENDING`` → the outbox items are queued again. Other
    states are queued already or finished (use reprocess).
    """
    frm = study.state
    if is_purged(study):
        raise ActionError("the study's files were deleted by retention; it cannot run again")
    items = _latest_items(session, study) if frm in (S.FAILED.value, S.ENCODED.value, S.SENDING.value) else []
    if frm == S.FAILED.value and _failed_in_delivery(session, study, items):
        n = _requeue(session, items)
        transition(session, study, S.SENDING, f"retry (delivery) by {actor}", actor=actor, force=True)
        res = ActionResult("retry", study.id, frm, study.state, f"delivery retried: {n} outbox item(s) queued", n)
    elif frm in (S.FAILED.value, S.RUNNING.value):
        release(session, study)
        study.attempts = 0
        transition(session, study, S.READY, f"retry by {actor}", actor=actor, force=True)
        res = ActionResult("retry", study.id, frm, study.state, "queued for processing")
    elif frm in (S.ENCODED.value, S.SENDING.value):
        n = _requeue(session, items)
        if n == 0:
            raise ActionError("no outbox item to send again")
        if frm != S.SENDING.value:
            transition(session, study, S.SENDING, f"retry (resend) by {actor}", actor=actor)
        res = ActionResult("retry", study.id, frm, study.state, f"{n} outbox item(s) queued", n)
    elif frm in (S.DONE.value, S.NO_FINDING.value):
        raise ActionError(f"study is {frm}: nothing to retry (use reprocess to run it again)")
    else:
        raise ActionError(f"study is {frm}: it is already queued; nothing to retry")
    _audit(session, actor, "retry", study, {"from": frm, "to": study.state, "requeued": res.outbox_requeued}, remote_addr)
    return res


def reprocess(session: Session, study: Study, actor: str, remote_addr: str | None = None) -> ActionResult:
    """Run the study again as a new version (bumps ``study.version``; a new SEG series follows)."""
    frm = study.state
    if is_purged(study):
        raise ActionError("the study's files were deleted by retention; it cannot run again")
    if frm in (S.RECEIVING.value, S.STABLE.value):
        raise ActionError(f"study is {frm}: still being received; it will run when complete")
    study.version = (study.version or 0) + 1
    release(session, study)
    study.attempts = 0
    transition(session, study, S.READY, f"reprocess by {actor} (version {study.version})", actor=actor, force=True)
    _audit(session, actor, "reprocess", study, {"from": frm, "to": study.state, "version": study.version}, remote_addr)
    return ActionResult("reprocess", study.id, frm, study.state, f"queued as version {study.version}")


def resend(session: Session, study: Study, actor: str, remote_addr: str | None = None) -> ActionResult:
    """Send the study's newest results again: its outbox items go back to ``PENDING``, due now,
    attempts 0 (also ``SENT`` and ``DEAD`` ones; an item being sent right now is left alone).
    The study goes to ``SENDING`` and the run back to ``ENCODED``, so the outbox job moves the
    study to ``DONE`` when all items are sent again.
    """
    frm = study.state
    if is_purged(study):
        raise ActionError("the study's files were deleted by retention; nothing left to send")
    items = _latest_items(session, study)
    if not items:
        raise ActionError("the study has no outbox item (nothing was produced to send)")
    n = _requeue(session, items)
    if n == 0:
        raise ActionError("every outbox item is being sent right now")
    if frm != S.SENDING.value:
        transition(session, study, S.SENDING, f"resend by {actor}", actor=actor, force=True)
    _audit(session, actor, "resend", study, {"from": frm, "to": study.state, "requeued": n}, remote_addr)
    return ActionResult("resend", study.id, frm, study.state, f"{n} outbox item(s) queued", n)


def run_now(session: Session, study: Study, actor: str, remote_addr: str | None = None) -> ActionResult:
    """Run a WAITING_REPORT study now without report text (what the deadline would do, early)."""
    frm = study.state
    if frm != S.WAITING_REPORT.value:
        raise ActionError(f"study is {frm}: only a study waiting for its report can run now without it")
    detach_report(study)
    study.waiting_since = None
    transition(session, study, S.READY, f"run now without report by {actor}", actor=actor)
    _audit(session, actor, "run_now", study, {"from": frm, "to": study.state}, remote_addr)
    return ActionResult("run_now", study.id, frm, study.state, "queued to run without report text")


def resend_items(
    session: Session,
    *,
    study_uid: str | None = None,
    item_id: int | None = None,
    dead: bool = False,
    actor: str = "cli",
) -> int:
    """``pgsam-node resend``: outbox items back to the queue (:func:`pgsam_node.deliver.outbox.requeue`,
    audited); studies of re-queued items that had ended (DONE, FAILED) go back to SENDING, so the
    outbox step closes them again. Returns the number re-queued. The caller commits.
    """
    from pgsam_node.deliver.outbox import requeue

    items = requeue(session, study_uid=study_uid, item_id=item_id, dead=dead, actor=actor)
    for sid in {it.study_id for it in items if it.study_id is not None}:
        study = session.get(Study, sid)
        if study is not None and study.state in (S.DONE.value, S.FAILED.value):
            transition(session, study, S.SENDING, f"resend by {actor}", actor=actor, force=True)
    return len(items)


ACTIONS = {"retry": retry, "reprocess": reprocess, "resend": resend, "run_now": run_now}
