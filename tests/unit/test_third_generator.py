"""The third, independent phantom generator (pgsam_node.synth.third, held out of training): its studies
are read by the node's own classifier and report parser, are deterministic per seed, and the truth
lies on the T1C grid on the side the study names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from pgsam_node.reports.parse import parse_report
from pgsam_node.synth.third import write_foreign_study
from tests.helpers import roles_by_headers


def _t1c_slices(folder: Path) -> list[pydicom.Dataset]:
    """The T1C series (found by the classifier), slices sorted along their normal as the node sorts them."""
    name = next(n for n, r in roles_by_headers(folder).items() if r == "T1C")
    dss = [pydicom.dcmread(f, stop_before_pixels=True) for f in (folder / name).glob("*.dcm")]
    normal = np.cross(np.array(dss[0].ImageOrientationPatient[:3], float), np.array(dss[0].ImageOrientationPatient[3:], float))
    return sorted(dss, key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, float), normal)))


def test_a_written_study_is_classified_by_its_headers_and_its_report_names_the_lesion(tmp_path):
    for seed in (0, 9):
        fs = write_foreign_study(seed, tmp_path / f"study{seed}")
        assert sorted(p.name for p in fs.folder.iterdir()) == ["s01", "s02", "s03"]
        assert sorted(roles_by_headers(fs.folder).values()) == ["T1", "T1C", "T2"]
        f = parse_report(fs.report)
        assert f.present and f.side == fs.side and f.gland == "parotid"
        t1c = _t1c_slices(fs.folder)
        assert fs.truth.shape == (len(t1c), int(t1c[0].Rows), int(t1c[0].Columns))
        assert fs.truth.any() and fs.truth.dtype == bool
        assert fs.kind and fs.lobe in ("superficial", "deep", "tail") and set(fs.fat_sat) == {"T1", "T2", "T1C"}


def test_a_seed_writes_the_same_study_twice(tmp_path):
    a, b = write_foreign_study(17, tmp_path / "a"), write_foreign_study(17, tmp_path / "b")
    assert a.report == b.report and np.array_equal(a.truth, b.truth)
    fa, fb = sorted((a.folder / "s01").glob("*.dcm")), sorted((b.folder / "s01").glob("*.dcm"))
    assert [p.name for p in fa] == [p.name for p in fb]
    assert all(np.array_equal(pydicom.dcmread(x).pixel_array, pydicom.dcmread(y).pixel_array) for x, y in zip(fa, fb))
    other = write_foreign_study(14, tmp_path / "c")
    assert other.report != a.report


def test_the_truth_lies_on_the_side_the_study_names(tmp_path):
    sides = set()
    for seed in (3, 8, 17, 19):
        fs = write_foreign_study(seed, tmp_path / f"f{seed}")
        t1c = _t1c_slices(fs.folder)
        k, r, c = (float(v.mean()) for v in np.nonzero(fs.truth))
        d = t1c[int(round(k))]
        row_dir, col_dir = np.array(d.ImageOrientationPatient[:3], float), np.array(d.ImageOrientationPatient[3:], float)
        dr, dc = (float(v) for v in d.PixelSpacing)
        lps = np.array(d.ImagePositionPatient, float) + c * dc * row_dir + r * dr * col_dir
        assert (lps[0] > 0) == (fs.side == "left"), (seed, fs.side, lps)  # patient left is +x in LPS
        assert abs(lps[0]) > 15  # in a parotid, not near the midline
        sides.add(fs.side)
    assert sides == {"left", "right"}


def test_training_cases_lie_on_one_210_mm_grid_with_the_lesion_on_the_stated_side():
    from pgsam_node.reports.parse import parse_report
    from pgsam_node.synth.third import training_case

    a, b = training_case(700_000), training_case(700_000)
    assert all(np.array_equal(a.volumes[r], b.volumes[r]) for r in ("T1", "T2", "T1C")) and a.report == b.report
    for seed in range(700_000, 700_004):
        c = training_case(seed)
        assert {v.shape for v in c.volumes.values()} == {c.mask.shape} and c.mask.shape[1:] == (128, 128)
        assert np.isclose(np.linalg.norm(c.affine[:3, 0]) * 128, 210.0)
        assert c.mask.any()
        z, y, x = np.nonzero(c.mask)
        lps_x = (c.affine @ np.array([x.mean(), y.mean(), z.mean(), 1.0]))[0]
        assert (lps_x > 0) == (c.side == "left")
        assert parse_report(c.report).side == c.side


def test_the_trainer_takes_third_generator_studies(tmp_path):
    from pgsam_node.geometry.normalize import NormParams
    from pgsam_node.training.train import synthetic_train_set

    ts = synthetic_train_set([0], ["T1", "T2", "T1C"], 128, NormParams(), tmp_path, third_generator=2)
    assert [c for c in ts.case_ids if not c.startswith("syn")][-2:] == ["third-700000", "third-700001"]
    assert all(m.any() for m in ts.masks[-2:])
