"""Atomic claims and lease expiry on real PostgreSQL and on SQLite."""

import datetime as dt
import threading

from pgsam_node.db import Database, Study, StudyState, utcnow
from pgsam_node.flow.worker import claim_next, extend_lease, requeue_expired


def _seed(db: Database, n: int) -> None:
    with db.transaction() as s:
        for i in range(n):
            s.add(Study(study_uid=f"1.2.826.0.1.{i}", state=StudyState.READY.value))


def test_concurrent_claims_are_exclusive_on_postgres(pg_url, settings):
    db = Database(pg_url)
    _seed(db, 40)
    claimed: dict[str, list[int]] = {"a": [], "b": [], "c": []}

    def work(name: str) -> None:
        while (c := claim_next(db, name, 60)) is not None:
            claimed[name].append(c.study_id)

    threads = [threading.Thread(target=work, args=(n,)) for n in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    every = sum(claimed.values(), [])
    assert sorted(every) == sorted(set(every)), "a study was claimed twice"
    assert len(every) == 40
    with db.session() as s:
        assert {st.state for st in s.query(Study)} == {"RUNNING"}
    db.dispose()


def test_expired_lease_requeues_then_fails(tmp_path, settings):
    db = Database(f"sqlite:///{tmp_path / 'q.sqlite3'}")
    _seed(db, 1)
    settings.worker.max_attempts = 2
    now = utcnow()
    c = claim_next(db, "w1", 10, now=now)
    assert extend_lease(db, c, 10, now=now)
    assert requeue_expired(db, settings, now=now + dt.timedelta(seconds=5)) == []
    assert requeue_expired(db, settings, now=now + dt.timedelta(seconds=30)) == [c.study_uid]
    assert not extend_lease(db, c, 10)  # the old owner lost it
    c2 = claim_next(db, "w2", 10, now=now)
    assert c2.study_id == c.study_id
    requeue_expired(db, settings, now=now + dt.timedelta(seconds=60))
    with db.session() as s:
        st = s.get(Study, c.study_id)
        assert st.state == "FAILED" and "2 attempts" in st.state_reason
    db.dispose()
