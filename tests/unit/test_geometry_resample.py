"""Analytic phantoms written as DICOM, loaded with load_series and resampled onto another grid."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from pgsam_node.config import GeometrySettings
from pgsam_node.errors import GeometryError
from pgsam_node.geometry import build_study_volumes, load_series, mask_to_reference, resample_to

from ..factories import MRSeries
from ..geometry_phantoms import (
    AXIAL,
    CORONAL,
    SAGITTAL,
    centred_affine,
    rotation,
    smooth_field,
    sphere,
    world_points,
)

CENTRE = np.array([5.0, -3.0, 10.0])
SPHERE_CENTRE = np.array([8.0, -5.0, 12.0])
SPHERE_R = 18.0

# (row direction, column direction, spacing (z, y, x) mm, shape (Z, Y, X))
_OBL = rotation("z", 12) @ rotation("x", 30)
GRIDS = {
    "axial": (AXIAL[0], AXIAL[1], (3.0, 2.0, 1.8), (26, 50, 54)),
    "coronal": (CORONAL[0], CORONAL[1], (2.6, 1.7, 1.8), (42, 52, 60)),
    "oblique30": (_OBL @ AXIAL[0], _OBL @ AXIAL[1], (2.5, 1.6, 1.5), (30, 56, 60)),
    "sagittal": (SAGITTAL[0], SAGITTAL[1], (2.2, 1.9, 2.1), (44, 44, 50)),
    # a smaller field of view than every other grid: partial coverage
    "small_fov": (AXIAL[0], AXIAL[1], (2.0, 1.25, 1.25), (24, 48, 40)),
}


def _affine(name):
    r, c, sp, sh = GRIDS[name]
    return centred_affine(CENTRE, r, c, sp, sh)


def _write(tmp_path, name, func):
    r, c, sp, sh = GRIDS[name]
    aff = _affine(name)
    values = func(world_points(aff, sh))
    return MRSeries.from_volume(values.astype(np.float32), aff, seed=hash(name) % 1000).write(tmp_path / name), aff


def test_loader_follows_dicom_plane_equation(tmp_path):
    """One hand-checked slice pair against PS3.3 C.7.6.2.1.1 and highdicom's own transform."""
    import highdicom as hd

    aff = np.eye(4)
    aff[:3, 0] = [3.0, 0, 0]  # row direction x, column spacing 3 mm
    aff[:3, 1] = [0, 2.0, 0]  # column direction y, row spacing 2 mm
    aff[:3, 2] = [0, 0, 4.0]
    aff[:3, 3] = [10, 20, 30]
    arr = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    vol = load_series(MRSeries.from_volume(arr.astype(np.uint16), aff).write(tmp_path / "s"))
    assert vol.shape == (2, 3, 5)
    assert vol.spacing == pytest.approx((4.0, 2.0, 3.0))
    np.testing.assert_allclose(vol.index_to_lps([1, 0, 0]), [13, 20, 30], atol=1e-6)
    np.testing.assert_allclose(vol.index_to_lps([0, 1, 0]), [10, 22, 30], atol=1e-6)
    np.testing.assert_allclose(vol.index_to_lps([0, 0, 1]), [10, 20, 34], atol=1e-6)
    np.testing.assert_array_equal(vol.array, arr)  # array[k, j, i]: row j, column i
    t = hd.spatial.PixelToReferenceTransformer(
        image_position=[10, 20, 30], image_orientation=[1, 0, 0, 0, 1, 0], pixel_spacing=[2.0, 3.0]
    )
    pts = np.array([[0, 0], [4, 2], [1, 2]], dtype=int)  # (column, row)
    np.testing.assert_allclose(t(pts), vol.index_to_lps(np.c_[pts, np.zeros(3)]), atol=1e-6)
    back = vol.lps_to_index(vol.index_to_lps(np.array([[1.5, 2.25, 0.5]])))
    np.testing.assert_allclose(back, [[1.5, 2.25, 0.5]], atol=1e-9)


