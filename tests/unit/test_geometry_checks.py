"""Every geometry check produces its reason code on a small synthetic series written as DICOM."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import generate_uid

from pgsam_node.errors import GeometryError
from pgsam_node.geometry import load_series, resample_to

from ..factories import MRSeries
from ..geometry_phantoms import AXIAL, SAGITTAL, make_affine, rotation, smooth_field, world_points

SHAPE = (8, 16, 18)
SPACING = (3.0, 1.5, 1.25)
AFF = make_affine([-10.0, -12.0, 20.0], AXIAL[0], AXIAL[1], SPACING)


def _vals(aff=AFF, shape=SHAPE):
    return smooth_field(world_points(aff, shape)).astype(np.float32)


def _positions(aff=AFF, n=SHAPE[0]):
    return np.array([aff[:3, 3] + k * aff[:3, 2] for k in range(n)])


def _codes(vol):
    return [n.code for n in vol.warnings]


def _reason(paths, **kw):
    with pytest.raises(GeometryError) as ei:
        load_series(paths, **kw)
    return ei.value.reason


def _combine(tmp_path, parts):
    """Write several grids into one series (same SeriesInstanceUID and frame of reference)."""
    series, for_uid = generate_uid(), generate_uid()
    paths = []
    for n, (aff, shape, modify) in enumerate(parts):
        spec = MRSeries.from_volume(_vals(aff, shape), aff, series_uid=series, frame_of_reference_uid=for_uid, modify=modify, seed=n)
        paths += spec.write(tmp_path / f"part{n}")
    return paths


def test_clean_series_has_no_notes(tmp_path):
    vol = load_series(MRSeries.from_volume(_vals(), AFF).write(tmp_path / "s"))
    assert vol.warnings == [] and vol.shape == SHAPE
    np.testing.assert_allclose(vol.affine, AFF, atol=1e-5)


def test_unreadable_file(tmp_path):
    bad = tmp_path / "not.dcm"
    bad.write_bytes(b"definitely not DICOM")
    assert _reason([bad]) == "unreadable"


def test_missing_geometry(tmp_path):
    def drop(k, ds):
        if k == 3:
            del ds.ImageOrientationPatient

    assert _reason(MRSeries.from_volume(_vals(), AFF, modify=drop).write(tmp_path / "s")) == "missing_geometry"


def test_files_of_two_series(tmp_path):
    a = MRSeries.from_volume(_vals(), AFF).write(tmp_path / "a")
    b = MRSeries.from_volume(_vals(), AFF).write(tmp_path / "b")
    assert _reason(a + b) == "mixed_series"


def test_single_slice(tmp_path):
    assert _reason(MRSeries.from_volume(_vals()[:1], AFF).write(tmp_path / "s")) == "single_slice"


def test_duplicate_positions(tmp_path):
    pos = _positions()
    pos[5] = pos[4]
    assert _reason(MRSeries.from_volume(_vals(), AFF, positions=pos).write(tmp_path / "s")) == "duplicate_positions"


def test_missing_slices(tmp_path):
    paths = MRSeries.from_volume(_vals(), AFF, path_order="slice").write(tmp_path / "s")
    del paths[3]  # the paths come in slice order
    assert _reason(paths) == "missing_slices"


def test_uneven_spacing(tmp_path):
    pos = _positions()
    pos[4:] += np.array([0, 0, 1.0])  # one step of 4 mm among 3 mm steps
    assert _reason(MRSeries.from_volume(_vals(), AFF, positions=pos).write(tmp_path / "s")) == "uneven_spacing"


def test_spacing_tolerance_is_respected(tmp_path):
    pos = _positions()
    pos[4:] += np.array([0, 0, 0.1])  # 3.3% longer step
    paths = MRSeries.from_volume(_vals(), AFF, positions=pos).write(tmp_path / "s")
    assert _reason(paths, spacing_tolerance=0.02) == "uneven_spacing"
    load_series(paths, spacing_tolerance=0.05)


def test_inconsistent_in_plane_positions(tmp_path):
    pos = _positions()
    pos[2] += np.array([2.0, 0, 0])  # one slice shifted sideways
    assert _reason(MRSeries.from_volume(_vals(), AFF, positions=pos).write(tmp_path / "s")) == "inconsistent_positions"


def test_localizer_frames_removed(tmp_path):
    loc_aff = make_affine([0.0, -40.0, 60.0], SAGITTAL[0], SAGITTAL[1], (5.0, 1.5, 1.5))

    def loc(k, ds):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]

    paths = _combine(tmp_path, [(AFF, SHAPE, None), (loc_aff, (3, 16, 18), loc)])
    vol = load_series(paths)
    assert _codes(vol) == ["localizer_removed"] and vol.shape == SHAPE
    only = MRSeries.from_volume(_vals(loc_aff, (3, 16, 18)), loc_aff, modify=loc).write(tmp_path / "only")
    assert _reason(only) == "localizer"


def test_mixed_orientation_keeps_largest_stack(tmp_path):
    sag = make_affine([0.0, -40.0, 60.0], SAGITTAL[0], SAGITTAL[1], (4.0, 1.5, 1.25))
    vol = load_series(_combine(tmp_path / "a", [(AFF, SHAPE, None), (sag, (4, 16, 18), None)]))
    assert _codes(vol) == ["mixed_orientation"] and vol.shape == SHAPE
    np.testing.assert_allclose(vol.affine, AFF, atol=1e-5)
    tie = _combine(tmp_path / "b", [(AFF, (4, 16, 18), None), (sag, (4, 16, 18), None)])
    assert _reason(tie) == "mixed_orientation"


def test_non_parallel_slices(tmp_path):
    # a fan: each slice tilted 1.5 degrees further about the x axis
    def tilt(k, ds):
        r = rotation("x", 1.5 * k)
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.concatenate([r @ AXIAL[0], r @ AXIAL[1]])]

    assert _reason(MRSeries.from_volume(_vals(), AFF, modify=tilt).write(tmp_path / "s")) == "non_parallel"


def test_multiple_stacks_in_one_series(tmp_path):
    other = make_affine([-10.0, -12.0, 50.0], AXIAL[0], AXIAL[1], (3.0, 1.0, 1.0))
    vol = load_series(_combine(tmp_path / "a", [(AFF, SHAPE, None), (other, (5, 20, 20), None)]))
    assert _codes(vol) == ["multiple_stacks"] and vol.shape == SHAPE
    tie = _combine(tmp_path / "b", [(AFF, (5, 16, 18), None), (other, (5, 20, 20), None)])
    assert _reason(tie) == "multiple_stacks"


def test_frame_of_reference_mixed_inside_series(tmp_path):
    def fr(k, ds):
        if k % 2:
            ds.FrameOfReferenceUID = "1.2.3.999"

    assert _reason(MRSeries.from_volume(_vals(), AFF, modify=fr).write(tmp_path / "s")) == "frame_of_reference_mixed"


def test_no_frame_of_reference_is_noted(tmp_path):
    vol = load_series(MRSeries.from_volume(_vals(), AFF, frame_of_reference_uid=None).write(tmp_path / "s"))
    assert _codes(vol) == ["no_frame_of_reference"] and vol.frame_of_reference_uid is None


def test_gantry_tilt_is_noted_and_resampled_exactly(tmp_path):
    # slices stepped 20 degrees off the normal (CT-style gantry tilt): a sheared grid
    step_dir = rotation("x", 20) @ np.array([0, 0, 1.0])
    shape = (24, 40, 44)
    tilted = make_affine([-30.0, -30.0, -10.0], AXIAL[0], AXIAL[1], (2.0, 1.5, 1.4), slice_dir=step_dir)
    vol = load_series(MRSeries.from_volume(_vals(tilted, shape), tilted).write(tmp_path / "t"))
    assert _codes(vol) == ["gantry_tilt"]
    np.testing.assert_allclose(vol.affine, tilted, atol=1e-5)
    ref_aff = make_affine([-20.0, -20.0, 0.0], AXIAL[0], AXIAL[1], (2.5, 1.6, 1.6))
    ref = load_series(MRSeries.from_volume(_vals(ref_aff, (10, 20, 20)), ref_aff).write(tmp_path / "r"))
    values, valid = resample_to(vol, ref)
    truth = smooth_field(world_points(ref.affine, ref.shape))
    assert valid.mean() > 0.5
    assert np.abs(values - truth)[valid].max() < 2.0


def test_multiframe_without_functional_groups(tmp_path):
    def multi(k, ds):
        ds.NumberOfFrames = 2
        ds.PixelData = ds.PixelData * 2

    paths = MRSeries.from_volume(_vals()[:2], AFF, modify=multi).write(tmp_path / "s")
    assert _reason(paths) == "missing_geometry"


def test_enhanced_frame_without_position(tmp_path):
    import pydicom

    path, _ = MRSeries.from_volume(_vals(), AFF).write_enhanced(tmp_path / "e.dcm")
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence
    ds.save_as(path)
    assert _reason([path]) == "missing_geometry"


def test_enhanced_localizer_frame_type(tmp_path):
    import pydicom

    path, order = MRSeries.from_volume(_vals(), AFF).write_enhanced(tmp_path / "e.dcm")  # frame 1 = top slice
    ds = pydicom.dcmread(path)
    ds.PerFrameFunctionalGroupsSequence[0].MRImageFrameTypeSequence[0].FrameType = ["ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"]
    ds.save_as(path)
    vol = load_series([path])
    assert _codes(vol) == ["localizer_removed"] and vol.shape[0] == SHAPE[0] - 1
    assert 1 not in vol.frame_numbers


def test_invalid_orientation_and_spacing(tmp_path):
    def skew(k, ds):
        ds.ImageOrientationPatient = [1, 0, 0, 0.3, 0.95, 0]

    assert _reason(MRSeries.from_volume(_vals(), AFF, modify=skew).write(tmp_path / "a")) == "invalid_orientation"

    def zero(k, ds):
        ds.PixelSpacing = [0, 1.25]

    assert _reason(MRSeries.from_volume(_vals(), AFF, modify=zero).write(tmp_path / "b")) == "invalid_spacing"


def test_secondary_capture_with_plane_attributes_is_noted(tmp_path):
    def sc(k, ds):
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"

    vol = load_series(MRSeries.from_volume(_vals(), AFF, modify=sc).write(tmp_path / "s"))
    assert _codes(vol) == ["secondary_capture"]
    np.testing.assert_allclose(vol.affine, AFF, atol=1e-5)


def test_two_echoes_in_one_series_name_the_varying_attribute(tmp_path):
    series, for_uid = generate_uid(), generate_uid()

    def echo(te):
        def f(k, ds):
            ds.EchoTime = te

        return f

    paths = MRSeries.from_volume(_vals(), AFF, series_uid=series, frame_of_reference_uid=for_uid, modify=echo(12)).write(tmp_path / "e1")
    paths += MRSeries.from_volume(_vals(), AFF, series_uid=series, frame_of_reference_uid=for_uid, modify=echo(90), seed=3).write(tmp_path / "e2")
    with pytest.raises(GeometryError) as ei:
        load_series(paths)
    assert ei.value.reason == "duplicate_positions"
    assert "EchoTime" in str(ei.value) and f"{SHAPE[0]} of {SHAPE[0]} positions" in str(ei.value)


def test_enhanced_stack_ids_are_separate_stacks(tmp_path):
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    # one slab of 8 slices and, further up, a second slab of 3 slices with the same matrix
    aff2 = AFF.copy()
    aff2[:3, 3] += [0, 0, 60.0]
    vals = np.concatenate([_vals(), _vals(aff2, (3,) + SHAPE[1:])])
    positions = np.concatenate([_positions(), _positions(aff2, 3)])
    step_aff = AFF.copy()
    path, order = MRSeries.from_volume(vals, step_aff).write_enhanced(tmp_path / "e.dcm", frame_order=list(range(11)))
    ds = pydicom.dcmread(path)
    for n, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
        fg.PlanePositionSequence[0].ImagePositionPatient = [f"{v:.6f}" for v in positions[n]]
        fc = Dataset()
        fc.StackID = "1" if n < 8 else "2"
        fc.InStackPositionNumber = (n if n < 8 else n - 8) + 1
        fg.FrameContentSequence = Sequence([fc])
    ds.save_as(path)
    vol = load_series([path])
    assert _codes(vol) == ["multiple_stacks"] and vol.shape == SHAPE
    assert vol.frame_numbers == list(range(1, 9))
    np.testing.assert_allclose(vol.affine, AFF, atol=1e-5)
