"""Predictor: shapes and dtypes on a synthetic case; report-side post-processing."""

from __future__ import annotations

import numpy as np
import pytest

from pgsam_node.errors import InferenceError
from pgsam_node.findings import Findings
from pgsam_node.inference.predictor import Predictor, side_filter
from pgsam_node.inference.preprocessing import flip_affine
from pgsam_node.training.sources import synthetic_study



def _two_blobs():
    """(10, 40, 40) mask with a blob at low column index and one at high column index."""
    m = np.zeros((10, 40, 40), bool)
    m[3:7, 15:25, 3:9] = True  # columns 3..8
    m[3:7, 15:25, 31:37] = True  # columns 31..36
    return m


def test_side_filter_uses_patient_left_not_image_left():
    m = _two_blobs()
    aff = np.diag([1.0, 1.0, 3.0, 1.0])  # column index grows towards +x = patient left (LPS)
    centre = np.array([19.5, 19.5, 13.5])
    left, notes = side_filter(m, aff, centre, Findings(side="left"), min_voxels=5)
    assert left[:, :, 31:].sum() == m[:, :, 31:].sum()
    assert left[:, :, :20].sum() == 0
    assert any("side" in n for n in notes)
    # Same pixels, image flipped left-right in the header: column index now grows towards -x.
    flipped = flip_affine(aff, "x", 40)
    left2, _ = side_filter(m, flipped, centre, Findings(side="left"), min_voxels=5)
    assert left2[:, :, :20].sum() == m[:, :, :20].sum() and left2[:, :, 20:].sum() == 0
    # No side, bilateral or no findings: both kept; negated side removes that side.
    for f in (None, Findings(), Findings(side="bilateral")):
        assert side_filter(m, aff, centre, f, 5)[0].sum() == m.sum()
    neg, _ = side_filter(m, aff, centre, Findings(negated_sides=["left"]), 5)
    assert neg[:, :, 20:].sum() == 0 and neg[:, :, :20].sum() == m[:, :, :20].sum()


def test_side_filter_drops_tiny_components():
    m = _two_blobs()
    m[0, 0, 0] = True
    out, notes = side_filter(m, np.eye(4), np.array([19.5, 19.5, 5.0]), None, min_voxels=5)
    assert not out[0, 0, 0] and out.sum() == m.sum() - 1
    assert any("below" in n for n in notes)


def test_predictor_shapes_and_dtypes(model_dir):
    st = synthetic_study(5, size=64, n_slices=8)
    p = Predictor.from_dir(model_dir, device="cpu", batch_size=3)
    assert p.model_version.startswith("small-") and len(p.model_version) == len("small-") + 12
    # A non-square grid that is not the model size, to exercise resizing both ways.
    vols = {r: v[:, 2:62, :50] for r, v in st.volumes.items()}
    valid = {r: np.ones(v.shape, bool) for r, v in vols.items()}
    res = p.predict(vols, valid, st.findings, st.report, st.affine)
    assert res.mask.shape == (8, 60, 50) and res.mask.dtype == np.uint8
    assert res.prob.shape == (8, 60, 50) and res.prob.dtype == np.float32
    assert set(np.unique(res.mask)) <= {0, 1}
    assert 0.0 <= res.prob.min() and res.prob.max() <= 1.0
    assert set(res.seconds) >= {"prepare", "model", "postprocess", "total"}
    # Without text and with a missing sequence it still runs.
    del vols["T2"]
    res2 = p.predict(vols, None, None, None, st.affine)
    assert res2.mask.shape == (8, 60, 50)


def test_predictor_refuses_bad_input(model_dir):
    p = Predictor.from_dir(model_dir, device="cpu")
    with pytest.raises(InferenceError, match="none of the model's sequences"):
        p.predict({"FLAIR": np.zeros((4, 8, 8), np.float32)}, None, None, None, np.eye(4))
    with pytest.raises(InferenceError, match="one grid"):
        p.predict({"T1": np.zeros((4, 8, 8), np.float32), "T2": np.zeros((4, 8, 9), np.float32)}, None, None, None, np.eye(4))
    with pytest.raises(InferenceError, match="affine"):
        p.predict({"T1": np.zeros((4, 8, 8), np.float32)}, None, None, None, np.zeros((4, 4)))


def test_one_loader_honours_threshold_and_text_encoder(model_dir, tmp_path):
    """The pipeline loads through Predictor.from_settings: model.threshold changes the mask."""
    from pgsam_node.config import load_settings
    from pgsam_node.db import open_database
    from pgsam_node.flow.pipeline import Pipeline

    st = synthetic_study(5, size=64, n_slices=8)
    masks = {}
    for thr in (0.05, 0.95):
        settings = load_settings(None, storage={"root": str(tmp_path / f"s{thr}")},
                                 model={"path": str(model_dir), "device": "cpu", "threshold": thr,
                                        "text_encoder": str(tmp_path / "my-encoder")})
        db = open_database(settings)
        p = Pipeline(db, settings).predictor
        db.dispose()
        assert p.threshold == thr
        assert str(p._text_encoder_dir) == str(tmp_path / "my-encoder")
        res = p.predict(st.volumes, None, None, None, st.affine)
        masks[thr] = res.mask
    assert masks[0.05].sum() > masks[0.95].sum()
    # Not configured: the model folder's own threshold.
    from pgsam_node.config import ModelSettings

    assert Predictor.from_settings(ModelSettings(path=model_dir, device="cpu")).threshold == 0.5