@pytest.mark.parametrize("name", ["axial", "coronal", "oblique30", "sagittal"])
def test_loaded_affine_matches_written_grid(tmp_path, name):
    paths, aff = _write(tmp_path, name, smooth_field)
    vol = load_series(paths)
    np.testing.assert_allclose(vol.affine, aff, atol=1e-4)
    assert np.linalg.det(vol.affine[:3, :3]) > 0
    expected = smooth_field(world_points(aff, GRIDS[name][3]))
    # only quantisation (60000 levels per slice) separates stored and analytic values
    assert np.abs(vol.array - expected).max() < 0.01
    assert vol.frame_numbers == [None] * vol.shape[0]
    assert len(set(vol.sop_uids)) == vol.shape[0]
    # the files are listed in slice order: file k holds slice k's position
    positions = [[float(v) for v in pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient] for p in vol.paths]
    np.testing.assert_allclose(positions, [aff[:3, 3] + k * aff[:3, 2] for k in range(vol.shape[0])], atol=1e-4)


# Maximum absolute / RMS error of trilinear resampling of smooth_field (range ~40..160) at
# reference voxels whose position lies strictly inside the source's sample lattice.
MAX_ERR = 0.6
RMS_ERR = 0.2


@pytest.mark.parametrize(
    "src,ref",
    [("coronal", "axial"), ("oblique30", "axial"), ("axial", "oblique30"), ("sagittal", "coronal"), ("small_fov", "axial")],
)
def test_smooth_field_resampled_matches_function(tmp_path, src, ref):
    src_vol = load_series(_write(tmp_path, src, smooth_field)[0])
    ref_vol = load_series(_write(tmp_path, ref, smooth_field)[0])
    values, valid = resample_to(src_vol, ref_vol)
    assert values.shape == ref_vol.shape and valid.shape == ref_vol.shape
    assert values.dtype == np.float32 and valid.dtype == bool
    pts = world_points(ref_vol.affine, ref_vol.shape)
    idx = src_vol.lps_to_index(pts.reshape(-1, 3)).reshape(pts.shape)
    lim = np.array(src_vol.shape[::-1]) - 1
    interior = np.all((idx >= 0) & (idx <= lim), axis=-1)
    inside = np.all((idx >= -0.5 + 1e-3) & (idx <= lim + 0.5 - 1e-3), axis=-1)
    outside = ~np.all((idx >= -0.5 - 1e-3) & (idx <= lim + 0.5 + 1e-3), axis=-1)
    assert valid[inside].all() and not valid[outside].any()
    assert interior.sum() > 5000
    err = np.abs(values - smooth_field(pts))[interior]
    assert err.max() < MAX_ERR, err.max()
    assert np.sqrt(np.mean(err**2)) < RMS_ERR
    assert np.all(values[~valid] == 0)
    if src == "small_fov":
        assert 0.05 < valid.mean() < 0.9  # partial coverage is reported, not hidden


def _centroid_and_volume(vol_affine, shape, mask):
    pts = world_points(vol_affine, shape)[mask]
    voxel = abs(np.linalg.det(vol_affine[:3, :3]))
    return pts.mean(axis=0), mask.sum() * voxel


@pytest.mark.parametrize("src,ref", [("coronal", "axial"), ("oblique30", "axial"), ("axial", "oblique30"), ("sagittal", "coronal")])
def test_sphere_keeps_centre_and_volume(tmp_path, src, ref):
    ball = lambda p: 100 * sphere(p, SPHERE_CENTRE, SPHERE_R, edge_mm=2.0)  # noqa: E731
    src_vol = load_series(_write(tmp_path, src, ball)[0])
    ref_vol = load_series(_write(tmp_path, ref, ball)[0])
    values, valid = resample_to(src_vol, ref_vol)
    centre, volume = _centroid_and_volume(ref_vol.affine, ref_vol.shape, values > 50)
    true_volume = 4 / 3 * np.pi * SPHERE_R**3
    assert abs(volume - true_volume) / true_volume < 0.03
    # centre within half a reference voxel along each grid axis
    off = ref_vol.lps_to_index(centre) - ref_vol.lps_to_index(SPHERE_CENTRE)
    assert np.all(np.abs(off) < 0.5), off
    # nearest-neighbour label resampling of the binary ball keeps it too
    labels_src = src_vol
    labels_src.array = (src_vol.array > 50).astype(np.float32)
    labels, lvalid = mask_to_reference(labels_src, ref_vol)
    assert set(np.unique(labels)) <= {0.0, 1.0}
    centre_n, volume_n = _centroid_and_volume(ref_vol.affine, ref_vol.shape, labels > 0.5)
    assert abs(volume_n - true_volume) / true_volume < 0.03
    assert np.all(np.abs(ref_vol.lps_to_index(centre_n) - ref_vol.lps_to_index(SPHERE_CENTRE)) < 0.5)


