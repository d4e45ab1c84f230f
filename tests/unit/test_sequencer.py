"""The one sequencer: the declared state -> step table drives the scheduler jobs and the worker."""

import datetime as dt

from pgsam_node.db import Study, StudyState, open_database
from pgsam_node.flow.sequencer import HANDLERS, RUN_STEP, STEPS, Sequencer, step_for
from pgsam_node.flow.scheduler import ASSEMBLY_JOB_ID


def test_every_waiting_state_has_one_step():
    for state in StudyState:
        step = step_for(state)
        assert state in step.states
    assert step_for(StudyState.READY).name == RUN_STEP
    assert step_for(StudyState.RECEIVING).name == ASSEMBLY_JOB_ID
    # every periodic step has a handler, the worker's step has none
    assert {s.name for s in STEPS if s.interval is not None} == set(HANDLERS)


def test_jobs_and_worker_come_from_the_table(settings):
    db = open_database(settings)

    class FakePipeline:  # seam: the READY handler
        def process(self, claim, heartbeat=None):
            return claim

    pipe = FakePipeline()
    seq = Sequencer(db, settings, pipe)
    assert seq.process == pipe.process
    jobs = {j.id: j for j in seq.jobs()}
    assert set(jobs) == set(HANDLERS)
    assert jobs["advance"].seconds == settings.assembly.check_interval_seconds

    # the assembly step moves a quiet RECEIVING study to STABLE, the advance step moves it on and wakes
    woken = []
    seq_jobs = {j.id: j for j in seq.jobs(wake=lambda: woken.append(1))}
    old = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=settings.assembly.stable_seconds + 60)
    with db.transaction() as s:
        s.add(Study(study_uid="1.2.3.4", last_instance_at=old))
    seq_jobs[ASSEMBLY_JOB_ID].func()
    with db.session() as s:
        assert s.query(Study).one().state == StudyState.STABLE.value
    seq_jobs["advance"].func()
    with db.session() as s:
        # no series: the study waits for its sequences (never silently READY)
        assert s.query(Study).one().state == StudyState.WAITING_SEQUENCES.value
    assert woken == []
    seq_jobs["reports"].func()
    assert woken == [1]
    db.dispose()
