"""Outbox claims on PostgreSQL: concurrent workers take disjoint items (FOR UPDATE SKIP LOCKED)."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from pydicom.dataset import Dataset

from pgsam_node.config import load_settings
from pgsam_node.db import open_database
from pgsam_node.outbox import _claim, enqueue, recover_stuck

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
