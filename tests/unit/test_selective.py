"""Localisation-head models: multi-box prompts, the CPU first pass, the embedding cache, the frozen recipe.

The network is the real PG-SAM with a localisation head, on the small ``tiny`` encoder (random
weights) so it runs in seconds; the litemedsam encoder itself is covered by test_litemedsam.py.
"""

from __future__ import annotations

import numpy as np
import torch

from pgsam_node.geometry.normalize import NormParams
from pgsam_node.inference.predictor import Predictor
from pgsam_node.inference.selective import candidate_slices, first_pass_role
from pgsam_node.model.box_head import boxes_from_heat, component_boxes
from pgsam_node.model.coords import patient_coordinate_map
from pgsam_node.model.pgsam import build_model
from pgsam_node.model.presets import ModelConfig, get_preset
from pgsam_node.training.augment import AugmentOptions, augment_slice
from pgsam_node.training.embed_cache import EmbeddingCache
from pgsam_node.training.slice_bank import build_bank, select_slices
from pgsam_node.training.sources import synthetic_study
from pgsam_node.training.train_frozen import FrozenTrainOptions, predict_case, train_frozen


def _box_model(use_text: bool = False, sequences=("T1", "T2", "T1C")):
    torch.manual_seed(0)
    arch = get_preset("tiny", box_head=True, max_boxes=3, img_size=64, patch_size=8, depth=1)
    return build_model(ModelConfig(arch=arch, sequences=list(sequences), use_text=use_text, context_slices=1)).eval()


