"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest
import torch

from pgsam_node.model.checkpoint import save_model_dir
from pgsam_node.model.pgsam import build_model

from .test_model_arch import small_cfg


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """Folder of a small, randomly initialised text-using model (seed 0), one per test module."""
    torch.manual_seed(0)
    cfg = small_cfg(use_text=True)
    d = tmp_path_factory.mktemp("models") / "small"
    save_model_dir(build_model(cfg), cfg, d)
    return d
