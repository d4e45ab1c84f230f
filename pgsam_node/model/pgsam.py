"""PG-SAM: shared SAM image encoder per sequence -> cross-sequence attention -> report prompts
-> SAM mask decoder."""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, PromptEncoder, TwoWayTransformer
from torch import nn
from torch.nn import functional as F

from pgsam_node.model.box_head import BoxLocaliser, boxes_from_heat
from pgsam_node.model.decoder import BatchedMaskDecoder
from pgsam_node.model.detail import DetailEncoder
from pgsam_node.model.fusion import CrossSequenceAttention
from pgsam_node.model.presets import ModelConfig
from pgsam_node.model.prompt_generator import ReportPromptGenerator

# SAM's pixel normalisation (0-255 RGB statistics); inputs in [0, 1] are scaled to it so the
# official encoder weights see the range they were trained on.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

#: Submodules whose parameter names follow the official SAM checkpoint layout.
SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


class PGSAM(nn.Module):
    """Report-guided multi-sequence Segment Anything.

    Parameters
    ----------
    cfg
        Model configuration (architecture preset, sequences, use_text, 2.5-D context...).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        a = cfg.arch
        self.cfg = cfg
        self.num_sequences = len(cfg.sequences)
        self.context_slices = cfg.context_slices
        self.image_encoder = _build_image_encoder(a)
        e = a.embed_size
        self.prompt_encoder = PromptEncoder(
            embed_dim=a.prompt_dim,
            image_embedding_size=(e, e),
            input_image_size=(a.img_size, a.img_size),
            mask_in_chans=16,
        )
        self.mask_decoder = BatchedMaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=a.decoder_depth, embedding_dim=a.prompt_dim, mlp_dim=a.decoder_mlp_dim, num_heads=a.decoder_heads),
            transformer_dim=a.prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=a.iou_head_hidden_dim,
        )
        pretrained = bool(a.pretrained)
        self.fusion = CrossSequenceAttention(a.prompt_dim, self.num_sequences, a.fusion_heads, identity_init=pretrained, attn_dim=a.fusion_dim)
        self.prompt_generator = ReportPromptGenerator(
            a.prompt_dim, text_dim=cfg.text_dim, num_tokens=a.num_sparse_tokens, hidden=a.context_hidden, use_text=cfg.use_text, zero_init=pretrained
        )
        self.detail = DetailEncoder(self.num_sequences, a.detail_channels, a.prompt_dim // 8) if a.detail_channels else None
        self.box_head = BoxLocaliser(a.prompt_dim, a.context_hidden, self.num_sequences) if a.box_head else None
        if a.encoder == "tinyvit":
            # LiteMedSAM was trained on [0, 1] images with no further normalisation.
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        else:
            mean, std = tuple(m / 255.0 for m in PIXEL_MEAN), tuple(v / 255.0 for v in PIXEL_STD)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        if a.pretrained:
            self.load_base_weights()

    def load_base_weights(self) -> None:
        """Load the preset's packaged pretrained weights into the SAM parts (official key layout)."""
        from pgsam_node.model.weights_io import _load_strict

        if self.cfg.arch.pretrained != "litemedsam":
            raise ValueError(f"unknown pretrained base {self.cfg.arch.pretrained!r}")
        from pgsam_node.model.litemedsam import litemedsam_state

        _load_strict(self, litemedsam_state(), "packaged LiteMedSAM checkpoint", only_prefixes=SAM_PREFIXES)

    @property
    def img_size(self) -> int:
        return self.cfg.arch.img_size

    def encode_slices(self, x: torch.Tensor) -> torch.Tensor:
        """Encode single-sequence inputs: (P, K, H, W) in [0, 1] (K = 1 or 3 context slices) -> (P, C, h, w)."""
        p, k, h, w = x.shape
        if k == 1:
            x = x.expand(p, 3, h, w)
        elif k != 3:
            raise ValueError(f"expected 1 or 3 context slices per sequence, got {k}")
        x = (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)
        return self.image_encoder(x)

    def encode(self, images: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Encode the present sequences with the shared encoder.

        Parameters
        ----------
        images
            (B, S, K, H, W) in [0, 1]; K = context slices (1 or 3), H = W = img_size.
        valid
            (B, S) bool.

        Returns
        -------
        torch.Tensor
            (B, S, C, h, w); zeros for missing sequences (they are never encoded).
        """
        b, s = images.shape[:2]
        valid = valid.to(torch.bool)
        emb = self.encode_slices(images[valid])  # (P, C, h, w), P = present sequences
        out = emb.new_zeros((b, s) + tuple(emb.shape[1:]))
        out[valid] = emb
        return out

    def forward(
        self,
        images: torch.Tensor,
        valid: torch.Tensor,
        coords: torch.Tensor,
        text_emb: torch.Tensor | None = None,
        text_valid: torch.Tensor | None = None,
        findings: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Segment a batch of slices.

        Parameters
        ----------
        images
            (B, S, K, H, W) normalised slices in [0, 1] for the S configured sequences.
        valid
            (B, S) bool: which sequences exist (a missing one does not affect the output).
        coords
            (B, 2, H, W) patient coordinate map (:func:`.coords.patient_coordinate_map`).
        text_emb
            (B, T) sentence embeddings of the reports (ignored without text).
        text_valid
            (B,) bool: whether a report text exists for the sample.
        findings
            (B, FINDINGS_DIM) findings vectors.
        boxes
            Optional (B, 4) box prompts ``x0, y0, x1, y1`` in input pixels (SAM's convention);
            without them a model with a localisation head proposes its own (up to
            ``arch.max_boxes`` per slice, masks united).
        embeddings
            Optional (B, S, C, h, w) precomputed :meth:`encode` output (cached embeddings of a
            frozen encoder); ``images`` then only feed the detail branch.

        Returns
        -------
        torch.Tensor
            (B, 1, H, W) mask logits.
        """
        return self.forward_parts(images, valid, coords, text_emb, text_valid, findings, boxes, embeddings)["masks"]

    def forward_parts(
        self,
        images: torch.Tensor,
        valid: torch.Tensor,
        coords: torch.Tensor,
        text_emb: torch.Tensor | None = None,
        text_valid: torch.Tensor | None = None,
        findings: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        embeddings: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """:meth:`forward` with its intermediate outputs (for training).

        Returns
        -------
        dict
            ``masks`` (B, 1, H, W) logits; with a localisation head also ``heat`` (B, 1, h, w)
            logits and ``boxes`` (B, M, 4) used as prompts; when the head proposed them, ``found``
            (B,) bool (False: the head saw no lesion; the mask is then empty, logits -20).
        """
        if images.shape[1] != self.num_sequences:
            raise ValueError(f"expected {self.num_sequences} sequences, got {images.shape[1]}")
        emb = self.encode(images, valid) if embeddings is None else embeddings
        fused = self.fusion(emb, valid)
        hw = tuple(fused.shape[-2:])
        b = fused.shape[0]
        out: dict[str, torch.Tensor] = {}
        sparse, dense = self.prompt_generator(coords, hw, text_emb, text_valid, findings)
        # Start from SAM's "no mask prompt" embedding so a pretrained decoder sees familiar input.
        dense = dense + self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).to(dense.dtype)
        detail = None
        if self.detail is not None:
            centre = images[:, :, images.shape[2] // 2]  # (B, S, H, W) centre slice of each sequence
            detail = self.detail(centre, valid.to(torch.bool))
        box_valid = None
        if self.box_head is not None:
            ctx = self.prompt_generator.context_vector(text_emb, text_valid, findings, b)
            heat = self.box_head(emb, valid, coords, ctx)
            out["heat"] = heat
            if boxes is None:
                boxes, box_valid = boxes_from_heat(heat, self.img_size, max_boxes=self.cfg.arch.max_boxes)
        if boxes is not None and boxes.dim() == 2:
            boxes = boxes[:, None]  # (B, 4) -> one box per slice
        if boxes is not None:
            out["boxes"] = boxes
        if box_valid is None:
            masks, iou = self._decode(fused, sparse, dense, detail, boxes)
            out["iou"] = iou
        else:
            # One decoder pass per proposed box, united by the maximum logit; a slice whose head
            # found nothing gets an empty mask (logits -20) without running the decoder.
            bi, mi = torch.nonzero(box_valid, as_tuple=True)
            masks = torch.full((b, 1) + tuple(images.shape[-2:]), -20.0, dtype=fused.dtype, device=fused.device)
            if len(bi):
                per_box, _ = self._decode(fused[bi], sparse[bi], dense[bi], None if detail is None else detail[bi], boxes[bi, mi][:, None])
                for j, i in enumerate(bi.tolist()):
                    masks[i] = torch.maximum(masks[i], per_box[j].to(masks.dtype))
            out["found"] = box_valid.any(dim=1)
        out["masks"] = masks
        return out

    def _decode(self, fused: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor, detail: torch.Tensor | None,
                boxes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's decoder on (P, C, h, w) embeddings with (P, N, C) report tokens and optional
        (P, 1, 4) box prompts -> (P, 1, H, W) mask logits at input resolution, and SAM's predicted
        IoU of that mask, (P,)."""
        p = fused.shape[0]
        if boxes is not None:
            # SAM's box prompt (two corner tokens); the report tokens are added to them so the
            # token count, and hence a pretrained decoder's attention, is unchanged at init.
            box_tokens, _ = self.prompt_encoder(points=None, boxes=boxes.to(fused.dtype).reshape(p, 1, 4), masks=None)
            n = min(sparse.shape[1], box_tokens.shape[1])
            sparse = torch.cat([box_tokens[:, :n] + sparse[:, :n].to(box_tokens.dtype), box_tokens[:, n:], sparse[:, n:]], dim=1)
        pe = self.prompt_encoder.get_dense_pe().to(fused.dtype)
        masks, iou = self.mask_decoder.predict_masks(fused, pe, sparse.to(fused.dtype), dense.to(fused.dtype), detail=detail)
        masks = masks[:, :1]  # single-mask output (SAM's first mask token)
        size = (self.img_size, self.img_size)
        if tuple(masks.shape[-2:]) != size:
            masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        return masks, iou[:, 0]


def _build_image_encoder(a) -> nn.Module:
    """The preset's image encoder: (P, 3, img, img) -> (P, prompt_dim, img/patch, img/patch)."""
    if a.encoder == "tinyvit":
        from pgsam_node.model.litemedsam import build_tinyvit_encoder

        if (a.img_size, a.prompt_dim) != (256, 256):
            raise ValueError("the TinyViT encoder is built for 256 px input and a 256-channel embedding")
        return build_tinyvit_encoder()
    if a.encoder != "vit":
        raise ValueError(f"unknown image encoder {a.encoder!r}")
    return ImageEncoderViT(
        img_size=a.img_size,
        patch_size=a.patch_size,
        in_chans=3,
        embed_dim=a.embed_dim,
        depth=a.depth,
        num_heads=a.num_heads,
        mlp_ratio=a.mlp_ratio,
        out_chans=a.prompt_dim,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        act_layer=nn.GELU,
        use_abs_pos=True,
        use_rel_pos=a.use_rel_pos,
        rel_pos_zero_init=True,
        window_size=a.window_size,
        global_attn_indexes=a.global_attn_indexes,
    )


def build_model(cfg: ModelConfig) -> PGSAM:
    """Build an (untrained) PG-SAM from a configuration."""
    return PGSAM(cfg)
