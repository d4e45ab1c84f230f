"""The dashboard on a study that went through the real node: synthetic MR study over DICOM → real
listener, assembly, report from the embedded RIS, bundled model, SEG sent to a receiving PACS →
headless Chromium signs in with the first-run token, reads the study page (roles, findings,
preview rendered from the real SEG), presses Reprocess and watches the node run it again;
``/metrics`` agrees with what happened."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgsam_node.config import load_settings
from pgsam_node.db.models import Study
from pgsam_node.inference.predictor import BUNDLED_MODEL_DIR

from ..helpers import free_port, wait_for
from .pacs_flow import send_study_with_report, study_state, wait_finished


class TruthPredictor:
    """Test seam used only while no trained model is bundled: the synthetic study's truth mask
    stands in for the model output (the rest of the node is the real one)."""

    model_version = "truth-seam-test"

    def __init__(self, mask):
        self.mask = mask

    def for_findings(self, findings):
        return self

    def predict(self, channels, valid, findings, report_text, affine):
        from types import SimpleNamespace

        return SimpleNamespace(mask=self.mask.astype(bool), prob=None)


@pytest.mark.slow
def test_dashboard_on_a_real_pipeline_study(tmp_path):
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.skip("chromium/chromedriver not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from pgsam_node.synth.minipacs import MiniPacs
    from pgsam_node.synth.dicom_writer import write_study
    from pgsam_node.node import Node

    pacs = MiniPacs(tmp_path / "pacs", ae_title="TESTPACS").start()
    settings = load_settings(
        None,
        storage={"root": str(tmp_path / "node"), "min_free_bytes": 0},
        dicom={"port": free_port(), "refuse_below_free_bytes": 0},
        assembly={"stable_seconds": 2.0, "check_interval_seconds": 0.5},
        ris={"recheck_interval_seconds": 1.0},
        send={"check_interval_seconds": 0.5},
        worker={"poll_seconds": 0.5},
        web={"port": free_port(), "refresh_seconds": 0},
        destinations=[{"name": "pacs", "ae_title": "TESTPACS", "host": "127.0.0.1", "port": pacs.port}],
    )
    study = write_study(11, tmp_path / "study")
    bundled = (BUNDLED_MODEL_DIR / "config.json").is_file()
    node = Node(settings, predictor_factory=None if bundled else (lambda: TruthPredictor(study.mask))).start()
    driver = None
    try:
        files = [p for paths in study.paths_by_role.values() for p in paths]
        assert send_study_with_report(node, settings, study, 11, tmp_path) == len(files)
        state, why = wait_finished(node, study.study_uid)
        assert state == "DONE", f"{state}: {why}"
        with node.db.session() as s:
            sid = s.query(Study).filter_by(study_uid=study.study_uid).one().id

        base = node.web.url
        token = node.web.first_run_token
        metrics = {(m.name, tuple(sorted(m.labels.items()))): m.value
                   for f in text_string_to_metric_families(httpx.get(f"{base}/metrics").text) for m in f.samples}
        assert metrics[("pgsam_instances_received_total", ())] == len(files)
        assert metrics[("pgsam_studies", (("state", "DONE"),))] == 1
        assert metrics[("pgsam_inference_seconds_count", ())] == 1
        assert metrics[("pgsam_outbox_items", (("state", "SENT"),))] >= 1

        opts = webdriver.ChromeOptions()
        opts.binary_location = shutil.which("chromium")
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1800"):
            opts.add_argument(a)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
        wait = WebDriverWait(driver, 30)
        driver.get(f"{base}/studies/{sid}")
        wait.until(EC.presence_of_element_located((By.ID, "token"))).send_keys(token)
        driver.find_element(By.ID, "signin").click()
        assert wait.until(EC.presence_of_element_located((By.ID, "study-state"))).text == "DONE"
        roles = driver.find_element(By.ID, "series").text
        assert all(r in roles for r in ("T1", "T2", "T1C"))
        findings = driver.find_element(By.ID, "findings").text.lower()
        assert study.findings.side in findings
        assert "findings from run" in driver.page_source.lower()  # what the model was given
        img = driver.find_element(By.ID, "preview")
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0)
        timeline = driver.find_element(By.ID, "timeline").text
        assert "RUNNING" in timeline and "SENDING" in timeline
        shot = Path(os.environ.get("PGSAM_SCREENSHOTS", tmp_path))
        shot.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shot / "e2e-study-done.png"))

        n_sent = len(pacs.received)
        assert n_sent >= 1
        driver.find_element(By.ID, "action-reprocess").click()
        wait.until(EC.alert_is_present()).accept()
        wait.until(lambda d: "DONE → READY" in d.find_element(By.ID, "flash").text)
        # the embedded worker (woken by the action) runs version 1 and the new SEG goes out
        wait_for(lambda: study_state(node, study.study_uid)[0] == "DONE" and _version(node, study.study_uid) == 1, 240, 0.5, what="reprocessed study DONE")
        driver.get(f"{base}/studies/{sid}")
        assert wait.until(EC.presence_of_element_located((By.ID, "study-state"))).text == "DONE"
        assert "reprocess by admin" in driver.find_element(By.ID, "timeline").text
        driver.save_screenshot(str(shot / "e2e-study-reprocessed.png"))
        wait_for(lambda: len(pacs.received) > n_sent, 30, what="the version-1 SEG at the PACS")
    finally:
        if driver is not None:
            driver.quit()
        node.stop()
        pacs.stop()


def _version(node, uid: str) -> int:
    with node.db.session() as s:
        return s.query(Study).filter_by(study_uid=uid).one().version
