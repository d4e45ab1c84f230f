"""Work queue over the study table: atomic claims, leases with heartbeats, expiry re-queues.

PostgreSQL: several workers (GPU machines) claim READY studies with
``SELECT … FOR UPDATE SKIP LOCKED``; SQLite: one worker (the embedded default), where the database
lock serialises claims anyway. A worker holds a lease (``lease_owner``, ``lease_expires_at``) that a
heartbeat thread extends; a study whose lease expires (worker killed, machine lost) goes back to
READY, counting an attempt, and FAILS after ``worker.max_attempts``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, update

from pgsam_node.config import Settings
from pgsam_node.db import Database, Study, StudyState, switches, utcnow
from pgsam_node.logsetup import uid_hash
from pgsam_node.db.lifecycle import transition

log = logging.getLogger(__name__)


def make_worker_id() -> str:
    """``host:pid:random`` — unique per worker process incarnation."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class Claim:
    study_id: int
    study_uid: str
    version: int
    worker_id: str


def claim_next(db: Database, worker_id: str, lease_seconds: float, now: dt.datetime | None = None) -> Claim | None:
    """Claim the oldest READY study atomically and move it to RUNNING.

    Returns
    -------
    Claim or None
        None when the queue is empty (or every READY row is locked by other workers), or while
        the operator has paused processing (:mod:`pgsam_node.db.switches`): READY studies stay
        READY, read in the claim's own transaction.
    """
    now = now or utcnow()
    with db.transaction() as s:
        if switches.is_paused(s, switches.PROCESSING):
            return None
        q = select(Study).where(Study.state == StudyState.READY.value).order_by(Study.state_changed_at, Study.id).limit(1)
        if not db.is_sqlite:
            # PostgreSQL: rows another worker is claiming are skipped, not waited for.
            q = q.with_for_update(skip_locked=True)
        study = s.scalars(q).first()
        if study is None:
            return None
        study.lease_owner = worker_id
        study.lease_expires_at = now + dt.timedelta(seconds=lease_seconds)
        study.attempts = (study.attempts or 0) + 1
        transition(s, study, StudyState.RUNNING, f"claimed by worker (attempt {study.attempts})", actor=worker_id)
        return Claim(study.id, study.study_uid, study.version, worker_id)


def extend_lease(db: Database, claim: Claim, lease_seconds: float, now: dt.datetime | None = None) -> bool:
    """Heartbeat: extend the lease if we still own it. False = lease lost (stop working on it)."""
    now = now or utcnow()
    with db.transaction() as s:
        res = s.execute(
            update(Study)
            .where(Study.id == claim.study_id, Study.lease_owner == claim.worker_id, Study.state == StudyState.RUNNING.value)
            .values(lease_expires_at=now + dt.timedelta(seconds=lease_seconds))
        )
        return res.rowcount == 1


def release(session, study: Study) -> None:
    """Drop the lease (the caller is moving the study out of RUNNING in the same transaction)."""
    study.lease_owner = None
    study.lease_expires_at = None


def requeue_expired(db: Database, settings: Settings, now: dt.datetime | None = None, owner_prefix: str | None = None) -> list[str]:
    """RUNNING studies whose lease expired go back to READY (or FAILED after max attempts).

    Parameters
    ----------
    owner_prefix
        Also requeue studies leased by workers whose id starts with this prefix, expired or not
        (used at start-up of the single SQLite worker: any lease left is from a dead process).
    """
    now = now or utcnow()
    moved: list[str] = []
    with db.transaction() as s:
        q = select(Study).where(Study.state == StudyState.RUNNING.value)
        if not db.is_sqlite:
            q = q.with_for_update(skip_locked=True)
        for st in s.scalars(q).all():
            expired = st.lease_expires_at is None or st.lease_expires_at < now
            stale = owner_prefix is not None and (st.lease_owner or "").startswith(owner_prefix)
            if not (expired or stale):
                continue
            prev = st.lease_owner
            release(s, st)
            if (st.attempts or 0) >= settings.worker.max_attempts:
                transition(s, st, StudyState.FAILED, f"gave up after {st.attempts} attempts (last lease by {prev} lost)")
            else:
                transition(s, st, StudyState.READY, f"lease of {prev} expired; re-queued")
            moved.append(st.study_uid)
            log.warning("re-queued study %s (lease lost)", uid_hash(st.study_uid), extra={"study": uid_hash(st.study_uid)})
    return moved


class Heartbeat:
    """Background thread extending a claim's lease every ``interval`` seconds."""

    def __init__(self, db: Database, claim: Claim, lease_seconds: float, interval: float):
        self.db, self.claim, self.lease_seconds, self.interval = db, claim, lease_seconds, interval
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{claim.study_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not extend_lease(self.db, self.claim, self.lease_seconds):
                    self.lost.set()
                    return
            except Exception:  # noqa: BLE001 - a DB hiccup must not kill the worker; log it
                log.exception("heartbeat failed for study %s", uid_hash(self.claim.study_uid))

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class WorkerLoop:
    """Claims READY studies and runs ``process(claim)`` on each, one at a time.

    ``process`` is the pipeline (model kept loaded between studies by its owner).
    """

    def __init__(self, db: Database, settings: Settings, process: Callable[[Claim, Heartbeat], None], worker_id: str | None = None):
        self.db, self.settings, self.process = db, settings, process
        self.worker_id = worker_id or make_worker_id()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.processed = 0

    def wake(self) -> None:
        """Hint that a study may be READY (saves a poll interval)."""
        self._wake.set()

    def run_once(self) -> bool:
        """Claim and process one study. Returns False when the queue was empty."""
        ws = self.settings.worker
        claim = claim_next(self.db, self.worker_id, ws.lease_seconds)
        if claim is None:
            return False
        with Heartbeat(self.db, claim, ws.lease_seconds, ws.heartbeat_seconds) as hb:
            self.process(claim, hb)
        self.processed += 1
        return True

    def run_forever(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # noqa: BLE001 - keep the worker alive; the study's lease expires
                log.exception("worker loop error")
                busy = False
            if not busy:
                self._wake.wait(self.settings.worker.poll_seconds)
                self._wake.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=timeout)
