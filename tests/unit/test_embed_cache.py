"""Embedding cache: computed once per slice content, keyed by encoder identity and input bytes."""

from __future__ import annotations

import numpy as np
import torch

from pgsam_node.training.embed_cache import EmbeddingCache


def test_cache_computes_each_slice_once(tmp_path):
    torch.manual_seed(0)
    enc = torch.nn.Conv2d(3, 4, 4, stride=4)  # a small real encoder: (B, 3, 16, 16) -> (B, 4, 4, 4)
    calls = []

    def encode(x):
        calls.append(x.shape[0])
        return enc(x)

    x = np.random.default_rng(0).random((5, 3, 16, 16)).astype(np.float32)
    cache = EmbeddingCache(tmp_path / "c", "enc-a")
    first = cache.get_or_compute(x, encode, batch_size=2)
    assert first.shape == (5, 4, 4, 4) and first.dtype == np.float16 and calls == [2, 2, 1]
    with torch.no_grad():
        assert np.allclose(first, enc(torch.from_numpy(x)).numpy(), atol=1e-2)
    x2 = x.copy()
    x2[3, 0, 0, 0] += 0.5  # one changed slice
    again = cache.get_or_compute(x2, encode)
    assert calls == [2, 2, 1, 1] and cache.hits == 4 and cache.misses == 6
    assert np.array_equal(again[[0, 1, 2, 4]], first[[0, 1, 2, 4]]) and not np.array_equal(again[3], first[3])
    other = EmbeddingCache(tmp_path / "c", "enc-b")  # another encoder never reads enc-a's entries
    other.get_or_compute(x[:1], encode)
    assert calls[-1] == 1 and other.misses == 1
    assert not list((tmp_path / "c").rglob("*.tmp.npy"))