def test_same_grid_is_exact_copy(tmp_path):
    paths, _ = _write(tmp_path, "oblique30", smooth_field)
    vol = load_series(paths)
    values, valid = resample_to(vol, vol)
    np.testing.assert_array_equal(values, vol.array)
    assert valid.all()
    labels, lvalid = mask_to_reference(vol, vol)
    np.testing.assert_array_equal(labels, vol.array)


def test_chunked_resampling_equals_unchunked(tmp_path, monkeypatch):
    from pgsam_node.geometry import resample as mod

    src = load_series(_write(tmp_path, "coronal", smooth_field)[0])
    ref = load_series(_write(tmp_path, "oblique30", smooth_field)[0])
    whole, wvalid = resample_to(src, ref)
    monkeypatch.setattr(mod, "CHUNK_VOXELS", 56 * 60 * 3)  # 3 reference slices per chunk
    parts, pvalid = resample_to(src, ref)
    np.testing.assert_array_equal(whole, parts)
    np.testing.assert_array_equal(wvalid, pvalid)


def test_build_study_volumes_puts_roles_on_reference_grid(tmp_path):
    study_uid, for_uid = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"

    def write(name, func, sub):
        r, c, sp, sh = GRIDS[name]
        aff = _affine(name)
        values = func(world_points(aff, sh)).astype(np.float32)
        return MRSeries.from_volume(values, aff, study_uid=study_uid, frame_of_reference_uid=for_uid).write(tmp_path / sub)

    t1c = write("axial", smooth_field, "t1c")
    t2 = write("coronal", lambda p: 2 * smooth_field(p), "t2")
    t1 = write("small_fov", lambda p: smooth_field(p) - 10, "t1")
    sv = build_study_volumes({"T1": t1, "T2": t2, "T1C": t1c}, GeometrySettings())
    assert sv.reference_role == "T1C"
    assert list(sv.channels) == ["T1C", "T2", "T1"]
    ref = sv.reference
    for role in sv.channels:
        assert sv.channels[role].shape == ref.shape and sv.channels[role].dtype == np.float32
        assert sv.valid[role].shape == ref.shape and sv.valid[role].dtype == bool
    np.testing.assert_array_equal(sv.channels["T1C"], ref.array)
    assert sv.valid["T1C"].all()
    pts = world_points(ref.affine, ref.shape)
    truth = smooth_field(pts)
    # T2 covers the whole reference FOV; compare away from its outer half-voxel
    inner = sv.valid["T2"]
    assert inner.mean() > 0.95
    assert np.abs(sv.channels["T2"] - 2 * truth)[inner].mean() < 0.5
    assert 0 < sv.valid["T1"].mean() < 0.9
    assert any(n.code == "partial_coverage" for n in sv.notes) == (sv.valid["T1"].mean() < 0.5)

    # missing reference role: T2 becomes the reference
    sv2 = build_study_volumes({"T1": t1, "T2": t2}, GeometrySettings())
    assert sv2.reference_role == "T2" and set(sv2.channels) == {"T1", "T2"}
    # different reference priority from settings
    sv3 = build_study_volumes({"T1": t1, "T2": t2, "T1C": t1c}, GeometrySettings(reference_roles=["T1", "T2", "T1C"]))
    assert sv3.reference_role == "T1" and sv3.shape == GRIDS["small_fov"][3]


