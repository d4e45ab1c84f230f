"""The API, actions and metrics on PostgreSQL (row locks with FOR UPDATE, JSON columns)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from pgsam_node.web import tokens
from pgsam_node.db import Database
from pgsam_node.db.models import OutboxItem
from pgsam_node.flow.retention import cleanup
from pgsam_node.web import create_app

from ..opsdata import seed_study


def test_api_actions_metrics_retention_on_postgres(settings, pg_url):
    db = Database(pg_url)
    try:
        done = seed_study(db, settings.storage_root, "DONE", age_days=40)
        dead = seed_study(db, settings.storage_root, "SENDING", accession="A2", outbox_state="DEAD")
        with db.transaction() as s:
            t = tokens.create_token(s, "ops", ["actions", "report-text"])
        c = TestClient(create_app(settings, db))
        h = {"Authorization": f"Bearer {t}"}
        assert c.get("/api/v1/studies", headers=h).json()["total"] == 2
        rep = c.get(f"/api/v1/studies/{done.study_id}/report", headers=h).json()
        assert rep["findings"]["lobe"] == "superficial" and rep["text_included"]
        r = c.post(f"/api/v1/studies/{dead.study_id}/resend", headers=h)
        assert r.status_code == 200 and r.json()["outbox_requeued"] == 1
        with db.session() as s:
            assert s.query(OutboxItem).filter_by(study_id=dead.study_id).one().state == "PENDING"
        text = c.get("/metrics").text
        vals = {(smp.name, tuple(smp.labels.items())): smp.value for f in text_string_to_metric_families(text) for smp in f.samples}
        assert vals[("pgsam_studies", (("state", "DONE"),))] == 1
        assert vals[("pgsam_queue_outbox_pending", ())] == 1
        assert vals[("pgsam_instances_received_total", ())] == 18
        settings.retention.days = 30
        assert cleanup(db, settings).studies_purged == 1
        assert not (settings.storage_root / done.instance_paths[0]).exists()
        assert (settings.storage_root / dead.instance_paths[0]).exists()
    finally:
        db.dispose()
