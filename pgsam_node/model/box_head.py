"""Report-conditioned localisation head: fused embedding + report context -> one box per slice.

A pretrained SAM decoder understands boxes. This head turns the fused image embedding, the
patient-coordinate map and the report context (text + findings, FiLM) into a lesion heat map on
the embedding grid; the box around its positive cells, widened by a margin, becomes the box prompt
of the slice. Because the coordinate features are FiLM-modulated by the report, "left parotid" can
suppress a look-alike in the right gland where the image alone is ambiguous.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pgsam_node.model.prompt_generator import COORD_CHANNELS, COORD_FREQS, fourier_features


class BoxLocaliser(nn.Module):
    """Heat-map head on the fused embedding.

    Parameters
    ----------
    dim
        Channel count C of the fused embedding.
    hidden
        Width of the report context vector.
    width
        Hidden channels of the head.
    """

    def __init__(self, dim: int, hidden: int, width: int = 64) -> None:
        super().__init__()
        coord_in = COORD_CHANNELS * (1 + 2 * len(COORD_FREQS))
        self.reduce = nn.Conv2d(dim, width, 1)
        self.coord = nn.Conv2d(coord_in, width, 1)
        self.film = nn.Linear(hidden, 2 * width)
        self.net = nn.Sequential(nn.GELU(), nn.Conv2d(width, width, 3, padding=1), nn.GELU(), nn.Conv2d(width, 1, 1))
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, fused: torch.Tensor, coords: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """fused (B, C, h, w), coords (B, 2, H, W), ctx (B, hidden) -> heat logits (B, 1, h, w)."""
        hw = tuple(fused.shape[-2:])
        c = coords.to(fused.dtype)
        if tuple(c.shape[-2:]) != hw:
            c = F.adaptive_avg_pool2d(c, hw)
        x = self.reduce(fused) + self.coord(fourier_features(c))
        gamma, beta = self.film(ctx.to(x.dtype)).chunk(2, dim=1)
        return self.net(x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None])


def boxes_from_heat(heat: torch.Tensor, img_size: int, threshold: float = 0.5, margin: float = 0.1, min_pad: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Box prompts from heat-map logits.

    Parameters
    ----------
    heat
        (B, 1, h, w) logits.
    img_size
        Input size in pixels (the box is in input-pixel coordinates, SAM's convention).
    threshold
        Probability above which a cell counts as lesion.
    margin, min_pad
        The box grows by ``margin`` of its size plus ``min_pad`` pixels on each side (LiteMedSAM
        was trained on boxes perturbed by a few pixels).

    Returns
    -------
    tuple of torch.Tensor
        boxes (B, 4) float ``x0, y0, x1, y1`` and found (B,) bool (False: no cell above threshold).
    """
    b, _, h, w = heat.shape
    pos = torch.sigmoid(heat[:, 0].float()) > threshold  # (B, h, w)
    rows = pos.any(dim=2)
    cols = pos.any(dim=1)
    found = rows.any(dim=1)
    ar_h = torch.arange(h, device=heat.device, dtype=torch.float32)
    ar_w = torch.arange(w, device=heat.device, dtype=torch.float32)
    big = 1e9
    y0 = torch.where(rows, ar_h, big).amin(dim=1)
    y1 = torch.where(rows, ar_h, -big).amax(dim=1) + 1
    x0 = torch.where(cols, ar_w, big).amin(dim=1)
    x1 = torch.where(cols, ar_w, -big).amax(dim=1) + 1
    sy, sx = img_size / h, img_size / w
    box = torch.stack([x0 * sx, y0 * sy, x1 * sx, y1 * sy], dim=1)
    size = (box[:, 2:] - box[:, :2]).clamp_min(0)
    pad = size * margin + min_pad
    box = torch.cat([box[:, :2] - pad, box[:, 2:] + pad], dim=1).clamp(0, img_size - 1)
    box = torch.where(found[:, None], box, torch.zeros_like(box))
    return box, found


def boxes_from_masks(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight boxes of binary masks (B, H, W) -> (B, 4) ``x0, y0, x1, y1`` pixels, found (B,)."""
    b, h, w = masks.shape
    pos = masks > 0.5
    rows, cols = pos.any(dim=2), pos.any(dim=1)
    found = rows.any(dim=1)
    ar_h = torch.arange(h, device=masks.device, dtype=torch.float32)
    ar_w = torch.arange(w, device=masks.device, dtype=torch.float32)
    big = 1e9
    box = torch.stack(
        [
            torch.where(cols, ar_w, big).amin(dim=1),
            torch.where(rows, ar_h, big).amin(dim=1),
            torch.where(cols, ar_w, -big).amax(dim=1),
            torch.where(rows, ar_h, -big).amax(dim=1),
        ],
        dim=1,
    )
    return torch.where(found[:, None], box, torch.zeros_like(box)), found
