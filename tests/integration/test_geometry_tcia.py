"""Real TCIA studies: the three sequences and the tumour mask on the T1post grid."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from pgsam_node.config import GeometrySettings
from pgsam_node.geometry import build_study_volumes, load_series, mask_to_reference

ROLES = {"T1": "T1prereg", "T2": "T2reg", "T1C": "T1post"}


def _studies(root):
    return sorted(p for p in root.iterdir() if p.is_dir())


def test_sequences_and_mask_land_on_t1post_grid(shared_data):
    studies = _studies(shared_data)
    assert studies, f"no study folders under {shared_data}"
    for study in studies:
        series = {role: sorted((study / folder).glob("*.dcm")) for role, folder in ROLES.items()}
        sv = build_study_volumes(series, GeometrySettings())
        assert sv.reference_role == "T1C"
        t1post = load_series(series["T1C"])
        np.testing.assert_allclose(sv.reference.affine, t1post.affine)
        # slice order is by position along the normal, not InstanceNumber
        d = np.array([sv.reference.slice_position(k) @ sv.reference.normal for k in range(sv.shape[0])])
        assert np.all(np.diff(d) > 0)
        ipps = {
            ds.SOPInstanceUID: np.array(ds.ImagePositionPatient, float)
            for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in series["T1C"])
        }
        for k, uid in enumerate(sv.reference.sop_uids):
            np.testing.assert_allclose(sv.reference.slice_position(k), ipps[uid], atol=1e-4)
        assert sv.reference.spacing == pytest.approx((6.5, 0.6875, 0.6875), abs=1e-3)
        for role in ROLES:
            assert sv.channels[role].shape == sv.shape
            assert sv.valid[role].all(), role  # same grid: full coverage
            native = sv.volumes[role]
            # the resampled T1/T2 are the native pixels, voxel for voxel (same positions)
            assert native.same_grid(sv.reference)
            np.testing.assert_array_equal(sv.channels[role], native.array)
        assert sv.notes == [], sv.notes

        # the expert mask: Secondary Capture, Modality MR, with Image Plane attributes
        mask_paths = sorted((study / "MaskTumor").glob("*.dcm"))
        first = pydicom.dcmread(mask_paths[0], stop_before_pixels=True)
        assert first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and first.Modality == "MR"
        mask = load_series(mask_paths)
        assert [n.code for n in mask.warnings] == ["secondary_capture"]
        assert mask.frame_of_reference_uid == sv.reference.frame_of_reference_uid
        # rounded (6-decimal) header values: same voxel centres within 1/100 of a voxel
        corners = np.array([[0, 0, 0], [mask.shape[2] - 1, mask.shape[1] - 1, mask.shape[0] - 1]], float)
        assert np.abs(mask.index_to_lps(corners) - sv.reference.index_to_lps(corners)).max() < 0.01
        labels, valid = mask_to_reference(mask, sv.reference)
        assert valid.all()
        np.testing.assert_array_equal(labels, mask.array)
        assert set(np.unique(labels)) == {0.0, 1.0}
        tumour = labels > 0.5
        assert 100 < tumour.sum() < 0.05 * tumour.size
