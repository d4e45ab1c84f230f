"""Retention: files of delivered studies older than the limit go; undelivered ones stay."""

from __future__ import annotations

import datetime as dt

import pytest

from pgsam_node.flow import actions
from pgsam_node.db import Database
from pgsam_node.db.models import AuditLog, Instance, Study, utcnow
from pgsam_node.flow.retention import TOMBSTONE, cleanup, is_purged, retention_job
from pgsam_node.ingest.spool import free_bytes

from ..opsdata import seed_study


def _exists(root, rels):
    return [(root / r).exists() for r in rels]


def test_cleanup_deletes_only_delivered_old_studies(settings):
    settings.retention.days = 30
    db = Database(settings.database_url)
    root = settings.storage_root
    old_done = seed_study(db, root, "DONE", age_days=40)
    old_failed = seed_study(db, root, "FAILED", accession="A2", age_days=40)
    old_dead = seed_study(db, root, "SENDING", accession="A3", outbox_state="DEAD", age_days=40)
    young_done = seed_study(db, root, "DONE", accession="A4", age_days=5)
    with db.transaction() as s:  # the report text each run was given (carried on the study row)
        for sid in (old_done.study_id, young_done.study_id):
            s.get(Study, sid).report_text = "Left parotid 2 cm mass."
    # a DONE study whose (second) outbox item is still pending: never purged before delivery
    old_pending = seed_study(db, root, "DONE", accession="A5", outbox_state="PENDING", age_days=40)

    dry = cleanup(db, settings, dry_run=True)
    assert dry.studies_purged == 2 and all(_exists(root, old_done.instance_paths))

    summary = cleanup(db, settings)
    assert summary.studies_purged == 2  # old_done + old_failed
    assert summary.kept_undelivered == 1  # old_pending (old_dead is SENDING, not an end state)
    assert summary.errors == []
    assert summary.files_deleted == len(old_done.instance_paths) + 1 + len(old_failed.instance_paths)
    assert summary.bytes_freed > 0
    assert not any(_exists(root, old_done.instance_paths + old_done.output_paths))
    assert not any(_exists(root, old_failed.instance_paths))
    for kept in (old_dead, young_done, old_pending):
        assert all(_exists(root, kept.instance_paths + kept.output_paths))
    # the study directories of purged studies are gone, the spool root stays
    assert not (root / "spool" / old_done.study_uid).exists()
    assert not (root / "outputs" / old_done.study_uid).exists()
    assert (root / "spool").is_dir() and (root / "spool" / young_done.study_uid).is_dir()
    with db.session() as s:
        st = s.get(Study, old_done.study_id)
        assert st.state == "DONE" and is_purged(st)  # rows kept, marked
        assert st.report_text is None and s.get(Study, young_done.study_id).report_text is not None
        paths = [i.path for i in s.query(Instance).join(Instance.series).filter_by(study_id=old_done.study_id)]
        assert paths and all(p.startswith(TOMBSTONE) for p in paths)
        assert s.query(AuditLog).filter_by(action="retention.purge").count() == 2
        with pytest.raises(actions.ActionError, match="retention"):
            actions.reprocess(s, st, "alice")
    # a second pass finds nothing more
    again = cleanup(db, settings)
    assert again.studies_purged == 0 and again.files_deleted == 0


def test_retention_clock_and_off_switch(settings):
    db = Database(settings.database_url)
    seeded = seed_study(db, settings.storage_root, "NO_FINDING")
    settings.retention.days = 0
    assert cleanup(db, settings, now=utcnow() + dt.timedelta(days=999)).studies_purged == 0
    settings.retention.days = 2
    assert cleanup(db, settings, now=utcnow() + dt.timedelta(days=1)).studies_purged == 0
    assert cleanup(db, settings, now=utcnow() + dt.timedelta(days=3)).studies_purged == 1
    assert not any(_exists(settings.storage_root, seeded.instance_paths))
    assert retention_job(settings, db).studies_purged == 0  # the scheduled body: nothing left


def test_free_bytes_of_a_path_not_created_yet(tmp_path):
    # One free-space reading for the spool, the listener's watermark and /metrics (ingest.spool).
    free = free_bytes(tmp_path / "does" / "not" / "exist")
    assert free > 0 and abs(free - free_bytes(tmp_path)) < 2**30
