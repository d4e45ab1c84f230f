"""The MR test-data factory itself: what it writes reads back unchanged, and its geometry is right."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from pgsam_node.geometry import load_series

from ..factories import Geometry, MRSeries, assert_same_dataset, mr_instance, mr_study, shuffled, write_and_read_back
from ..geometry_phantoms import AXIAL, make_affine, rotation, smooth_field, world_points

SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless, JPEGLSLossless,
            JPEG2000Lossless]


@pytest.mark.parametrize("syntax", SYNTAXES, ids=[s.name for s in SYNTAXES])
@pytest.mark.parametrize("bits", [8, 16])
def test_round_trip_in_memory_and_on_disk(tmp_path, syntax, bits):
    ds = mr_instance(index=2, bits_allocated=bits, transfer_syntax=syntax, seed=11)
    for back in (write_and_read_back(ds), write_and_read_back(ds, tmp_path / "one.dcm")):
        assert back.file_meta.TransferSyntaxUID == syntax
        assert back.SOPInstanceUID == ds.SOPInstanceUID and back.InstanceNumber == 3
        assert back.BitsAllocated == bits and back.pixel_array.dtype == (np.uint8 if bits == 8 else np.uint16)
        assert 0 < back.pixel_array.max() < (1 << int(back.BitsStored))
    if syntax == ImplicitVRLittleEndian:
        assert pydicom.dcmread(tmp_path / "one.dcm").original_encoding == (True, True)


def test_read_back_check_can_fail():
    ds = mr_instance()
    back = write_and_read_back(ds)
    back.PixelSpacing = [0.9, 0.9]
    with pytest.raises(AssertionError, match="PixelSpacing"):
        assert_same_dataset(ds, back)
    back = write_and_read_back(ds)
    back.PixelData = bytes(len(back.PixelData))
    with pytest.raises(AssertionError):
        assert_same_dataset(ds, back)
    del back.AccessionNumber
    with pytest.raises(AssertionError, match="AccessionNumber lost"):
        assert_same_dataset(ds, back)


def test_geometry_fields_and_the_loader_agree(tmp_path):
    g = Geometry(rows=20, columns=14, pixel_spacing=(0.9, 0.8), slice_spacing=3.0, origin=(-10.0, -20.0, 30.0))
    spec = MRSeries(n_slices=5, geometry=g, instance_numbers="shuffled")
    dss = spec.datasets()
    for k, ds in enumerate(dss):
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], [-10.0, -20.0, 30.0 + 3.0 * k])
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == [0.9, 0.8] and float(ds.SliceThickness) == 3.0
        assert (ds.Rows, ds.Columns) == (20, 14) and ds.pixel_array.shape == (20, 14)
    numbers = [int(d.InstanceNumber) for d in dss]
    assert sorted(numbers) == [1, 2, 3, 4, 5] and numbers != [1, 2, 3, 4, 5]
    paths = spec.write(tmp_path / "s")
    assert [pydicom.dcmread(p).SOPInstanceUID for p in paths] == [d.SOPInstanceUID for d in dss]  # slice order
    vol = load_series(paths)
    assert vol.shape == (5, 20, 14)
    np.testing.assert_allclose(vol.affine, g.affine(), atol=1e-9)
    np.testing.assert_allclose(vol.affine[:3, 0], [0.8, 0, 0])  # along a row: the column spacing
    np.testing.assert_array_equal(vol.array, np.stack([d.pixel_array for d in dss]).astype(vol.array.dtype))


def test_oblique_tilted_volume_round_trips_through_the_affine(tmp_path):
    r = rotation("z", 12) @ rotation("x", 30)
    tilt = rotation("x", 15) @ (r @ np.array([0, 0, 1.0]))
    aff = make_affine([5.0, -3.0, 10.0], r @ AXIAL[0], r @ AXIAL[1], (2.5, 1.6, 1.5), slice_dir=tilt)
    shape = (6, 18, 22)
    values = smooth_field(world_points(aff, shape)).astype(np.float32)
    spec = MRSeries.from_volume(values, aff)
    np.testing.assert_allclose(spec.geometry.affine(), aff, atol=1e-12)
    np.testing.assert_allclose(Geometry.from_affine(spec.geometry.affine(), 18, 22).affine(), aff, atol=1e-12)
    paths = spec.write(tmp_path / "t")
    in_slice_order = [f"{spec.sop_uid(k)}.dcm" for k in range(6)]
    assert [p.name for p in paths] != in_slice_order and sorted(p.name for p in paths) == sorted(in_slice_order)
    vol = load_series(paths)
    assert [n.code for n in vol.warnings] == ["gantry_tilt"]
    np.testing.assert_allclose(vol.affine, aff, atol=1e-5)
    assert np.abs(vol.array - values).max() < 0.01  # quantised with a per-slice rescale


def test_enhanced_object_holds_the_same_slices(tmp_path):
    aff = make_affine([-10.0, -12.0, 20.0], AXIAL[0], AXIAL[1], (3.0, 1.5, 1.25))
    values = smooth_field(world_points(aff, (5, 16, 18))).astype(np.float32)
    spec = MRSeries.from_volume(values, aff)
    path, order = spec.write_enhanced(tmp_path / "e.dcm")
    assert order == [4, 3, 2, 1, 0]
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4.1" and back.NumberOfFrames == 5
    assert "ImagePositionPatient" not in back and "RepetitionTime" not in back
    enh, single = load_series([path]), load_series(spec.write(tmp_path / "s"))
    np.testing.assert_array_equal(enh.array, single.array)
    np.testing.assert_allclose(enh.affine, single.affine, atol=1e-9)


def test_identity_roles_and_study():
    study = mr_study({"T1": 2, "T2": 3, "T1C": 2}, patient_id="P-9", vendor="ge")
    uids = {s.study_uid for s in study.values()}
    assert len(uids) == 1 and len({s.series_uid for s in study.values()}) == 3
    t1c = study["T1C"].datasets()
    assert len(t1c) == 2 and [int(d.SeriesNumber) for d in t1c] == [3, 3]
    assert t1c[0].ContrastBolusAgent == "Dotarem" and "ContrastBolusAgent" not in study["T1"].instance(0)
    t2 = study["T2"].instance(0)
    assert (float(t2.RepetitionTime), float(t2.EchoTime)) == (4000, 95) and t2.PatientID == "P-9"
    assert t2.Manufacturer == "GE MEDICAL SYSTEMS" and t2.SeriesDescription == "Ax T2 FRFSE FS"
    # one frame of reference per study unless told otherwise; None leaves it out
    assert t2.FrameOfReferenceUID == t1c[0].FrameOfReferenceUID
    assert "FrameOfReferenceUID" not in mr_instance(frame_of_reference_uid=None)
    # the same specification gives the same instances; a new one new UIDs
    spec = MRSeries(n_slices=2, sop_uids={1: "1.2.3.4"}, seed=3)
    a, b = spec.datasets(), spec.datasets()
    assert [d.SOPInstanceUID for d in a] == [d.SOPInstanceUID for d in b] and a[1].SOPInstanceUID == "1.2.3.4"
    assert a[0].PixelData == b[0].PixelData != a[1].PixelData
    assert mr_instance(seed=3).SOPInstanceUID != mr_instance(seed=3).SOPInstanceUID
    assert mr_instance(index=0, seed=1).PixelData != mr_instance(index=0, seed=2).PixelData
    with pytest.raises(ValueError, match="role"):
        MRSeries(role="FLAIR")


def test_numberings_and_knobs():
    assert [MRSeries(n_slices=5, instance_numbers="descending").instance_number(k) for k in range(5)] == [5, 4, 3, 2, 1]
    assert [MRSeries(n_slices=5, instance_numbers="interleaved").instance_number(k) for k in range(5)] == [1, 4, 2, 5, 3]
    assert all(shuffled(n, s) != list(range(n)) for n in (2, 3, 6) for s in range(20))
    ds = mr_instance(extra={"PatientName": "X^Y"}, modify=lambda k, d: setattr(d, "EchoTime", 12), pixels="blob",
                     rescale=(2.0, -5.0))
    assert ds.PatientName == "X^Y" and float(ds.EchoTime) == 12 and float(ds.RescaleSlope) == 2.0
    assert 200 < ds.pixel_array.mean() < 900  # the bright disc over a dark field
    with pytest.raises(ValueError, match="does not fit"):
        MRSeries(pixels=np.zeros((2, 5, 5)))
