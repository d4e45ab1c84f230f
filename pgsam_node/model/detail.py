"""Full-resolution detail features for the mask decoder.

SAM predicts masks at 4x the embedding resolution (256 px for a 1024 px input). With the small
CPU preset (128 px input, 8 px patches) that is 64 px, coarse for lesions of 8-15 px. This module
(a few 3x3 convolutions on the centre slices of the sequences) adds full-resolution features to
SAM's upscaled mask embedding before the hypernetwork product, as HQ-SAM does with early ViT
features. Its last layer starts at zero, so a model built from an official SAM checkpoint starts
out exactly as SAM. Missing sequences are zeroed before the convolutions.
"""

from __future__ import annotations

import torch
from torch import nn


class DetailEncoder(nn.Module):
    """(B, S, H, W) centre slices -> (B, out_channels, H, W) features.

    Parameters
    ----------
    num_sequences
        S input channels.
    channels
        Hidden width.
    out_channels
        Must equal the decoder's upscaled channel count (``prompt_dim // 8``).
    """

    def __init__(self, num_sequences: int, channels: int, out_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(num_sequences, channels, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GELU(),
        )
        self.out = nn.Conv2d(channels, out_channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x (B, S, H, W) in [0, 1], valid (B, S) bool -> (B, out_channels, H, W)."""
        x = torch.where(valid[:, :, None, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        return self.out(self.net(x))
