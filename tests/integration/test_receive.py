"""Listener with real pynetdicom associations on localhost (in-process, SQLite)."""

from __future__ import annotations

import datetime as dt
import threading

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from pgsam_node.ingest.spool import leftover_tmp
from pgsam_node.flow.advance import mark_stable
from pgsam_node.config import load_settings
from pgsam_node.db import Instance, Series, Study, StudyEvent, utcnow

from ..factories import Geometry, mr_instance
from ..helpers import free_port, wait_for
from .ingest_fixtures import assoc_result, running_listener, scu


def _store(port, datasets, aet="TESTSCU"):
    ae = scu(aet)
    assoc = ae.associate("127.0.0.1", port, ae_title="PGSAM")
    assert assoc.is_established, "association not accepted"
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _counts(db):
    with db.session() as s:
        return (s.scalar(select(func.count()).select_from(Study)), s.scalar(select(func.count()).select_from(Series)),
                s.scalar(select(func.count()).select_from(Instance)))


def test_echo_and_store_persist_before_ack(settings):
    study, series = generate_uid(), generate_uid()
    dsets = [mr_instance(study, series, i) for i in range(5)]
    with running_listener(settings) as (listener, db):
        ae = scu()
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="PGSAM")
        assert assoc.is_established
        assert int(assoc.send_c_echo().Status) == 0
        statuses = []
        for ds in dsets:
            st = int(assoc.send_c_store(ds).Status)
            statuses.append(st)
            # Acknowledged means: file renamed into the spool AND row committed, right now.
            with db.session() as s:
                inst = s.scalars(select(Instance).where(Instance.sop_instance_uid == ds.SOPInstanceUID)).one()
            assert not inst.path.startswith("/") and inst.path.startswith("spool/")
            assert (settings.storage_root / inst.path).is_file()
        assoc.release()
        assert statuses == [0] * 5
        assert _counts(db) == (1, 1, 5)
        with db.session() as s:
            ser = s.scalars(select(Series)).one()
            # roles are assigned when the study becomes STABLE (assemble), from the headers kept here
            assert ser.instance_count == 5 and ser.role is None and ser.headers["SeriesDescription"] == "t2_tse_tra"
            assert ser.headers["RepetitionTime"] == 4000
            st = s.scalars(select(Study)).one()
            assert st.state == "RECEIVING" and st.accession_number == "ACC001"
            paths = {i.sop_instance_uid: i.path for i in s.scalars(select(Instance))}
    for ds in dsets:
        back = pydicom.dcmread(settings.storage_root / paths[ds.SOPInstanceUID])
        assert back.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
        assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert back.file_meta.SourceApplicationEntityTitle.strip() == "TESTSCU"
        assert (back.pixel_array == ds.pixel_array).all()
    assert not leftover_tmp(settings.tmp_dir)


def test_resend_is_idempotent(settings):
    study, series = generate_uid(), generate_uid()
    dsets = [mr_instance(study, series, i) for i in range(3)]
    with running_listener(settings) as (listener, db):
        assert _store(listener.port, dsets) == [0, 0, 0]
        with db.session() as s:
            received = {r.sop_instance_uid: r.received_at for r in s.scalars(select(Instance))}
        changed = mr_instance(study, series, 0, seed=99, sop_uid=dsets[0].SOPInstanceUID)
        assert _store(listener.port, dsets + [changed]) == [0, 0, 0, 0]
        assert _counts(db) == (1, 1, 3)
        with db.session() as s:
            assert s.scalars(select(Series)).one().instance_count == 3
            rows = {r.sop_instance_uid: r for r in s.scalars(select(Instance))}
        path = rows[changed.SOPInstanceUID].path
        # Every re-send updated its row (received again, after the first round).
        assert all(r.received_at >= first for r, first in ((rows[d.SOPInstanceUID], received[d.SOPInstanceUID])
                                                           for d in dsets))
        assert all(rows[d.SOPInstanceUID].received_at > received[d.SOPInstanceUID] for d in dsets[1:])
    assert (pydicom.dcmread(settings.storage_root / path).pixel_array == changed.pixel_array).all()


def test_allow_list_rejects_unknown_calling_ae_at_association(tmp_path):
    settings = load_settings(None, storage={"root": str(tmp_path / "s"), "min_free_bytes": 0},
                             dicom={"port": free_port(), "refuse_below_free_bytes": 0,
                                    "allowed_calling_aets": ["PACS", "ROUTER@127.0.0.1", "FAR@10.255.0.1"]})
    with running_listener(settings) as (listener, db):
        tries: list = []
        assert assoc_result(listener.port, "INTRUDER", tries=tries) == (0x01, 0x01, 0x03)
        assert assoc_result(listener.port, "FAR", tries=tries) == (0x01, 0x01, 0x03)
        assert assoc_result(listener.port, "PACS") == "accepted"
        assert assoc_result(listener.port, "ROUTER") == "accepted"
        assert listener.counters["rejected"] == len(tries)  # every request of a disallowed caller, and only those
        # the listener still stores for an allowed caller
        assert _store(listener.port, [mr_instance(generate_uid(), generate_uid())], aet="PACS") == [0]


