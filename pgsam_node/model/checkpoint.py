"""Model folders (weights + JSON config, like nnU-Net) and official SAM checkpoints.

A model folder holds

* ``weights.safetensors`` — every parameter of :class:`~.pgsam.PGSAM` (fp16 or fp32); for a
  preset on packaged pretrained weights (``litemedsam``) only the tensors that differ from them,
  the base being named with its SHA-256 in ``base_weights``; and
* ``config.json`` — :class:`~.presets.ModelConfig`: preset and architecture, sequence order,
  use_text, 2.5-D context, normalisation, labels (SNOMED CT), task, text encoder, the training
  command and seed, the model version and the SHA-256 of the weights file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from pgsam_node.errors import ModelError
from pgsam_node.model.pgsam import SAM_PREFIXES, PGSAM, build_model
from pgsam_node.model.weights_io import _load_strict, sha256_file
from pgsam_node.model.presets import ModelConfig

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"


def save_model_dir(model: PGSAM, cfg: ModelConfig, path: str | Path, half: bool = True) -> ModelConfig:
    """Write ``weights.safetensors`` and ``config.json`` into ``path`` (created if needed).

    Files are written under temporary names and renamed into place, so a crash never leaves a
    half-written model. Returns the config with ``weights_sha256`` and ``version`` filled in.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else torch.float32
    full = model.state_dict()
    base = _base_state(cfg)
    if base:
        # Store only what training changed on top of the packaged pretrained weights; the base
        # file is identified by its SHA-256 (checked again when the folder is loaded).
        full = {k: v for k, v in full.items() if not (k in base and torch.equal(v.detach().cpu(), base[k]))}
        cfg.base_weights = _base_id(cfg)
    state = {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous() for k, v in full.items()}
    tmp_w = path / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp_w), metadata={"format": "pt"})
    digest = sha256_file(tmp_w)
    cfg.name = cfg.name or path.name
    cfg.weights_sha256 = digest
    cfg.version = f"{cfg.name}-{digest[:12]}"
    tmp_c = path / (CONFIG_FILE + ".tmp")
    tmp_c.write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=False) + "\n")
    for tmp in (tmp_w, tmp_c):
        tmp.chmod(0o644)  # model files are meant to be shared and read by the node's user
    tmp_w.replace(path / WEIGHTS_FILE)
    tmp_c.replace(path / CONFIG_FILE)
    return cfg


def read_config(path: str | Path) -> ModelConfig:
    """Read and validate ``config.json`` of a model folder."""
    cfg_path = Path(path) / CONFIG_FILE
    if not cfg_path.is_file():
        raise ModelError(f"model folder {path} has no {CONFIG_FILE}")
    try:
        data = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {cfg_path}: {exc}") from exc
    return ModelConfig.from_dict(data)


def load_model_dir(path: str | Path, device: str | torch.device = "cpu", verify: bool = True) -> tuple[PGSAM, ModelConfig]:
    """Load a model folder.

    Parameters
    ----------
    path
        Folder with ``weights.safetensors`` and ``config.json``.
    device
        Torch device for the model.
    verify
        Check the weights' SHA-256 against the config.

    Returns
    -------
    tuple
        (model in eval mode, float32, on ``device``; its :class:`ModelConfig`).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    cfg = read_config(path)
    w_path = path / WEIGHTS_FILE
    if not w_path.is_file():
        raise ModelError(f"model folder {path} has no {WEIGHTS_FILE}")
    if verify and cfg.weights_sha256:
        digest = sha256_file(w_path)
        if digest != cfg.weights_sha256:
            raise ModelError(f"{w_path} does not match the SHA-256 recorded in {CONFIG_FILE} (file changed or truncated)")
    try:
        state = load_file(str(w_path))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"cannot read {w_path}: {exc}") from exc
    if cfg.arch.pretrained and cfg.base_weights and cfg.base_weights != _base_id(cfg):
        raise ModelError(f"{path} was trained on {cfg.base_weights}, the installed base is {_base_id(cfg)}")
    model = build_model(cfg)  # a pretrained preset loads its verified base weights here
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    base = _base_state(cfg)
    if base:
        # Tensors absent from the file keep the base weights they were trained on.
        state = {**{k: v for k, v in model.state_dict().items() if k in base}, **state}
    _load_strict(model, state, str(w_path))
    return model.to(device).eval(), cfg


def _base_state(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The packaged pretrained state of ``cfg``'s preset (empty when it has none)."""
    if cfg.arch.pretrained == "litemedsam":
        from pgsam_node.model.litemedsam import litemedsam_state

        return litemedsam_state()
    return {}


def _base_id(cfg: ModelConfig) -> str:
    if cfg.arch.pretrained == "litemedsam":
        from pgsam_node.model.litemedsam import LITEMEDSAM_ID

        return LITEMEDSAM_ID
    return ""


def load_sam_checkpoint(model: PGSAM, path: str | Path) -> None:
    """Load an official SAM checkpoint (e.g. ``sam_vit_b_01ec64.pth``) into the SAM parts.

    The file must be a ``torch.save``-d state dict with keys ``image_encoder.*``,
    ``prompt_encoder.*`` and ``mask_decoder.*`` exactly as ``segment_anything``'s ``Sam`` has
    them for the preset's size; a file of another size or layout raises :class:`ModelError`
    naming the missing or unexpected keys. The fusion and prompt generator keep their
    initialisation (they are trained).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"SAM checkpoint {path} does not exist")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a bad file
        raise ModelError(f"cannot read SAM checkpoint {path}: {exc}") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"SAM checkpoint {path} is not a state dict of tensors")
    _load_strict(model, state, f"SAM checkpoint {path}", only_prefixes=SAM_PREFIXES)
    log.info("loaded SAM checkpoint %s (%d tensors)", path.name, len(state))
