"""WAITING_REPORT says when the wait ends and what happens then; 'run now without report' (CLI, API, dashboard)."""

from __future__ import annotations

import re

import yaml

from pgsam_node.cli import main
from pgsam_node.commands.status import collect, format_table
from pgsam_node.db import Database, Study
from pgsam_node.flow.advance import advance_stable

from .test_missing_roles import index_study, signed_in_client


def _waiting_study(db, settings) -> str:
    study, later = index_study(db, settings, (("t1_se_tra", 500, 10, None), ("t1_se_tra", 500, 10, "Gadovist"),
                                              ("t2_tse_tra", 4000, 95, None)))
    assert advance_stable(db, settings, now=later) == {study: "WAITING_REPORT"}
    return study


def test_status_shows_deadline_and_cli_runs_now(settings, tmp_path, capsys):
    db = Database(settings.database_url)
    try:
        study = _waiting_study(db, settings)
        text = format_table(collect(db, 10, settings))
        line = next(ln for ln in text.splitlines() if ln.strip().startswith("report:"))
        assert re.search(r"waiting for the report until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d UTC \(ris.wait_seconds=21600\)", line)
        assert "then it runs without report text" in line and "run-now" in line
    finally:
        db.dispose()
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump({"storage": {"root": str(settings.storage_root), "min_free_bytes": 0}}))
    assert main(["run-now", "--study", study, "--config", str(cfg)]) == 0
    assert "WAITING_REPORT -> READY" in capsys.readouterr().out
    assert main(["run-now", "--study", study, "--config", str(cfg)]) == 2  # not waiting any more: refused
    db = Database(settings.database_url)
    try:
        with db.session() as s:
            st = s.query(Study).one()
            assert st.state == "READY" and st.state_reason.startswith("run now without report by cli")
    finally:
        db.dispose()


def test_dashboard_shows_deadline_and_api_runs_now(settings):
    db = Database(settings.database_url)
    try:
        _waiting_study(db, settings)
        client, admin = signed_in_client(settings, db)
        sid = client.get("/api/v1/studies", headers={"Authorization": f"Bearer {admin}"}).json()["studies"][0]["id"]
        html = client.get(f"/studies/{sid}").text
        assert 'id="report-wait"' in html and "then it runs without report text" in html
        assert 'id="action-run_now"' in html
        r = client.post(f"/api/v1/studies/{sid}/run_now", headers={"Authorization": f"Bearer {admin}"}).json()
        assert (r["from_state"], r["to_state"]) == ("WAITING_REPORT", "READY")
        assert 'id="action-run_now"' not in client.get(f"/studies/{sid}").text
        client.close()
    finally:
        db.dispose()