def test_free_disk_watermark_rejects_transiently(tmp_path):
    settings = load_settings(None, storage={"root": str(tmp_path / "s"), "min_free_bytes": 0},
                             dicom={"port": free_port(), "refuse_below_free_bytes": 1 << 62})
    with running_listener(settings) as (listener, db):
        assert assoc_result(listener.port, "PACS") == (0x02, 0x03, 0x01)
        settings.dicom.refuse_below_free_bytes = 0
        assert assoc_result(listener.port, "PACS") == "accepted"


def test_reserve_gives_out_of_resources_and_keeps_serving(settings):
    ds = mr_instance(generate_uid(), generate_uid())
    with running_listener(settings) as (listener, db):
        settings.storage.min_free_bytes = 1 << 62
        assert _store(listener.port, [ds]) == [0xA700]
        assert _counts(db) == (0, 0, 0)
        assert not list(settings.spool_dir.rglob("*.dcm")) and not leftover_tmp(settings.tmp_dir)
        settings.storage.min_free_bytes = 0
        assert _store(listener.port, [ds]) == [0]
        assert _counts(db) == (1, 1, 1)


def test_unparseable_and_uidless_datasets_get_c210(settings, tmp_path):
    no_study = mr_instance(generate_uid(), generate_uid())
    del no_study.StudyInstanceUID
    # A Part-10 file whose data set is garbage: pynetdicom sends a file path as raw bytes.
    garbage = tmp_path / "garbage.dcm"
    good = mr_instance(generate_uid(), generate_uid())
    good.save_as(garbage, enforce_file_format=True)
    raw = garbage.read_bytes()
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    ui = lambda e, v: b"\x08\x00" + e + b"UI" + len(v).to_bytes(2, "little") + v  # noqa: E731
    body = ui(b"\x16\x00", str(good.SOPClassUID).encode() + b"\x00") + ui(b"\x18\x00", b"1.2.3.4")
    # then an element claiming 2 GB of value in a 300-byte stream: not a data set anyone can read
    body += b"\x10\x00\x10\x00OB\x00\x00" + (0x7FFFFFF0).to_bytes(4, "little") + b"\x13" * 300
    garbage.write_bytes(raw[:meta_end] + body)
    with running_listener(settings) as (listener, db):
        ae = scu()
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="PGSAM")
        assert assoc.is_established
        assert int(assoc.send_c_store(no_study).Status) == 0xC210
        assert int(assoc.send_c_store(garbage).Status) == 0xC210
        assert int(assoc.send_c_store(good).Status) == 0  # same association keeps working
        assoc.release()
        assert _counts(db) == (1, 1, 1)
        assert listener.counters["failed"] == 2


def test_max_associations(tmp_path):
    settings = load_settings(None, storage={"root": str(tmp_path / "s"), "min_free_bytes": 0},
                             dicom={"port": free_port(), "refuse_below_free_bytes": 0, "max_associations": 1})
    with running_listener(settings) as (listener, db):
        first = scu().associate("127.0.0.1", listener.port, ae_title="PGSAM")
        assert first.is_established
        try:
            assert assoc_result(listener.port, "SECOND") == (0x02, 0x03, 0x02)
        finally:
            first.release()
        wait_for(lambda: assoc_result(listener.port, "THIRD") == "accepted", 10, what="slot freed")


def test_late_instance_reopens_stable_study(settings):
    study, series = generate_uid(), generate_uid()
    with running_listener(settings) as (listener, db):
        assert _store(listener.port, [mr_instance(study, series, 0)]) == [0]
        later = utcnow() + dt.timedelta(seconds=settings.assembly.stable_seconds + 1)
        assert mark_stable(db, settings, now=later) == [study]
        assert _store(listener.port, [mr_instance(study, series, 1)]) == [0]
        with db.session() as s:
            st = s.scalars(select(Study)).one()
            assert st.state == "RECEIVING"
            events = [(e.from_state, e.to_state, e.reason) for e in s.scalars(select(StudyEvent).order_by(StudyEvent.id))]
        assert events[0] == (None, "RECEIVING", "first instance")
        assert events[1][1] == "STABLE"
        assert events[2] == ("STABLE", "RECEIVING", "late instance")


