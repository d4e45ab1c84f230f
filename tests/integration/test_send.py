"""Delivery through the persistent outbox to a real Orthanc and to pynetdicom SCPs: success,
destination down then up, permanent refusals (SOP class, AE titles), statuses, crash recovery."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage
from sqlalchemy import select

from pgsam_node.config import load_settings
from pgsam_node.db import open_database
from pgsam_node.db.models import Metric, OutboxItem, Study
from pgsam_node.encode import algorithm_info, build_seg
from pgsam_node.deliver.outbox import (
    all_sent_for_study,
    enqueue,
    process_due,
    recover_stuck,
    write_output,
)

from ..dicom_tools import assert_dciodvfy_clean, blob_mask
from ..factories import Geometry
from ..helpers import free_port, wait_for
from ..orthanc import OrthancServer, require_orthanc

ALG = algorithm_info("c0ffee" * 10)
T0 = dt.datetime(2030, 1, 1, 12, 0, 0)


def _settings(tmp_path, destinations, **send):
    return load_settings(
        None,
        storage={"root": str(tmp_path / "node"), "min_free_bytes": 0, "fsync": False},
        dicom={"ae_title": "PGSAM", "port": free_port()},
        destinations=destinations,
        send={"backoff_base_seconds": 10, "backoff_max_seconds": 300, "max_attempts": 5, "timeout_seconds": 5, **send},
    )


def _dest(port, name="pacs", aet="ORTHANC", **kw):
    return {"name": name, "ae_title": aet, "host": "127.0.0.1", "port": port, **kw}


@pytest.fixture
def case(mr_files):
    paths, dss = mr_files(n_slices=5, geometry=Geometry(rows=32, columns=24))
    return paths, dss, blob_mask((5, 32, 24))


def _queue(settings, db, case, run_version=1, now=T0):
    paths, dss, mask = case
    seg = build_seg(mask, paths, None, settings, ALG, run_version)
    with db.transaction() as s:
        study = s.scalars(select(Study).where(Study.study_uid == dss[0].StudyInstanceUID)).first()
        if study is None:
            study = Study(study_uid=dss[0].StudyInstanceUID, state="SENDING")
            s.add(study)
            s.flush()
        rel = write_output(settings, seg, study.study_uid)
        assert_dciodvfy_clean(settings.storage_root / rel)
        items = enqueue(s, study.id, None, rel, seg, settings.destinations, now=now)
        return study.id, seg, [i.id for i in items]


def _item(db, item_id) -> OutboxItem:
    with db.session() as s:
        return s.get(OutboxItem, item_id)


def _orthanc_count_sop(orthanc, sop_uid) -> int:
    return len(orthanc.find_instance(sop_uid))


@pytest.mark.orthanc
def test_orthanc_receives_seg_referencing_source(tmp_path, case):
    require_orthanc()
    paths, dss, _ = case
    with OrthancServer(tmp_path / "orthanc", modalities={"pgsam": ("PGSAM", "127.0.0.1", 11112)}) as orthanc:
        for p in paths:
            orthanc.upload(p)
        settings = _settings(tmp_path, [_dest(orthanc.dicom_port)])
        db = open_database(settings)
        study_id, seg, (item_id,) = _queue(settings, db, case)
        assert process_due(db, settings, now=T0) == {"claimed": 1, "sent": 1, "retry": 0, "dead": 0}
        item = _item(db, item_id)
        assert (item.state, item.attempts, item.last_status) == ("SENT", 1, 0)
        ids = orthanc.find_instance(seg.SOPInstanceUID)
        assert len(ids) == 1
        tags = orthanc.get(f"/instances/{ids[0]}/tags", simplify="")
        assert tags["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.66.4"
        assert tags["ReferencedSeriesSequence"][0]["SeriesInstanceUID"] == dss[0].SeriesInstanceUID
        assert tags["StudyInstanceUID"] == dss[0].StudyInstanceUID
        seg_series = orthanc.get(f"/instances/{ids[0]}/series")
        assert seg_series["MainDicomTags"]["Modality"] == "SEG"
        # the SEG sits in the same Orthanc study as the source series it references
        study = orthanc.get(f"/studies/{seg_series['ParentStudy']}")
        uids = {orthanc.get(f"/series/{sid}")["MainDicomTags"]["SeriesInstanceUID"] for sid in study["Series"]}
        assert dss[0].SeriesInstanceUID in uids
        with db.session() as s:
            assert all_sent_for_study(s, study_id)
            assert s.get(Metric, "outbox_sent_total").value == 1
        db.dispose()


@pytest.mark.orthanc
def test_destination_down_then_up_receives_exactly_once(tmp_path, case):
    require_orthanc()
    port = free_port()
    settings = _settings(tmp_path, [_dest(port)])
    db = open_database(settings)
    study_id, seg, (item_id,) = _queue(settings, db, case)
    # attempt 1: nothing listens → transient, rescheduled at T0 + base
    assert process_due(db, settings, now=T0)["retry"] == 1
    item = _item(db, item_id)
    assert (item.state, item.attempts) == ("PENDING", 1)
    assert item.next_attempt_at == T0 + dt.timedelta(seconds=10)
    assert process_due(db, settings, now=T0 + dt.timedelta(seconds=9))["claimed"] == 0  # not due: no storm
    with OrthancServer(tmp_path / "orthanc", dicom_port=port) as orthanc:
        assert process_due(db, settings, now=T0 + dt.timedelta(seconds=10))["sent"] == 1
        for k in range(3):  # later runs send nothing more
            assert process_due(db, settings, now=T0 + dt.timedelta(hours=k + 1))["claimed"] == 0
        assert _orthanc_count_sop(orthanc, seg.SOPInstanceUID) == 1
        assert len(orthanc.instances()) == 1
    item = _item(db, item_id)
    assert (item.state, item.attempts) == ("SENT", 2)
    with db.session() as s:
        assert all_sent_for_study(s, study_id)
    db.dispose()


def test_backoff_until_dead_letter(tmp_path, case):
    port = free_port()  # never comes up
    settings = _settings(tmp_path, [_dest(port)], max_attempts=4)
    db = open_database(settings)
    _, _, (item_id,) = _queue(settings, db, case)
    now = T0
    delays = []
    for _ in range(4):
        summary = process_due(db, settings, now=now)
        assert summary["claimed"] == 1
        item = _item(db, item_id)
        if item.state == "PENDING":
            delays.append((item.next_attempt_at - now).total_seconds())
            now = item.next_attempt_at
    assert delays == [10, 20, 40]
    item = _item(db, item_id)
    assert (item.state, item.attempts, item.permanent_failure) == ("DEAD", 4, False)
    for h in range(5):
        assert process_due(db, settings, now=now + dt.timedelta(days=h))["claimed"] == 0
    with db.session() as s:
        assert s.get(Metric, "outbox_dead_total").value == 1
        assert not all_sent_for_study(s, item.study_id)
    db.dispose()


class _Scp:
    """A pynetdicom Storage SCP on a free port, counting associations and C-STOREs."""

    def __init__(self, contexts, status=0x0000, ae_title="STORESCP"):
        self.port = free_port()
        self.associations = 0
        self.stores = 0
        self.status = status
        ae = AE(ae_title=ae_title)
        for uid in contexts:
            ae.add_supported_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self._lock = threading.Lock()

        def _on_store(event):
            with self._lock:
                self.stores += 1
            return self.status

        def _on_assoc(event):
            with self._lock:
                self.associations += 1

        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, _on_store), (evt.EVT_ESTABLISHED, _on_assoc),
                                                    (evt.EVT_REJECTED, _on_assoc)])

    def stop(self):
        self.server.shutdown()


def test_sop_class_refused_is_permanent_after_one_attempt(tmp_path, case):
    scp = _Scp([MRImageStorage])  # accepts MR only: no context for Segmentation Storage
    try:
        settings = _settings(tmp_path, [_dest(scp.port, aet="STORESCP")])
        db = open_database(settings)
        _, _, (item_id,) = _queue(settings, db, case)
        assert process_due(db, settings, now=T0)["dead"] == 1
        for h in range(5):
            assert process_due(db, settings, now=T0 + dt.timedelta(hours=h))["claimed"] == 0
        item = _item(db, item_id)
        assert (item.state, item.attempts, item.permanent_failure) == ("DEAD", 1, True)
        assert "presentation context" in item.last_error or "SOP class" in item.last_error
        assert scp.stores == 0
        db.dispose()
    finally:
        scp.stop()


@pytest.mark.parametrize("status,state,permanent", [
    (0xA700, "PENDING", False),   # out of resources: retry later
    (0xC000, "DEAD", True),       # cannot understand: permanent
    (0xA900, "DEAD", True),       # dataset does not match SOP class: permanent
    (0xB007, "SENT", False),      # stored with a warning
])
def test_store_status_classification(tmp_path, case, status, state, permanent):
    scp = _Scp(["1.2.840.10008.5.1.4.1.1.66.4"], status=status)
    try:
        settings = _settings(tmp_path, [_dest(scp.port, aet="STORESCP")])
        db = open_database(settings)
        _, _, (item_id,) = _queue(settings, db, case)
        process_due(db, settings, now=T0)
        item = _item(db, item_id)
        assert (item.state, item.last_status, item.permanent_failure, item.attempts) == (state, status, permanent, 1)
        assert scp.stores == 1
        db.dispose()
    finally:
        scp.stop()


@pytest.mark.orthanc
@pytest.mark.parametrize("why", ["calling", "called"])
def test_orthanc_rejecting_our_ae_is_permanent(tmp_path, case, why):
    require_orthanc()
    # "calling": Orthanc knows no modality with our AE title and allows no unknown AE;
    # "called": we address Orthanc with a wrong AE title and DicomCheckCalledAet is on.
    with OrthancServer(tmp_path / "orthanc", always_allow_store=(why == "called")) as orthanc:
        aet = "ORTHANC" if why == "calling" else "NOTORTHANC"
        settings = _settings(tmp_path, [_dest(orthanc.dicom_port, aet=aet)])
        db = open_database(settings)
        _, _, (item_id,) = _queue(settings, db, case)
        assert process_due(db, settings, now=T0)["dead"] == 1
        assert process_due(db, settings, now=T0 + dt.timedelta(hours=1))["claimed"] == 0
        item = _item(db, item_id)
        assert (item.state, item.attempts, item.permanent_failure) == ("DEAD", 1, True)
        assert "rejected" in item.last_error, item.last_error
        assert ("our calling AE title" if why == "calling" else "the called AE title") in item.last_error
        assert orthanc.instances() == []
        db.dispose()


@pytest.mark.orthanc
def test_item_sending_at_start_is_recovered_and_sent_once(tmp_path, case):
    require_orthanc()
    with OrthancServer(tmp_path / "orthanc") as orthanc:
        settings = _settings(tmp_path, [_dest(orthanc.dicom_port)])
        db = open_database(settings)
        _, seg, (item_id,) = _queue(settings, db, case)
        # simulate a crash after the claim: the row is SENDING and no process owns it
        with db.transaction() as s:
            item = s.get(OutboxItem, item_id)
            item.state, item.attempts = "SENDING", 1
        assert process_due(db, settings, now=T0)["claimed"] == 0  # SENDING is never claimed twice
        assert recover_stuck(db, now=T0) == 1
        assert process_due(db, settings, now=T0)["sent"] == 1
        assert process_due(db, settings, now=T0 + dt.timedelta(hours=1))["claimed"] == 0
        assert _orthanc_count_sop(orthanc, seg.SOPInstanceUID) == 1
        assert len(orthanc.instances()) == 1
        assert _item(db, item_id).state == "SENT"
        db.dispose()


@pytest.mark.orthanc
def test_two_destinations_and_storage_commitment(tmp_path, case):
    require_orthanc()
    with OrthancServer(tmp_path / "o1", modalities={"pgsam": ("PGSAM", "127.0.0.1", free_port())}) as o1, \
            OrthancServer(tmp_path / "o2", aet="ORTHANC2") as o2:
        settings = _settings(tmp_path, [_dest(o1.dicom_port, name="pacs", storage_commitment=True),
                                        _dest(o2.dicom_port, name="archive", aet="ORTHANC2")])
        db = open_database(settings)
        study_id, seg, ids = _queue(settings, db, case)
        assert len(ids) == 2
        # enqueue again: idempotent per (SOP Instance UID, destination)
        _, _, ids_again = _queue(settings, db, case)
        assert ids_again == ids
        assert process_due(db, settings, now=T0)["sent"] == 2
        items = {i.destination: i for i in (_item(db, x) for x in ids)}
        assert items["pacs"].commitment_requested is True
        assert items["archive"].commitment_requested is False
        assert _orthanc_count_sop(o1, seg.SOPInstanceUID) == 1 and _orthanc_count_sop(o2, seg.SOPInstanceUID) == 1
        with db.session() as s:
            assert all_sent_for_study(s, study_id)
        db.dispose()


@pytest.mark.orthanc
def test_scheduler_job_delivers(tmp_path, case):
    require_orthanc()
    from pgsam_node.flow.scheduler import build_scheduler
    from pgsam_node.flow.sequencer import Sequencer

    with OrthancServer(tmp_path / "orthanc") as orthanc:
        settings = _settings(tmp_path, [_dest(orthanc.dicom_port)], check_interval_seconds=0.2)
        db = open_database(settings)
        _, seg, (item_id,) = _queue(settings, db, case, now=dt.datetime(2000, 1, 1))  # due on the real clock
        # the outbox step of the sequencer's table, as the node schedules it
        sched = build_scheduler([j for j in Sequencer(db, settings, None).jobs() if j.id == "outbox"])
        sched.start()
        try:
            wait_for(lambda: _item(db, item_id).state == "SENT", 20, what="outbox job to deliver")
        finally:
            sched.shutdown(wait=True)
        assert _orthanc_count_sop(orthanc, seg.SOPInstanceUID) == 1
        db.dispose()


@pytest.mark.orthanc
def test_storage_commitment_report_is_recorded(tmp_path, case):
    """N-ACTION to Orthanc, then Orthanc's N-EVENT-REPORT on an association to the node's listener."""
    require_orthanc()
    from pgsam_node.ingest.listener import Listener

    node_port = free_port()
    with OrthancServer(tmp_path / "orthanc", modalities={"pgsam": ("PGSAM", "127.0.0.1", node_port)}) as orthanc:
        settings = _settings(tmp_path, [_dest(orthanc.dicom_port, storage_commitment=True)])
        settings.dicom.port = node_port
        settings.dicom.refuse_below_free_bytes = 0
        db = open_database(settings)
        server = Listener(settings, db)
        server.start()
        try:
            _, seg, (item_id,) = _queue(settings, db, case)
            assert process_due(db, settings, now=T0)["sent"] == 1
            assert _item(db, item_id).commitment_requested is True
            wait_for(lambda: _item(db, item_id).committed is True, 20, what="storage commitment report")
        finally:
            server.stop()
            db.dispose()


def test_transient_rejection_is_retried(tmp_path, case):
    """An SCP at its association limit rejects transiently (PS3.8: result 2, source 3, reason 2)."""
    scp = _Scp(["1.2.840.10008.5.1.4.1.1.66.4"])
    scp.server.ae.maximum_associations = 1
    holder = AE(ae_title="HOLDER")
    holder.add_requested_context("1.2.840.10008.5.1.4.1.1.66.4")
    held = holder.associate("127.0.0.1", scp.port, ae_title="STORESCP")
    try:
        assert held.is_established
        settings = _settings(tmp_path, [_dest(scp.port, aet="STORESCP")])
        db = open_database(settings)
        _, _, (item_id,) = _queue(settings, db, case)
        assert process_due(db, settings, now=T0)["retry"] == 1
        item = _item(db, item_id)
        assert (item.state, item.attempts, item.permanent_failure) == ("PENDING", 1, False)
        assert "transiently" in item.last_error
        held.release()
        # once the slot is free the retry at its due time goes through
        wait_for(lambda: len(scp.server.active_associations) == 0, 10, what="held association to close")
        assert process_due(db, settings, now=item.next_attempt_at)["sent"] == 1
        assert scp.stores == 1
        db.dispose()
    finally:
        if held.is_established:
            held.release()
        scp.stop()
