"""SAM's mask decoder, batched over images.

``segment_anything.modeling.MaskDecoder.predict_masks`` assumes one image and B prompts
(``repeat_interleave`` of the image embedding); here every image has its own prompts, so the
embedding is used as is. Parameter names are unchanged, so official ``mask_decoder.*`` weights load.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from segment_anything.modeling import MaskDecoder


class BatchedMaskDecoder(MaskDecoder):
    """:class:`segment_anything.modeling.MaskDecoder` with one prompt set per image."""

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        detail: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks.

        Parameters
        ----------
        image_embeddings
            (B, C, h, w) fused image embedding.
        image_pe
            (1, C, h, w) dense positional encoding (``PromptEncoder.get_dense_pe``).
        sparse_prompt_embeddings
            (B, N, C).
        dense_prompt_embeddings
            (B, C, h, w).
        detail
            Optional (B, C // 8, H, W) full-resolution features (:mod:`.detail`); the upscaled
            embedding is resized to (H, W) and the features added before the mask product.

        Returns
        -------
        tuple of torch.Tensor
            masks (B, M, 4h, 4w) logits (or (B, M, H, W) with ``detail``) and IoU predictions (B, M).
        """
        b = image_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(b, -1, -1).to(sparse_prompt_embeddings.dtype)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)
        src = image_embeddings + dense_prompt_embeddings
        pos_src = image_pe.expand(b, -1, -1, -1)
        _, c, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : (1 + self.num_mask_tokens), :]
        src = src.transpose(1, 2).reshape(b, c, h, w)
        upscaled = self.output_upscaling(src)
        if detail is not None:
            if tuple(detail.shape[-2:]) != tuple(upscaled.shape[-2:]):
                upscaled = F.interpolate(upscaled, size=detail.shape[-2:], mode="bilinear", align_corners=False)
            upscaled = upscaled + detail.to(upscaled.dtype)
        hyper_in = torch.stack([self.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in range(self.num_mask_tokens)], dim=1)
        _, c2, h2, w2 = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c2, h2 * w2)).reshape(b, -1, h2, w2)
        iou_pred = self.iou_prediction_head(iou_token_out)
        return masks, iou_pred
