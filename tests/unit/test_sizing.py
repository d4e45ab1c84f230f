"""model.size_growth_floor: an under-segmented lesion grows towards the report's stated size;
model.size_shrink_ceiling: one wider than it is cut back (pgsam_node.inference.sizing, applied in
Predictor.predict's post-processing)."""

from __future__ import annotations

import numpy as np
import pytest

from pgsam_node.config import ConfigError, load_settings
from pgsam_node.findings import Findings
from pgsam_node.inference.sizing import extent_mm, grow_to_stated_size, shrink_to_stated_size

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])  # 1 mm columns and rows, 2 mm slices


def _ball(shape, centre, radius_mm, spacing=(2.0, 1.0, 1.0)):
    zz, yy, xx = np.indices(shape, dtype=np.float64)
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip((zz, yy, xx), centre, spacing))
    return np.sqrt(d2) <= radius_mm


def _study():
    """A 20 mm lesion whose probability falls from 0.9 at its centre to 0.25 at its rim, and a
    second blob (p 0.3) 2 cm away on the same side."""
    shape = (16, 64, 64)
    truth = _ball(shape, (8, 32, 24), 10.0)
    zz, yy, xx = np.indices(shape, dtype=np.float64)
    r = np.sqrt(((zz - 8) * 2) ** 2 + (yy - 32) ** 2 + (xx - 24) ** 2)
    prob = np.where(truth, 0.9 - 0.65 * r / 10.0, 0.01).astype(np.float32)
    prob[_ball(shape, (8, 32, 50), 4.0)] = 0.3
    return prob, truth


def test_a_core_grows_to_the_stated_size_and_no_further():
    prob, truth = _study()
    core = prob >= 0.5
    assert extent_mm(core, AFFINE) <= 14
    grown, note = grow_to_stated_size(core, prob, AFFINE, Findings(present=True, size_mm=20.0), 0.5, 0.1)
    assert 19 <= extent_mm(grown, AFFINE) <= 23
    assert (grown & ~truth).sum() == 0 and grown.sum() > 2 * core.sum()
    assert note.startswith(f"grew the largest region by {int(grown.sum() - core.sum())} voxels, 1") and "stated 20 mm" in note
    # The nearby blob is not connected at any threshold tried: it never joins.
    assert not grown[:, :, 45:].any()


def test_growth_stops_before_exceeding_the_stated_size():
    prob, _ = _study()
    core = prob >= 0.5
    # The report states 16 mm: p >= 0.4 spans 15 mm, p >= 0.3 already 19 mm (> 16 x 1.15).
    grown, note = grow_to_stated_size(core, prob, AFFINE, Findings(present=True, size_mm=16.0), 0.5, 0.1)
    assert extent_mm(core, AFFINE) < extent_mm(grown, AFFINE) <= 16 * 1.15
    assert "probability >= 0.4" in note
    # A floor above every lower step tried leaves the core as it is.
    same, note = grow_to_stated_size(core, prob, AFFINE, Findings(present=True, size_mm=16.0), 0.5, 0.45)
    assert note is None and np.array_equal(same, core)


def test_a_diffuse_plateau_is_not_taken_beyond_the_stated_volume():
    """A 20 mm cube of p 0.3 around a small confident core: its extent is within 20 mm x 1.15,
    but it holds 7.6 times the volume of the stated 20 x 10 x 10 mm ellipsoid."""
    shape = (16, 64, 64)
    prob = np.full(shape, 0.01, np.float32)
    prob[3:13, 22:42, 22:42] = 0.3  # 20 mm cube (2 mm slices)
    prob[7:9, 30:34, 30:34] = 0.9
    core = prob >= 0.5
    stated = Findings(present=True, size_mm=20.0, dimensions_mm=[20.0, 10.0, 10.0])
    grown, note = grow_to_stated_size(core, prob, AFFINE, stated, 0.5, 0.1)
    assert note is None and np.array_equal(grown, core)
    # Stated as a 20 mm sphere-like lesion (one diameter), the cube is 1.9 times its volume: taken.
    grown, note = grow_to_stated_size(core, prob, AFFINE, Findings(present=True, size_mm=20.0), 0.5, 0.1)
    assert note is not None and grown.sum() == (prob >= 0.3).sum()


@pytest.mark.parametrize("findings, floor", [
    (None, 0.1),
    (Findings(present=True), 0.1),               # no stated size
    (Findings(present=True, size_mm=20.0), 0.0),  # switched off
    (Findings(present=True, size_mm=8.0), 0.1),   # the region already spans the stated size
])
def test_nothing_grows_without_a_size_to_grow_to(findings, floor):
    prob, _ = _study()
    core = prob >= 0.5
    grown, note = grow_to_stated_size(core, prob, AFFINE, findings, 0.5, floor)
    assert note is None and np.array_equal(grown, core)
    empty, note = grow_to_stated_size(np.zeros_like(core), prob, AFFINE, Findings(present=True, size_mm=20.0), 0.5, 0.1)
    assert note is None and not empty.any()


