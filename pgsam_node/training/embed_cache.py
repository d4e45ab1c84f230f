"""Disk cache of frozen image-encoder embeddings, keyed by content hash.

With a frozen pretrained encoder (``litemedsam``: about 1.4 s per 256² slice on a 2-core CPU) the
encoder output of a slice never changes, so it is computed once and stored; training the fusion,
prompt and decoder modules then costs a few milliseconds per slice. The key is the SHA-256 of the
encoder identity (preset + base-weights hash) and the exact input bytes, so a changed slice,
normalisation or encoder can never hit a stale entry. Entries are ``.npy`` fp16 files written
under a temporary name and renamed into place (a crash never leaves half an entry).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch


class EmbeddingCache:
    """Content-addressed store of (C, h, w) embeddings.

    Parameters
    ----------
    folder
        Cache directory (created on first write).
    encoder_id
        Identity of the encoder (e.g. ``"litemedsam:" + base SHA-256``); part of every key.
    """

    def __init__(self, folder: str | Path, encoder_id: str) -> None:
        self.folder = Path(folder)
        self.encoder_id = encoder_id
        self.hits = 0
        self.misses = 0

    def key(self, x: np.ndarray) -> str:
        """SHA-256 of the encoder identity, the input's dtype/shape and its bytes."""
        h = hashlib.sha256(self.encoder_id.encode())
        a = np.ascontiguousarray(x)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def get_or_compute(self, inputs: np.ndarray, encode: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 8) -> np.ndarray:
        """Embeddings of a stack of encoder inputs, computing only the ones not cached.

        Parameters
        ----------
        inputs
            (N, 3, H, W) float32 encoder inputs.
        encode
            (B, 3, H, W) tensor -> (B, C, h, w) tensor (run under ``torch.inference_mode``).
        batch_size
            Slices per encoder call for the misses.

        Returns
        -------
        numpy.ndarray
            (N, C, h, w) float16 embeddings.
        """
        keys = [self.key(x) for x in inputs]
        out: list[np.ndarray | None] = []
        todo = []
        for i, k in enumerate(keys):
            p = self._path(k)
            if p.is_file():
                out.append(np.load(p))
                self.hits += 1
            else:
                out.append(None)
                todo.append(i)
        for s in range(0, len(todo), batch_size):
            idx = todo[s : s + batch_size]
            with torch.inference_mode():
                emb = encode(torch.from_numpy(np.ascontiguousarray(inputs[idx], dtype=np.float32))).float().cpu().numpy().astype(np.float16)
            for j, i in enumerate(idx):
                p = self._path(keys[i])
                p.parent.mkdir(parents=True, exist_ok=True)
                tmp = p.with_name(f"{p.stem}.{os.getpid()}.tmp.npy")
                np.save(tmp, emb[j])
                tmp.replace(p)
                out[i] = emb[j]
                self.misses += 1
        return np.stack([o for o in out if o is not None])
