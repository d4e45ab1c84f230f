"""Single-frame files vs one Enhanced / Legacy Converted Enhanced MR object; compressed pixels."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from pgsam_node.geometry import load_series

from ..factories import MRSeries
from ..geometry_phantoms import CORONAL, centred_affine, rotation, smooth_field, world_points

SHAPE = (12, 36, 40)  # >= 32 px: the OpenJPEG encoder needs it for its default resolution levels
_R = rotation("y", 20) @ rotation("x", 30)
AFFINE = centred_affine([3.0, -7.0, 15.0], _R @ CORONAL[0], _R @ CORONAL[1], (2.5, 1.4, 1.1), SHAPE)
UIDS = dict(study_uid="1.2.826.0.1.3680043.8.498.10", series_uid="1.2.826.0.1.3680043.8.498.11", frame_of_reference_uid="1.2.826.0.1.3680043.8.498.12")


@pytest.fixture
def values():
    return smooth_field(world_points(AFFINE, SHAPE)).astype(np.float32)


def test_enhanced_equals_single_frame(tmp_path, values):
    single = load_series(MRSeries.from_volume(values, AFFINE, **UIDS).write(tmp_path / "single"))
    order = [5, 0, 11, 3, 7, 1, 9, 2, 10, 4, 8, 6]
    path, _ = MRSeries.from_volume(values, AFFINE, **UIDS).write_enhanced(tmp_path / "enh.dcm", frame_order=order)
    enh = load_series([path])
    np.testing.assert_array_equal(enh.array, single.array)
    np.testing.assert_allclose(enh.affine, single.affine, atol=1e-9)
    assert enh.spacing == single.spacing
    assert enh.series_uid == single.series_uid and enh.frame_of_reference_uid == single.frame_of_reference_uid
    sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    assert enh.sop_uids == [sop] * SHAPE[0]
    # slice k is stored as frame order.index(k) + 1 (1-based)
    assert enh.frame_numbers == [order.index(k) + 1 for k in range(SHAPE[0])]
    assert enh.paths == [path] * SHAPE[0]
    assert single.frame_numbers == [None] * SHAPE[0]
    # per-frame rescale (PixelValueTransformationSequence in the per-frame groups) was applied
    assert np.abs(enh.array - values).max() < 0.01


def test_legacy_converted_enhanced_from_highdicom(tmp_path, values):
    """highdicom converts the single-frame files into one Legacy Converted Enhanced MR object
    (functional groups as highdicom lays them out, PS3.3 A.71); both load identically."""
    import highdicom as hd

    paths = MRSeries.from_volume(values, AFFINE, **UIDS).write(tmp_path / "single")
    single = load_series(paths)
    legacy = [pydicom.dcmread(p) for p in paths]
    for ds in legacy:  # highdicom's converter wants a few more attributes
        ds.EchoTime, ds.RepetitionTime, ds.ScanningSequence, ds.SequenceVariant = 10, 500, "SE", "NONE"
        ds.ScanOptions, ds.MRAcquisitionType, ds.ImagingFrequency, ds.MagneticFieldStrength = "", "2D", 63.9, 1.5
        ds.ContentDate, ds.ContentTime = "20260101", "120000"
    enh_ds = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=legacy,
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=2,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
    )
    out = tmp_path / "legacy.dcm"
    enh_ds.save_as(out)
    enh = load_series([out])
    np.testing.assert_array_equal(enh.array, single.array)
    np.testing.assert_allclose(enh.affine, single.affine, atol=1e-6)
    assert sorted(enh.frame_numbers) == list(range(1, SHAPE[0] + 1))
    assert enh.sop_uids == [enh_ds.SOPInstanceUID] * SHAPE[0]


def test_rle_compressed_pixels_decode_identically(tmp_path, values):
    spec = MRSeries.from_volume(values, AFFINE, **UIDS)
    plain = load_series(spec.write(tmp_path / "plain"))
    comp = replace(spec, transfer_syntax=RLELossless).write(tmp_path / "rle")  # same slices, RLE-encoded
    assert pydicom.dcmread(comp[0]).file_meta.TransferSyntaxUID == RLELossless
    vol = load_series(comp)
    np.testing.assert_array_equal(vol.array, plain.array)
    np.testing.assert_array_equal(vol.affine, plain.affine)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"])
def test_jpeg_family_lossless_decodes(tmp_path, values, syntax):
    """JPEG-LS lossless (.80) and JPEG 2000 lossless (.90), decoded through pydicom's plugins
    (pylibjpeg-libjpeg / pylibjpeg-openjpeg); encoded with whatever encoder is installed."""
    spec = MRSeries.from_volume(values, AFFINE, **UIDS)
    plain = load_series(spec.write(tmp_path / "plain"))
    try:
        comp = replace(spec, transfer_syntax=syntax).write(tmp_path / "comp")
    except Exception as exc:  # noqa: BLE001 - encoder plugin absent
        pytest.skip(f"no encoder for {syntax} installed to build the test file: {exc}")
    assert str(pydicom.dcmread(comp[0]).file_meta.TransferSyntaxUID) == syntax
    vol = load_series(comp)
    np.testing.assert_array_equal(vol.array, plain.array)
