"""Outbox bookkeeping without sockets: backoff, idempotent enqueue, requeue, study completion,
status classification, and the ``resend`` command."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pytest
import yaml
from pydicom.dataset import Dataset
from sqlalchemy import select

from pgsam_node.config import load_settings
from pgsam_node.db import open_database
from pgsam_node.db.models import AuditLog, OutboxItem, Study
from pgsam_node.deliver.outbox import (
    all_sent_for_study,
    backoff_seconds,
    enqueue,
    outbox_counts,
    process_due,
    queue_outputs,
    write_output,
    write_outputs,
)
from pgsam_node.deliver.scu import classify_status
from pgsam_node.flow.actions import resend_items

from ..helpers import PROJECT_ROOT

T0 = dt.datetime(2030, 1, 1)


def _ds(uid="1.2.3.4.5"):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.SOPInstanceUID = uid
    return ds


def test_backoff_is_exponential_and_capped(settings):
    s = settings.model_copy(update={"send": settings.send.model_copy(update={"backoff_base_seconds": 10, "backoff_max_seconds": 100})})
    assert [backoff_seconds(s.send, a) for a in range(1, 7)] == [10, 20, 40, 80, 100, 100]


@pytest.mark.parametrize("status,ok,permanent", [
    (0x0000, True, False), (0xB000, True, False), (0xB006, True, False), (0xB007, True, False),
    (0xA700, False, False), (0xA7FF, False, False), (0xA900, False, True), (0xC000, False, True),
    (0xC210, False, True), (0x0122, False, True), (0x0110, False, False),
])
def test_classify_status(status, ok, permanent):
    o = classify_status(status)
    assert (o.ok, o.permanent, o.status) == (ok, permanent, status)


def test_enqueue_idempotent_and_study_completion(settings):
    db = open_database(settings)
    with db.transaction() as s:
        st = Study(study_uid="1.2.3", state="SENDING")
        s.add(st)
        s.flush()
        a = enqueue(s, st.id, None, "outputs/x.dcm", _ds(), ["pacs", "archive"], now=T0)
        b = enqueue(s, st.id, None, "outputs/x.dcm", _ds(), ["pacs", "archive"], now=T0)
        assert [i.id for i in a] == [i.id for i in b]
        sid = st.id
    with db.session() as s:
        assert s.scalar(select(OutboxItem.id).where(OutboxItem.study_id == sid).order_by(OutboxItem.id.desc())) == a[-1].id
        assert len(s.scalars(select(OutboxItem)).all()) == 2
        assert not all_sent_for_study(s, sid)
        assert not all_sent_for_study(s, 999)  # no items: not done
    with db.transaction() as s:
        for it in s.scalars(select(OutboxItem)):
            it.state = "SENT"
    with db.session() as s:
        assert all_sent_for_study(s, sid)
        assert outbox_counts(s) == {"PENDING": 0, "SENDING": 0, "SENT": 2, "DEAD": 0}
    db.dispose()


def test_unknown_destination_and_missing_file_are_dead(settings):
    db = open_database(settings)
    with db.transaction() as s:
        enqueue(s, None, None, "outputs/missing.dcm", _ds("1.9.1"), ["gone"], now=T0)
    assert process_due(db, settings, now=T0) == {"claimed": 1, "sent": 0, "retry": 0, "dead": 1}
    with db.session() as s:
        item = s.scalars(select(OutboxItem)).one()
        assert item.state == "DEAD" and item.permanent_failure and "not configured" in item.last_error
    db.dispose()


def test_write_output_atomic_and_idempotent(settings, tmp_path):
    from ..factories import mr_instance

    ds = mr_instance()
    rel = write_output(settings, ds, ds.StudyInstanceUID)
    assert rel == write_output(settings, ds, ds.StudyInstanceUID)
    p = settings.storage_root / rel
    assert p.is_file() and not list(p.parent.glob("*.tmp*"))


def test_outputs_written_before_the_transaction_are_queued_as_they_are(settings, tmp_path, mr_files):
    """The pipeline's order: files renamed into place first, then one transaction queues them."""
    from pgsam_node.config import Destination

    settings = settings.model_copy(update={"destinations": [Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104),
                                                            Destination(name="archive", ae_title="ARCH", host="127.0.0.1", port=105)]})
    _, dss = mr_files("mr", n_slices=2)
    study_uid = str(dss[0].StudyInstanceUID)
    paths = write_outputs(settings, study_uid, dss)
    assert all((settings.storage_root / p).is_file() for p in paths)
    written = [(settings.storage_root / p).stat().st_mtime_ns for p in paths]
    db = open_database(settings)
    try:
        with db.transaction() as s:
            st = Study(study_uid=study_uid, state="ENCODED")
            s.add(st)
            s.flush()
            with pytest.raises(ValueError, match="path"):
                queue_outputs(s, settings, st.id, study_uid, None, dss, paths=paths[:1])
            items = queue_outputs(s, settings, st.id, study_uid, None, dss, now=T0, paths=paths)
        assert [(settings.storage_root / p).stat().st_mtime_ns for p in paths] == written  # not written again
        assert sorted((i.path, i.destination) for i in items) == sorted((p, d) for p in paths for d in ("pacs", "archive"))
    finally:
        db.dispose()


