"""End-to-end fixtures: node settings for a whole pipeline run on localhost."""

from __future__ import annotations

import pytest

from pgsam_node.config import load_settings

from ..helpers import free_port


@pytest.fixture
def node_settings(tmp_path):
    """Factory of embedded-default settings with fast assembly and polling, plus overrides."""

    def make(**overrides):
        base = {
            "storage": {"root": str(tmp_path / "node"), "min_free_bytes": 0},
            "dicom": {"port": free_port(), "refuse_below_free_bytes": 0},
            "assembly": {"stable_seconds": 1.5, "check_interval_seconds": 0.3},
            "ris": {"recheck_interval_seconds": 0.5},
            "send": {"check_interval_seconds": 0.3, "backoff_base_seconds": 0.5},
            "worker": {"poll_seconds": 0.3, "heartbeat_seconds": 1.0, "lease_seconds": 6.0},
            "web": {"enabled": False},
        }
        for k, v in overrides.items():
            base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return load_settings(None, **base)

    return make
