"""Encode only the slices that can hold the lesion: the CPU path of a localisation-head preset.

The pretrained encoder dominates inference on a CPU (``litemedsam``: about 1.4 s per 256² slice and
sequence on two cores, so three sequences x 24 slices cost about 100 s). A model with a
localisation head can say cheaply where to look:

1. **first pass** — one sequence (the first present of T1C, T2, T1: where a lesion shows best) is
   encoded on every ``stride``-th slice; the head, conditioned on the report, marks the slices
   whose heat map has any cell above ``threshold``;
2. **full pass** — those slices and their neighbours (within ``stride``) get every sequence
   encoded (the first pass's embeddings are reused) and the whole model runs on them; every other
   slice is empty (logits -20).

Embeddings are kept in a bounded in-memory LRU keyed by the content of the encoder input, so the
two passes, and a re-run of the same study (amended report), never encode a slice twice. On a GPU
the full model runs on every slice (the encoder costs milliseconds there).

Shapes: images (B, S, K, H, W) in [0, 1], valid (B, S) bool, embeddings (B, S, C, h, w).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

#: Sequences tried for the first pass, in order.
FIRST_PASS_ROLES = ("T1C", "T2", "T1")


class EmbeddingLRU:
    """Bounded map: SHA-1 of an encoder input -> its (C, h, w) embedding (at most ``capacity``),
    kept in float16 (2 MiB for a 256 x 64 x 64 litemedsam embedding)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, int(capacity))
        self._d: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(x: torch.Tensor) -> str:
        a = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return hashlib.sha1(f"{a.shape}".encode() + a.tobytes()).hexdigest()

    def get(self, k: str) -> torch.Tensor | None:
        v = self._d.get(k)
        if v is not None:
            self._d.move_to_end(k)
            self.hits += 1
        return v

    def put(self, k: str, v: torch.Tensor) -> None:
        self.misses += 1
        if self.capacity == 0:
            return
        self._d[k] = v.detach().to(torch.float16)
        self._d.move_to_end(k)
        while len(self._d) > self.capacity:
            self._d.popitem(last=False)


def embed(model, images: torch.Tensor, want: torch.Tensor, cache: EmbeddingLRU, batch: int = 8) -> torch.Tensor:
    """Embeddings of the wanted (slice, sequence) inputs, encoding only the ones not cached.

    Parameters
    ----------
    images
        (B, S, K, H, W) model inputs.
    want
        (B, S) bool: which to encode (others are zeros).

    Returns
    -------
    torch.Tensor
        (B, S, C, h, w).
    """
    b, s = images.shape[:2]
    out: dict[tuple[int, int], torch.Tensor] = {}
    todo: list[tuple[int, int, str]] = []
    for i, j in zip(*np.nonzero(want.cpu().numpy())):
        k = cache.key(images[i, j])
        hit = cache.get(k)
        if hit is not None:
            out[(int(i), int(j))] = hit
        else:
            todo.append((int(i), int(j), k))
    for start in range(0, len(todo), batch):
        part = todo[start : start + batch]
        x = torch.stack([images[i, j] for i, j, _ in part])
        e = model.encode_slices(x)
        for (i, j, k), v in zip(part, e):
            out[(i, j)] = v
            cache.put(k, v)
    a = model.cfg.arch
    emb = torch.zeros((b, s, a.prompt_dim, a.embed_size, a.embed_size), dtype=torch.float32, device=images.device)
    for (i, j), v in out.items():
        emb[i, j] = v.to(torch.float32)
    return emb


@dataclass
class SelectionReport:
    """What the first pass decided (for the run record; no patient data)."""

    role: str = ""
    probed: int = 0
    selected: list[int] = field(default_factory=list)
    encoded: int = 0


def first_pass_role(sequences: list[str], seq_valid: np.ndarray) -> int | None:
    """Index of the first-pass sequence: the first of T1C, T2, T1 present on some slice, else any present."""
    present = seq_valid.any(axis=0)
    for role in FIRST_PASS_ROLES:
        if role in sequences and present[sequences.index(role)]:
            return sequences.index(role)
    idx = np.flatnonzero(present)
    return int(idx[0]) if len(idx) else None


def candidate_slices(found: dict[int, bool], z: int, stride: int) -> list[int]:
    """Slices within ``stride`` of a first-pass slice where the head found something."""
    keep = set()
    for k, hit in found.items():
        if hit:
            keep.update(range(max(0, k - stride), min(z, k + stride + 1)))
    return sorted(keep)