def test_requeue_and_resend_command(settings, tmp_path):
    db = open_database(settings)
    with db.transaction() as s:
        st = Study(study_uid="1.2.3.9", state="FAILED")
        s.add(st)
        s.flush()
        items = enqueue(s, st.id, None, "outputs/a.dcm", _ds("1.9.2"), ["pacs"], now=T0)
        items += enqueue(s, None, None, "outputs/b.dcm", _ds("1.9.3"), ["pacs"], now=T0)
        for it in items:
            it.state, it.attempts, it.permanent_failure = "DEAD", 3, True
        ids = [i.id for i in items]
    with db.transaction() as s:
        assert resend_items(s, item_id=ids[0]) == 1
    with db.session() as s:
        it = s.get(OutboxItem, ids[0])
        assert (it.state, it.attempts, it.permanent_failure) == ("PENDING", 0, False)
        # the study that had failed in delivery is sending again, so the outbox job can close it
        assert s.get(Study, it.study_id).state == "SENDING"
        assert s.scalars(select(AuditLog).where(AuditLog.action == "outbox.requeue")).first() is not None
    with pytest.raises(ValueError):
        with db.transaction() as s:
            resend_items(s)
    db.dispose()
    # the CLI, as an operator runs it: --dead takes the remaining dead item
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump({"storage": {"root": str(settings.storage_root)}}))
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    run = subprocess.run([sys.executable, "-m", "pgsam_node", "resend", "--config", str(cfg), "--dead"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "re-queued 1 item(s)" in run.stdout and "PENDING=2" in run.stdout
    run = subprocess.run([sys.executable, "-m", "pgsam_node", "resend", "--config", str(cfg), "--study", "1.2.3.9"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0 and "re-queued 1 item(s)" in run.stdout
    run = subprocess.run([sys.executable, "-m", "pgsam_node", "resend", "--config", str(cfg), "--study", "9.9.9"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 1 and "re-queued 0 item(s)" in run.stdout


def test_config_segment_codes_and_defaults(tmp_path):
    s = load_settings(None, storage={"root": str(tmp_path)})
    assert s.seg.segment_codes.anatomy.value == "45289007"
    assert s.seg.segment_codes.category.value == "49755003"
    assert s.seg.segment_codes.type.value == "108369006"
    s2 = load_settings(None, seg={"segment_codes": {"anatomy": {"value": "12738006", "meaning": "Brain"}}})
    assert s2.seg.segment_codes.anatomy.meaning == "Brain" and s2.seg.segment_codes.type.value == "108369006"
