"""The model's fixed field of view (pgsam_node.inference.field_of_view, applied in Predictor.predict)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pgsam_node.inference.field_of_view import Window, body_window
from pgsam_node.model.coords import voxel_to_lps


def grid_affine(col_mm: float, row_mm: float, slice_mm: float = 4.0, origin=(-150.0, -120.0, 30.0)) -> np.ndarray:
    a = np.eye(4)
    a[:3, 0], a[:3, 1], a[:3, 2], a[:3, 3] = (col_mm, 0, 0), (0, row_mm, 0), (0, 0, slice_mm), origin
    return a


def test_cut_and_paste_are_inverse_and_the_affine_follows_the_window():
    rng = np.random.default_rng(0)
    arr = rng.random((3, 40, 50)).astype(np.float32)
    aff = grid_affine(0.8, 0.6)
    for win in (Window(r0=5, c0=7, h=20, w=30), Window(r0=-10, c0=-4, h=70, w=60), Window(r0=30, c0=45, h=20, w=20)):
        cut = win.cut(arr, fill=-1)
        assert cut.shape == (3, win.h, win.w)
        back = win.paste(cut, arr.shape[1:], fill=0)
        rows = slice(max(0, win.r0), min(40, win.r0 + win.h))
        cols = slice(max(0, win.c0), min(50, win.c0 + win.w))
        assert np.array_equal(back[:, rows, cols], arr[:, rows, cols])
        outside = np.ones(arr.shape[1:], bool)
        outside[rows, cols] = False
        assert (back[:, outside] == 0).all()
        assert (cut == -1).sum() == 3 * (win.h * win.w - (rows.stop - rows.start) * (cols.stop - cols.start))
        # voxel (c, r) of the window is voxel (c + c0, r + r0) of the source, in patient space
        ijk = np.array([[3.0, 2.0, 1.0]])
        assert np.allclose(voxel_to_lps(win.affine(aff), ijk), voxel_to_lps(aff, ijk + [[win.c0, win.r0, 0]]))


def test_the_window_spans_the_field_of_view_in_millimetres_and_is_centred_on_the_body():
    # 300 x 260 mm field of view, rectangular pixels, the body off-centre towards one corner
    aff = grid_affine(col_mm=1.0, row_mm=0.65)
    z, y, x = 6, 400, 300
    vol = np.zeros((z, y, x), np.float32)
    yy, xx = np.mgrid[:y, :x]
    body = ((yy - 260) / 90.0) ** 2 + ((xx - 190) / 70.0) ** 2 < 1
    vol[:, body] = 100.0
    win = body_window({"T1": vol, "T2": vol * 2}, None, aff, 200.0)
    assert (win.h, win.w) == (round(200 / 0.65), 200)
    assert abs(win.r0 + (win.h - 1) / 2 - 260) <= 1 and abs(win.c0 + (win.w - 1) / 2 - 190) <= 1
    with pytest.raises(ValueError, match="fov_mm"):
        body_window({"T1": vol}, None, aff, 0.0)


def test_the_bundled_parotid_models_see_a_fixed_field_of_view_and_the_fallback_does_not():
    from pgsam_node.inference.router import BUNDLED_MODELS
    from pgsam_node.model.checkpoint import read_config

    assert read_config(BUNDLED_MODELS / "parotid-tiny").input_fov_mm == 210.0
    assert read_config(BUNDLED_MODELS / "parotid-tiny-nfs").input_fov_mm == 210.0
    assert read_config(BUNDLED_MODELS / "parotid-litemedsam").input_fov_mm == 0.0  # zero-shot boxes on the whole slice


def _padded(st, px: int):
    """The same study with ``px`` pixels of air added on every side (a larger field of view)."""
    pad = ((0, 0), (px, px), (px, px))
    vols = {r: np.pad(v, pad) for r, v in st.volumes.items()}
    valid = {r: np.pad(v, pad) for r, v in st.valid.items()}
    a = np.array(st.affine, dtype=np.float64)
    a[:3, 3] -= a[:3, :3] @ np.array([px, px, 0])
    return vols, valid, a


def test_the_mask_does_not_depend_on_how_much_air_the_field_of_view_holds():
    """With the window the predictor gives the same lesion on a 200 mm and a 265 mm field of view;
    on the whole slice (input_fov_mm 0) the larger view shrinks the anatomy and the mask changes."""
    from pgsam_node.inference.predictor import Predictor
    from pgsam_node.training.sources import synthetic_study

    windowed = Predictor.from_dir(None, device="cpu")
    whole = Predictor.from_dir(None, device="cpu")
    whole.cfg = dataclasses.replace(whole.cfg, input_fov_mm=0.0)
    st = synthetic_study(1_000_000)
    px = 40
    small = windowed.predict(st.volumes, st.valid, st.findings, st.report, st.affine)
    vols, valid, aff = _padded(st, px)
    large = windowed.predict(vols, valid, st.findings, st.report, aff)
    assert small.mask.any()
    assert any(n.startswith("field of view: the model saw a 210 mm square") for n in large.notes)
    assert large.mask.shape == vols["T1"].shape
    assert not large.mask[:, :px].any() and not large.mask[:, :, :px].any()
    assert np.array_equal(large.mask[:, px:-px, px:-px], small.mask)
    w_small = whole.predict(st.volumes, st.valid, st.findings, st.report, st.affine).mask
    w_large = whole.predict(vols, valid, st.findings, st.report, aff).mask[:, px:-px, px:-px]
    assert not any(n.startswith("field of view") for n in whole.predict(st.volumes, st.valid, st.findings, st.report, st.affine).notes)
    assert not np.array_equal(w_small, w_large)
