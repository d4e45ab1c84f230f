"""The fourth, independent phantom generator (pgsam_node.synth.fourth, held out of all training): its
studies are read by the node's own classifier, report parser and geometry stage, are deterministic
per seed, and the truth lies on the T1C grid, on the side the study names, at the size the report
states."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from pgsam_node.reports.parse import parse_report
from pgsam_node.synth.fourth import KINDS, plan_study, write_foreign_study
from tests.helpers import roles_by_headers


def _sorted_slices(folder: Path, name: str) -> list[pydicom.Dataset]:
    """A series' slices sorted along their normal, as the node sorts them."""
    dss = [pydicom.dcmread(f) for f in (folder / name).glob("*.dcm")]
    iop = np.array(dss[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(dss, key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, float), normal)))


def _lps(d: pydicom.Dataset, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """LPS positions (n, 3) of pixel (row, col) pairs of one slice."""
    iop = np.array(d.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in d.PixelSpacing)
    return np.array(d.ImagePositionPatient, float) + np.outer(c * dc, iop[:3]) + np.outer(r * dr, iop[3:])


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    base = tmp_path_factory.mktemp("fourth")
    return {seed: write_foreign_study(seed, base / f"f{seed}") for seed in (0, 11, 12)}


def test_the_classifier_finds_the_three_roles_and_the_report_names_side_and_size(studies):
    for seed, fs in studies.items():
        assert sorted(p.name for p in fs.folder.iterdir()) == ["s01", "s02", "s03"]
        roles = roles_by_headers(fs.folder)
        assert sorted(roles.values()) == ["T1", "T1C", "T2"], (seed, roles)
        assert list(roles.values()) == plan_study(seed).order  # folder names carry no role; the headers do
        f = parse_report(fs.report)
        assert f.present and f.side == fs.side and f.gland == "parotid"
        assert abs(f.size_mm - plan_study(seed).dims_mm[0]) <= 2
        assert fs.kind in KINDS and fs.lobe in ("superficial", "deep", "tail") and set(fs.fat_sat) == {"T1", "T2", "T1C"}


def test_reports_parse_to_the_stated_side_and_size_over_many_seeds():
    sides, kinds = set(), set()
    for seed in range(60):
        p = plan_study(seed)
        f = parse_report(p.report)
        assert f.side == p.side and f.gland == "parotid", (seed, p.report)
        assert f.size_mm is not None and abs(f.size_mm - p.dims_mm[0]) <= 2, (seed, f.size_mm, p.dims_mm)
        assert 6 <= p.dims_mm[0] <= 60
        sides.add(p.side)
        kinds.add(p.kind)
    assert sides == {"left", "right"} and len(kinds) >= 6


def test_the_truth_is_on_the_t1c_grid_on_the_named_side_and_of_the_stated_size(studies):
    for seed, fs in studies.items():
        name = next(n for n, r in roles_by_headers(fs.folder).items() if r == "T1C")
        t1c = _sorted_slices(fs.folder, name)
        assert fs.truth.dtype == bool and fs.truth.any()
        assert fs.truth.shape == (len(t1c), int(t1c[0].Rows), int(t1c[0].Columns))
        # LPS of every truth voxel; the body's centre from the T1C pixels on the lesion's middle slice
        pts = np.concatenate([_lps(t1c[k], *np.nonzero(fs.truth[k])) for k in np.unique(np.nonzero(fs.truth)[0])])
        km = int(round(float(np.nonzero(fs.truth)[0].mean())))
        img = t1c[km].pixel_array.astype(float)
        body = img > 0.25 * np.percentile(img, 99)
        mid = _lps(t1c[km], *np.nonzero(body))[:, 0].mean()
        x = pts[:, 0].mean() - mid
        assert (x > 0) == (fs.side == "left"), (seed, fs.side, x)  # patient left is +x in LPS
        assert abs(x) > 15  # in a parotid, not at the midline
        # in-plane extent of the mask agrees with the stated largest dimension (within the voxel size)
        ext = np.ptp(pts[:, :2], axis=0).max()
        stated = plan_study(seed).dims_mm[0]
        assert 0.6 * stated - 4 <= ext <= stated + 4, (seed, ext, stated)


def test_fat_saturation_darkens_fat_and_the_post_contrast_series_carries_evidence(studies):
    for fs in studies.values():
        roles = {r: n for n, r in roles_by_headers(fs.folder).items()}
        d = pydicom.dcmread(next((fs.folder / roles["T1C"]).glob("*.dcm")), stop_before_pixels=True)
        assert d.get("ContrastBolusAgent") or any(w in d.SeriesDescription.lower() for w in ("post", "+c", "c+", "gd"))
        t2 = pydicom.dcmread(next((fs.folder / roles["T2"]).glob("*.dcm")), stop_before_pixels=True)
        assert float(t2.RepetitionTime) > 2000 and float(t2.EchoTime) > 60
        for role in ("T2", "T1C"):
            h = pydicom.dcmread(next((fs.folder / roles[role]).glob("*.dcm")), stop_before_pixels=True)
            opts = [str(v).upper() for v in h.get("ScanOptions", [])]
            assert fs.fat_sat[role] == any(o in ("FS", "FAT_SAT") for o in opts)
    # somewhere fat is suppressed on T2 and somewhere it is not
    assert {fs.fat_sat["T2"] for fs in studies.values()} | {fs.fat_sat["T1C"] for fs in studies.values()} == {True, False}


def test_a_seed_writes_the_same_study_twice_and_two_seeds_differ(studies, tmp_path):
    a, b = studies[0], write_foreign_study(0, tmp_path / "again")
    assert a.report == b.report and np.array_equal(a.truth, b.truth) and a.kind == b.kind
    for sub in ("s01", "s02", "s03"):
        fa, fb = sorted((a.folder / sub).glob("*.dcm")), sorted((b.folder / sub).glob("*.dcm"))
        assert [p.name for p in fa] == [p.name for p in fb]
        for x, y in zip(fa, fb):
            dx, dy = pydicom.dcmread(x), pydicom.dcmread(y)
            assert dx.SOPInstanceUID == dy.SOPInstanceUID and np.array_equal(dx.pixel_array, dy.pixel_array)
    other = studies[11]
    assert other.report != a.report and other.truth.shape != a.truth.shape or not np.array_equal(other.truth, a.truth)
    uid = lambda fs: pydicom.dcmread(next((fs.folder / "s01").glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID  # noqa: E731
    assert uid(other) != uid(a)


def test_the_geometry_stage_reads_a_study(studies):
    from pgsam_node.config import load_settings
    from pgsam_node.geometry import build_study_volumes

    fs = studies[12]
    named = roles_by_headers(fs.folder)
    roles = {r: sorted((fs.folder / n).glob("*.dcm")) for n, r in named.items()}
    sv = build_study_volumes(roles, load_settings(None).geometry)
    assert set(sv.volumes) == {"T1", "T2", "T1C"}
    t1c = sv.volumes["T1C"]
    assert np.asarray(t1c.array).shape == fs.truth.shape
