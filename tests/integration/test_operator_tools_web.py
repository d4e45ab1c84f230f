"""The operator tools through the web: pause switches (API, dashboard Node page, banner, /metrics,
audit) and "test destination" against a real C-ECHO peer that is up, then down."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from pgsam_node.config import Destination
from pgsam_node.db import Database, switches
from pgsam_node.web import create_app, tokens

from ..helpers import free_port
from ..unit.test_web_api import _login, bearer
from ..unit.test_web_metrics import scrape


@pytest.fixture
def env(settings):
    db = Database(settings.database_url)
    with db.transaction() as s:
        admin = tokens.ensure_first_run_token(s)
        reader = tokens.create_token(s, "reader", [])
        operator = tokens.create_token(s, "operator", ["actions"])
    woken: list = []
    app = create_app(settings, db, on_action=woken.append)
    client = TestClient(app, base_url="http://127.0.0.1")
    yield {"db": db, "client": client, "admin": admin, "reader": reader, "operator": operator, "woken": woken,
           "settings": settings}
    client.close()
    db.dispose()


def _paused(c, h) -> dict[str, bool]:
    return {n: st["paused"] for n, st in c.get("/api/v1/switches", headers=h).json()["switches"].items()}


def test_switch_api_scopes_audit_and_metrics(env):
    c, op, reader = env["client"], bearer(env["operator"]), bearer(env["reader"])
    assert c.post("/api/v1/switches/receiving/pause").status_code == 401
    assert _paused(c, reader) == {"receiving": False, "processing": False, "sending": False}
    r = c.post("/api/v1/switches/receiving/pause", headers=reader)
    assert r.status_code == 403 and "actions" in r.json()["detail"]
    assert c.post("/api/v1/switches/recieving/pause", headers=op).status_code == 422
    assert c.post("/api/v1/switches/receiving/stop", headers=op).status_code == 404

    r = c.post("/api/v1/switches/receiving/pause", headers=op, json={"reason": "PACS upgrade"})
    assert r.status_code == 200 and r.json()["changed"] == ["receiving"]
    rec = r.json()["switches"]["receiving"]
    assert rec["paused"] and rec["changed_by"] == "operator" and rec["reason"] == "PACS upgrade"
    assert c.post("/api/v1/switches/receiving/pause", headers=op).json()["changed"] == []  # already paused
    assert c.post("/api/v1/switches/sending/pause", headers=op).status_code == 200  # no body: no note
    assert c.post("/api/v1/switches/sending/pause", headers=op, json={"reason": "x" * 501}).status_code == 422
    assert _paused(c, reader) == {"receiving": True, "processing": False, "sending": True}

    m = scrape(c)
    assert [m[("pgsam_paused", (("what", w),))] for w in switches.SWITCHES] == [1, 0, 1]

    r = c.post("/api/v1/switches/all/resume", headers=op)
    assert r.json()["changed"] == ["receiving", "sending"]
    m = scrape(c)
    assert [m[("pgsam_paused", (("what", w),))] for w in switches.SWITCHES] == [0, 0, 0]
    assert len(env["woken"]) == 3  # each committed change told the node (the embedded worker wakes)

    audit = c.get("/api/v1/audit", headers=bearer(env["admin"])).json()["entries"]
    mine = [(e["actor"], e["action"], e["target"]) for e in audit if e["action"].startswith("node.")]
    assert sorted(mine) == sorted([("operator", "node.pause", "switch:receiving"), ("operator", "node.pause", "switch:sending"),
                                   ("operator", "node.resume", "switch:receiving"), ("operator", "node.resume", "switch:sending")])
    assert all(e["at"] for e in audit)


def test_dashboard_node_page_buttons_banner_and_csrf(env):
    c = env["client"]
    csrf = _login(c, env["admin"])
    page = c.get("/node")
    assert page.status_code == 200 and 'id="pause-receiving"' in page.text and 'id="paused-banner"' not in page.text
    assert c.post("/node/switches/processing/pause", data={}, follow_redirects=False).status_code == 403
    assert c.post("/node/switches/processing/pause", data={"csrf": "nope"}, follow_redirects=False).status_code == 403
    assert c.post("/api/v1/switches/processing/pause").status_code == 403  # session + API without the header
    with env["db"].session() as s:
        assert not switches.is_paused(s, "processing")

    r = c.post("/node/switches/processing/pause", data={"csrf": csrf, "reason": "GPU swap"}, follow_redirects=True)
    assert r.status_code == 200 and "paused: processing" in r.text
    assert 'id="resume-processing"' in r.text and "GPU swap" in r.text
    # The banner is on every page while something is paused.
    home = c.get("/").text
    banner = re.search(r'id="paused-banner">(.*?)</p>', home, re.S).group(1)
    assert "processing (by admin" in banner and "receiving" not in banner
    r = c.post("/api/v1/switches/processing/resume", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["changed"] == ["processing"]
    assert 'id="paused-banner"' not in c.get("/").text
    r = c.post("/node/switches/bogus/pause", data={"csrf": csrf}, follow_redirects=True)
    assert "pause refused: unknown switch" in r.text

    reader = TestClient(c.app, base_url="http://127.0.0.1")
    rcsrf = _login(reader, env["reader"])
    page = reader.get("/node").text
    assert 'id="switches"' in page and 'id="pause-receiving"' not in page  # no actions scope, no buttons
    assert reader.post("/node/switches/all/pause", data={"csrf": rcsrf}, follow_redirects=False).status_code == 403


class _EchoPeer:
    """A real Verification SCP (pynetdicom) on a free port."""

    def __init__(self, aet: str = "ECHOPEER"):
        self.ae = AE(ae_title=aet)
        self.ae.add_supported_context(Verification)
        self.port = free_port()
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False)

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server = None


def test_destination_test_api_and_dashboard_with_a_real_peer(env):
    peer = _EchoPeer()
    settings = env["settings"]
    settings.send.timeout_seconds = 5
    settings.destinations = [
        Destination(name="pacs", ae_title="ECHOPEER", host="127.0.0.1", port=peer.port),
        Destination(name="down", ae_title="NOBODY", host="127.0.0.1", port=free_port()),
        Destination(name="web", type="dicomweb", url="https://user:secret@vna.example/dicom-web"),
    ]
    c, op = env["client"], bearer(env["operator"])
    try:
        listed = c.get("/api/v1/destinations", headers=bearer(env["reader"])).json()["destinations"]
        assert [(d["name"], d["type"], d["target"]) for d in listed] == [
            ("pacs", "dimse", f"ECHOPEER@127.0.0.1:{peer.port}"), ("down", "dimse", listed[1]["target"]),
            ("web", "dicomweb", "https://vna.example/dicom-web")]
        assert "secret" not in c.get("/api/v1/destinations", headers=op).text

        assert c.post("/api/v1/destinations/pacs/test", headers=bearer(env["reader"])).status_code == 403
        assert c.post("/api/v1/destinations/nope/test", headers=op).status_code == 404
        up = c.post("/api/v1/destinations/pacs/test", headers=op).json()
        assert up["ok"] is True and "C-ECHO success from ECHOPEER@127.0.0.1" in up["message"]
        down = c.post("/api/v1/destinations/down/test", headers=op).json()
        assert down["ok"] is False and down["permanent"] is False and "cannot associate with down" in down["message"]

        # The dashboard button runs the same check and shows its result.
        csrf = _login(c, env["admin"])
        page = c.get("/node").text
        assert "ECHOPEER@127.0.0.1" in page and 'id="test-1"' in page
        assert c.post("/node/destinations/pacs/test", data={"csrf": "nope"}, follow_redirects=False).status_code == 403
        r = c.post("/node/destinations/pacs/test", data={"csrf": csrf}, follow_redirects=True)
        assert re.search(r'class="flash ok"[^>]*>OK pacs: C-ECHO success', r.text), r.text

        peer.stop()  # the peer goes down: the same check now fails, with the reason
        gone = c.post("/api/v1/destinations/pacs/test", headers=op).json()
        assert gone["ok"] is False and "cannot associate with pacs" in gone["message"]
        r = c.post("/node/destinations/pacs/test", data={"csrf": csrf}, follow_redirects=True)
        assert re.search(r'class="flash bad"[^>]*>pacs failed: cannot associate with pacs', r.text), r.text

        audit = c.get("/api/v1/audit", headers=bearer(env["admin"])).json()["entries"]
        tests = [(e["actor"], e["target"], e["detail"]["ok"]) for e in audit if e["action"] == "destination.test"]
        assert sorted(tests) == sorted([("operator", "destination:pacs", True), ("operator", "destination:down", False),
                                        ("admin", "destination:pacs", True), ("operator", "destination:pacs", False),
                                        ("admin", "destination:pacs", False)])
    finally:
        peer.stop()