def _force_heat(model, value: float) -> None:
    last = model.box_head.net[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.constant_(last.bias, value)


def test_boxes_from_heat_one_box_per_group():
    heat = torch.full((1, 1, 16, 16), -10.0)
    heat[0, 0, 2:5, 2:5] = 10.0
    heat[0, 0, 10:14, 9:12] = 10.0
    boxes, ok = boxes_from_heat(heat, 64, max_boxes=4, margin=0.0, min_pad=0.0)
    assert ok[0].tolist() == [True, True, False, False]
    got = sorted(tuple(b) for b in boxes[0, :2].tolist())
    assert got == [(8.0, 8.0, 20.0, 20.0), (36.0, 40.0, 48.0, 56.0)]
    one, ok1 = boxes_from_heat(heat, 64, max_boxes=1, margin=0.0, min_pad=0.0)
    assert ok1[0, 0] and one[0, 0].tolist() == [8.0, 8.0, 48.0, 56.0]  # one box around both
    none, ok0 = boxes_from_heat(torch.full((2, 1, 16, 16), -10.0), 64, max_boxes=2)
    assert not ok0.any() and float(none.abs().sum()) == 0.0


def test_component_boxes_largest_first():
    m = np.zeros((32, 32))
    m[1:3, 1:3] = 1
    m[10:20, 12:30] = 1
    assert [b.tolist() for b in component_boxes(m)] == [[12, 10, 29, 19], [1, 1, 2, 2]]
    assert component_boxes(np.zeros((8, 8))) == []


def test_model_without_boxes_unites_masks_of_proposed_boxes():
    m = _box_model()
    b = 2
    imgs = torch.rand(b, 3, 1, 64, 64)
    valid = torch.ones(b, 3, dtype=torch.bool)
    coords = torch.zeros(b, 2, 64, 64)
    _force_heat(m, -10.0)
    with torch.no_grad():
        out = m.forward_parts(imgs, valid, coords)
    assert not out["found"].any() and torch.all(out["masks"] == -20.0)
    _force_heat(m, 10.0)
    with torch.no_grad():
        out = m.forward_parts(imgs, valid, coords)
    assert out["found"].all() and out["boxes"].shape == (b, 3, 4)
    assert not torch.all(out["masks"] == -20.0)


def test_augment_keeps_laterality_with_the_coordinate_map():
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    coords = patient_coordinate_map(affine, 0, (64, 64), (64, 64), np.array([32.0, 32.0, 0.0]))
    mask = np.zeros((64, 64), np.float32)
    mask[28:36, 44:54] = 1.0  # patient left (+x in LPS) of the centre
    images = np.stack([mask * 0.8 + 0.1] * 3).astype(np.float32)
    opts = AugmentOptions(p_flip=1.0, rotate_deg=5.0, elastic_px=1.0)
    x, m, c = augment_slice(images, np.array([True, True, False]), mask, coords, np.random.default_rng(1), opts)
    cols = np.nonzero(m > 0.5)[1]
    assert cols.mean() < 32  # the flip moved the lesion to the image's other half ...
    assert c[0][m > 0.5].mean() > 0.05  # ... and it still lies at the patient's left
    assert float(np.abs(x[2]).max()) == 0.0  # an absent sequence stays empty
    again = augment_slice(images, np.array([True, True, False]), mask, coords, np.random.default_rng(1), opts)
    assert all(np.array_equal(p, q) for p, q in zip((x, m, c), again))  # seeded: the cache relies on it


def test_first_pass_helpers():
    sv = np.array([[True, False, False], [True, True, False]])
    assert first_pass_role(["T1", "T2", "T1C"], sv) == 1  # T1C absent everywhere, T2 present
    assert first_pass_role(["T1", "T2", "T1C"], np.zeros((2, 3), bool)) is None
    assert candidate_slices({0: False, 4: True, 8: False}, 10, 2) == [2, 3, 4, 5, 6]


def test_selective_predict_encodes_only_selected_slices_and_caches():
    st = synthetic_study(1_000_003, size=64, n_slices=12)
    m = _box_model()
    pred = Predictor(m, m.cfg, torch.device("cpu"), batch_size=4, slice_selection="selective", probe_stride=3, embedding_cache_slices=200)
    _force_heat(m, -10.0)  # the head sees nothing anywhere
    res = pred.predict(st.volumes, st.valid, st.findings, None, st.affine)
    assert res.mask.sum() == 0
    assert pred.embeddings.misses == 4  # slices 0, 3, 6, 9 probed on one sequence, nothing else encoded
    assert any("4 slice(s) probed, 0 of 12 selected" in n for n in res.notes)
    _force_heat(m, 10.0)  # now every probe hits: every slice runs with all three sequences
    res = pred.predict(st.volumes, st.valid, st.findings, None, st.affine, postprocess=False)
    assert pred.embeddings.misses == 12 * 3  # the 4 probe embeddings were reused
    assert res.mask.sum() > 0
    before = pred.embeddings.misses
    pred.predict(st.volumes, st.valid, st.findings, None, st.affine)
    assert pred.embeddings.misses == before  # a re-run of the same study encodes nothing
    full = Predictor(m, m.cfg, torch.device("cpu"), batch_size=4, slice_selection="all", embedding_cache_slices=0)
    assert not full.selective and pred.selective


def test_slice_bank_and_frozen_recipe(tmp_path):
    m = _box_model(use_text=False)
    studies = [(synthetic_study(s, size=64, n_slices=10), "synthetic") for s in (5, 6)]
    cache = EmbeddingCache(tmp_path / "emb", "test-encoder")
    bank = build_bank(studies, m, m.cfg.sequences, cache, NormParams(), variants=2, max_eval=4, n_neg=1, max_aug=2)
    assert len(bank.cases) == 2 and cache.misses > 0
    misses = cache.misses
    again = build_bank(studies, m, m.cfg.sequences, cache, NormParams(), variants=2, max_eval=4, n_neg=1, max_aug=2)
    assert cache.misses == misses and len(again.items) == len(bank.items)  # second build: all cache hits
    assert {it.variant for it in bank.items} == {0, 1}
    for it in bank.items:
        assert it.emb.shape[0] == 3 and it.images.shape == (3, 64, 64)
    log = []
    rec = train_frozen(m, bank, [0], FrozenTrainOptions(steps_loc=6, batch_loc=4, steps_dec=2, batch_dec=2, lr_loc=1e-2),
                       on_step=lambda stage, i, parts: log.append((stage, parts["loss"])))
    assert [s for s, _ in log] == ["localisation"] * 6 + ["decoder"] * 2
    assert rec["train_cases"] == ["synthetic-5"]
    assert all(np.isfinite(v) for _, v in log)
    out = predict_case(m, bank, 1)
    assert out.shape == (len(bank.cases[1].eval_slices),) + bank.cases[1].shape_yx


def test_select_slices_strides_the_lesion_range():
    mask = np.zeros((40, 8, 8))
    mask[10:30, 2:4, 2:4] = 1
    ev, neg = select_slices(mask, np.ones((40, 3), bool), max_eval=5, n_neg=2)
    assert ev == [10, 14, 18, 22, 26] and len(neg) == 2
    assert all(k < 9 or k > 30 for k in neg)


def test_gradients_reach_only_trainable_parts():
    m = _box_model()
    for p in m.image_encoder.parameters():
        p.requires_grad_(False)
    imgs = torch.rand(1, 3, 1, 64, 64)
    out = m.forward_parts(imgs, torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 2, 64, 64), boxes=torch.tensor([[8.0, 8.0, 40.0, 40.0]]))
    (out["masks"].mean() + out["heat"].mean()).backward()
    assert all(p.grad is None for p in m.image_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.box_head.parameters())


