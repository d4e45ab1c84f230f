"""Benchmark: /metrics scrape and /api/v1/studies on a large node database (SQLite).

Prints the time per scrape and per study-list page, each as a ratio against an anchor measured in
the same run: the raw SQL queries the collector needs (the least any implementation must do).
Usage: python benchmarks/web_metrics.py [N_STUDIES]
"""

from __future__ import annotations

import sys
import tempfile
import time

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import insert, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's package

from pgsam_node.web import tokens  # noqa: E402
from pgsam_node.config import load_settings  # noqa: E402
from pgsam_node.db import Database  # noqa: E402
from pgsam_node.db.models import Instance, OutboxItem, Run, Series, Study  # noqa: E402
from pgsam_node.web import create_app  # noqa: E402

STATES = ["DONE", "DONE", "DONE", "FAILED", "READY", "WAITING_REPORT", "NO_FINDING", "SENDING"]


def build(db: Database, n: int) -> None:
    with db.transaction() as s:
        s.execute(insert(Study), [{"study_uid": f"1.2.{i}", "state": STATES[i % len(STATES)], "notes": []} for i in range(1, n + 1)])
        s.execute(insert(Series), [{"study_id": i, "series_uid": f"1.3.{i}.{k}", "headers": {}, "role": "T1C"} for i in range(1, n + 1) for k in range(3)])
        s.execute(insert(Instance), [{"series_id": j, "sop_instance_uid": f"1.4.{j}.{m}", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.4",
                                      "path": f"spool/{j}/{m}.dcm"} for j in range(1, 3 * n + 1) for m in range(20)])
        s.execute(insert(Run), [{"study_id": i, "version": 0, "idempotency_key": f"k{i}", "status": "DONE", "input_uids": [], "metrics": {},
                                 "stage_seconds": {"load": 1.0, "infer": 3.0, "encode": 0.5}, "output_uids": [], "output_paths": []} for i in range(1, n + 1)])
        s.execute(insert(OutboxItem), [{"study_id": i, "destination": "pacs", "sop_class_uid": "x", "sop_instance_uid": f"1.5.{i}",
                                        "path": "o", "state": "SENT", "attempts": 1} for i in range(1, n + 1)])


def best_of(fn, k: int = 5) -> float:
    times = []
    for _ in range(k):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    with tempfile.TemporaryDirectory() as d:
        settings = load_settings(None, storage={"root": d})
        db = Database(settings.database_url)
        build(db, n)
        with db.transaction() as s:
            tok = tokens.create_token(s, "bench", [])
        client = TestClient(create_app(settings, db))
        h = {"Authorization": f"Bearer {tok}"}
        client.get("/api/v1/studies", headers=h)  # warm the token cache

        def anchor():
            with db.engine.connect() as c:
                c.execute(text("SELECT count(*) FROM instances")).all()
                c.execute(text("SELECT state, count(*) FROM studies GROUP BY state")).all()
                c.execute(text("SELECT status, stage_seconds FROM runs")).all()
                c.execute(text("SELECT state, attempts, last_error FROM outbox")).all()
                c.execute(text("SELECT name, value FROM metrics")).all()

        a = best_of(anchor)
        m = best_of(lambda: client.get("/metrics"))
        lst = best_of(lambda: client.get("/api/v1/studies", headers=h))
        print(f"studies={n} instances={n * 60}")
        print(f"anchor raw SQL      {a * 1000:8.1f} ms")
        print(f"/metrics scrape     {m * 1000:8.1f} ms  ratio {m / a:5.2f}")
        print(f"/api/v1/studies     {lst * 1000:8.1f} ms  ratio {lst / a:5.2f}  (100 per page)")
        db.dispose()


if __name__ == "__main__":
    main()