def test_only_the_largest_region_grows_and_the_rest_is_kept():
    prob, _ = _study()
    core = prob >= 0.5
    speck = np.zeros_like(core)
    speck[2, 5, 5] = True
    grown, _ = grow_to_stated_size(core | speck, prob, AFFINE, Findings(present=True, size_mm=20.0), 0.5, 0.1)
    assert grown[2, 5, 5] and extent_mm(grown & ~speck, AFFINE) >= 19


@pytest.mark.parametrize(("key", "default"), [("size_growth_floor", 0.1), ("size_shrink_ceiling", 0.0)])
def test_the_floor_and_the_ceiling_are_config_keys_with_a_safe_range(key, default):
    assert getattr(load_settings(None).model, key) == default
    for value in (0, 0.5):
        assert getattr(load_settings(None, model={key: value}).model, key) == value
    for bad in (-0.1, 1.0, "x"):
        with pytest.raises(ConfigError, match=key):
            load_settings(None, model={key: bad})


def test_the_predictor_grows_the_bundled_models_mask_when_the_report_states_more():
    """Wiring: Predictor.predict applies the growth after its side filter, with the note; the
    same study with the floor at 0 is the mask before growth. Whether a study's probability map
    has anything between the floor and the threshold to grow into depends on the weights, so a few
    studies are tried: every one keeps the invariants, and at least one grows."""
    import dataclasses

    from pgsam_node.inference.predictor import Predictor
    from pgsam_node.training.sources import synthetic_study

    plain = Predictor.from_dir(None, device="cpu", size_growth_floor=0)
    growing = Predictor.from_dir(None, device="cpu")
    grew = 0
    for seed in range(1_000_000, 1_000_006):
        st = synthetic_study(seed)
        assert st.findings.size_mm
        larger = dataclasses.replace(st.findings, size_mm=3 * st.findings.size_mm)
        before = plain.predict(st.volumes, st.valid, larger, st.report, st.affine)
        after = growing.predict(st.volumes, st.valid, larger, st.report, st.affine)
        assert not any(n.startswith("grew") for n in before.notes)
        assert (after.mask >= before.mask).all()
        if any(n.startswith("grew the largest region") for n in after.notes):
            grew += 1
            assert before.mask.any() and after.mask.sum() > before.mask.sum()
            assert float(after.prob[after.mask > before.mask].min()) >= 0.1
        else:
            assert np.array_equal(after.mask, before.mask)
    assert grew >= 1, "no study grew"


def _halo():
    """A 10 mm lesion (p 0.95) inside a 30 mm halo of p 0.6, and a separate 6 mm blob (p 0.7)."""
    shape = (24, 64, 64)
    core = _ball(shape, (12, 32, 24), 5.0)
    halo = _ball(shape, (12, 32, 24), 15.0)
    blob = _ball(shape, (12, 32, 54), 3.0)
    prob = np.full(shape, 0.01, np.float32)
    prob[halo], prob[core], prob[blob] = 0.6, 0.95, 0.7
    return prob, core, halo, blob


def test_a_region_wider_than_the_stated_size_is_cut_back_to_its_most_probable_piece():
    prob, core, halo, blob = _halo()
    mask = prob >= 0.5
    cut, note = shrink_to_stated_size(mask, prob, AFFINE, Findings(present=True, size_mm=10.0), 0.5, 0.9)
    assert note and note.startswith("cut the largest region") and "stated 10 mm" in note
    assert np.array_equal(cut & ~blob, core)
    assert (cut & blob).sum() == blob.sum()  # the other region is kept as it was
    # A size the region fits (one voxel of partial volume allowed), no size, or the ceiling at 0: unchanged.
    # Nor when the report states two lesions (the wide region may be both).
    for findings, ceiling in ((Findings(present=True, size_mm=30.0), 0.9), (Findings(present=True), 0.9), (None, 0.9),
                              (Findings(present=True, size_mm=10.0), 0.0), (Findings(present=True, size_mm=10.0, count=2), 0.9)):
        same, note = shrink_to_stated_size(mask, prob, AFFINE, findings, 0.5, ceiling)
        assert note is None and np.array_equal(same, mask)


def test_nothing_is_cut_when_no_higher_threshold_gives_a_piece_of_the_stated_size():
    prob, core, halo, _ = _halo()
    prob[halo] = 0.95  # confident throughout: the model and the report disagree, and the mask stands
    mask = prob >= 0.5
    same, note = shrink_to_stated_size(mask, prob, AFFINE, Findings(present=True, size_mm=10.0), 0.5, 0.9)
    assert note is None and np.array_equal(same, mask)



def test_the_predictor_takes_the_shrink_ceiling_from_the_settings():
    """Plumbing (the bundled model is confident to its lesions' edges on its own phantoms, so no
    higher threshold changes its masks there; the cut itself is measured on foreign phantoms in
    docs/model.md)."""
    from pgsam_node.inference.predictor import Predictor

    for ceiling in (0.0, 0.9):
        pred = Predictor.from_settings(load_settings(None, model={"size_shrink_ceiling": ceiling, "device": "cpu"}).model)
        assert pred.size_shrink_ceiling == ceiling
