"""SEG from the real TCIA study (T1post grid, expert MaskTumor pixels as the mask): highdicom
round trip, dciodvfy, and dcmqi's segimage2itkimage back to NIfTI compared voxel for voxel."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from pgsam_node.config import load_settings
from pgsam_node.encode import algorithm_info, build_outputs, build_seg, load_sources, segment_codes_for, validate_seg
from pgsam_node.findings import Findings

from ..dicom_tools import assert_dciodvfy_clean, seg_to_nifti_mask_on_grid

ALG = algorithm_info("a1b2c3d4e5f6" * 5)


def _z_sorted(folder):
    dss = [(p, pydicom.dcmread(p)) for p in sorted(folder.glob("*.dcm"))]
    iop = np.asarray(dss[0][1].ImageOrientationPatient, float)
    n = np.cross(iop[:3], iop[3:])
    dss.sort(key=lambda t: float(np.dot(n, np.asarray(t[1].ImagePositionPatient, float))))
    return dss


def _real_case(study_dir):
    t1c = _z_sorted(study_dir / "T1post")
    masks = _z_sorted(study_dir / "MaskTumor")
    # match mask slices to the T1post slices by position (same grid in this collection)
    mask = np.zeros((len(t1c), int(t1c[0][1].Rows), int(t1c[0][1].Columns)), np.uint8)
    pos = np.array([np.asarray(d.ImagePositionPatient, float) for _, d in t1c])
    for _, m in masks:
        z = int(np.argmin(np.linalg.norm(pos - np.asarray(m.ImagePositionPatient, float), axis=1)))
        assert np.linalg.norm(pos[z] - np.asarray(m.ImagePositionPatient, float)) < 0.01
        mask[z] = m.pixel_array > 0
    return [p for p, _ in t1c], [d for _, d in t1c], mask


@pytest.mark.parametrize("study", ["PGBM-001_19911119", "PGBM-003_19950329"])
def test_real_seg_roundtrip_dciodvfy_dcmqi(shared_data, tmp_path, study):
    paths, dss, mask = _real_case(shared_data / study)
    assert mask.sum() > 100
    s = load_settings(None, storage={"root": str(tmp_path / "s")})
    codes = segment_codes_for(s, {"segment_codes": {"anatomy": {"value": "12738006", "meaning": "Brain"}}})
    seg = build_seg(mask, paths, Findings(present=True, side="left"), s, ALG, 1, codes=codes)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == dss[0].SeriesInstanceUID
    validate_seg(seg, mask, load_sources(paths))
    out = tmp_path / "seg.dcm"
    seg.save_as(out, enforce_file_format=True)
    warnings = assert_dciodvfy_clean(out)
    print("dciodvfy warnings:", warnings)
    back = seg_to_nifti_mask_on_grid(out, tmp_path / "nifti", dss)
    assert back.sum() == mask.sum()
    assert np.array_equal(back, mask), f"{int((back != mask).sum())} voxels differ after dcmqi"


def test_real_all_outputs_dciodvfy(shared_data, tmp_path):
    paths, dss, mask = _real_case(shared_data / "PGBM-001_19911119")
    s = load_settings(None, storage={"root": str(tmp_path / "s")},
                      seg={"fractional": True, "structured_report": True, "overlay_series": True})
    prob = mask.astype(np.float32) * 0.75
    outs = build_outputs(mask, paths, Findings(present=True, side="right"), s, ALG, 2, prob=prob)
    assert len(outs) == 3 + len(paths)
    for i, o in enumerate(outs):
        p = tmp_path / f"o{i}.dcm"
        o.save_as(p, enforce_file_format=True)
        assert_dciodvfy_clean(p)