def test_concurrent_associations_same_study(settings):
    study = generate_uid()
    series = [generate_uid() for _ in range(3)]
    errors, results = [], []

    def send(k):
        try:
            results.extend(_store(listener.port, [mr_instance(study, series[k], i, role="T1", description=f"s{k} t1_se")
                                                  for i in range(6)], aet=f"SCU{k}"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    with running_listener(settings) as (listener, db):
        threads = [threading.Thread(target=send, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and results == [0] * 18
        assert _counts(db) == (1, 3, 18)
        with db.session() as s:
            assert sorted(x.instance_count for x in s.scalars(select(Series))) == [6, 6, 6]


@pytest.mark.postgres
def test_postgres_index_concurrent_and_stable(settings, pg_url):
    study = generate_uid()
    series = [generate_uid() for _ in range(2)]
    results, errors = [], []
    dsets = [[mr_instance(study, series[k], i, role="T1" if k else "T2") for i in range(5)] for k in range(2)]

    def send(k):
        try:
            results.extend(_store(listener.port, dsets[k], aet=f"PG{k}"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    with running_listener(settings, db_url=pg_url) as (listener, db):
        assert db.engine.dialect.name == "postgresql"
        threads = [threading.Thread(target=send, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and results == [0] * 10
        assert _store(listener.port, [dsets[0][0]]) == [0]  # re-send: no new row
        assert _counts(db) == (1, 2, 10)
        later = utcnow() + dt.timedelta(seconds=settings.assembly.stable_seconds + 1)
        assert mark_stable(db, settings, now=later) == [study]
        with db.session() as s:
            roles = sorted((x.role, x.instance_count, x.role_selected) for x in s.scalars(select(Series)))
        assert roles == [("T1", 5, True), ("T2", 5, True)]
        assert _store(listener.port, [mr_instance(study, series[1], 7, role="T1")]) == [0]
        with db.session() as s:
            assert s.scalars(select(Study)).one().state == "RECEIVING"


def test_tls_listener(tmp_path):
    import shutil
    import ssl
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("openssl CLI not installed")
    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True, timeout=60)
    settings = load_settings(None, storage={"root": str(tmp_path / "s"), "min_free_bytes": 0},
                             dicom={"port": free_port(), "refuse_below_free_bytes": 0, "network_timeout": 5,
                                    "tls": {"enabled": True, "cert_file": str(cert), "key_file": str(key)}})
    with running_listener(settings) as (listener, db):
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        ctx.check_hostname = False
        assoc = scu().associate("127.0.0.1", listener.port, ae_title="PGSAM", tls_args=(ctx, None))
        assert assoc.is_established
        assert int(assoc.send_c_store(mr_instance(generate_uid(), generate_uid())).Status) == 0
        assoc.release()
        plain = scu().associate("127.0.0.1", listener.port, ae_title="PGSAM")
        assert not plain.is_established  # no clear-text DICOM on a TLS port
        assert _counts(db) == (1, 1, 1)


def test_resend_into_another_series_moves_only_under_overwrite_same_source(settings):
    settings.dicom.resend_policy = "overwrite_same_source"
    study = generate_uid()
    first = mr_instance(study, generate_uid(), 0)
    moved = mr_instance(study, generate_uid(), 0, sop_uid=first.SOPInstanceUID)
    with running_listener(settings) as (listener, db):
        assert _store(listener.port, [first, moved]) == [0, 0]
        assert _counts(db) == (1, 2, 1)
        with db.session() as s:
            counts = {x.series_uid: x.instance_count for x in s.scalars(select(Series))}
            path = s.scalars(select(Instance)).one().path
    assert counts == {first.SeriesInstanceUID: 0, moved.SeriesInstanceUID: 1}
    assert moved.SeriesInstanceUID in path
    assert [p.parent.name for p in settings.spool_dir.rglob("*.dcm")] == [moved.SeriesInstanceUID]


def test_truncated_transfer_stores_nothing_and_listener_keeps_serving(settings, tmp_path):
    import os
    import shutil
    import signal
    import subprocess

    import numpy as np

    if not shutil.which("storescu"):
        pytest.skip("DCMTK storescu not installed")
    big = mr_instance(generate_uid(), generate_uid(), 0, geometry=Geometry(rows=2048, columns=2048))
    big.NumberOfFrames = 6  # ~50 MB: the sender is still streaming when it is killed
    big.PixelData = np.zeros((6, 2048, 2048), dtype=np.uint16).tobytes()
    path = tmp_path / "big.dcm"
    big.save_as(path, enforce_file_format=True)
    with running_listener(settings) as (listener, db):
        proc = subprocess.Popen(["storescu", "-aec", "PGSAM", "--max-send-pdu", "16384", "127.0.0.1",
                                 str(listener.port), str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=dict(os.environ, TCP_NODELAY="1"))
        try:
            wait_for(lambda: any(a.is_established for a in listener.active_associations), 30, 0.005,
                     what="association established (the data set is streaming)")
            proc.send_signal(signal.SIGKILL)  # the TCP stream ends in the middle of the data set
        finally:
            proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
        wait_for(lambda: not listener.active_associations, 30, what="association gone")
        assert _counts(db) == (0, 0, 0)
        assert not list(settings.spool_dir.rglob("*.dcm")) and not leftover_tmp(settings.tmp_dir)
        assert _store(listener.port, [mr_instance(generate_uid(), generate_uid())]) == [0]