def test_fit_frozen_model_writes_a_loadable_folder(tmp_path):
    from pgsam_node.model.presets import TASK_LABELS
    from pgsam_node.training.train_frozen import fit_frozen_model

    real = [synthetic_study(11, size=64, n_slices=8)]
    syn = [synthetic_study(12, size=64, n_slices=8)]
    overrides = {"box_head": True, "max_boxes": 2, "img_size": 64, "patch_size": 8, "depth": 1}
    cfg = fit_frozen_model(tmp_path / "m", real, syn, "tiny", ["T1", "T2", "T1C"], True,
                           FrozenTrainOptions(steps_loc=3, steps_dec=1, batch_dec=2), tmp_path / "cache", "brain-lesion",
                           TASK_LABELS["brain-lesion"], command="pgsam-node train ...", data_description="test", variants=2, max_eval=3,
                           arch_overrides=overrides)
    assert cfg.training["recipe"].startswith("frozen encoder") and cfg.training["steps_loc"] == 3
    assert cfg.labels[0]["type"]["meaning"] == "Lesion" and cfg.context_slices == 1
    pred = Predictor.from_dir(tmp_path / "m", device="cpu", slice_selection="selective")
    assert pred.model.box_head is not None and pred.cfg.arch.max_boxes == 2
    st = real[0]
    res = pred.predict(st.volumes, st.valid, st.findings, st.report, st.affine)
    assert res.mask.shape == st.mask.shape and any("probed" in n for n in res.notes)


def test_mirrored_patient_swaps_image_coordinates_and_report():
    from pgsam_node.findings import Findings
    from pgsam_node.training.augment import mirror_findings, mirror_report, mirror_slice

    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    coords = patient_coordinate_map(affine, 0, (32, 32), (32, 32), np.array([16.0, 16.0, 0.0]))
    mask = np.zeros((32, 32), np.float32)
    mask[10:14, 22:28] = 1.0  # patient left
    x, m, c = mirror_slice(np.stack([mask] * 3), mask, coords)
    assert c[0][m > 0.5].mean() < 0 < coords[0][mask > 0.5].mean()  # now at the patient's right
    assert np.allclose(c[1], coords[1][:, ::-1])  # anterior-posterior unchanged
    assert np.array_equal(x[0], m)
    assert mirror_report("Mass in the Left parotid; the right gland is normal.") == "Mass in the Right parotid; the left gland is normal."
    assert mirror_report("bright, leftover") == "bright, leftover"  # whole words only
    f = mirror_findings(Findings(side="left", negated_sides=["right"]))
    assert f.side == "right" and f.negated_sides == ["left"]


def test_side_rule_drops_components_on_the_excluded_side():
    from pgsam_node.findings import Findings
    from pgsam_node.training.train_frozen import drop_wrong_side

    logits = torch.full((1, 1, 16, 16), -5.0)
    logits[0, 0, 4:8, 2:5] = 5.0  # image left = patient right here (coords below)
    logits[0, 0, 4:8, 11:14] = 5.0
    coords = torch.zeros(1, 2, 16, 16)
    coords[0, 0] = torch.linspace(-1, 1, 16)[None, :]  # + = patient left towards the image's right
    out = drop_wrong_side(logits, coords, Findings(side="left"))
    assert (out[0, 0, 4:8, 11:14] > 0).all() and (out[0, 0, 4:8, 2:5] < 0).all()
    assert torch.equal(drop_wrong_side(logits, coords, Findings(side=None)), logits)
    assert torch.equal(drop_wrong_side(logits, coords, None), logits)
