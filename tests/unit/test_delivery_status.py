"""A PACS outage is visible: last send error, attempt count and next attempt in status and the study list."""

from __future__ import annotations

import datetime as dt
import re

from fastapi.testclient import TestClient
from sqlalchemy import select

from pgsam_node.commands.status import collect, format_table
from pgsam_node.db import Database
from pgsam_node.db.models import OutboxItem
from pgsam_node.web import create_app, tokens

from ..opsdata import seed_study


def test_outage_shows_error_attempts_and_next_attempt(settings):
    db = Database(settings.database_url)
    try:
        st = seed_study(db, settings.storage_root, "SENDING", accession="ACC-OUT", outbox_state="PENDING")
        nxt = dt.datetime(2030, 1, 2, 3, 4, 5)
        with db.transaction() as s:
            for item in s.scalars(select(OutboxItem).where(OutboxItem.study_id == st.study_id)):
                item.attempts, item.next_attempt_at = 4, nxt
                item.last_error = "connection refused by 127.0.0.1:4242"
            admin = tokens.ensure_first_run_token(s)
        text = format_table(collect(db, 10))
        line = next(ln for ln in text.splitlines() if ln.strip().startswith("delivery:"))
        assert "PENDING, attempt 4" in line and "next attempt 2030-01-02T03:04:05 UTC" in line
        assert "last error: connection refused by 127.0.0.1:4242" in line
        client = TestClient(create_app(settings, db), base_url="http://127.0.0.1")
        page = client.get("/login").text
        nonce = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        client.post("/login", data={"token": admin, "csrf": nonce, "next": "/"}, follow_redirects=False)
        listing = client.get("/").text
        assert "attempt 4" in listing and "connection refused by 127.0.0.1:4242" in listing
        api = client.get("/api/v1/studies", headers={"Authorization": f"Bearer {admin}"}).json()["studies"][0]
        assert api["delivery"][0]["attempts"] == 4
        client.close()
    finally:
        db.dispose()
