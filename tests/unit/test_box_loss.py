"""A few training steps of the litemedsam preset on cached embeddings: encoder frozen, loss falls."""

from __future__ import annotations

import torch

from pgsam_node.model.pgsam import build_model
from pgsam_node.model.presets import ModelConfig, get_preset
from pgsam_node.training.box_loss import box_head_loss


def test_few_steps_frozen_encoder_train_head_and_decoder():
    torch.manual_seed(0)
    m = build_model(ModelConfig(arch=get_preset("litemedsam"), context_slices=1, use_text=False))
    for p in m.image_encoder.parameters():
        p.requires_grad_(False)
    enc_before = {k: v.clone() for k, v in m.image_encoder.state_dict().items()}
    b = 2
    mask = torch.zeros(b, 1, 256, 256)
    mask[0, 0, 100:140, 60:110] = 1
    mask[1, 0, 30:60, 150:200] = 1
    emb = torch.randn(b, 3, 256, 64, 64) * 0.1
    emb[:, :, :8] += torch.nn.functional.interpolate(mask, size=(64, 64))[:, None] * 2  # lesion shows in the features
    batch = {"images": mask[:, None].expand(b, 3, 1, 256, 256).clone(), "valid": torch.ones(b, 3, dtype=torch.bool),
             "coords": torch.zeros(b, 2, 256, 256), "mask": mask, "embeddings": emb}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(4):
        loss, parts = box_head_loss(m, batch, gen=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
        assert set(parts) == {"mask", "heat"}
    assert losses[-1] < losses[0]
    assert all(torch.equal(v, m.image_encoder.state_dict()[k]) for k, v in enc_before.items())
