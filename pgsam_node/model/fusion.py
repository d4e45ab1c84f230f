"""Cross-sequence attention: fuse per-sequence image embeddings into one embedding."""

from __future__ import annotations

import torch
from torch import nn


class CrossSequenceAttention(nn.Module):
    """Fuse S per-sequence embeddings with attention across sequences at every position.

    At every embedding position the S sequence vectors (plus a learned per-sequence embedding)
    first attend to each other, then a learned query pools them into one vector. Missing
    sequences are removed twice: their vectors are replaced by zeros before anything reads them,
    and they are masked out as attention keys, so whatever a missing channel holds cannot change
    the output.

    Parameters
    ----------
    dim
        Channel count C of the embeddings.
    num_sequences
        Maximum number of sequences S (one learned embedding each, in configuration order).
    num_heads
        Attention heads.
    identity_init
        Start as the mean of the present sequences (zero sequence embeddings and zero output
        projections of both attentions), so a pretrained decoder sees its encoder's embedding unchanged at first.
    attn_dim
        Width of the attention (0 = ``dim``). A smaller width projects the tokens down first
        (``down``) and back up through ``proj``: at a 64 x 64 embedding (4,096 positions per slice)
        full-width attention dominates a CPU training step, and three tokens per position need
        little width to weigh each other.
    """

    def __init__(self, dim: int, num_sequences: int, num_heads: int = 4, identity_init: bool = False, attn_dim: int = 0) -> None:
        super().__init__()
        a = attn_dim or dim
        self.num_sequences = num_sequences
        self.seq_embed = nn.Parameter(torch.zeros(num_sequences, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, a) if a != dim else None
        self.self_attn = nn.MultiheadAttention(a, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(a)
        self.query = nn.Parameter(torch.zeros(1, 1, a))
        self.pool_attn = nn.MultiheadAttention(a, num_heads, batch_first=True)
        self.proj = nn.Linear(a, dim)
        nn.init.trunc_normal_(self.seq_embed, std=0.02)
        nn.init.trunc_normal_(self.query, std=0.02)
        if identity_init:
            nn.init.zeros_(self.seq_embed)
            nn.init.zeros_(self.self_attn.out_proj.weight)
            nn.init.zeros_(self.self_attn.out_proj.bias)
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Fuse.

        Parameters
        ----------
        x
            (B, S, C, H, W) per-sequence embeddings.
        valid
            (B, S) bool, False where a sequence is missing.

        Returns
        -------
        torch.Tensor
            (B, C, H, W) fused embedding.
        """
        b, s, c, h, w = x.shape
        if s > self.num_sequences:
            raise ValueError(f"got {s} sequences, the fusion was built for {self.num_sequences}")
        valid = valid.to(torch.bool)
        # A sample with no valid sequence would make every attention row empty (NaN); treat its
        # (zeroed) sequences as present so the output is defined — callers refuse such input.
        valid = valid | ~valid.any(dim=1, keepdim=True)
        x = torch.where(valid[:, :, None, None, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        tokens = x.permute(0, 3, 4, 1, 2).reshape(b * h * w, s, c) + self.seq_embed[:s].to(x.dtype)
        pad = (~valid)[:, None, :].expand(b, h * w, s).reshape(b * h * w, s)
        # Residual path: the mean of the present sequences, so one sequence passes through.
        wts = (~pad).to(tokens.dtype)[..., None]
        if self.down is None:
            t = self.norm1(tokens)
            tokens = tokens + self.self_attn(t, t, t, key_padding_mask=pad, need_weights=False)[0]
            small = tokens
        else:
            small = self.down(self.norm1(tokens))
            small = small + self.self_attn(small, small, small, key_padding_mask=pad, need_weights=False)[0]
        t = self.norm2(small)
        q = self.query.to(t.dtype).expand(b * h * w, 1, t.shape[-1])
        pooled = self.pool_attn(q, t, t, key_padding_mask=pad, need_weights=False)[0][:, 0]
        mean = (tokens * wts).sum(1) / wts.sum(1).clamp_min(1.0)
        out = mean + self.proj(pooled)
        return out.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
