"""Loss of a preset with a localisation head (``litemedsam``): mask Dice + BCE with teacher-forced
boxes, plus heat-map Dice + BCE against the mask pooled to the embedding grid.

Training recipe this serves: the pretrained encoder frozen (embeddings cached, see
:mod:`.embed_cache`), fusion, prompt generator, box head, detail branch and decoder trained with
AdamW. During training the decoder sees boxes from the reference mask, jittered by a few pixels
(as LiteMedSAM was trained), so it learns to use the report tokens on top of a box; the box head
learns where the box goes from the fused features and the report.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from pgsam_node.model.box_head import boxes_from_masks


def soft_dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of BCE and (1 - soft Dice) over a batch; logits and target (B, 1, H, W)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3))
    dice = (2 * inter + 1) / (p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
    return bce + (1 - dice).mean()


def jitter_boxes(boxes: torch.Tensor, img_size: int, max_px: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """(B, 4) boxes moved outwards by 0..max_px pixels per side, clipped to the image."""
    d = torch.rand(boxes.shape, generator=gen, device="cpu").to(boxes.device) * max_px
    sign = torch.tensor([-1.0, -1.0, 1.0, 1.0], device=boxes.device)
    return (boxes + sign * d).clamp(0, img_size - 1)


def box_head_loss(model, batch: dict[str, torch.Tensor], jitter_px: float = 5.0, gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss on one batch.

    Parameters
    ----------
    model
        A PG-SAM with ``box_head``.
    batch
        ``images`` (B, S, K, H, W), ``valid`` (B, S), ``coords`` (B, 2, H, W), ``mask`` (B, 1, H, W),
        optional ``embeddings`` (B, S, C, h, w) (cached encoder output), ``text_emb`` (B, T),
        ``text_valid`` (B,), ``findings`` (B, F).

    Returns
    -------
    tuple
        (scalar loss, {"mask": .., "heat": ..}).
    """
    mask = batch["mask"]
    boxes, found = boxes_from_masks(mask[:, 0])
    boxes = jitter_boxes(boxes, model.img_size, jitter_px, gen)
    out = model.forward_parts(
        batch["images"], batch["valid"], batch["coords"], batch.get("text_emb"), batch.get("text_valid"), batch.get("findings"),
        boxes=boxes, embeddings=batch.get("embeddings"),
    )
    heat_t = F.adaptive_max_pool2d(mask, out["heat"].shape[-2:])
    l_heat = soft_dice_bce(out["heat"], heat_t)
    # Slices without lesion get no box at inference (empty mask), so only lesion slices train the decoder.
    l_mask = soft_dice_bce(out["masks"][found], mask[found]) if bool(found.any()) else out["masks"].sum() * 0
    return l_mask + l_heat, {"mask": float(l_mask.detach()), "heat": float(l_heat.detach())}
