"""/metrics values against seeded rows; /healthz and /readyz; metrics access policy."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from pgsam_node.web import tokens
from pgsam_node.config import load_settings
from pgsam_node.db import Database
from pgsam_node.db.models import Metric, OutboxItem
from pgsam_node.web import create_app
from pgsam_node.web.app import metrics_public

from ..opsdata import seed_study


def scrape(client, **kw) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics", **kw)
    assert r.status_code == 200, r.text
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for smp in fam.samples:
            out[(smp.name, tuple(sorted(smp.labels.items())))] = smp.value
    return out


def test_metrics_match_database(settings):
    db = Database(settings.database_url)
    seed_study(db, settings.storage_root, "DONE")
    seed_study(db, settings.storage_root, "FAILED", accession="A2")
    seed_study(db, settings.storage_root, "SENDING", accession="A3", outbox_state="DEAD")
    seed_study(db, settings.storage_root, "READY", accession="A4", with_seg=False)
    with db.transaction() as s:
        # a pending item that already failed twice, and a persisted counter from another process
        s.add(OutboxItem(study_id=1, destination="backup", sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
                         sop_instance_uid="1.2.3.4", path="outputs/x.dcm", state="PENDING", attempts=2, last_error="timeout"))
        s.add(Metric(name="hl7_messages", value=7))
    m = scrape(TestClient(create_app(settings, db)))
    assert m[("pgsam_database_up", ())] == 1
    assert m[("pgsam_instances_received_total", ())] == 4 * 9  # 6 T1C + 3 T2 per study
    assert m[("pgsam_studies", (("state", "DONE"),))] == 1
    assert m[("pgsam_studies", (("state", "FAILED"),))] == 1
    assert m[("pgsam_studies", (("state", "SENDING"),))] == 1
    assert m[("pgsam_studies", (("state", "READY"),))] == 1
    assert m[("pgsam_studies", (("state", "RUNNING"),))] == 0
    assert m[("pgsam_queue_ready_studies", ())] == 1
    # three runs (DONE, FAILED, SENDING) each with load 0.5 / infer 2.25 / encode 0.25
    assert m[("pgsam_stage_seconds_count", (("stage", "infer"),))] == 3
    assert m[("pgsam_stage_seconds_sum", (("stage", "infer"),))] == pytest.approx(6.75)
    assert m[("pgsam_stage_seconds_sum", (("stage", "load"),))] == pytest.approx(1.5)
    assert m[("pgsam_inference_seconds_count", ())] == 3
    assert m[("pgsam_inference_seconds_sum", ())] == pytest.approx(6.75)
    assert m[("pgsam_runs_total", (("status", "SENT"),))] == 1
    assert m[("pgsam_runs_total", (("status", "ENCODED"),))] == 1
    assert m[("pgsam_runs_total", (("status", "FAILED"),))] == 1
    # DEAD item: 3 failed attempts; extra PENDING item: 2; SENT item after 1 attempt: 0
    assert m[("pgsam_send_failures_total", ())] == 5
    assert m[("pgsam_outbox_items", (("state", "DEAD"),))] == 1
    assert m[("pgsam_outbox_items", (("state", "SENT"),))] == 1
    assert m[("pgsam_queue_outbox_pending", ())] == 1
    assert m[("pgsam_node_counter", (("name", "hl7_messages"),))] == 7
    assert m[("pgsam_storage_free_bytes", ())] > 0
    # once the outbox persists its counters, they are the exact count
    with db.transaction() as s:
        s.add(Metric(name="outbox_retry_total", value=11))
        s.add(Metric(name="outbox_dead_total", value=2))
    assert scrape(TestClient(create_app(settings, db)))[("pgsam_send_failures_total", ())] == 13


def test_metrics_access_policy(tmp_path):
    local = load_settings(None, storage={"root": str(tmp_path)}, web={"bind": "127.0.0.1"})
    wide = load_settings(None, storage={"root": str(tmp_path)}, web={"bind": "0.0.0.0"})
    forced = load_settings(None, storage={"root": str(tmp_path)}, web={"bind": "0.0.0.0", "metrics_public": True})
    assert metrics_public(local) and not metrics_public(wide) and metrics_public(forced)
    db = Database(wide.database_url)
    c = TestClient(create_app(wide, db))
    assert c.get("/metrics").status_code == 401
    with db.transaction() as s:
        t = tokens.create_token(s, "prometheus", [])
    assert scrape(c, headers={"Authorization": f"Bearer {t}"})[("pgsam_database_up", ())] == 1


def test_health_and_readiness(settings):
    db = Database(settings.database_url)
    c = TestClient(create_app(settings, db))
    assert c.get("/healthz").status_code == 200
    r = c.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True
    # free-disk watermark above what any disk has -> not ready, and says why
    settings.dicom.refuse_below_free_bytes = 2**62
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["disk"]["ok"] is False
    settings.dicom.refuse_below_free_bytes = 0
    db.dispose()
    db.engine.dispose()
    # database unreachable: point the app at a closed PostgreSQL port
    from ..helpers import free_port

    bad = Database(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x", migrate=False)
    r = TestClient(create_app(settings, bad)).get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["database"]["ok"] is False
    m = TestClient(create_app(settings, bad)).get("/metrics").text
    assert "pgsam_database_up 0.0" in m


def test_readyz_shows_free_bytes_only_to_an_authenticated_caller(settings):
    from pgsam_node.web import tokens

    db = Database(settings.database_url)
    c = TestClient(create_app(settings, db))
    anonymous = c.get("/readyz").json()["checks"]["disk"]
    assert "ok" in anonymous and "free_bytes" not in anonymous and "watermark_bytes" not in anonymous
    with db.transaction() as s:
        t = tokens.create_token(s, "ops", [])
    full = c.get("/readyz", headers={"Authorization": f"Bearer {t}"}).json()["checks"]["disk"]
    assert full["free_bytes"] > 0
    db.dispose()


def test_wrong_bearer_tokens_back_off_per_client(settings):
    from pgsam_node.web import tokens

    db = Database(settings.database_url)
    c = TestClient(create_app(settings, db))
    with db.transaction() as s:
        good = tokens.create_token(s, "ops", [])
    codes = [c.get("/api/v1/me", headers={"Authorization": f"Bearer wrong-{i}"}).status_code for i in range(12)]
    assert codes[:10] == [401] * 10 and 429 in codes[10:]
    r = c.get("/api/v1/me", headers={"Authorization": f"Bearer {good}"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1  # even the right token waits
    db.dispose()
