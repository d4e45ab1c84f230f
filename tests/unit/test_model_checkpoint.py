"""Model folders (safetensors + config.json) and official SAM checkpoints."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from pgsam_node.errors import ModelError
from pgsam_node.model.checkpoint import load_model_dir, load_sam_checkpoint, save_model_dir
from pgsam_node.model.pgsam import build_model
from pgsam_node.model.presets import ModelConfig, get_preset

from .test_model_arch import inputs, small_cfg


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    cfg = small_cfg(task="parotid-lesion")
    m = build_model(cfg).eval()
    cfg = save_model_dir(m, cfg, tmp_path / "m1", half=False)
    assert (tmp_path / "m1" / "weights.safetensors").is_file()
    data = json.loads((tmp_path / "m1" / "config.json").read_text())
    assert data["arch"]["embed_dim"] == 48 and data["sequences"] == ["T1", "T2", "T1C"]
    assert data["weights_sha256"] == cfg.weights_sha256 and cfg.version.startswith("m1-")
    m2, cfg2 = load_model_dir(tmp_path / "m1")
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x, v, c, t, tv, f = inputs()
    with torch.no_grad():
        assert torch.equal(m(x, v, c, t, tv, f), m2(x, v, c, t, tv, f))
    assert cfg2.arch == cfg.arch


def test_half_precision_folder_is_close(tmp_path):
    torch.manual_seed(2)
    cfg = small_cfg()
    m = build_model(cfg).eval()
    save_model_dir(m, cfg, tmp_path / "h", half=True)
    m2, _ = load_model_dir(tmp_path / "h")
    x, v, c, t, tv, f = inputs()
    with torch.no_grad():
        assert torch.allclose(m(x, v, c, t, tv, f), m2(x, v, c, t, tv, f), atol=5e-2)


def test_tampered_weights_refused(tmp_path):
    cfg = small_cfg()
    save_model_dir(build_model(cfg), cfg, tmp_path / "t")
    w = tmp_path / "t" / "weights.safetensors"
    raw = bytearray(w.read_bytes())
    raw[-1] ^= 0xFF
    w.write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="SHA-256"):
        load_model_dir(tmp_path / "t")
    with pytest.raises(ModelError, match="config.json"):
        load_model_dir(tmp_path / "nothing-here")


def _mini_sam(embed=64, depth=2, heads=2, prompt=32, img=64, patch=16, window=2, global_idx=(1,)):
    """A down-sized segment_anything ``Sam`` with the official module layout and key names."""
    e = img // patch
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=depth, embed_dim=embed, img_size=img, mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=heads, patch_size=patch, qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_idx,
            window_size=window, out_chans=prompt,
        ),
        prompt_encoder=PromptEncoder(embed_dim=prompt, image_embedding_size=(e, e), input_image_size=(img, img), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt, mlp_dim=64, num_heads=2),
            transformer_dim=prompt, iou_head_depth=3, iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


MINI = dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2, window_size=2, global_attn_indexes=(1,), use_rel_pos=True,
            prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2, iou_head_hidden_dim=32, fusion_heads=2, context_hidden=32)


def test_official_key_layout_loads(tmp_path):
    torch.manual_seed(3)
    sam = _mini_sam()
    path = tmp_path / "sam_mini.pth"
    torch.save(sam.state_dict(), path)
    model = build_model(ModelConfig(arch=get_preset("vit_b", **MINI)))
    load_sam_checkpoint(model, path)
    ours = model.state_dict()
    for k, v in sam.state_dict().items():
        assert torch.equal(ours[k], v), k
    # The fused model runs with the loaded SAM parts.
    x, v, c, t, tv, f = inputs(size=64)
    with torch.no_grad():
        assert model.eval()(x, v, c, t, tv, f).shape == (2, 1, 64, 64)


def test_wrong_checkpoint_names_keys(tmp_path):
    sam = _mini_sam()
    sd = sam.state_dict()
    # Missing keys: drop the decoder.
    p1 = tmp_path / "partial.pth"
    torch.save({k: v for k, v in sd.items() if not k.startswith("mask_decoder.")}, p1)
    model = build_model(ModelConfig(arch=get_preset("vit_b", **MINI)))
    with pytest.raises(ModelError, match=r"missing keys .*mask_decoder\."):
        load_sam_checkpoint(model, p1)
    # Unexpected keys: a file from some other network.
    p2 = tmp_path / "other.pth"
    torch.save({"backbone.layer1.weight": torch.zeros(3), **sd}, p2)
    with pytest.raises(ModelError, match=r"unexpected keys .*backbone\.layer1\.weight"):
        load_sam_checkpoint(model, p2)
    # Another size (e.g. a vit_l file for a vit_b model): shapes do not fit.
    p3 = tmp_path / "bigger.pth"
    torch.save(_mini_sam(embed=96, heads=3).state_dict(), p3)
    with pytest.raises(ModelError, match="shape mismatch"):
        load_sam_checkpoint(model, p3)
    # Not a checkpoint at all.
    p4 = tmp_path / "junk.pth"
    p4.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="cannot read"):
        load_sam_checkpoint(model, p4)


@pytest.mark.slow
def test_real_vit_b_random_checkpoint_loads(tmp_path):
    from segment_anything import sam_model_registry

    torch.manual_seed(4)
    sam = sam_model_registry["vit_b"]()
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(sam.state_dict(), path)
    del sam
    model = build_model(ModelConfig(arch=get_preset("vit_b")))
    load_sam_checkpoint(model, path)
    ref = torch.load(path, map_location="cpu", weights_only=True)
    ours = model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in ref.items())
    assert len(ref) > 0 and all(k.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder.")) for k in ref)
