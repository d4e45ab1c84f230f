"""The one sequencer: a declared table *study state → handler*.

Every state a study waits in has exactly one step that moves it on. The node's scheduler jobs and
the worker both come from this table, so the order of the stages is written down once:

============================  ==========  ==============================================================
states                        step        handler
============================  ==========  ==============================================================
RECEIVING                     assembly    ``flow.advance.mark_stable`` (quiet for stable_seconds)
STABLE, WAITING_SEQUENCES     advance     ``flow.advance.advance_stable`` (roles present? report found?)
WAITING_REPORT, DONE          reports     ``flow.advance.check_waiting`` / ``check_amendments``
READY                         run         ``flow.pipeline.Pipeline.process`` (the worker, leased claim)
RUNNING                       leases      ``flow.worker.requeue_expired`` (lease expired → READY)
ENCODED, SENDING              outbox      ``deliver.outbox.process_due`` + ``flow.pipeline.finish_sent``
DONE, NO_FINDING, FAILED      retention   ``flow.retention.retention_job`` (files past retention.days)
============================  ==========  ==============================================================

A step that may have made studies READY wakes the worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pgsam_node.config import Settings
from pgsam_node.db import Database, StudyState, utcnow
from pgsam_node.flow.scheduler import ASSEMBLY_JOB_ID, Job, assembly_job

S = StudyState


@dataclass(frozen=True)
class Step:
    """One row of :data:`STEPS`.

    Attributes
    ----------
    name : str
        Scheduler job id (``run`` is the worker's, not a job).
    states : tuple of StudyState
        The states this step moves a study out of.
    interval : callable or None
        ``settings -> seconds`` between runs; None for the worker's step (it polls its own queue).
    wakes_worker : bool
        The step can make a study READY: wake the worker after it.
    """

    name: str
    states: tuple[StudyState, ...]
    interval: Callable[[Settings], float] | None
    wakes_worker: bool = False


def _advance(db: Database, settings: Settings) -> bool:
    from pgsam_node.flow.advance import advance_stable

    return any(v == S.READY.value for v in advance_stable(db, settings).values())


def _reports(db: Database, settings: Settings) -> bool:
    from pgsam_node.flow.advance import check_amendments, check_waiting

    now = utcnow()
    check_waiting(db, settings, now)
    check_amendments(db, settings, now)
    return True


def _outbox(db: Database, settings: Settings) -> bool:
    from pgsam_node.deliver.outbox import process_due
    from pgsam_node.flow.pipeline import finish_sent

    process_due(db, settings)
    finish_sent(db)
    return False


def _leases(db: Database, settings: Settings) -> bool:
    from pgsam_node.flow.worker import requeue_expired

    return bool(requeue_expired(db, settings))


def _retention(db: Database, settings: Settings) -> bool:
    from pgsam_node.flow.retention import retention_job

    retention_job(settings, db)
    return False


def _assembly(db: Database, settings: Settings) -> bool:
    assembly_job(db, settings)
    return False


RUN_STEP = "run"

#: The table. Order = pipeline order.
STEPS: tuple[Step, ...] = (
    Step(ASSEMBLY_JOB_ID, (S.RECEIVING,), lambda s: s.assembly.check_interval_seconds),
    Step("advance", (S.STABLE, S.WAITING_SEQUENCES), lambda s: s.assembly.check_interval_seconds, True),
    Step("reports", (S.WAITING_REPORT, S.DONE), lambda s: s.ris.recheck_interval_seconds, True),
    Step(RUN_STEP, (S.READY,), None),
    Step("leases", (S.RUNNING,), lambda s: max(1.0, s.worker.heartbeat_seconds)),
    Step("outbox", (S.ENCODED, S.SENDING), lambda s: s.send.check_interval_seconds),
    Step("retention", (S.DONE, S.NO_FINDING, S.FAILED), lambda s: s.retention.check_interval_seconds),
)

#: The periodic handler of each scheduler step (the ``run`` step is the worker's :class:`Pipeline`).
HANDLERS: dict[str, Callable[[Database, Settings], bool]] = {
    ASSEMBLY_JOB_ID: _assembly,
    "advance": _advance,
    "reports": _reports,
    "leases": _leases,
    "outbox": _outbox,
    "retention": _retention,
}


def step_for(state: StudyState | str) -> Step:
    """The step that moves a study out of ``state`` (the first one listed for it)."""
    st = S(state)
    for step in STEPS:
        if st in step.states:
            return step
    raise KeyError(st.value)


class Sequencer:
    """Binds :data:`STEPS` to one process: scheduler jobs and the worker's ``process``.

    Parameters
    ----------
    db, settings
        The node's database and settings.
    pipeline
        The :class:`~pgsam_node.flow.pipeline.Pipeline` that handles READY studies.
    """

    def __init__(self, db: Database, settings: Settings, pipeline: Any):
        self.db = db
        self.settings = settings
        self.pipeline = pipeline

    @property
    def process(self) -> Callable[..., Any]:
        """The READY handler, for :class:`~pgsam_node.flow.worker.WorkerLoop`."""
        return self.pipeline.process

    def jobs(self, wake: Callable[[], None] | None = None) -> list[Job]:
        """One scheduler job per periodic step; ``wake`` is called after a step that may free work."""
        out: list[Job] = []
        for step in STEPS:
            if step.interval is None:
                continue
            out.append(Job(step.name, self._bind(step, wake), step.interval(self.settings)))
        return out

    def _bind(self, step: Step, wake: Callable[[], None] | None) -> Callable[[], None]:
        handler = HANDLERS[step.name]
        db, settings = self.db, self.settings

        def run() -> None:
            moved = handler(db, settings)
            if moved and step.wakes_worker and wake is not None:
                wake()

        run.__name__ = f"step_{step.name}"
        return run
