"""The axial working grid (pgsam_node.geometry.working): a study whose reference series (T1C) is
coronal or sagittal is resampled onto an axial grid for the model, and the mask comes back onto
the reference series' own grid."""

from __future__ import annotations

import numpy as np
import pytest

from pgsam_node.config import load_settings
from pgsam_node.geometry import Volume, build_study_volumes, mask_to_reference, resample_to
from pgsam_node.geometry.working import axial_grid, plane_name, tilt_from_axial, to_reference
from pgsam_node.synth.dicom_writer import write_study
from pgsam_node.training.metrics import dice


def _volume(direction: np.ndarray, shape=(30, 64, 80), spacing=(3.0, 0.7, 0.7), origin=(-20.0, -10.0, 15.0)) -> Volume:
    a = np.eye(4)
    a[:3, :3] = np.asarray(direction, float) * np.array([spacing[2], spacing[1], spacing[0]])[None, :]
    a[:3, 3] = origin
    return Volume(array=np.zeros(shape, np.float32), affine=a, spacing=spacing)


CORONAL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # columns: i = +x, j = -z, k = +y
SAGITTAL = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # i = +y, j = -z, k = +x


def _corners(v: Volume) -> np.ndarray:
    z, y, x = v.shape
    return v.index_to_lps(np.array([[i, j, k] for i in (-0.5, x - 0.5) for j in (-0.5, y - 0.5) for k in (-0.5, z - 0.5)]))


@pytest.mark.parametrize("direction,plane", [(CORONAL, "coronal"), (SAGITTAL, "sagittal"), (np.eye(3), "axial")])
def test_plane_and_tilt(direction, plane):
    v = _volume(direction)
    assert plane_name(v) == plane
    assert tilt_from_axial(v) == pytest.approx(0.0 if plane == "axial" else 90.0, abs=1e-6)


@pytest.mark.parametrize("direction", [CORONAL, SAGITTAL])
def test_axial_grid_covers_the_reference_with_square_axial_slices(direction):
    ref = _volume(direction)
    g = axial_grid(ref, slice_mm=3.0, max_slices=160, max_matrix=512)
    assert plane_name(g) == "axial" and tilt_from_axial(g) == 0.0
    assert np.allclose(g.affine[:3, :3], np.diag([g.spacing[2], g.spacing[1], g.spacing[0]]))  # LPS-aligned
    z, y, x = g.shape
    assert y == x and g.spacing[1] == g.spacing[2] == pytest.approx(0.7)  # the reference's finest in-plane spacing
    assert g.spacing[0] >= 3.0
    lo, hi = _corners(g).min(0), _corners(g).max(0)
    rlo, rhi = _corners(ref).min(0), _corners(ref).max(0)
    assert (lo <= rlo + 1e-6).all() and (hi >= rhi - 1e-6).all(), "the working grid must cover the reference's field"
    assert g.array.strides == (0, 0, 0), "the grid holds no voxel memory"


def test_axial_grid_limits_slices_and_matrix():
    ref = _volume(CORONAL, shape=(40, 600, 600), spacing=(3.0, 0.5, 0.5))  # 300 mm head-feet, 300 mm wide
    g = axial_grid(ref, slice_mm=1.0, max_slices=50, max_matrix=256)
    assert g.shape[0] <= 50 and g.shape[1] <= 256 and g.shape[2] <= 256


def test_mask_round_trip_through_the_working_grid():
    ref = _volume(CORONAL, shape=(30, 90, 90), spacing=(3.0, 1.0, 1.0))
    truth = np.zeros(ref.shape, np.uint8)
    zz, yy, xx = np.mgrid[: ref.shape[0], : ref.shape[1], : ref.shape[2]]
    truth[((zz - 15) * 3.0) ** 2 + (yy - 45) ** 2 + (xx - 40) ** 2 < 15**2] = 1
    g = axial_grid(ref, slice_mm=3.0, max_slices=160, max_matrix=512)
    on_grid, _ = resample_to(Volume(array=truth.astype(np.float32), affine=ref.affine, spacing=ref.spacing), g)
    back, _ = to_reference(on_grid >= 0.5, None, g, ref)
    assert back.shape == ref.shape and back.dtype == np.uint8
    assert dice(back.astype(bool), truth.astype(bool)) > 0.9


