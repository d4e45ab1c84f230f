"""``pgsam-node destination test``: C-ECHO a real Orthanc (DIMSE), the DICOMweb capability check
on Orthanc's plugin, and clear failures for a destination that is down or refuses our AE."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from ..helpers import PROJECT_ROOT, free_port
from ..orthanc import OrthancServer
from .test_dicomweb_stow import DICOMWEB, PLUGIN

pytestmark = pytest.mark.orthanc


def _run(cfg, *args):
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    env.pop("PGSAM_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "pgsam_node", "destination", "test", *args, "--config", str(cfg)],
                          capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, timeout=120)


def test_destination_test_cli(tmp_path):
    if not PLUGIN.exists():
        pytest.skip("Debian package orthanc-dicomweb not installed (deploy/install-system-deps.sh)")
    with OrthancServer(tmp_path / "orthanc", extra=DICOMWEB, always_allow_store=False,
                       modalities={"node": ("PGSAM", "127.0.0.1", 11112)}) as orthanc:
        dests = [
            {"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port},
            {"name": "web", "type": "dicomweb", "url": orthanc.url + "/dicom-web"},
            {"name": "down", "ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port()},
            {"name": "wrong-ae", "ae_title": "NOTORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port},
        ]
        cfg = tmp_path / "node.yaml"
        cfg.write_text(yaml.safe_dump({"storage": {"root": str(tmp_path / "storage")}, "logging": {"level": "WARNING"},
                                       "send": {"timeout_seconds": 30}, "destinations": dests}))  # a loaded Orthanc may take >5 s to reject
        ok = _run(cfg, "pacs")
        assert ok.returncode == 0 and "OK   pacs: C-ECHO success" in ok.stdout, ok.stdout + ok.stderr
        assert _run(cfg, "web").returncode == 0
        every = _run(cfg)
        assert every.returncode == 1, every.stdout
        assert "OK   web: DICOMweb answered HTTP 200" in every.stdout
        assert "FAIL down:" in every.stdout and "(transient)" in every.stdout.split("FAIL down:")[1].splitlines()[0]
        assert "FAIL wrong-ae: association rejected" in every.stdout
        missing = _run(cfg, "nope")
        assert missing.returncode != 0 and "no destination named 'nope'" in (missing.stdout + missing.stderr)
