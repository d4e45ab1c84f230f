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



def soft_dice_bce(logits: torch.Tensor, target: torch.Tensor, pos_weight: float = 1.0) -> torch.Tensor:
    """Mean of BCE (positives weighted by ``pos_weight``) and (1 - soft Dice) over a batch; logits and target (B, 1, H, W)."""
    pw = torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw)
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3))
    dice = (2 * inter + 1) / (p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
    return bce + (1 - dice).mean()


def jitter_boxes(boxes: torch.Tensor, img_size: int, max_px: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """(B, 4) boxes moved outwards by 0..max_px pixels per side, clipped to the image."""
    d = torch.rand(boxes.shape, generator=gen, device="cpu").to(boxes.device) * max_px
    sign = torch.tensor([-1.0, -1.0, 1.0, 1.0], device=boxes.device)
    return (boxes + sign * d).clamp(0, img_size - 1)


def teacher_boxes(mask: torch.Tensor, img_size: int, jitter_px: float, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One teacher-forced box per slice: a random 2-D lesion component's box, jittered outwards.

    Parameters
    ----------
    mask
        (B, 1, H, W) reference masks in [0, 1].

    Returns
    -------
    tuple of torch.Tensor
        boxes (B, 4), found (B,) bool (slice holds lesion) and the target (B, 1, H, W): the
        reference mask inside the box (another lesion outside it is not this prompt's answer).
    """
    import numpy as np

    from pgsam_node.model.box_head import component_boxes

    b, _, h, w = mask.shape
    arr = mask[:, 0].detach().cpu().numpy()
    boxes = torch.zeros(b, 4)
    found = torch.zeros(b, dtype=torch.bool)
    for i in range(b):
        comps = component_boxes(arr[i])
        if comps:
            j = int(torch.randint(len(comps), (1,), generator=gen))
            boxes[i] = torch.from_numpy(np.asarray(comps[j], np.float32))
            found[i] = True
    boxes = jitter_boxes(boxes, img_size, jitter_px, gen)
    yy = torch.arange(h, dtype=torch.float32)[None, :, None]
    xx = torch.arange(w, dtype=torch.float32)[None, None, :]
    inside = (xx >= boxes[:, 0, None, None].floor()) & (xx <= boxes[:, 2, None, None].ceil()) & (yy >= boxes[:, 1, None, None].floor()) & (
        yy <= boxes[:, 3, None, None].ceil())
    target = mask * inside[:, None].to(mask.device, mask.dtype)
    return boxes.to(mask.device), found.to(mask.device), target


#: Weight of lesion cells in the heat-map BCE: lesions cover a few per cent of a slice (MS plaques a
#: few cells), and an unweighted BCE teaches the head to say "nothing" everywhere.
HEAT_POS_WEIGHT = 10.0


def heat_loss(heat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Heat-map Dice + weighted BCE against the reference mask max-pooled to the embedding grid."""
    return soft_dice_bce(heat, F.adaptive_max_pool2d(mask, heat.shape[-2:]), pos_weight=HEAT_POS_WEIGHT)


def box_head_loss(model, batch: dict[str, torch.Tensor], jitter_px: float = 5.0, gen: torch.Generator | None = None,
                  decoder: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss on one batch.

    Parameters
    ----------
    model
        A PG-SAM with ``box_head``.
    batch
        ``images`` (B, S, K, H, W), ``valid`` (B, S), ``coords`` (B, 2, H, W), ``mask`` (B, 1, H, W),
        optional ``embeddings`` (B, S, C, h, w) (cached encoder output), ``text_emb`` (B, T),
        ``text_valid`` (B,), ``findings`` (B, F).
    decoder
        False: the localisation head alone (heat loss; no decoder pass, the cheap first stage).

    Returns
    -------
    tuple
        (scalar loss, {"mask": .., "heat": ..}).
    """
    mask = batch["mask"]
    if not decoder:
        emb = batch.get("embeddings")
        if emb is None:
            emb = model.encode(batch["images"], batch["valid"])
        ctx = model.prompt_generator.context_vector(batch.get("text_emb"), batch.get("text_valid"), batch.get("findings"), mask.shape[0])
        l_heat = heat_loss(model.box_head(emb, batch["valid"], batch["coords"], ctx), mask)
        return l_heat, {"mask": 0.0, "heat": float(l_heat.detach())}
    boxes, found, target = teacher_boxes(mask, model.img_size, jitter_px, gen)
    out = model.forward_parts(
        batch["images"], batch["valid"], batch["coords"], batch.get("text_emb"), batch.get("text_valid"), batch.get("findings"),
        boxes=boxes, embeddings=batch.get("embeddings"),
    )
    l_heat = heat_loss(out["heat"], mask)
    # Slices without lesion get no box at inference (empty mask), so only lesion slices train the decoder.
    l_mask = soft_dice_bce(out["masks"][found], target[found]) if bool(found.any()) else out["masks"].sum() * 0
    return l_mask + l_heat, {"mask": float(l_mask.detach()), "heat": float(l_heat.detach())}