@pytest.fixture(scope="module")
def coronal_study(tmp_path_factory):
    return write_study(1000305, tmp_path_factory.mktemp("cor") / "study", t1c_plane="coronal")


def test_coronal_reference_gets_an_axial_working_grid(coronal_study):
    sv = build_study_volumes({r: list(p) for r, p in coronal_study.paths_by_role.items()})
    assert sv.reference_role == "T1C" and plane_name(sv.reference) == "coronal"
    assert sv.working is not None and sv.grid is sv.working and plane_name(sv.working) == "axial"
    assert "axial_working_grid" in [n.code for n in sv.notes]
    assert set(sv.channels) == {"T1", "T2", "T1C"}
    assert all(c.shape == sv.working.shape for c in sv.channels.values())
    mask, prob = sv.to_reference(np.ones(sv.shape, np.uint8), np.full(sv.shape, 0.5, np.float32))
    assert mask.shape == prob.shape == sv.reference.shape
    # The working grid covers the reference: a mask of ones comes back as ones everywhere.
    assert mask.all()


def test_reference_plane_setting_keeps_the_old_behaviour(coronal_study):
    settings = load_settings(None, geometry={"working_plane": "reference"})
    sv = build_study_volumes({r: list(p) for r, p in coronal_study.paths_by_role.items()}, settings.geometry)
    assert sv.working is None and sv.grid is sv.reference
    assert all(c.shape == sv.reference.shape for c in sv.channels.values())
    m = np.zeros(sv.shape, np.uint8)
    assert sv.to_reference(m)[0] is m


def test_axial_and_slightly_oblique_references_are_not_resampled(tmp_path):
    study = write_study(1000300, tmp_path / "study")  # axial T1C
    sv = build_study_volumes({r: list(p) for r, p in study.paths_by_role.items()})
    assert sv.working is None and "axial_working_grid" not in [n.code for n in sv.notes]
    tilted = load_settings(None, geometry={"axial_max_tilt_deg": 0.001})
    assert build_study_volumes({r: list(p) for r, p in study.paths_by_role.items()}, tilted.geometry).working is None  # exactly axial


def test_working_grid_settings_are_validated():
    from pgsam_node.errors import ConfigError

    for bad in ({"working_plane": "coronal"}, {"axial_max_tilt_deg": 0}, {"working_slice_mm": -1}, {"working_max_slices": 2}):
        with pytest.raises(ConfigError, match="geometry." + next(iter(bad))):
            load_settings(None, geometry=bad)


def test_bundled_model_on_a_coronal_t1c_study(coronal_study):
    """The bundled parotid model on a study whose T1C is coronal: on the axial working grid it
    segments the lesion; on the coronal slices themselves it did much worse (0.49 on this seed)."""
    from pgsam_node.inference.router import ModelRouter
    from pgsam_node.reports.parse import parse_report

    g = coronal_study.grids["T1C"]
    truth_vol = Volume(array=coronal_study.mask.astype(np.float32), affine=np.asarray(g.affine(), np.float64), spacing=g.spacing)
    scores = {}
    for plane in ("axial", "reference"):
        settings = load_settings(None, geometry={"working_plane": plane})
        sv = build_study_volumes({r: list(p) for r, p in coronal_study.paths_by_role.items()}, settings.geometry)
        truth, _ = mask_to_reference(truth_vol, sv.reference)
        findings = parse_report(coronal_study.report_text)
        model = ModelRouter.from_settings(settings.model).for_findings(findings)
        res = model.predict(sv.channels, sv.valid, findings, coronal_study.report_text, sv.grid.affine)
        mask, _ = sv.to_reference(res.mask, res.prob)
        assert mask.shape == sv.reference.shape
        scores[plane] = dice(mask.astype(bool), truth > 0)
    assert scores["axial"] > 0.7, scores
    assert scores["axial"] > scores["reference"] + 0.1, scores
