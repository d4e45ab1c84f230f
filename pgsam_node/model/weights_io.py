"""Small weight-file helpers shared by the model folder and the packaged-checkpoint loaders."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from pgsam_node.errors import ModelError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str, only_prefixes: tuple[str, ...] | None = None) -> None:
    expected = model.state_dict()
    if only_prefixes is not None:
        expected = {k: v for k, v in expected.items() if k.startswith(only_prefixes)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        if bad_shape:
            k = bad_shape[0]
            parts.append(f"shape mismatch ({len(bad_shape)}): {k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}")
        raise ModelError(f"{what} does not fit the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=only_prefixes is None)
