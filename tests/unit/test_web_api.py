"""REST API and dashboard behind authentication (FastAPI TestClient: no socket)."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from pgsam_node.web import tokens
from pgsam_node.db import Database
from pgsam_node.db.models import ApiToken, AuditLog, OutboxItem, Run, Study
from pgsam_node.web import create_app

from ..opsdata import FINDINGS, REPORT_TEXT, seed_study


@pytest.fixture
def env(settings):
    db = Database(settings.database_url)
    done = seed_study(db, settings.storage_root, "DONE")
    failed = seed_study(db, settings.storage_root, "FAILED", accession="ACC-OPS-2")
    dead = seed_study(db, settings.storage_root, "SENDING", accession="ACC-OPS-3", outbox_state="DEAD")
    with db.transaction() as s:
        admin = tokens.ensure_first_run_token(s)
        reader = tokens.create_token(s, "reader", [])
        texter = tokens.create_token(s, "radiologist", ["report-text"])
        operator = tokens.create_token(s, "operator", ["actions"])
    app = create_app(settings, db)
    client = TestClient(app, base_url="http://127.0.0.1")
    yield {"db": db, "client": client, "done": done, "failed": failed, "dead": dead, "admin": admin,
           "reader": reader, "texter": texter, "operator": operator, "settings": settings}
    client.close()
    db.dispose()


def bearer(t: str) -> dict:
    return {"Authorization": f"Bearer {t}"}


def test_no_default_credentials_and_refusals(env):
    c = env["client"]
    assert c.get("/api/v1/studies").status_code == 401
    r = c.get("/api/v1/studies", headers=bearer("pgsam_000000000000_wrong"))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    # right key id, wrong secret
    key = env["reader"].split("_")[1]
    assert c.get("/api/v1/studies", headers=bearer(f"pgsam_{key}_{'x' * 43}")).status_code == 401
    assert c.get("/api/v1/studies", headers={"Authorization": "Basic YWRtaW46YWRtaW4="}).status_code == 401
    assert c.get("/api/v1/studies", headers=bearer(env["reader"])).status_code == 200
    with env["db"].transaction() as s:
        tokens.revoke_token(s, "reader")
    assert c.get("/api/v1/studies", headers=bearer(env["reader"])).status_code == 401  # cached token re-checked
    # the first-run token exists only once: a second call creates nothing
    with env["db"].transaction() as s:
        assert tokens.ensure_first_run_token(s) is None
        row = s.scalar(select(ApiToken).where(ApiToken.name == "admin"))
        assert env["admin"] not in row.token_hash and row.token_hash.startswith("scrypt$")
    # health is open, the dashboard redirects to sign-in
    assert c.get("/healthz").json() == {"status": "ok"}
    r = c.get("/studies/1", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")


def test_list_filter_detail_timeline(env):
    c, h = env["client"], bearer(env["reader"])
    r = c.get("/api/v1/studies", headers=h).json()
    assert r["total"] == 3
    assert {x["state"] for x in r["studies"]} == {"DONE", "FAILED", "SENDING"}
    assert r["counts"]["DONE"] == 1 and r["counts"]["FAILED"] == 1
    assert all(x["state_age_seconds"] is not None and x["state_age_seconds"] >= 0 for x in r["studies"])
    r = c.get("/api/v1/studies", params={"state": "FAILED"}, headers=h).json()
    assert [x["id"] for x in r["studies"]] == [env["failed"].study_id]
    assert r["studies"][0]["state_reason"].startswith("inference_failed")
    assert c.get("/api/v1/studies", params={"state": "NOPE"}, headers=h).status_code == 422

    sid = env["done"].study_id
    d = c.get(f"/api/v1/studies/{sid}", headers=h).json()
    assert d["study_uid"] == env["done"].study_uid and d["state"] == "DONE"
    roles = {x["description"]: (x["role"], x["role_selected"], x["role_reason"]) for x in d["series"]}
    assert roles["T1 POST GD"][:2] == ("T1C", True) and "contrast" in roles["T1 POST GD"][2]
    assert roles["LOCALIZER"] == ("OTHER", False, "localizer (ImageType LOCALIZER)")
    tl = c.get(f"/api/v1/studies/{sid}/timeline", headers=h).json()["events"]
    assert [e["to_state"] for e in tl] == ["STABLE", "READY", "RUNNING", "ENCODED", "SENDING", "DONE"]
    assert tl[0]["from_state"] == "RECEIVING"
    runs = c.get(f"/api/v1/studies/{sid}/runs", headers=h).json()["runs"]
    assert runs[0]["stage_seconds"]["infer"] == 2.25 and runs[0]["output_paths"] == [env["done"].seg_path]
    assert c.get("/api/v1/studies/9999", headers=h).status_code == 404


def test_errors_outbox_runs(env):
    c, h = env["client"], bearer(env["reader"])
    e = c.get("/api/v1/errors", headers=h).json()
    assert [x["id"] for x in e["failed_studies"]] == [env["failed"].study_id]
    assert [x["study_id"] for x in e["dead_outbox"]] == [env["dead"].study_id]
    assert e["dead_outbox"][0]["last_error"] == "association rejected by PACS"
    ob = c.get("/api/v1/outbox", params={"state": "SENT"}, headers=h).json()["items"]
    assert [x["study_id"] for x in ob] == [env["done"].study_id]
    assert len(c.get("/api/v1/runs", headers=h).json()["runs"]) == 3
    assert c.get("/api/v1/audit", headers=h).status_code == 403
    assert c.get("/api/v1/audit", headers=bearer(env["admin"])).status_code == 200


def test_report_findings_only_without_scope(env):
    c, sid = env["client"], env["done"].study_id
    r = c.get(f"/api/v1/studies/{sid}/report", headers=bearer(env["reader"])).json()
    assert r["matched"] and r["findings"]["side"] == FINDINGS["side"] and r["findings"]["size_mm"] == 23.0
    assert "text" not in r and r["text_included"] is False and r["text_available"] is True
    raw = c.get(f"/api/v1/studies/{sid}/report", headers=bearer(env["reader"])).text
    assert "pleomorphic adenoma" not in raw  # the text is nowhere in the answer
    r = c.get(f"/api/v1/studies/{sid}/report", headers=bearer(env["texter"])).json()
    assert r["text"] == REPORT_TEXT and r["text_included"] is True
    assert c.get(f"/api/v1/studies/{sid}/report", headers=bearer(env["admin"])).json()["text"] == REPORT_TEXT


def test_actions_via_api_need_scope_and_are_audited(env):
    c, sid = env["client"], env["failed"].study_id
    assert c.post(f"/api/v1/studies/{sid}/retry", headers=bearer(env["reader"])).status_code == 403
    r = c.post(f"/api/v1/studies/{sid}/retry", headers=bearer(env["operator"]))
    assert r.status_code == 200, r.text
    assert (r.json()["from_state"], r.json()["to_state"]) == ("FAILED", "READY")
    tl = c.get(f"/api/v1/studies/{sid}/timeline", headers=bearer(env["operator"])).json()["events"]
    assert tl[-1]["to_state"] == "READY" and tl[-1]["actor"] == "operator"
    # retry again: READY is already queued -> 409 with a reason
    r = c.post(f"/api/v1/studies/{sid}/retry", headers=bearer(env["operator"]))
    assert r.status_code == 409 and "already queued" in r.json()["detail"]
    # reprocess bumps the version
    done = env["done"].study_id
    r = c.post(f"/api/v1/studies/{done}/reprocess", headers=bearer(env["operator"])).json()
    assert r["to_state"] == "READY"
    with env["db"].session() as s:
        assert s.get(Study, done).version == 1
        audit = s.scalars(select(AuditLog).where(AuditLog.action.like("study.%")).order_by(AuditLog.id)).all()
        assert [(a.actor, a.action, a.target) for a in audit] == [
            ("operator", "study.retry", f"study:{sid}"), ("operator", "study.reprocess", f"study:{done}")]
    # resend of the DEAD item: PENDING, due now, attempts 0
    dead = env["dead"].study_id
    r = c.post(f"/api/v1/studies/{dead}/resend", headers=bearer(env["operator"])).json()
    assert r["outbox_requeued"] == 1
    with env["db"].session() as s:
        it = s.scalar(select(OutboxItem).where(OutboxItem.study_id == dead))
        assert (it.state, it.attempts, it.last_error) == ("PENDING", 0, None)
    assert c.post(f"/api/v1/studies/{dead}/frobnicate", headers=bearer(env["operator"])).status_code == 404


def test_findings_from_report_parser_and_action_hook(settings):
    db = Database(settings.database_url)
    seeded = seed_study(db, settings.storage_root, "FAILED")
    with db.transaction() as s:
        for run in s.scalars(select(Run)).all():
            run.metrics = {}  # what the pipeline records: no findings in the run
        t = tokens.create_token(s, "op", ["actions"])
    seen = []
    c = TestClient(create_app(settings, db, on_action=seen.append))
    h = bearer(t)
    r = c.get(f"/api/v1/studies/{seeded.study_id}/report", headers=h).json()
    assert r["findings_source"] == "report parser"
    assert (r["findings"]["side"], r["findings"]["lobe"], r["findings"]["size_mm"]) == ("right", "superficial", 23.0)
    assert c.post(f"/api/v1/studies/{seeded.study_id}/retry", headers=h).status_code == 200
    assert [(x.action, x.to_state) for x in seen] == [("retry", "READY")]
    db.dispose()


def _login(c, token: str) -> str:
    page = c.get("/login").text
    nonce = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    r = c.post("/login", data={"token": token, "csrf": nonce, "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    page = c.get("/").text
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_dashboard_session_csrf_and_report_text(env):
    c = env["client"]
    csrf = _login(c, env["admin"])
    sid = env["failed"].study_id
    page = c.get(f"/studies/{sid}")
    assert page.status_code == 200 and "FAILED" in page.text
    for h in ("content-security-policy", "x-frame-options", "referrer-policy"):
        assert h in page.headers
    assert page.headers["x-frame-options"] == "DENY" and page.headers["referrer-policy"] == "no-referrer"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    # CSRF missing or wrong -> 403, the study does not move
    assert c.post(f"/studies/{sid}/action/retry", data={}, follow_redirects=False).status_code == 403
    assert c.post(f"/studies/{sid}/action/retry", data={"csrf": "nope"}, follow_redirects=False).status_code == 403
    assert c.post(f"/api/v1/studies/{sid}/retry").status_code == 403  # session + API without header
    with env["db"].session() as s:
        assert s.get(Study, sid).state == "FAILED"
    r = c.post(f"/studies/{sid}/action/retry", data={"csrf": csrf}, follow_redirects=True)
    assert r.status_code == 200 and "FAILED → READY" in r.text
    with env["db"].session() as s:
        assert s.get(Study, sid).state == "READY"
    # errors and outbox pages list the DEAD item and its study
    errors_page = c.get("/errors").text
    assert "association rejected by PACS" in errors_page and f'href="/studies/{env["dead"].study_id}"' in errors_page
    assert "retry by admin" not in errors_page  # the retried study left the failed list
    outbox_page = c.get("/outbox?state=DEAD").text
    assert "DEAD" in outbox_page and "association rejected by PACS" in outbox_page
    assert "association rejected" not in c.get("/outbox?state=SENT").text
    # admin session sees the report text on the page; a reader session does not
    done = env["done"].study_id
    assert REPORT_TEXT in c.get(f"/studies/{done}").text
    c2 = TestClient(c.app, base_url="http://127.0.0.1")
    _login(c2, env["reader"])
    page = c2.get(f"/studies/{done}").text
    assert "superficial" in page and REPORT_TEXT not in page and "report-text" in page
    assert 'id="action-retry"' not in page  # no actions scope, no buttons
    # sign-out needs the CSRF token too, then the session is gone
    assert c.post("/logout", data={}, follow_redirects=False).status_code == 403
    assert c.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert c.get("/api/v1/me").status_code == 401


def test_revoking_a_token_ends_its_sessions(env):
    c = env["client"]
    _login(c, env["texter"])
    assert c.get("/api/v1/me").json()["name"] == "radiologist"
    with env["db"].transaction() as s:
        tokens.revoke_token(s, "radiologist")
    assert c.get("/api/v1/me").status_code == 401


def test_signin_backoff_and_audit(env):
    c = env["client"]
    page = c.get("/login").text
    nonce = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert c.post("/login", data={"token": env["admin"], "next": "/"}, follow_redirects=False).status_code == 403
    codes = [c.post("/login", data={"token": "guess", "csrf": nonce}, follow_redirects=False).status_code for _ in range(6)]
    assert codes[:5] == [401] * 5 and codes[5] == 429
    r = c.post("/login", data={"token": env["admin"], "csrf": nonce}, follow_redirects=False)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1  # even the right token waits
    with env["db"].session() as s:
        fails = s.scalars(select(AuditLog).where(AuditLog.action == "signin.failed")).all()
        assert len(fails) == 5 and fails[0].remote_addr


def test_preview_png(env):
    c, h = env["client"], bearer(env["reader"])
    r = c.get(f"/api/v1/studies/{env['done'].study_id}/preview.png", headers=h)
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    from io import BytesIO

    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(BytesIO(r.content)).convert("RGB")).astype(int)
    red = (img[..., 0] > 200) & (img[..., 1] < 80) & (img[..., 2] < 80)
    assert red.any()  # the overlay is drawn
    # the slice shown is the one with the largest mask area (10 x 10 on the third slice)
    import highdicom as hd

    from pgsam_node.web.preview import largest_slice

    uid, frame, area, mask = largest_slice(hd.seg.segread(env["settings"].storage_root / env["done"].seg_path))
    assert (uid, frame, area, mask.shape) == (env["done"].best_uid, None, 100, (48, 48))
    assert c.get(f"/studies/{env['failed'].study_id}/preview.png", headers=h).status_code == 404
    assert c.get(f"/studies/{env['done'].study_id}/preview.png").status_code == 401


@pytest.mark.parametrize("nxt,expected", [("/studies/2?x=1", "/studies/2?x=1"), ("//evil.example/x", "/"),
                                           ("https://evil.example/", "/"), ("/\\evil.example", "/")])
def test_signin_redirects_only_to_local_paths(env, nxt, expected):
    c = env["client"]
    nonce = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
    r = c.post("/login", data={"token": env["reader"], "csrf": nonce, "next": nxt}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == expected
