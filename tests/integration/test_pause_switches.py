"""Operator pause switches against real parts: real associations (pynetdicom and DCMTK storescu)
refused with A-ASSOCIATE-RJ transient while receiving is paused, HL7 reports still taken, the
worker queue left alone while processing is paused, the outbox holding items for a real Storage
SCP while sending is paused — and each part working again after resume."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import subprocess
import sys
import threading

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from sqlalchemy import func, select

from pgsam_node.config import Destination
from pgsam_node.db import Database, Instance, OutboxItem, Study, switches
from pgsam_node.db.models import AuditLog
from pgsam_node.deliver.outbox import process_due
from pgsam_node.flow.worker import WorkerLoop, claim_next
from pgsam_node.db.lifecycle import transition
from pgsam_node.reports.hl7 import Hl7Listener, mllp_frame, read_frame

from ..factories import MRSeries, mr_instance
from ..helpers import free_port
from ..hl7_messages import oru, segments
from ..opsdata import seed_study
from .ingest_fixtures import assoc_result, running_listener, scu

STORESCU = "/usr/bin/storescu"


def _pause(db, what, paused=True, actor="tester"):
    with db.transaction() as s:
        return switches.set_paused(s, [what], paused, actor)


def _instances(db) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(Instance))


def _spool_files(settings) -> list:
    return [p for p in settings.spool_dir.rglob("*") if p.is_file()] if settings.spool_dir.exists() else []


def test_paused_receiving_rejects_transient_and_resume_accepts(settings):
    study, series = generate_uid(), generate_uid()
    ds = mr_instance(study, series, 0)
    with running_listener(settings) as (listener, db):
        ae = scu()
        # An association opened before the pause finishes its work.
        early = ae.associate("127.0.0.1", listener.port, ae_title="PGSAM")
        assert early.is_established
        _pause(db, "receiving")

        tries: list = []
        # PS3.8 9.3.4: rejected-transient, service-provider (presentation), temporary-congestion.
        # (assoc_result asks again when pynetdicom's requestor reports an abort for the RJ sent.)
        assert assoc_result(listener.port, "TESTSCU", tries=tries) == (0x02, 0x03, 0x01)
        assert listener.counters["rejected"] == len(tries)

        assert int(early.send_c_store(ds).Status) == 0x0000
        early.release()
        assert _instances(db) == 1

        _pause(db, "receiving", False)
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="PGSAM")
        assert assoc.is_established
        ds2 = mr_instance(study, series, 1)
        assert int(assoc.send_c_store(ds2).Status) == 0x0000
        assoc.release()
        assert _instances(db) == 2


@pytest.mark.skipif(not shutil.which(STORESCU), reason="DCMTK storescu not installed (Debian package dcmtk)")
def test_paused_receiving_refuses_dcmtk_storescu_and_stores_nothing(settings, tmp_path):
    study = generate_uid()
    files = MRSeries(n_slices=3, study_uid=study, description="t2_tse_tra", series_number=3).write(tmp_path / "t2")
    with running_listener(settings) as (listener, db):
        _pause(db, "receiving")
        args = [STORESCU, "-aec", "PGSAM", "-aet", "PACS", "+sd", "+r", "127.0.0.1", str(listener.port), str(tmp_path / "t2")]
        r = subprocess.run(args, capture_output=True, text=True, timeout=60)
        out = r.stdout + r.stderr
        assert r.returncode != 0, out
        assert "Rejected Transient" in out and "Temporary Congestion" in out, out
        assert _instances(db) == 0 and not _spool_files(settings)

        _pause(db, "receiving", False)
        r = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert _instances(db) == len(files)


def test_reports_still_arrive_while_receiving_is_paused(settings):
    settings.hl7.port = free_port()
    db = Database(settings.database_url)
    hl7 = Hl7Listener(settings, db).start()
    try:
        _pause(db, "all")
        with socket.create_connection(("127.0.0.1", hl7.port), timeout=10) as s:
            s.sendall(mllp_frame(oru(control="P1")))
            ack = segments(read_frame(s))
        assert ack["MSA"][1:3] == ["AA", "P1"]
    finally:
        hl7.stop()
        db.dispose()


def test_paused_processing_leaves_ready_studies_and_a_running_one_finishes(settings):
    db = Database(settings.database_url)
    try:
        first = seed_study(db, settings.storage_root, "READY", accession="R1", with_seg=False)
        second = seed_study(db, settings.storage_root, "READY", accession="R2", with_seg=False)
        seen: list[int] = []

        def process(claim, _hb):
            # The operator pauses processing while this study runs: it still finishes.
            seen.append(claim.study_id)
            _pause(db, "processing")
            with db.transaction() as s:
                st = s.get(Study, claim.study_id)
                st.lease_owner = st.lease_expires_at = None
                transition(s, st, "NO_FINDING", "test run finished")

        worker = WorkerLoop(db, settings, process)
        assert worker.run_once() is True
        assert seen == [first.study_id]
        # Paused: the loop claims nothing, however often it polls; the other study stays READY.
        for _ in range(3):
            assert worker.run_once() is False
        with db.session() as s:
            assert s.get(Study, first.study_id).state == "NO_FINDING"
            st = s.get(Study, second.study_id)
            assert st.state == "READY" and st.attempts == 0 and st.lease_owner is None
        _pause(db, "processing", False)
        claim = claim_next(db, "w2", 60)
        assert claim is not None and claim.study_id == second.study_id
        with db.session() as s:
            assert s.get(Study, second.study_id).state == "RUNNING"
    finally:
        db.dispose()


class _Scp:
    """A pynetdicom Storage SCP recording the SOP Instance UIDs it stores."""

    def __init__(self):
        self.got: list[str] = []
        self._lock = threading.Lock()
        ae = AE(ae_title="PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        self.port = free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event):
        with self._lock:
            self.got.append(event.dataset.SOPInstanceUID)
        return 0x0000

    def stop(self):
        self.server.shutdown()


def test_paused_sending_keeps_items_pending_then_resume_delivers(settings):
    scp = _Scp()
    settings.destinations = [Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=scp.port)]
    settings.send.max_attempts = 2
    db = Database(settings.database_url)
    try:
        seeded = seed_study(db, settings.storage_root, "SENDING", outbox_state="PENDING")
        with db.session() as s:
            before = s.scalars(select(OutboxItem).where(OutboxItem.study_id == seeded.study_id)).one()
        _pause(db, "sending")
        t0 = dt.datetime(2026, 12, 4, 12, 0, 0)
        # Far more ticks than max_attempts, hours apart: nothing is tried, backed off or dead-lettered.
        for h in range(5):
            assert process_due(db, settings, now=t0 + dt.timedelta(hours=h)) == {"claimed": 0, "sent": 0, "retry": 0, "dead": 0}
        with db.session() as s:
            item = s.get(OutboxItem, before.id)
            assert (item.state, item.attempts, item.next_attempt_at, item.last_error) == (
                "PENDING", before.attempts, before.next_attempt_at, before.last_error)
        assert scp.got == []

        _pause(db, "sending", False)
        assert process_due(db, settings)["sent"] == 1
        assert scp.got == [before.sop_instance_uid]
        with db.session() as s:
            item = s.get(OutboxItem, before.id)
            assert item.state == "SENT" and item.attempts == before.attempts + 1
    finally:
        scp.stop()
        db.dispose()


def test_switches_persist_across_reopen_and_are_audited(settings):
    db = Database(settings.database_url)
    with db.transaction() as s:
        changed = switches.set_paused(s, ["all"], True, "alice", remote_addr="10.0.0.9", reason="PACS upgrade")
        assert [c.name for c in changed] == ["receiving", "processing", "sending"]
        # Asking again changes nothing and writes no second audit row.
        assert switches.set_paused(s, ["sending"], True, "bob") == []
    db.dispose()
    db = Database(settings.database_url)  # a restart: the switches are read back from the database
    try:
        with db.session() as s:
            states = switches.read_all(s)
            assert all(st.paused and st.changed_by == "alice" and st.reason == "PACS upgrade" for st in states.values())
        assert claim_next(db, "w", 60) is None
        with db.transaction() as s:
            switches.set_paused(s, ["receiving"], False, "carol")
        with db.session() as s:
            rows = s.scalars(select(AuditLog).order_by(AuditLog.id)).all()
            assert [(r.actor, r.action, r.target) for r in rows] == [
                ("alice", "node.pause", "switch:receiving"), ("alice", "node.pause", "switch:processing"),
                ("alice", "node.pause", "switch:sending"), ("carol", "node.resume", "switch:receiving")]
            assert rows[0].remote_addr == "10.0.0.9" and rows[0].detail["reason"] == "PACS upgrade"
            assert not switches.is_paused(s, "receiving") and switches.is_paused(s, "sending")
        with pytest.raises(switches.SwitchError, match="unknown switch 'recieving'"):
            switches.parse_names("recieving")
    finally:
        db.dispose()


def test_switches_on_postgresql(settings, pg_url):
    """The migration creates the table on PostgreSQL too, and a paused claim skips READY rows there."""
    db = Database(pg_url)
    try:
        seeded = seed_study(db, settings.storage_root, "READY", accession="PG1", with_seg=False)
        _pause(db, "processing")
        assert claim_next(db, "gpu-1", 60) is None
        _pause(db, "processing", False)
        claim = claim_next(db, "gpu-1", 60)
        assert claim is not None and claim.study_id == seeded.study_id
    finally:
        db.dispose()


def _cli(node, *argv):
    from .test_serve import ENV

    return subprocess.run([sys.executable, "-m", "pgsam_node", *argv, "--config", str(node.config)], env=ENV,
                           capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not shutil.which(STORESCU), reason="DCMTK storescu not installed (Debian package dcmtk)")
def test_cli_pause_survives_a_serve_restart(tmp_path):
    """``pgsam-node pause`` against a running ``serve``; the switch holds across a restart;
    ``status`` shows it; ``resume`` lets the same storescu send in."""
    from .test_serve import Node

    study = generate_uid()
    MRSeries(n_slices=3, study_uid=study, description="t2_tse_tra", series_number=3).write(tmp_path / "t2")
    node = Node(tmp_path).start()
    send = [STORESCU, "-aec", "PGSAM", "-aet", "PACS", "+sd", "+r", "127.0.0.1", str(node.port), str(tmp_path / "t2")]
    try:
        r = _cli(node, "pause", "receiving", "--reason", "PACS maintenance")
        assert r.returncode == 0 and "paused: receiving" in r.stdout, r.stdout + r.stderr
        refused = subprocess.run(send, capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "Rejected Transient" in refused.stdout + refused.stderr

        assert node.stop() == 0
        node.start()
        refused = subprocess.run(send, capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "Rejected Transient" in refused.stdout + refused.stderr
        status = _cli(node, "status", "--json")
        data = json.loads(status.stdout)
        assert data["studies"] == []
        rec = data["switches"]["receiving"]
        assert rec["paused"] and rec["reason"] == "PACS maintenance" and rec["changed_by"].startswith("cli")
        assert not data["switches"]["processing"]["paused"] and not data["switches"]["sending"]["paused"]
        assert "receiving PAUSED" in _cli(node, "status").stdout

        r = _cli(node, "resume", "receiving")
        assert r.returncode == 0 and "resumed: receiving" in r.stdout and "receiving on" in r.stdout, r.stdout
        ok = subprocess.run(send, capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        studies = json.loads(_cli(node, "status", "--json").stdout)["studies"]
        assert [s["study_uid"] for s in studies] == [study] and studies[0]["series"][0]["instance_count"] == 3
        bad = _cli(node, "pause", "recieving")
        assert bad.returncode != 0 and "invalid choice" in bad.stderr
    finally:
        node.stop()
