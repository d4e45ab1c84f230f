"""Report-conditioned localisation head: per-sequence embeddings + report context -> box prompts.

A pretrained SAM decoder understands boxes. This head reads the per-sequence image embeddings
(so contrast between sequences, e.g. enhancement on T1C that T1 lacks, is visible to it), the
side of the patient's mid-line each cell lies on (soft left/right indicators from the
patient-coordinate map) and the report context (text + findings, FiLM), and draws a lesion heat map
on the embedding grid. Each connected group of positive cells, widened by a margin, becomes one box
prompt, so a slice with several lesions gets several boxes (their masks are united). Because the
side features are FiLM-modulated by the report, "left parotid" can suppress a look-alike in the
right gland where the image alone is ambiguous.

Shapes: embeddings (B, S, C, h, w), valid (B, S), coords (B, 2, H, W), context (B, hidden) ->
heat logits (B, 1, h, w).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

#: Scales of the soft left/right indicators tanh(s * x) the head gets (x: left-right offset from the
#: body centre in units of 100 mm). Only the side, no fine position: with a handful of real studies
#: a head given full (Fourier) coordinates memorised where the training lesions were instead of
#: what they look like (held-out Dice 0.00 on a tumour the other side of the brain from its twin).
SIDE_SCALES = (2.0, 8.0)


def side_features(coords: torch.Tensor) -> torch.Tensor:
    """(B, 2, h, w) patient-coordinate map -> (B, len(SIDE_SCALES), h, w) soft left/right indicators."""
    x = coords[:, :1]
    return torch.cat([torch.tanh(x * s) for s in SIDE_SCALES], dim=1)


class BoxLocaliser(nn.Module):
    """Heat-map head on the per-sequence embeddings.

    Parameters
    ----------
    dim
        Channel count C of each sequence's embedding.
    hidden
        Width of the report context vector.
    num_sequences
        S, the model's sequences (a missing one is zeroed and flagged).
    width
        Hidden channels of the head.
    """

    def __init__(self, dim: int, hidden: int, num_sequences: int, width: int = 32) -> None:
        super().__init__()
        self.width = width
        self.reduce = nn.Conv2d(dim, width, 1)  # shared by the sequences
        self.seq_mix = nn.Conv2d(num_sequences * (width + 1), width, 1)
        self.coord = nn.Conv2d(len(SIDE_SCALES), width, 1)
        self.film = nn.Linear(hidden, 2 * width)
        self.net = nn.Sequential(
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=2, dilation=2),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=4, dilation=4),
            nn.GELU(),
            nn.Conv2d(width, 1, 1),
        )
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, emb: torch.Tensor, valid: torch.Tensor, coords: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """emb (B, S, C, h, w), valid (B, S) bool, coords (B, 2, H, W), ctx (B, hidden) -> (B, 1, h, w)."""
        b, s, c, h, w = emb.shape
        v = valid.to(torch.bool)
        r = self.reduce(emb.reshape(b * s, c, h, w)).reshape(b, s, self.width, h, w)
        r = torch.where(v[:, :, None, None, None], r, torch.zeros((), dtype=r.dtype, device=r.device))
        flags = v.to(r.dtype)[:, :, None, None, None].expand(b, s, 1, h, w)
        x = self.seq_mix(torch.cat([r, flags], dim=2).reshape(b, s * (self.width + 1), h, w))
        crd = coords.to(x.dtype)
        if tuple(crd.shape[-2:]) != (h, w):
            crd = F.adaptive_avg_pool2d(crd, (h, w))
        x = x + self.coord(side_features(crd))
        gamma, beta = self.film(ctx.to(x.dtype)).chunk(2, dim=1)
        return self.net(x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None])


def _pad_box(box: np.ndarray, img_size: int, margin: float, min_pad: float) -> np.ndarray:
    size = np.clip(box[2:] - box[:2], 0, None)
    pad = size * margin + min_pad
    return np.clip(np.concatenate([box[:2] - pad, box[2:] + pad]), 0, img_size - 1)


def boxes_from_heat(
    heat: torch.Tensor, img_size: int, threshold: float = 0.5, margin: float = 0.1, min_pad: float = 4.0, max_boxes: int = 1, min_cells: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Box prompts from heat-map logits: one per connected group of positive cells.

    Parameters
    ----------
    heat
        (B, 1, h, w) logits.
    img_size
        Input size in pixels (boxes are in input-pixel coordinates, SAM's convention).
    threshold
        Probability above which a cell counts as lesion.
    margin, min_pad
        Each box grows by ``margin`` of its size plus ``min_pad`` pixels on each side (LiteMedSAM
        was trained on boxes perturbed by a few pixels).
    max_boxes
        At most this many boxes per slice: the groups with the highest summed probability; with 1,
        one box around every positive cell.
    min_cells
        Groups smaller than this many cells are ignored (unless it is the only one).

    Returns
    -------
    tuple of torch.Tensor
        boxes (B, M, 4) float ``x0, y0, x1, y1`` (M = max_boxes) and valid (B, M) bool; a slice
        with no valid box has no lesion by the head's account.
    """
    from scipy import ndimage

    b, _, h, w = heat.shape
    prob = torch.sigmoid(heat[:, 0].float()).detach().cpu().numpy()
    sy, sx = img_size / h, img_size / w
    boxes = np.zeros((b, max_boxes, 4), np.float32)
    ok = np.zeros((b, max_boxes), bool)
    for i in range(b):
        pos = prob[i] > threshold
        if not pos.any():
            continue
        if max_boxes == 1:
            groups = [np.nonzero(pos)]
        else:
            lab, n = ndimage.label(pos, structure=np.ones((3, 3)))
            score = ndimage.sum_labels(prob[i], lab, range(1, n + 1))
            size = ndimage.sum_labels(pos, lab, range(1, n + 1))
            order = [j for j in np.argsort(-score) if size[j] >= min_cells] or [int(np.argmax(score))]
            groups = [np.nonzero(lab == j + 1) for j in order[:max_boxes]]
        for m, (ys, xs) in enumerate(groups):
            raw = np.array([xs.min() * sx, ys.min() * sy, (xs.max() + 1) * sx, (ys.max() + 1) * sy], np.float32)
            boxes[i, m] = _pad_box(raw, img_size, margin, min_pad)
            ok[i, m] = True
    return torch.from_numpy(boxes).to(heat.device), torch.from_numpy(ok).to(heat.device)


def component_boxes(mask: np.ndarray, max_boxes: int = 8) -> list[np.ndarray]:
    """Tight ``x0, y0, x1, y1`` boxes of the 2-D connected components of a (H, W) mask, largest first."""
    from scipy import ndimage

    lab, n = ndimage.label(np.asarray(mask) > 0.5, structure=np.ones((3, 3)))
    if n == 0:
        return []
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, range(1, n + 1))
    out = []
    for j in np.argsort(-sizes)[:max_boxes]:
        sl = ndimage.find_objects((lab == j + 1).astype(np.int32))[0]
        out.append(np.array([sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1], np.float32))
    return out
