"""Report-guided prompt generator: report text + structured findings -> SAM prompts.

Replaces hand-placed points and boxes. The text embedding (a frozen sentence encoder, see
:mod:`.text_encoder`) and the findings vector (:func:`pgsam_node.findings.findings_vector`) are
mapped to a context vector; the context yields

* sparse prompt tokens (B, N, C): learned base tokens plus a context-dependent offset, and
* a dense prompt (B, C, H, W): features of a patient-coordinate map (left/right and
  anterior/posterior in LPS millimetres, see :mod:`.coords`) modulated by the context (FiLM), so
  "left" in the report can select the patient's left whatever the image orientation.

With ``use_text=False`` (the no-text ablation) the context is a learned constant: the prompts
become learned default tokens and a learned, report-independent spatial prior.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pgsam_node.findings import FINDINGS_DIM

#: Coordinate channels of the dense prompt input (LR, AP), see :func:`.coords.patient_coordinate_map`.
COORD_CHANNELS = 2
#: Sine/cosine frequencies applied to each coordinate channel.
COORD_FREQS = (1.0, 2.0, 4.0)


def fourier_features(coords: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) coordinates -> (B, K * (1 + 2 * len(COORD_FREQS)), H, W) features."""
    feats = [coords]
    for f in COORD_FREQS:
        feats.append(torch.sin(coords * (f * torch.pi / 2)))
        feats.append(torch.cos(coords * (f * torch.pi / 2)))
    return torch.cat(feats, dim=1)


class ReportPromptGenerator(nn.Module):
    """Produce SAM sparse and dense prompts from the report.

    Parameters
    ----------
    prompt_dim
        Prompt channel count C (equals the decoder's transformer dimension).
    text_dim
        Size of the sentence embedding.
    num_tokens
        Number N of sparse tokens.
    hidden
        Width of the context MLP.
    use_text
        False for the no-text ablation (learned constant context).
    zero_init
        Start with zero sparse tokens and a zero dense prompt; used where the tokens are added to
        a pretrained decoder's box tokens (``litemedsam``), so the decoder starts unchanged.
    """

    def __init__(self, prompt_dim: int, text_dim: int = 384, num_tokens: int = 4, hidden: int = 256, use_text: bool = True, zero_init: bool = False) -> None:
        super().__init__()
        self.prompt_dim = prompt_dim
        self.num_tokens = num_tokens
        self.use_text = use_text
        self.text_dim = text_dim
        if use_text:
            # Learned stand-in for "no report text" (text dropout in training, None at inference).
            self.null_text = nn.Parameter(torch.zeros(text_dim))
            self.context = nn.Sequential(
                nn.Linear(text_dim + FINDINGS_DIM, hidden),
                nn.GELU(),
                nn.Linear(hidden, hidden),
                nn.GELU(),
            )
        else:
            self.default_context = nn.Parameter(torch.zeros(hidden))
        self.base_tokens = nn.Parameter(torch.randn(num_tokens, prompt_dim) * 0.02)
        self.token_offset = nn.Linear(hidden, num_tokens * prompt_dim)
        coord_in = COORD_CHANNELS * (1 + 2 * len(COORD_FREQS))
        self.coord_net = nn.Sequential(
            nn.Conv2d(coord_in, prompt_dim, 1),
            nn.GELU(),
            nn.Conv2d(prompt_dim, prompt_dim, 1),
        )
        self.film = nn.Linear(hidden, 2 * prompt_dim)
        self.dense_out = nn.Sequential(nn.GELU(), nn.Conv2d(prompt_dim, prompt_dim, 1))
        nn.init.zeros_(self.token_offset.weight)
        nn.init.zeros_(self.token_offset.bias)
        if zero_init:
            nn.init.zeros_(self.base_tokens)
            nn.init.zeros_(self.dense_out[1].weight)
            nn.init.zeros_(self.dense_out[1].bias)

    def context_vector(self, text_emb: torch.Tensor | None, text_valid: torch.Tensor | None, findings: torch.Tensor | None, batch: int) -> torch.Tensor:
        """(B, hidden) context from text (B, T), text_valid (B,) and findings (B, FINDINGS_DIM)."""
        if not self.use_text:
            return self.default_context[None].expand(batch, -1)
        dev = self.null_text.device
        dtype = self.null_text.dtype
        if text_emb is None:
            text_emb = self.null_text[None].expand(batch, -1)
        else:
            text_emb = text_emb.to(device=dev, dtype=dtype)
            if text_valid is not None:
                text_emb = torch.where(text_valid.to(dev)[:, None], text_emb, self.null_text[None])
        if findings is None:
            from pgsam_node.findings import findings_vector

            findings = torch.tensor([findings_vector(None)] * batch, device=dev, dtype=dtype)
        return self.context(torch.cat([text_emb, findings.to(device=dev, dtype=dtype)], dim=1))

    def forward(
        self,
        coords: torch.Tensor,
        embed_hw: tuple[int, int],
        text_emb: torch.Tensor | None = None,
        text_valid: torch.Tensor | None = None,
        findings: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Build prompts.

        Parameters
        ----------
        coords
            (B, 2, H, W) patient coordinate map (any resolution; pooled to ``embed_hw``).
        embed_hw
            (h, w) of the image embedding.
        text_emb, text_valid, findings
            (B, T) sentence embeddings, (B,) bool whether a text exists, (B, FINDINGS_DIM).

        Returns
        -------
        tuple of torch.Tensor
            sparse (B, N, C) and dense (B, C, h, w) prompt embeddings.
        """
        b = coords.shape[0]
        ctx = self.context_vector(text_emb, text_valid, findings, b)
        sparse = self.base_tokens[None] + self.token_offset(ctx).view(b, self.num_tokens, self.prompt_dim)
        c = coords.to(ctx.dtype)
        if tuple(c.shape[-2:]) != tuple(embed_hw):
            c = F.adaptive_avg_pool2d(c, embed_hw)
        feat = self.coord_net(fourier_features(c))
        gamma, beta = self.film(ctx).chunk(2, dim=1)
        dense = self.dense_out(feat * (1 + gamma[:, :, None, None]) + beta[:, :, None, None])
        return sparse, dense
