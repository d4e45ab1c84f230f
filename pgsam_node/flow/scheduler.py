"""APScheduler jobs of the node (one BackgroundScheduler per process).

The jobs come from the sequencer's table (:mod:`pgsam_node.flow.sequencer`); each job must be
idempotent and short, because a missed run is simply coalesced into the next one.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from pgsam_node.flow.advance import mark_stable

log = logging.getLogger(__name__)

ASSEMBLY_JOB_ID = "assembly"


@dataclass
class Job:
    """An interval job for :func:`build_scheduler`."""

    id: str
    func: Callable[..., Any]
    seconds: float
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def _guard(job_id: str, func: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception:  # noqa: BLE001 - one failed run must not kill the schedule
            log.exception("scheduled job %s failed", job_id)
            return None

    run.__name__ = f"job_{job_id}"
    return run


def assembly_job(db, settings) -> list[str]:
    """One stability pass (the assembly job's body)."""
    moved = mark_stable(db, settings)
    if moved:
        log.info("%d stud%s became stable", len(moved), "y" if len(moved) == 1 else "ies")
    return moved


def build_scheduler(jobs: Iterable[Job]) -> BackgroundScheduler:
    """A (not yet started) scheduler running ``jobs`` (see ``Sequencer.jobs``).

    Every job runs at most once at a time (``max_instances=1``) and missed runs coalesce.
    Call ``trigger_now(scheduler, ASSEMBLY_JOB_ID)`` for an early run (e.g. on association
    release).
    """
    sched = BackgroundScheduler(
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
        timezone="UTC",
    )
    for j in jobs:
        sched.add_job(_guard(j.id, j.func), "interval", seconds=j.seconds, id=j.id, args=j.args,
                      kwargs=j.kwargs, replace_existing=True)
    return sched


def trigger_now(sched: BackgroundScheduler, job_id: str = ASSEMBLY_JOB_ID) -> None:
    """Ask for an extra run of ``job_id`` as soon as possible (no-op if not scheduled)."""
    job = sched.get_job(job_id)
    if job is not None:
        job.modify(next_run_time=dt.datetime.now(dt.timezone.utc))
