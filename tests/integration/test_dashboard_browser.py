"""The dashboard in a real headless Chromium against the real web server (uvicorn thread).

Sign in with the first-run token printed by the server, open a seeded study, press Retry, see
the state change; screenshots go to the test's tmp dir (kept when ``PGSAM_SCREENSHOTS`` names a
folder, for looking at the page).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from pgsam_node.db import Database
from pgsam_node.db.models import Study
from pgsam_node.web import WebServer

from ..helpers import wait_for
from ..opsdata import seed_study


def _chrome():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("chromium/chromedriver not installed (Debian packages chromium, chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.fixture
def server(settings, capsys):
    db = Database(settings.database_url)
    seeded = {"done": seed_study(db, settings.storage_root, "DONE"),
              "failed": seed_study(db, settings.storage_root, "FAILED", accession="ACC-OPS-2")}
    srv = WebServer(settings, db)
    srv.start()
    printed = capsys.readouterr().err
    yield srv, db, seeded, printed
    srv.stop()
    db.dispose()


def _shot(driver, tmp_path: Path, name: str) -> Path:
    p = tmp_path / f"{name}.png"
    driver.save_screenshot(str(p))
    keep = os.environ.get("PGSAM_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, Path(keep) / p.name)
    return p


def test_sign_in_see_study_retry(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    srv, db, seeded, printed = server
    token = srv.first_run_token
    # Not a terminal: the token is never printed (it would land in the service log), only written
    # to the 0600 file the console message names.
    assert token and token not in printed and "first-run-admin-token" in printed
    from pgsam_node.web.server import token_file

    path = token_file(srv.settings.storage_root)
    assert path.read_text().strip() == token and (path.stat().st_mode & 0o777) == 0o600
    base = srv.url
    # the real server answers with the security headers and refuses anonymous API calls
    r = httpx.get(f"{base}/api/v1/studies")
    assert r.status_code == 401
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}

    driver = _chrome()
    try:
        wait = WebDriverWait(driver, 20)
        driver.get(f"{base}/")
        wait.until(EC.presence_of_element_located((By.ID, "token")))
        assert "/login" in driver.current_url
        driver.find_element(By.ID, "token").send_keys("pgsam_000000000000_wrong")
        driver.find_element(By.ID, "signin").click()
        assert wait.until(EC.presence_of_element_located((By.ID, "login-error"))).text == "That token is not valid."
        driver.find_element(By.ID, "token").send_keys(token)
        driver.find_element(By.ID, "signin").click()
        table = wait.until(EC.presence_of_element_located((By.ID, "studies")))
        assert "FAILED" in table.text and "DONE" in table.text
        assert "ACC-OPS-2" in table.text
        _shot(driver, tmp_path, "01-studies")
        cookie = driver.get_cookie("pgsam_session")
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"

        # a DONE study: timeline, roles, findings, report text (admin), preview image rendered
        driver.get(f"{base}/studies/{seeded['done'].study_id}")
        wait.until(EC.presence_of_element_located((By.ID, "timeline")))
        assert driver.find_element(By.ID, "study-state").text == "DONE"
        assert "T1C" in driver.find_element(By.ID, "series").text
        assert "superficial" in driver.find_element(By.ID, "findings").text
        img = driver.find_element(By.ID, "preview")
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0)
        _shot(driver, tmp_path, "02-study-done")

        # the FAILED study: press Retry, accept the confirmation, see READY
        driver.get(f"{base}/studies/{seeded['failed'].study_id}")
        assert wait.until(EC.presence_of_element_located((By.ID, "study-state"))).text == "FAILED"
        assert "inference_failed" in driver.find_element(By.ID, "study-reason").text
        driver.find_element(By.ID, "action-retry").click()
        wait.until(EC.alert_is_present()).accept()
        wait.until(lambda d: d.find_element(By.ID, "study-state").text == "READY")
        assert "FAILED → READY" in driver.find_element(By.ID, "flash").text
        assert "retry by admin" in driver.find_element(By.ID, "timeline").text
        _shot(driver, tmp_path, "03-after-retry")
    finally:
        driver.quit()
    with db.session() as s:
        st = s.get(Study, seeded["failed"].study_id)
        assert st.state == "READY" and st.events[-1].actor == "admin"
    wait_for(lambda: srv._thread.is_alive(), 2, what="server thread alive")


def test_node_page_pause_resume_and_test_destination(settings, tmp_path):
    """Chromium on the Node page: pause receiving (banner on every page), test a destination that
    answers C-ECHO (a real pynetdicom peer), resume."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from pgsam_node.config import Destination
    from pgsam_node.db import switches
    from ..helpers import free_port

    peer = AE(ae_title="ECHOPEER")
    peer.add_supported_context(Verification)
    peer_port = free_port()
    peer_server = peer.start_server(("127.0.0.1", peer_port), block=False)
    settings.destinations = [Destination(name="pacs", ae_title="ECHOPEER", host="127.0.0.1", port=peer_port)]
    db = Database(settings.database_url)
    srv = WebServer(settings, db)
    srv.start()
    token = srv.first_run_token
    driver = None
    try:
        driver = _chrome()
        wait = WebDriverWait(driver, 30)
        driver.get(f"{srv.url}/node")
        wait.until(EC.presence_of_element_located((By.ID, "token"))).send_keys(token)
        driver.find_element(By.ID, "signin").click()
        wait.until(EC.presence_of_element_located((By.ID, "switches")))
        assert driver.find_element(By.ID, "switch-receiving-state").text == "running"

        driver.find_element(By.ID, "pause-receiving").click()
        wait.until(EC.alert_is_present()).accept()
        wait.until(lambda d: d.find_element(By.ID, "switch-receiving-state").text == "PAUSED")
        assert "paused: receiving" in driver.find_element(By.ID, "flash").text
        with db.session() as s:
            assert switches.is_paused(s, "receiving") and not switches.is_paused(s, "sending")
        driver.get(f"{srv.url}/")
        assert "receiving (by admin" in wait.until(EC.presence_of_element_located((By.ID, "paused-banner"))).text
        _shot(driver, tmp_path, "04-paused-banner")

        driver.find_element(By.LINK_TEXT, "manage").click()
        wait.until(EC.presence_of_element_located((By.ID, "test-1"))).click()
        # wait for the answer page itself: a flash of the page before the click may still be there
        from selenium.common.exceptions import StaleElementReferenceException

        answer = WebDriverWait(driver, 30, ignored_exceptions=(StaleElementReferenceException,))
        flash = answer.until(lambda d: next((f for f in d.find_elements(By.ID, "flash") if "pacs:" in f.text), False))
        assert flash.text.startswith("OK pacs: C-ECHO success from ECHOPEER@127.0.0.1") and "ok" in flash.get_attribute("class")
        _shot(driver, tmp_path, "05-destination-ok")

        driver.find_element(By.ID, "resume-receiving").click()
        wait.until(EC.alert_is_present()).accept()
        wait.until(lambda d: d.find_element(By.ID, "switch-receiving-state").text == "running")
        assert not driver.find_elements(By.ID, "paused-banner")
    finally:
        if driver is not None:
            driver.quit()
        srv.stop()
        peer_server.shutdown()
        db.dispose()
