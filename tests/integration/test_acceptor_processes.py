"""Acceptor worker processes (``dicom.acceptor_processes`` > 1, issue 17): several processes accept
on one port. Real associations on localhost (pynetdicom and DCMTK storescu); each test checks the
same guarantees as the single-process listener: every acknowledged instance is in the spool and
indexed exactly once, limits hold node-wide, malformed input is refused, and no worker outlives
the serve process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom.sop_class import MRImageStorage
from sqlalchemy import create_engine, text

from pgsam_node.config import load_settings
from pgsam_node.db import Database
from pgsam_node.ingest.dicomnet import pdu
from pgsam_node.ingest.spool import leftover_tmp
from pgsam_node.ingest.workers import AcceptorPool
from tests.factories import Geometry, mr_instance
from tests.helpers import free_port, wait_for

from .ingest_fixtures import scu
from .test_acceptor import RawClient, _associated, _ctx, _still_serves
from .test_serve import ENV, Node as ServeNode

pytestmark = pytest.mark.skipif(not shutil.which("storescu"), reason="DCMTK storescu not installed")


def _settings(tmp_path, processes=3, **dicom):
    base = {"port": free_port(), "refuse_below_free_bytes": 0, "network_timeout": 10,
            "acceptor_processes": processes}
    base.update(dicom)
    return load_settings(None, dicom=base, storage={"root": str(tmp_path / "storage"), "min_free_bytes": 0})


@contextlib.contextmanager
def running_pool(settings):
    """The database created (and migrated) here, then the workers; yields (pool, db)."""
    db = Database(settings.database_url)
    pool = AcceptorPool(settings)
    pool.start()
    try:
        yield pool, db
    finally:
        pids = pool.worker_pids()
        pool.stop()
        db.dispose()
        for pid in pids:  # clean shutdown: no worker left behind
            assert not _alive(pid), f"acceptor worker {pid} outlived stop()"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped by its parent) is gone for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def _rows(settings) -> list[tuple[str, str]]:
    engine = create_engine(settings.database_url)
    with engine.connect() as c:
        rows = [tuple(r) for r in c.execute(text("SELECT sop_instance_uid, path FROM instances"))]
    engine.dispose()
    return rows


def _send(port, dsets, statuses, aet="PARALLEL", attempts: int = 3):
    """Send ``dsets``, appending (SOP Instance UID, status) for each.

    pynetdicom's SCU can lose a fast C-STORE response to its own reactor thread on a loaded
    machine: it then waits for an answer that already came, the node cuts the silent association
    ("no data for 10 s") and the rest of the batch would be lost to the test, not to the node. An
    instance left without an answer is sent again on a new association (a re-send of the same
    instance is idempotent: the checks below still see one row per instance); one that never gets
    an answer is recorded with status None and fails the test.
    """
    pending = list(dsets)
    for _ in range(attempts):
        assoc = scu(aet).associate("127.0.0.1", port, ae_title="PGSAM")
        answered = 0
        try:
            for ds in pending:
                if not assoc.is_established:
                    break
                rsp = assoc.send_c_store(ds)
                if "Status" not in rsp:
                    break
                statuses.append((ds.SOPInstanceUID, int(rsp.Status)))
                answered += 1
        finally:
            if assoc.is_established:
                assoc.release()
        pending = pending[answered:]
        if not pending:
            return
    statuses.extend((ds.SOPInstanceUID, None) for ds in pending)


def test_parallel_associations_store_every_instance_exactly_once(tmp_path):
    # Five senders from one host at once: the per-host limits must allow them (as with one process).
    settings = _settings(tmp_path, processes=3, max_associations_per_host=8, max_pending_per_host=8)
    study = generate_uid()
    series = [generate_uid() for _ in range(4)]
    batches = [[mr_instance(study, se, i, geometry=Geometry(rows=64, columns=64)) for i in range(25)] for se in series]
    # storescu sends one more series from files, on its own association, at the same time.
    dcmtk_dir = tmp_path / "dcmtk"
    dcmtk_dir.mkdir()
    extra_series = generate_uid()
    extra = [mr_instance(study, extra_series, i, geometry=Geometry(rows=64, columns=64)) for i in range(20)]
    for ds in extra:
        ds.save_as(dcmtk_dir / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    with running_pool(settings) as (pool, _db):
        assert len(pool.worker_pids()) == 3
        statuses: list = []
        threads = [threading.Thread(target=_send, args=(pool.port, b, statuses)) for b in batches]
        for t in threads:
            t.start()
        r = subprocess.run(["storescu", "-aec", "PGSAM", "-aet", "DCMTK", "+sd", "127.0.0.1", str(pool.port),
                            str(dcmtk_dir)], env=ENV, capture_output=True, text=True, timeout=300)
        for t in threads:
            t.join(300)
        assert r.returncode == 0, r.stderr
        assert len(statuses) == 100 and all(st == 0 for _, st in statuses)
        # The same instances again on two parallel associations: idempotent, no second row.
        again: list = []
        threads = [threading.Thread(target=_send, args=(pool.port, batches[0][:10], again)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert [st for _, st in again] == [0] * 20
        wait_for(lambda: pool.counters["stored"] >= 140, 30, 0.2, what="counters reported by the workers")
        assert pool.counters["failed"] == 0
    rows = _rows(settings)
    sops = [r[0] for r in rows]
    expected = {ds.SOPInstanceUID for b in batches for ds in b} | {ds.SOPInstanceUID for ds in extra}
    assert len(sops) == len(set(sops)) == 120 and set(sops) == expected
    spool_files = list((settings.spool_dir).rglob("*.dcm"))
    assert {f.stem for f in spool_files} == expected and len(spool_files) == 120
    by_uid = {ds.SOPInstanceUID: ds for b in batches for ds in b}
    for f in spool_files[:10]:
        if f.stem in by_uid:
            assert (pydicom.dcmread(f).pixel_array == by_uid[f.stem].pixel_array).all()
    engine = create_engine(settings.database_url)
    with engine.connect() as c:
        counts = sorted(r[0] for r in c.execute(text("SELECT instance_count FROM series")))
    engine.dispose()
    assert counts == [20, 25, 25, 25, 25]
    # Each worker journalled into its own directory.
    assert sorted(p.name for p in (settings.storage_root / "journal").iterdir() if p.is_dir()) == [
        "acceptor-1", "acceptor-2", "acceptor-3"]
    assert not leftover_tmp(settings.tmp_dir)


def test_conflicting_resend_is_quarantined_across_processes(tmp_path):
    settings = _settings(tmp_path, processes=2)
    with running_pool(settings) as (pool, _db):
        first = mr_instance(generate_uid(), generate_uid(), 0)
        st: list = []
        _send(pool.port, [first], st)
        # The same SOP Instance UID under another study, on a new association (either worker).
        moved = mr_instance(generate_uid(), generate_uid(), 0)
        moved.SOPInstanceUID = first.SOPInstanceUID
        moved.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
        _send(pool.port, [moved], st)
        assert [s for _, s in st] == [0x0000, 0xB000]
        wait_for(lambda: pool.counters["quarantined"] == 1, 30, 0.2, what="quarantine counted")
    rows = _rows(settings)
    assert len(rows) == 1 and rows[0][1].startswith(f"spool/{first.StudyInstanceUID}/")
    assert len(list((settings.storage_root / "quarantine").rglob("*.dcm"))) == 1


def test_association_limits_are_node_wide(tmp_path):
    settings = _settings(tmp_path, processes=3, max_associations=2, max_associations_per_host=8)
    with running_pool(settings) as (pool, _db):
        held = [_associated(pool.port), _associated(pool.port)]
        try:
            wait_for(lambda: pool.active_association_count == 2, 10, 0.05, what="two associations counted")
            for _ in range(3):  # whichever worker takes it, the third is refused
                c = RawClient(pool.port)
                kind, body = c.associate([_ctx(1, MRImageStorage)])
                assert kind == pdu.A_ASSOCIATE_RJ
                assert tuple(body[1:4]) == (2, 3, 2)  # transient, local limit exceeded
                c.close()
        finally:
            for h in held:
                h.release()
                h.close()
        wait_for(lambda: pool.active_association_count == 0, 10, 0.05, what="associations ended")
        _still_serves(pool.port)


def test_per_host_and_pending_limits_are_node_wide(tmp_path):
    import socket

    settings = _settings(tmp_path, processes=3, max_associations=8, max_associations_per_host=2,
                         max_pending_per_host=2, associate_rq_deadline=30)
    with running_pool(settings) as (pool, _db):
        held = [_associated(pool.port), _associated(pool.port)]
        try:
            c = RawClient(pool.port)
            kind, body = c.associate([_ctx(1, MRImageStorage)])
            assert kind == pdu.A_ASSOCIATE_RJ and tuple(body[1:4]) == (2, 3, 2)
            c.close()
        finally:
            for h in held:
                h.release()
                h.close()
        wait_for(lambda: pool.active_association_count == 0, 10, 0.05, what="associations ended")
        idle = [socket.create_connection(("127.0.0.1", pool.port), timeout=10) for _ in range(2)]
        try:
            wait_for(lambda: pool._counts.pending == 2, 10, 0.05, what="two pending connections")
            extra = socket.create_connection(("127.0.0.1", pool.port), timeout=10)
            extra.settimeout(10)
            assert extra.recv(16) == b""  # closed at accept, by whichever worker took it
            extra.close()
        finally:
            for s in idle:
                s.close()
        wait_for(lambda: pool._counts.pending == 0, 10, 0.05, what="pending connections gone")
        _still_serves(pool.port)


def test_malformed_input_is_still_refused(tmp_path):
    import struct

    from pgsam_node.ingest.dicomnet import dimse

    settings = _settings(tmp_path, processes=2)
    with running_pool(settings) as (pool, _db):
        for _ in range(2):  # twice, so that both workers are likely to see it
            c = RawClient(pool.port)
            c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.read_pdu()[0] in (pdu.A_ABORT, 0)
            c.close()
            c = _associated(pool.port)
            for p in pdu.encode_p_data(9, True, dimse.encode_command({dimse.COMMAND_FIELD: dimse.C_ECHO_RQ}), 0):
                c.send(p)
            assert c.read_pdu()[0] == pdu.A_ABORT
            c.close()
            c = _associated(pool.port)
            c.send(struct.pack(">BBI", 4, 0, 10) + struct.pack(">IBB", 500, 1, 3) + b"xxxx")
            assert c.read_pdu()[0] == pdu.A_ABORT
            c.close()
            c = RawClient(pool.port)
            kind, body = c.associate([_ctx(1, MRImageStorage)], called="NOTUS")
            assert kind == pdu.A_ASSOCIATE_RJ and tuple(body[1:4]) == (1, 1, 7)
            c.close()
        # A data set that cannot be parsed: 0xC210, and the association goes on.
        ds = mr_instance(generate_uid(), generate_uid(), 0)
        del ds.StudyInstanceUID
        good = mr_instance(generate_uid(), generate_uid(), 1)
        st: list = []
        _send(pool.port, [ds, good], st)
        assert [s for _, s in st] == [0xC210, 0x0000]
        _still_serves(pool.port)
    assert len(_rows(settings)) == 2


def test_a_killed_worker_is_restarted_and_the_port_keeps_working(tmp_path, caplog):
    settings = _settings(tmp_path, processes=2, max_associations=2, max_associations_per_host=2)
    with running_pool(settings) as (pool, _db):
        held = _associated(pool.port)  # counted node-wide; its worker will die with it
        wait_for(lambda: pool.active_association_count == 1, 10, 0.05, what="association counted")
        victim = next(w for w in pool._workers if ("a", "127.0.0.1") in pool._counts.held.get(w.n, {}))
        old_pid = victim.proc.pid
        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: pool.restarts == 1 and len(pool.worker_pids()) == 2, 60, 0.1,
                 what="the killed worker started again")
        assert old_pid not in pool.worker_pids()
        assert pool.active_association_count == 0  # the dead worker's association was dropped
        held.close()
        # Both slots are free again, and both workers (the new one included) serve.
        st: list = []
        threads = [threading.Thread(target=_send, args=(
            pool.port, [mr_instance(generate_uid(), generate_uid(), i) for i in range(3)], st)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert [s for _, s in st] == [0] * 6
        r = subprocess.run(["echoscu", "-aec", "PGSAM", "127.0.0.1", str(pool.port)], env=ENV,
                           capture_output=True, timeout=60)
        assert r.returncode == 0
    assert any("acceptor worker" in rec.getMessage() and "starting it again" in rec.getMessage()
               for rec in caplog.records)
    assert len(_rows(settings)) == 6


def _worker_pids_from_log(log_text: str) -> list[int]:
    import re

    return [int(p) for p in re.findall(r"acceptor worker \d+ started \(pid (\d+)\)", log_text)]


def test_kill_9_of_serve_during_parallel_receive_loses_no_acknowledged_instance(tmp_path):
    from tests.integration.test_serve import _acked_sender

    node = ServeNode(tmp_path, dicom={"acceptor_processes": 3, "max_associations_per_host": 8}).start()
    study = generate_uid()
    series = [generate_uid() for _ in range(3)]
    dsets = [[mr_instance(study, se, i, geometry=Geometry(rows=96, columns=96)) for i in range(150)] for se in series]
    acked: list[list[str]] = [[], [], []]
    errors: list = []
    threads = [threading.Thread(target=_acked_sender, args=(node.port, d, a, errors)) for d, a in zip(dsets, acked)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: sum(map(len, acked)) >= 60 and all(acked), 180, 0.01, what="60 acknowledged instances")
        node.proc.kill()  # SIGKILL of the whole serve in the middle of three transfers
        node.proc.wait(30)
    finally:
        for t in threads:
            t.join(60)
    all_acked = {uid for a in acked for uid in a}
    assert 60 <= len(all_acked) < 450, "the kill must land mid-transfer"
    pids = _worker_pids_from_log(node.log.read_text())
    assert pids  # the first worker, and the others if they were started before the kill
    wait_for(lambda: not any(_alive(p) for p in pids), 10, 0.05, what="no acceptor worker outlives serve")
    by_uid = {ds.SOPInstanceUID: ds for d in dsets for ds in d}
    spool_files = list((node.root / "spool").rglob("*.dcm"))
    for f in spool_files:  # no half file in the spool
        assert (pydicom.dcmread(f).pixel_array == by_uid[f.stem].pixel_array).all()
    assert all_acked <= {f.stem for f in spool_files}
    engine = create_engine(f"sqlite:///{node.root / 'node.sqlite3'}")
    with engine.connect() as c:
        rows = [r[0] for r in c.execute(text("SELECT sop_instance_uid FROM instances"))]
    engine.dispose()
    assert all_acked <= set(rows) and len(rows) == len(set(rows)), "an acknowledged instance has no single row"
    # Restart: leftovers cleaned, index consistent, and the senders can finish the study.
    node._logf.close()
    node.start()
    try:
        wait_for(lambda: not leftover_tmp(node.root / "tmp"), 30, what="tmp cleaned")
        acked2: list = []
        errors2: list = []
        for d in dsets:
            _acked_sender(node.port, d, acked2, errors2)
        assert len(acked2) == 450 and not errors2
        st = node.status()
        assert len(st) == 1 and sorted(s["instance_count"] for s in st[0]["series"]) == [150, 150, 150]
    finally:
        assert node.stop() == 0
    pids = _worker_pids_from_log(node.log.read_text())
    assert len(pids) >= 4  # the second serve started all three
    assert not any(_alive(p) for p in pids), "an acceptor worker outlived serve's clean stop"
