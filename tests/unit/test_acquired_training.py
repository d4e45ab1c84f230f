"""Training on what the node is fed: phantoms as acquired (per-series grids resampled onto T1C),
and slice augmentation in the tiny preset's sampler that keeps the report's side true."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgsam_node.errors import ModelError
from pgsam_node.geometry import build_study_volumes
from pgsam_node.geometry.normalize import NormParams
from pgsam_node.synth.acquisition import acquire
from pgsam_node.synth.dicom_writer import write_study
from pgsam_node.training.augment import AugmentOptions, augment_slice
from pgsam_node.training.sources import synthetic_study
from pgsam_node.training.train import SliceSampler, TrainOptions, build_train_set, synthetic_train_set


def test_acquire_is_the_study_the_node_reads_from_dicom(tmp_path):
    """acquire(seed) equals what write_study writes and the geometry stage reads back (seed 6 of the
    evaluation range has a coronal T1: the through-plane resampling the fast path never shows)."""
    seed = 1_000_006
    a = acquire(seed)
    assert a.planes["T1"] == "coronal"
    st = write_study(seed, tmp_path / "case", truth_path=tmp_path / "truth.npz")
    sv = build_study_volumes({r: list(p) for r, p in st.paths_by_role.items()}, None)
    assert sv.reference_role == "T1C" and st.vendor == a.vendor
    np.testing.assert_allclose(a.affine, sv.reference.affine, atol=1e-4)
    for role in ("T1", "T2", "T1C"):
        assert a.volumes[role].shape == sv.channels[role].shape
        assert np.array_equal(a.valid[role], sv.valid[role])
        # DICOM stores 12-bit integers: equal up to that quantisation.
        assert np.corrcoef(a.volumes[role].ravel(), sv.channels[role].ravel())[0, 1] > 0.9999
    assert np.array_equal(a.mask, st.mask) and a.mask.sum() > 0
    assert a.report == st.report_text
    # Not the fast path's study: the T1 seen through a coronal acquisition differs.
    fast = synthetic_study(seed)
    assert fast.volumes["T1"].shape != a.volumes["T1"].shape


def test_synthetic_train_set_acquisitions(tmp_path):
    grid = synthetic_train_set([3], ["T1", "T2", "T1C"], 32, NormParams(), None, size=32, n_slices=6)
    mixed = synthetic_train_set([3], ["T1", "T2", "T1C"], 32, NormParams(), tmp_path, size=32, n_slices=6, acquisition="mixed")
    assert grid.case_ids == ["synthetic-3"] and mixed.case_ids == ["synthetic-3", "acquired-3"]
    assert mixed.images[1].shape[1:] == (3, 32, 32) and mixed.images[1].shape[0] == acquire(3).mask.shape[0]
    assert mixed.masks[1].max() > 128 and mixed.texts[0] == mixed.texts[1]  # soft mask, resized to 32 px
    assert len(list(tmp_path.glob("synthetic-*.npz"))) == 1  # cached under a key of its own
    with pytest.raises(ModelError, match="unknown acquisition"):
        synthetic_train_set([3], ["T1"], 32, NormParams(), None, acquisition="dicom")


def test_augment_slice_gives_context_slices_their_sequences_draws():
    rng = np.random.default_rng(0)
    img = rng.random((3, 32, 32)).astype(np.float32)
    stack = np.repeat(img[:, None], 3, axis=1)  # three identical context slices per sequence
    mask = np.zeros((32, 32), np.float32)
    mask[10:16, 20:26] = 1
    coords = np.stack(np.meshgrid(np.linspace(-1, 1, 32), np.linspace(-1, 1, 32))[::-1]).astype(np.float32)
    valid = np.array([True, True, False])
    o = AugmentOptions(noise=0.0)
    x4, m4, c4 = augment_slice(stack, valid, mask, coords, np.random.default_rng(5), o)
    x3, m3, c3 = augment_slice(img, valid, mask, coords, np.random.default_rng(5), o)
    assert x4.shape == (3, 3, 32, 32) and x3.shape == (3, 32, 32)
    for c in range(3):  # one warp and one intensity draw per sequence, whatever the stacking
        np.testing.assert_allclose(x4[:, c], x3, atol=1e-6)
    assert np.array_equal(m4, m3) and np.array_equal(c4, c3) and not x4[2].any()
    noisy, _, _ = augment_slice(img, valid, mask, coords, np.random.default_rng(5), AugmentOptions(noise=0.2))
    assert not np.allclose(noisy[0], x3[0]) and noisy.min() >= 0 and noisy.max() <= 1


@pytest.fixture(scope="module")
def one_study():
    st = synthetic_study(0, size=64, n_slices=8)
    assert st.findings.side in ("left", "right")
    return st.findings.side, build_train_set([st], ["T1", "T2", "T1C"], 64, NormParams())


def test_sampler_augmentation_keeps_the_lesion_on_the_reported_side(tmp_path, one_study):
    side, ts = one_study
    emb = np.zeros((1, 384), np.float32)
    plain = TrainOptions(out=tmp_path, lesion_fraction=1.0)
    aug = TrainOptions(out=tmp_path, lesion_fraction=1.0, p_augment=1.0, augment_noise=0.05)
    b0 = SliceSampler(ts, plain, 64, emb, np.random.default_rng(2)).batch(12)
    b1 = SliceSampler(ts, aug, 64, emb, np.random.default_rng(2)).batch(12)
    # Off by default: the stream (and so every reproduced model) is what it was.
    b0b = SliceSampler(ts, TrainOptions(out=tmp_path, lesion_fraction=1.0, p_augment=0.0), 64, emb,
                       np.random.default_rng(2)).batch(12)
    assert torch.equal(b0["images"], b0b["images"])
    assert not torch.equal(b0["images"], b1["images"])
    assert b1["images"].min() >= 0 and b1["images"].max() <= 1
    # Flips and warps move the lesion around the image; the coordinate map moves with it, so the
    # lesion stays on the patient side the report names (LPS: +x is the patient's left).
    want = 1.0 if side == "left" else -1.0
    seen = 0
    for b in (b0, b1):
        for j in range(12):
            m = b["mask"][j, 0] > 0.5
            if m.sum() < 5:
                continue
            assert np.sign(float(b["coords"][j, 0][m].mean())) == want
            seen += 1
    assert seen >= 12, "too few lesion slices to check"


def test_appearance_jitter_spreads_signals_over_the_same_anatomy():
    from pgsam_node.synth.phantom import generate_case, make_phantom

    a, b, c = generate_case(5, size=48, n_slices=8), generate_case(5, size=48, n_slices=8, appearance_jitter=1.0), \
        generate_case(5, size=48, n_slices=8, appearance_jitter=4.0)
    assert all(np.array_equal(a.volumes[r], b.volumes[r]) for r in a.volumes)  # default: the generator unchanged
    assert np.array_equal(a.mask, c.mask) and a.report == c.report  # same anatomy, same report
    lesion = a.mask > 0
    ratios = [float(np.median(v[lesion]) / np.median(a.volumes[r][lesion])) for r, v in c.volumes.items()]
    assert max(abs(x - 1) for x in ratios) > 0.03, ratios  # the lesion's signal moved
    with pytest.raises(ValueError, match="appearance_jitter"):
        make_phantom(5, appearance_jitter=-1.0)
