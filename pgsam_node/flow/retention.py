"""Retention: delete the files of finished studies after ``retention.days``; free-disk watermark.

What is deleted
    The spool files (``Instance.path``) and outputs (``Run.output_paths``, ``OutboxItem.path``) of
    a study that is ``DONE`` with every outbox item ``SENT``, or ``NO_FINDING`` / ``FAILED``, and
    whose last state change is older than ``retention.days``. A study with any outbox item
    ``PENDING``, ``SENDING`` or ``DEAD`` keeps its files whatever its state or age: nothing is
    deleted before its SEG is delivered (or an operator gave up on it by re-processing).
What is kept
    Every database row (study, series, instances, events, runs, outbox, audit): the record of what
    was received, run and sent outlives the pixels. ``Instance.path`` is rewritten to
    ``purged:<old path>`` (a tombstone: the row tells where the file was and that it is gone), and
    the study gets a note ``{"code": "files_purged", "at": …}``; operator actions refuse a purged
    study. Directories left empty under the spool and outputs are removed.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from pgsam_node.db.models import AuditLog, Instance, OutboxItem, OutboxState, Run, Series, Study, StudyState, utcnow
from pgsam_node.logsetup import uid_hash

#: Note code written on a study once retention deleted its files (operator actions refuse such a study).
PURGED_NOTE = "files_purged"


def is_purged(study: Study) -> bool:
    """Whether retention deleted the study's files (it cannot run or send again)."""
    return any(isinstance(n, dict) and n.get("code") == PURGED_NOTE for n in (study.notes or []))

log = logging.getLogger(__name__)

TOMBSTONE = "purged:"
#: Study states whose files may go once old enough (DONE also needs every outbox item SENT).
ENDED = (StudyState.DONE.value, StudyState.NO_FINDING.value, StudyState.FAILED.value)
UNDELIVERED = (OutboxState.PENDING.value, OutboxState.SENDING.value, OutboxState.DEAD.value)


@dataclass
class RetentionSummary:
    """What one :func:`cleanup` pass did."""

    studies_purged: int = 0
    files_deleted: int = 0
    bytes_freed: int = 0
    dirs_removed: int = 0
    kept_undelivered: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "studies_purged": self.studies_purged,
            "files_deleted": self.files_deleted,
            "bytes_freed": self.bytes_freed,
            "dirs_removed": self.dirs_removed,
            "kept_undelivered": self.kept_undelivered,
            "errors": list(self.errors),
        }


def _inside(root: Path, rel: str) -> Path | None:
    """Absolute path of ``rel`` under ``root``, or None if it escapes the root."""
    p = (root / rel).resolve()
    try:
        p.relative_to(root.resolve())
    except ValueError:
        return None
    return p


def _delete(root: Path, rel: str | None, summary: RetentionSummary, parents: set[Path]) -> None:
    if not rel or rel.startswith(TOMBSTONE):
        return
    p = _inside(root, rel)
    if p is None:
        summary.errors.append(f"path outside the storage root ignored: {rel!r}")
        return
    try:
        size = p.stat().st_size
        p.unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        summary.errors.append(f"cannot delete {rel}: {exc.strerror}")
        return
    summary.files_deleted += 1
    summary.bytes_freed += size
    parents.add(p.parent)


def _remove_empty_dirs(parents: set[Path], stops: list[Path], summary: RetentionSummary) -> None:
    stops_r = [s.resolve() for s in stops]
    for d in sorted(parents, key=lambda x: len(x.parts), reverse=True):
        d = d.resolve()
        while d not in stops_r and any(s in d.parents for s in stops_r):
            try:
                d.rmdir()  # only succeeds when empty
            except OSError:
                break
            summary.dirs_removed += 1
            d = d.parent


def eligible(session, study: Study, cutoff: dt.datetime) -> tuple[bool, bool]:
    """(may purge, kept because undelivered) for one study."""
    if study.state not in ENDED or is_purged(study):
        return False, False
    if study.state_changed_at is None or study.state_changed_at > cutoff:
        return False, False
    states = set(session.scalars(select(OutboxItem.state).where(OutboxItem.study_id == study.id)).all())
    if states & set(UNDELIVERED):
        return False, True
    return True, False


def cleanup(db, settings, now: dt.datetime | None = None, dry_run: bool = False) -> RetentionSummary:
    """Delete the files of finished, delivered studies older than ``retention.days``.

    Parameters
    ----------
    db
        :class:`pgsam_node.db.Database`.
    settings
        Node settings (``retention.days``, ``storage_root``).
    now
        Naive UTC "now" (tests pass their own clock); default :func:`utcnow`.
    dry_run
        Count what would be purged, delete nothing.
    """
    summary = RetentionSummary()
    if settings.retention.days <= 0:
        return summary
    now = now or utcnow()
    cutoff = now - dt.timedelta(days=settings.retention.days)
    root = settings.storage_root
    with db.session() as s:
        ids = s.scalars(
            select(Study.id).where(Study.state.in_(ENDED), Study.state_changed_at <= cutoff).order_by(Study.id)
        ).all()
    parents: set[Path] = set()
    for sid in ids:
        # One transaction per study: a crash midway leaves each study either purged or intact
        # (files first, then rows; a re-run skips files already gone).
        with db.transaction() as s:
            study = s.get(Study, sid, with_for_update=not db.is_sqlite)
            if study is None:
                continue
            ok, kept = eligible(s, study, cutoff)
            if kept:
                summary.kept_undelivered += 1
            if not ok:
                continue
            summary.studies_purged += 1
            if dry_run:
                continue
            instances = s.scalars(select(Instance).join(Series).where(Series.study_id == sid)).all()
            for inst in instances:
                _delete(root, inst.path, summary, parents)
                if not inst.path.startswith(TOMBSTONE):
                    inst.path = (TOMBSTONE + inst.path)[:512]
            for run in s.scalars(select(Run).where(Run.study_id == sid)).all():
                for rel in run.output_paths or []:
                    _delete(root, rel, summary, parents)
            for item in s.scalars(select(OutboxItem).where(OutboxItem.study_id == sid)).all():
                _delete(root, item.path, summary, parents)
            note = {"code": PURGED_NOTE, "message": f"files deleted after {settings.retention.days:g} days",
                    "at": now.isoformat()}
            study.notes = [*(study.notes or []), note]
            study.report_text = None  # the run's copy of the report goes with the files (its source keeps it)
            s.add(AuditLog(actor="retention", action="retention.purge", target=f"study:{sid}",
                           detail={"state": study.state, "instances": len(instances)}))
            log.info("retention: purged files of study %s", uid_hash(study.study_uid),
                     extra={"study": uid_hash(study.study_uid)})
    if not dry_run:
        _remove_empty_dirs(parents, [settings.spool_dir, settings.outputs_dir, settings.tmp_dir, root], summary)
    return summary


def retention_job(settings, db) -> RetentionSummary:
    """One scheduled retention pass (APScheduler job body); logs its summary, never raises."""
    try:
        summary = cleanup(db, settings)
    except Exception:  # noqa: BLE001 - a scheduled job logs and waits for the next run
        log.exception("retention pass failed")
        return RetentionSummary(errors=["retention pass failed; see the log"])
    if summary.studies_purged or summary.errors:
        log.info("retention: %d studies purged, %d files, %d bytes freed, %d kept (undelivered), %d errors",
                 summary.studies_purged, summary.files_deleted, summary.bytes_freed, summary.kept_undelivered,
                 len(summary.errors))
    for e in summary.errors:
        log.warning("retention: %s", e)
    return summary
