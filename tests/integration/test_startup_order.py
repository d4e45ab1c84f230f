"""Start-up order: the DICOM port answers while the model is still loading (issue 17).

The predictor factory is the test seam: it blocks on an event, standing in for torch and the
model weights loading on a busy machine.
"""

from __future__ import annotations

import threading

import httpx
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from pgsam_node.node import Node

from ..helpers import wait_for


class _Model:
    model_version = "blocking-test-model"

    def for_findings(self, findings):
        return self


def _echo(port: int, aet: str) -> int:
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    assert assoc.is_established
    try:
        return assoc.send_c_echo().Status
    finally:
        assoc.release()


def test_port_answers_and_readyz_reports_while_model_loads(settings):
    release = threading.Event()
    calls = []

    def slow_factory():
        calls.append(1)
        assert release.wait(60), "test did not release the model load"
        return _Model()

    node = Node(settings, predictor_factory=slow_factory).start()
    try:
        # start() returned although the model is not loaded: the port is open and echo works.
        assert _echo(node.listener.port, settings.dicom.ae_title) == 0x0000
        wait_for(lambda: calls, timeout=10, what="background model load started")
        ready = httpx.get(f"{node.web.url}/readyz").json()
        assert ready["checks"]["model"]["state"] == "loading"
        # No study is claimed before the model is there: the worker thread has not started.
        assert node.worker is not None and node.worker._thread is None

        release.set()
        assert node.wait_model(timeout=30)
        ready = httpx.get(f"{node.web.url}/readyz").json()
        assert ready["checks"]["model"]["state"] == "loaded"
        assert ready["checks"]["model"]["model_version"] == "blocking-test-model"
        assert node.worker._thread is not None and node.worker._thread.is_alive()
        assert len(calls) == 1
    finally:
        release.set()
        node.stop()


def test_failed_model_load_makes_readyz_unready_and_keeps_receiving(settings):
    def broken_factory():
        raise RuntimeError("weights missing")

    node = Node(settings, predictor_factory=broken_factory).start()
    try:
        assert node.wait_model(timeout=30)
        r = httpx.get(f"{node.web.url}/readyz")
        assert r.status_code == 503
        assert r.json()["checks"]["model"] == {"ok": False, "state": "failed", "error": "RuntimeError"}
        assert _echo(node.listener.port, settings.dicom.ae_title) == 0x0000
    finally:
        node.stop()
