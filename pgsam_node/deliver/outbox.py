"""Persistent outbox: one row per (object, destination), delivered by a periodic job with
exponential backoff, a dead-letter state, and crash recovery.

Delivery is at-least-once: an item claimed (SENDING) when the process died goes back to PENDING
on start and is sent again; the deterministic SOP Instance UIDs of our outputs make a repeat a
replacement at the PACS, not a duplicate.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from pgsam_node.config import Destination, SendSettings, Settings
from pgsam_node.db.models import AuditLog, Metric, OutboxItem, OutboxState, utcnow
from pgsam_node.db import switches
from pgsam_node.db.session import Database
from pgsam_node.errors import SendError
from pgsam_node.logsetup import uid_hash
from pgsam_node.deliver.scu import StoreOutcome, send_files
from pgsam_node.deliver.stow import send_stow

log = logging.getLogger(__name__)

PENDING, SENDING, SENT, DEAD = (s.value for s in OutboxState)

#: Metric counters (rows of the ``metrics`` table) this module maintains.
METRIC_SENT = "outbox_sent_total"
METRIC_RETRY = "outbox_retry_total"
METRIC_DEAD = "outbox_dead_total"
METRIC_WARNING = "outbox_stored_with_warning_total"


def backoff_seconds(send: SendSettings, attempts: int) -> float:
    """Delay before the next try after ``attempts`` failed tries: ``min(base * 2**(attempts-1), max)``
    (``send.backoff_base_seconds``, ``send.backoff_max_seconds``)."""
    base, cap = send.backoff_base_seconds, send.backoff_max_seconds
    return float(min(base * (2 ** max(0, attempts - 1)), cap))


def write_output(settings: Settings, ds: Dataset, study_uid: str) -> str:
    """Write ``ds`` atomically under ``outputs/`` (temp file, fsync, rename); return the path relative
    to the storage root. The name derives from the SOP Instance UID, so a re-write is idempotent."""
    rel = Path("outputs") / uid_hash(study_uid) / f"{ds.SOPInstanceUID}.dcm"
    final = settings.storage_root / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_suffix(f".tmp{os.getpid()}")
    ds.save_as(tmp, enforce_file_format=True)
    if settings.storage.fsync:
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, final)
    if settings.storage.fsync:
        dfd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return rel.as_posix()


def enqueue(
    session: Session,
    study_id: int | None,
    run_id: int | None,
    path: str,
    ds: Dataset,
    destinations: Iterable[Destination | str],
    now: dt.datetime | None = None,
) -> list[OutboxItem]:
    """Queue ``ds`` (already written at ``path``, relative to the storage root) for each destination.

    Idempotent per (SOP Instance UID, destination): an existing row is returned unchanged.
    The caller commits.
    """
    now = now or utcnow()
    sop_uid, sop_class = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
    items = []
    for d in destinations:
        name = d.name if isinstance(d, Destination) else str(d)
        existing = session.scalars(
            select(OutboxItem).where(OutboxItem.sop_instance_uid == sop_uid, OutboxItem.destination == name)
        ).first()
        if existing is not None:
            items.append(existing)
            continue
        item = OutboxItem(study_id=study_id, run_id=run_id, destination=name, sop_class_uid=sop_class,
                          sop_instance_uid=sop_uid, path=path, state=PENDING, attempts=0,
                          next_attempt_at=now, created_at=now)
        session.add(item)
        items.append(item)
    session.flush()
    return items


def write_outputs(settings: Settings, study_uid: str, datasets: Sequence[Dataset]) -> list[str]:
    """:func:`write_output` for each dataset, in order; the paths relative to the storage root.

    No database work: a run writes its files before it opens the transaction that queues them.
    """
    return [write_output(settings, ds, study_uid) for ds in datasets]


def queue_outputs(
    session: Session,
    settings: Settings,
    study_id: int | None,
    study_uid: str,
    run_id: int | None,
    datasets: Sequence[Dataset],
    now: dt.datetime | None = None,
    paths: Sequence[str] | None = None,
) -> list[OutboxItem]:
    """Queue each output for every configured destination, its file already in place.

    ``paths`` are the files :func:`write_outputs` wrote for ``datasets`` (the pipeline writes them
    before its transaction, so no row lock waits on disk); without ``paths`` the files are written
    here. Either way each file is renamed into place before the caller commits the rows: a crash
    leaves at most an orphan file, never a row without its file. Returns the outbox rows (empty when
    no destination is configured: nothing to deliver, logged at WARNING). The caller commits.
    """
    if paths is None:
        paths = write_outputs(settings, study_uid, datasets)
    if len(paths) != len(datasets):
        raise ValueError(f"{len(datasets)} dataset(s) but {len(paths)} path(s)")
    if not settings.destinations:
        log.warning("no destinations configured: %d output(s) written but not queued", len(datasets))
    items: list[OutboxItem] = []
    for ds, rel in zip(datasets, paths):
        items.extend(enqueue(session, study_id, run_id, rel, ds, settings.destinations, now=now))
    return items


def recover_stuck(db: Database, now: dt.datetime | None = None) -> int:
    """Items left in SENDING by a crashed process go back to PENDING (call once at start, before
    the outbox job runs). Returns how many were recovered."""
    now = now or utcnow()
    with db.transaction() as s:
        res = s.execute(
            update(OutboxItem).where(OutboxItem.state == SENDING)
            .values(state=PENDING, next_attempt_at=now, last_error="recovered after restart while sending")
        )
        n = int(res.rowcount or 0)
    if n:
        log.warning("outbox: %d item(s) were SENDING at start; re-queued", n)
    return n


def _claim(db: Database, now: dt.datetime, limit: int) -> list[int]:
    """Claim up to ``limit`` due items atomically (PENDING → SENDING, attempts + 1); none while
    sending is paused (:mod:`pgsam_node.db.switches`).

    PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` so concurrent workers take disjoint items;
    SQLite ignores FOR UPDATE, and the conditional UPDATE (``WHERE state='PENDING'``) with a
    rowcount check makes a double claim impossible there too.
    """
    claimed: list[int] = []
    with db.transaction() as s:
        if switches.is_paused(s, switches.SENDING):
            # Operator pause: nothing is claimed, so attempts, backoff and dead-lettering stand still.
            return claimed
        q = (select(OutboxItem.id).where(OutboxItem.state == PENDING, OutboxItem.next_attempt_at <= now)
             .order_by(OutboxItem.next_attempt_at, OutboxItem.id).limit(limit))
        if not db.is_sqlite:
            q = q.with_for_update(skip_locked=True)
        for item_id in s.scalars(q).all():
            res = s.execute(
                update(OutboxItem).where(OutboxItem.id == item_id, OutboxItem.state == PENDING)
                .values(state=SENDING, attempts=OutboxItem.attempts + 1)
            )
            if res.rowcount == 1:
                claimed.append(item_id)
    return claimed


def bump_metric(session: Session, name: str, by: float = 1.0) -> None:
    """Add ``by`` to a persisted counter (created on first use)."""
    m = session.get(Metric, name)
    if m is None:
        session.add(Metric(name=name, value=by))
    else:
        m.value = (m.value or 0.0) + by


def _finish(s: Session, settings: Settings, item: OutboxItem, outcome: StoreOutcome, now: dt.datetime,
            summary: dict[str, int]) -> None:
    item.last_status = outcome.status
    if outcome.ok:
        item.state = SENT
        item.sent_at = now
        item.last_error = outcome.warning
        item.commitment_requested = bool(outcome.commitment_requested)
        summary["sent"] += 1
        bump_metric(s, METRIC_SENT)
        if outcome.warning:
            bump_metric(s, METRIC_WARNING)
        return
    item.last_error = outcome.error
    if outcome.permanent or item.attempts >= settings.send.max_attempts:
        item.state = DEAD
        item.permanent_failure = bool(outcome.permanent)
        summary["dead"] += 1
        bump_metric(s, METRIC_DEAD)
        # Alert: a dead item needs an operator (``pgsam-node resend``); counted for metrics.
        log.error("outbox item %d to %s is DEAD after %d attempt(s): %s", item.id, item.destination,
                  item.attempts, outcome.error,
                  extra={"sop": uid_hash(item.sop_instance_uid), "permanent": bool(outcome.permanent)})
        return
    item.state = PENDING
    delay = backoff_seconds(settings.send, item.attempts)
    item.next_attempt_at = now + dt.timedelta(seconds=delay)
    summary["retry"] += 1
    bump_metric(s, METRIC_RETRY)
    log.warning("outbox item %d to %s failed (attempt %d/%d), retry in %.0f s: %s", item.id,
                item.destination, item.attempts, settings.send.max_attempts, delay, outcome.error,
                extra={"sop": uid_hash(item.sop_instance_uid)})


def process_due(db: Database, settings: Settings, now: dt.datetime | None = None, limit: int = 100) -> dict[str, int]:
    """Deliver every due item once: claim, send (one association per destination), record.
    While the operator has paused sending, nothing is claimed (all counts 0).

    Parameters
    ----------
    db
        Node database.
    settings
        Node settings (``destinations``, ``send``).
    now
        Clock (naive UTC); default :func:`utcnow`. Tests drive it to step through backoff.
    limit
        Most items claimed in one call.

    Returns
    -------
    dict
        Counts ``claimed``, ``sent``, ``retry``, ``dead``.
    """
    now = now or utcnow()
    summary = {"claimed": 0, "sent": 0, "retry": 0, "dead": 0}
    ids = _claim(db, now, limit)
    summary["claimed"] = len(ids)
    if not ids:
        return summary
    with db.session() as s:
        rows = s.scalars(select(OutboxItem).where(OutboxItem.id.in_(ids)).order_by(OutboxItem.id)).all()
        groups: dict[str, list[OutboxItem]] = defaultdict(list)
        for r in rows:
            groups[r.destination].append(r)
        dests = {d.name: d for d in settings.destinations}
    for name, group in groups.items():
        dest = dests.get(name)
        if dest is None:
            outcomes = [StoreOutcome(ok=False, permanent=True, error=f"destination {name!r} is not configured")] * len(group)
        else:
            try:
                sender = send_stow if dest.type == "dicomweb" else send_files
                outcomes = sender(settings, dest, [settings.storage_root / g.path for g in group])
            except SendError as exc:
                # One association failure counts as one failed attempt for each claimed item and
                # ends this destination's turn: no hammering of a destination that is down.
                outcomes = [StoreOutcome(ok=False, permanent=exc.permanent, error=str(exc))] * len(group)
            except Exception as exc:  # never leave claimed items in SENDING on an unexpected error
                log.exception("unexpected error sending to %s", name)
                outcomes = [StoreOutcome(ok=False, error=f"internal error: {exc!r}")] * len(group)
        with db.transaction() as s:
            for g, outcome in zip(group, outcomes, strict=True):
                item = s.get(OutboxItem, g.id)
                _finish(s, settings, item, outcome, now, summary)
    return summary


def all_sent_for_study(session: Session, study_id: int) -> bool:
    """True when the study has outbox items and every one is SENT (the study may become DONE)."""
    counts = dict(session.execute(
        select(OutboxItem.state, func.count()).where(OutboxItem.study_id == study_id).group_by(OutboxItem.state)
    ).all())
    return bool(counts) and set(counts) == {SENT}


def delivery_summary(session: Session, study_id: int) -> dict[str, int]:
    """Outbox items of one study per state; a DEAD count > 0 means delivery needs an operator."""
    counts = dict(session.execute(
        select(OutboxItem.state, func.count()).where(OutboxItem.study_id == study_id).group_by(OutboxItem.state)
    ).all())
    return {st: int(counts.get(st, 0)) for st in (PENDING, SENDING, SENT, DEAD)}


def outbox_counts(session: Session) -> dict[str, int]:
    """Items per state (for the dashboard and metrics)."""
    counts = dict(session.execute(select(OutboxItem.state, func.count()).group_by(OutboxItem.state)).all())
    return {st: int(counts.get(st, 0)) for st in (PENDING, SENDING, SENT, DEAD)}


def reset_items(session: Session, items: Sequence[OutboxItem], now: dt.datetime | None = None) -> int:
    """Items back to PENDING, due now, attempts 0; their runs back to ``ENCODED`` (= awaiting
    delivery) so the outbox job closes the study to DONE once they are all SENT again. Items being
    sent right now are left alone. Returns how many were reset. The caller commits."""
    from pgsam_node.db.models import Run

    now = now or utcnow()
    n = 0
    for it in items:
        if it.state == SENDING:
            continue  # in flight: the sender owns it; it will finish or fail on its own
        it.state, it.next_attempt_at, it.attempts = PENDING, now, 0
        it.last_error = it.last_status = None
        it.permanent_failure, it.sent_at = False, None
        it.commitment_requested, it.committed = False, None
        n += 1
    for run_id in {it.run_id for it in items if it.run_id is not None}:
        run = session.get(Run, run_id)
        if run is not None and run.status != "ENCODED":
            run.status = "ENCODED"
    return n


def requeue(
    session: Session,
    *,
    study_uid: str | None = None,
    item_id: int | None = None,
    dead: bool = False,
    actor: str = "cli",
    now: dt.datetime | None = None,
) -> list[OutboxItem]:
    """Put items back to PENDING with attempts reset (operator action, audited).

    ``item_id``: that item; ``study_uid``: every item of that study not in flight; ``dead``: every
    DEAD item. Returns the items re-queued (an item being sent is left alone); what becomes of
    their studies is ``flow.actions.resend_items``'s decision. The caller commits.
    """
    from pgsam_node.db.models import Study

    q = select(OutboxItem)
    if item_id is not None:
        q = q.where(OutboxItem.id == item_id)
    elif study_uid is not None:
        sid = session.scalar(select(Study.id).where(Study.study_uid == study_uid))
        if sid is None:
            return []
        q = q.where(OutboxItem.study_id == sid)
    elif dead:
        q = q.where(OutboxItem.state == DEAD)
    else:
        raise ValueError("requeue needs study_uid, item_id or dead=True")
    items = list(session.scalars(q).all())
    n = reset_items(session, items, now)
    detail: dict[str, Any] = {"count": n}
    target = f"item:{item_id}" if item_id is not None else (f"study:{uid_hash(study_uid)}" if study_uid else "dead")
    session.add(AuditLog(actor=actor, action="outbox.requeue", target=target, detail=detail))
    log.info("outbox: re-queued %d item(s) (%s)", n, target)
    return [it for it in items if it.state == PENDING]
