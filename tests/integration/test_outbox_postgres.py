"""Outbox claims on PostgreSQL: concurrent workers take disjoint items (FOR UPDATE SKIP LOCKED)."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from pydicom.dataset import Dataset

from pgsam_node.config import load_settings
from pgsam_node.db import open_database
from pgsam_node.encode import algorithm_info, build_seg
from pgsam_node.deliver.outbox import _claim, all_sent_for_study, enqueue, process_due, queue_outputs, recover_stuck

from ..dicom_tools import blob_mask
from ..factories import Geometry, MRSeries
from ..helpers import free_port

pytestmark = pytest.mark.postgres
T0 = dt.datetime(2030, 1, 1)


def test_concurrent_claims_are_disjoint(pg_url, tmp_path):
    settings = load_settings(None, storage={"root": str(tmp_path)}, database={"url": pg_url})
    db = open_database(settings)
    with db.transaction() as s:
        for i in range(40):
            ds = Dataset()
            ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.66.4", f"1.2.3.{i}"
            enqueue(s, None, None, f"outputs/{i}.dcm", ds, ["pacs"], now=T0)
    results: list[list[int]] = [[] for _ in range(4)]
    barrier = threading.Barrier(4)

    def worker(k: int) -> None:
        barrier.wait()
        for _ in range(10):
            results[k].extend(_claim(db, T0, 3))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claimed = [i for r in results for i in r]
    assert len(claimed) == 40 and len(set(claimed)) == 40
    assert recover_stuck(db, now=T0) == 40
    db.dispose()


def test_delivery_on_postgres(pg_url, tmp_path):
    """The whole outbox cycle on PostgreSQL against a pynetdicom SCP: SENT, study complete."""
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE, evt

    from pgsam_node.db.models import Study

    received = []
    port = free_port()
    ae = AE(ae_title="STORESCP")
    ae.add_supported_context("1.2.840.10008.5.1.4.1.1.66.4", ExplicitVRLittleEndian)
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, lambda e: received.append(e.request.AffectedSOPInstanceUID) or 0)])
    try:
        settings = load_settings(None, storage={"root": str(tmp_path), "fsync": False}, database={"url": pg_url},
                                 destinations=[{"name": "pacs", "ae_title": "STORESCP", "host": "127.0.0.1", "port": port}])
        db = open_database(settings)
        source = MRSeries(n_slices=3, geometry=Geometry(rows=16, columns=16), instance_numbers="shuffled")
        paths, dss = source.write(tmp_path / "mr"), source.datasets()
        seg = build_seg(blob_mask((3, 16, 16)), paths, None, settings, algorithm_info("d" * 64), 1)
        with db.transaction() as s:
            st = Study(study_uid=dss[0].StudyInstanceUID, state="SENDING")
            s.add(st)
            s.flush()
            queue_outputs(s, settings, st.id, st.study_uid, None, [seg], now=T0)
            sid = st.id
        assert process_due(db, settings, now=T0) == {"claimed": 1, "sent": 1, "retry": 0, "dead": 0}
        assert received == [seg.SOPInstanceUID]
        with db.session() as s:
            assert all_sent_for_study(s, sid)
        db.dispose()
    finally:
        server.shutdown()
