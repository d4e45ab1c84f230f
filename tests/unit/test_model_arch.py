"""PG-SAM architecture: shapes, missing-sequence invariance, text dependence, presets."""

from __future__ import annotations

import pytest
import torch

from pgsam_node.errors import ModelError
from pgsam_node.findings import FINDINGS_DIM, Findings, findings_vector
from pgsam_node.model.fusion import CrossSequenceAttention
from pgsam_node.model.pgsam import build_model
from pgsam_node.model.presets import PRESETS, ModelConfig, get_preset

# A very small variant of the tiny preset so the tests stay fast on a shared CPU.
SMALL = dict(img_size=64, patch_size=8, embed_dim=48, depth=1, num_heads=2, prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2,
             iou_head_hidden_dim=32, fusion_heads=2, context_hidden=32, detail_channels=8)


def small_cfg(**kw) -> ModelConfig:
    return ModelConfig(arch=get_preset("tiny", **SMALL), **kw)


def inputs(b=2, s=3, k=3, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(b, s, k, size, size, generator=g),
        torch.ones(b, s, dtype=torch.bool),
        torch.rand(b, 2, size, size, generator=g) * 2 - 1,
        torch.randn(b, 384, generator=g),
        torch.ones(b, dtype=torch.bool),
        torch.tensor([findings_vector(Findings(side="left", diagnosis="warthin_tumour", size_mm=20))] * b),
    )


def test_forward_shapes():
    torch.manual_seed(0)
    m = build_model(small_cfg()).eval()
    x, v, c, t, tv, f = inputs()
    with torch.no_grad():
        out = m(x, v, c, t, tv, f)
    assert out.shape == (2, 1, 64, 64)
    assert torch.isfinite(out).all()
    emb = m.encode(x, v)
    assert emb.shape == (2, 3, 32, 8, 8)


def test_fusion_ignores_masked_sequence():
    torch.manual_seed(0)
    fus = CrossSequenceAttention(16, 3, num_heads=2).eval()
    x = torch.randn(2, 3, 16, 4, 5)
    valid = torch.tensor([[True, False, True], [True, True, False]])
    y1 = fus(x, valid)
    x2 = x.clone()
    x2[0, 1] = 1e6  # garbage in the masked-out channels
    x2[1, 2] = float("nan")
    y2 = fus(x2, valid)
    assert y1.shape == (2, 16, 4, 5)
    assert torch.equal(y1, y2)
    # ...while a present channel does matter.
    x3 = x.clone()
    x3[0, 0] += 1.0
    assert not torch.allclose(fus(x3, valid)[0], y1[0])


def test_model_output_identical_whatever_is_in_a_missing_sequence():
    torch.manual_seed(0)
    m = build_model(small_cfg()).eval()
    x, v, c, t, tv, f = inputs()
    v[:, 1] = False
    with torch.no_grad():
        y1 = m(x, v, c, t, tv, f)
        x2 = x.clone()
        x2[:, 1] = torch.rand_like(x2[:, 1]) * 1000
        y2 = m(x2, v, c, t, tv, f)
        v_all = torch.ones_like(v)
        y3 = m(x2, v_all, c, t, tv, f)
    assert torch.equal(y1, y2)
    assert not torch.allclose(y1, y3)


def test_prompt_depends_on_text_and_findings():
    torch.manual_seed(0)
    m = build_model(small_cfg()).eval()
    # Give the context path non-trivial weights (the token offset starts at zero by design).
    with torch.no_grad():
        m.prompt_generator.token_offset.weight.normal_(0, 0.1)
    x, v, c, t, tv, f = inputs(b=1)
    with torch.no_grad():
        s1, d1 = m.prompt_generator(c, (8, 8), t, tv, f)
        s2, d2 = m.prompt_generator(c, (8, 8), -t, tv, f)
        f_right = torch.tensor([findings_vector(Findings(side="right", diagnosis="warthin_tumour", size_mm=20))])
        s3, d3 = m.prompt_generator(c, (8, 8), t, tv, f_right)
        o1 = m(x, v, c, t, tv, f)
        o2 = m(x, v, c, -t, tv, f)
    assert s1.shape == (1, 4, 32) and d1.shape == (1, 32, 8, 8)
    assert not torch.allclose(s1, s2) and not torch.allclose(d1, d2)
    assert not torch.allclose(d1, d3)
    assert not torch.allclose(o1, o2)
    # No text: the learned null embedding stands in; output defined and different.
    with torch.no_grad():
        o_none = m(x, v, c, None, None, f)
    assert torch.isfinite(o_none).all() and not torch.allclose(o_none, o1)


def test_no_text_model_ignores_text():
    torch.manual_seed(0)
    m = build_model(small_cfg(use_text=False)).eval()
    x, v, c, t, tv, f = inputs(b=1)
    with torch.no_grad():
        assert torch.equal(m(x, v, c, t, tv, f), m(x, v, c, -t, tv, torch.zeros(1, FINDINGS_DIM)))
    assert not hasattr(m.prompt_generator, "context")


def test_single_sequence_model():
    m = build_model(small_cfg(sequences=["T1"])).eval()
    x, v, c, t, tv, f = inputs(s=1)
    with torch.no_grad():
        assert m(x, v, c, t, tv, f).shape == (2, 1, 64, 64)
    with pytest.raises(ValueError):
        m(*inputs(s=3))


def test_two_d_input_is_replicated_to_three_channels():
    m = build_model(small_cfg(context_slices=1)).eval()
    x, v, c, t, tv, f = inputs(k=1)
    with torch.no_grad():
        assert m(x, v, c, t, tv, f).shape == (2, 1, 64, 64)


def test_presets_registry():
    assert set(PRESETS) >= {"tiny", "vit_b", "vit_l", "vit_h"}
    b = PRESETS["vit_b"]
    assert (b.img_size, b.patch_size, b.embed_dim, b.depth, b.num_heads, b.prompt_dim) == (1024, 16, 768, 12, 12, 256)
    assert b.global_attn_indexes == (2, 5, 8, 11) and b.window_size == 14 and b.use_rel_pos
    assert PRESETS["vit_l"].embed_dim == 1024 and PRESETS["vit_l"].depth == 24
    assert PRESETS["vit_h"].embed_dim == 1280 and PRESETS["vit_h"].depth == 32
    with pytest.raises(ModelError):
        get_preset("vit_z")
    cfg = small_cfg()
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again.arch == cfg.arch and again.sequences == cfg.sequences