def test_frame_of_reference_policy(tmp_path):
    aff = _affine("axial")
    vals = smooth_field(world_points(aff, GRIDS["axial"][3])).astype(np.float32)
    a = MRSeries.from_volume(vals, aff, frame_of_reference_uid="1.2.3.4").write(tmp_path / "a")
    aff2 = _affine("coronal")
    vals2 = smooth_field(world_points(aff2, GRIDS["coronal"][3])).astype(np.float32)
    b = MRSeries.from_volume(vals2, aff2, frame_of_reference_uid="1.2.3.5").write(tmp_path / "b")
    with pytest.raises(GeometryError) as ei:
        build_study_volumes({"T1C": a, "T2": b}, GeometrySettings(frame_of_reference_policy="refuse"))
    assert ei.value.reason == "frame_of_reference_mismatch"
    sv = build_study_volumes({"T1C": a, "T2": b}, GeometrySettings(frame_of_reference_policy="continue"))
    assert set(sv.channels) == {"T1C", "T2"}
    assert [n.code for n in sv.notes] == ["frame_of_reference_mismatch"]
    # The default: that sequence is dropped and the study goes on with the reference.
    sv = build_study_volumes({"T1C": a, "T2": b})
    assert set(sv.channels) == {"T1C"}
    assert [n.code for n in sv.notes] == ["frame_of_reference_mismatch"] and "role dropped" in sv.notes[0].message
    # Neither has one: nothing says they differ, so both are kept (refuse still refuses).
    c = MRSeries.from_volume(vals, aff, frame_of_reference_uid=None).write(tmp_path / "c")
    d = MRSeries.from_volume(vals2, aff2, frame_of_reference_uid=None).write(tmp_path / "d")
    sv = build_study_volumes({"T1C": c, "T2": d})
    assert set(sv.channels) == {"T1C", "T2"} and "frame_of_reference_unknown" in [n.code for n in sv.notes]
    with pytest.raises(GeometryError):
        build_study_volumes({"T1C": c, "T2": d}, GeometrySettings(frame_of_reference_policy="refuse"))
    # Only one lacks it: dropped.
    assert set(build_study_volumes({"T1C": a, "T2": d}).channels) == {"T1C"}


def test_unusable_role_is_dropped_with_its_reason(tmp_path):
    aff = _affine("axial")
    vals = smooth_field(world_points(aff, GRIDS["axial"][3])).astype(np.float32)
    good = MRSeries.from_volume(vals, aff, frame_of_reference_uid="1.2.3.4").write(tmp_path / "good")
    bad = MRSeries.from_volume(vals[:1], aff, frame_of_reference_uid="1.2.3.4").write(tmp_path / "bad")  # one slice
    sv = build_study_volumes({"T1C": bad, "T2": good}, GeometrySettings())
    assert sv.reference_role == "T2" and set(sv.channels) == {"T2"}
    assert [n.code for n in sv.notes] == ["single_slice"]
    with pytest.raises(GeometryError) as ei:
        build_study_volumes({"T1C": bad}, GeometrySettings())
    assert ei.value.reason == "single_slice"
    with pytest.raises(GeometryError) as ei:
        build_study_volumes({}, GeometrySettings())
    assert ei.value.reason == "no_sequences"


def test_volume_helpers(tmp_path):
    paths, aff = _write(tmp_path, "oblique30", smooth_field)
    vol = load_series(paths)
    mask = (vol.array > 100).astype(np.uint8)
    mv = vol.with_array(mask)
    assert mv.array.dtype == np.uint8 and mv.sop_uids == vol.sop_uids and mv.same_grid(vol)
    mv.sop_uids.append("x")
    assert len(vol.sop_uids) == vol.shape[0]  # lists are copies
    with pytest.raises(ValueError):
        vol.with_array(mask[1:])
    s = vol.geometry_summary()
    assert s["shape_zyx"] == list(GRIDS["oblique30"][3])
    np.testing.assert_allclose(s["spacing_zyx_mm"], GRIDS["oblique30"][2], atol=1e-5)
    np.testing.assert_allclose(vol.normal, np.cross(vol.row_direction, vol.column_direction))
    np.testing.assert_allclose(vol.slice_position(3), aff[:3, 3] + 3 * aff[:3, 2], atol=1e-4)


@pytest.mark.gpu
def test_cuda_resampling_matches_cpu(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    src = load_series(_write(tmp_path, "coronal", smooth_field)[0])
    ref = load_series(_write(tmp_path, "oblique30", smooth_field)[0])
    cpu, cvalid = resample_to(src, ref)
    gpu, gvalid = resample_to(src, ref, device="cuda")
    assert (cvalid != gvalid).mean() < 1e-4  # float32 rounding at the footprint edge only
    both = cvalid & gvalid
    assert np.abs(cpu - gpu)[both].max() < 1e-3
