"""NIfTI training data: nnU-Net raw layout, a folder per case, reports CSV, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pgsam_node.errors import ModelError
from pgsam_node.training.nifti_data import is_nifti_dataset, load_data_folder, load_nifti_studies, nifti_to_lps

OPEN_MS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "open-ms"
SHAPE = (12, 10, 6)  # NIfTI (i, j, k)


def _affine(spacing=(1.0, 1.0, 2.0)) -> np.ndarray:
    return np.diag([spacing[0], spacing[1], spacing[2], 1.0])


def _save(path: Path, arr: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, _affine() if affine is None else affine), str(path))
    return path


def _vol(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(SHAPE).astype(np.float32) * 100


def _mask() -> np.ndarray:
    m = np.zeros(SHAPE, dtype=np.uint8)
    m[8:11, 2:5, 1:3] = 1
    return m


def _nnunet(root: Path, channels=("T1", "T2", "T1C"), cases=("CASE_001", "CASE_002")) -> Path:
    (root / "dataset.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {str(i): c for i, c in enumerate(channels)},
                                                   "labels": {"background": 0, "lesion": 1}, "file_ending": ".nii.gz"}))
    for n, case in enumerate(cases):
        for i in range(len(channels)):
            _save(root / "imagesTr" / f"{case}_{i:04d}.nii.gz", _vol(10 * n + i))
        _save(root / "labelsTr" / f"{case}.nii.gz", _mask())
    return root


def test_nnunet_layout_reads_channels_mask_and_reports(tmp_path):
    root = _nnunet(tmp_path / "Dataset001")
    csv = tmp_path / "reports.csv"
    csv.write_text('case,report_text\nCASE_002,"Mass in the left parotid gland, 2 cm, consistent with Warthin tumour."\n')
    studies, desc = load_data_folder(root, csv)
    assert [s.case_id for s in studies] == ["CASE_001", "CASE_002"] and desc.startswith("NIfTI")
    st = studies[1]
    assert set(st.volumes) == {"T1", "T2", "T1C"}
    assert st.shape == (SHAPE[2], SHAPE[1], SHAPE[0])  # (Z, Y, X) = (k, j, i)
    assert np.allclose(st.volumes["T2"], _vol(11).transpose(2, 1, 0))
    assert st.mask.sum() == _mask().sum() and st.mask[1, 2, 8] == 1
    assert st.report.startswith("Mass") and studies[0].report is None
    assert st.findings is not None and st.findings.side == "left"


def test_affine_becomes_lps(tmp_path):
    p = _save(tmp_path / "x.nii.gz", _vol(0), _affine((0.5, 0.7, 3.0)))
    arr, aff = nifti_to_lps(p)
    assert arr.shape == (SHAPE[2], SHAPE[1], SHAPE[0])
    # voxel (col=i, row=j, slice=k) -> LPS: RAS x flips sign, z keeps it.
    assert np.allclose(aff @ [2, 3, 4, 1], [-1.0, -2.1, 12.0, 1])


def test_folder_per_case_layout(tmp_path):
    for n, case in enumerate(["patientA", "patientB"]):
        for i, name in enumerate(["T1", "T1POST", "T2", "FLAIR"]):
            _save(tmp_path / "ds" / case / f"{name}.nii.gz", _vol(10 * n + i))
        _save(tmp_path / "ds" / case / "GOLD_STANDARD.nii.gz", _mask())
    assert is_nifti_dataset(tmp_path / "ds")
    studies = load_nifti_studies(tmp_path / "ds", include=["patientB"])
    assert [s.case_id for s in studies] == ["patientB"]
    assert set(studies[0].volumes) == {"T1", "T1C", "T2", "FLAIR"} and studies[0].mask.sum() == _mask().sum()


def test_missing_channel_names_the_file(tmp_path):
    root = _nnunet(tmp_path / "D")
    (root / "imagesTr" / "CASE_002_0001.nii.gz").unlink()
    with pytest.raises(ModelError, match="CASE_002_0001.nii.gz"):
        load_nifti_studies(root)


def test_unnamed_or_unknown_channel_names_the_file(tmp_path):
    root = _nnunet(tmp_path / "D")
    _save(root / "imagesTr" / "CASE_001_0003.nii.gz", _vol(99))
    with pytest.raises(ModelError, match="CASE_001_0003.nii.gz"):
        load_nifti_studies(root)
    bad = _nnunet(tmp_path / "E", channels=("T1", "DWI"))
    with pytest.raises(ModelError, match="dataset.json.*DWI"):
        load_nifti_studies(bad)


def test_mask_on_another_grid_names_the_file(tmp_path):
    root = _nnunet(tmp_path / "D")
    _save(root / "labelsTr" / "CASE_001.nii.gz", _mask(), _affine((1.0, 1.0, 1.0)))
    with pytest.raises(ModelError, match=r"CASE_001.nii.gz is on another grid"):
        load_nifti_studies(root)
    _save(root / "labelsTr" / "CASE_001.nii.gz", _mask()[:, :, :4])
    with pytest.raises(ModelError, match="another grid"):
        load_nifti_studies(root)


def test_channel_on_another_grid_names_the_file(tmp_path):
    root = _nnunet(tmp_path / "D")
    _save(root / "imagesTr" / "CASE_002_0002.nii.gz", _vol(5)[:, :, :5])
    with pytest.raises(ModelError, match="CASE_002_0002.nii.gz is on another grid"):
        load_nifti_studies(root)


def test_empty_or_missing_mask_names_the_file(tmp_path):
    root = _nnunet(tmp_path / "D")
    _save(root / "labelsTr" / "CASE_002.nii.gz", np.zeros(SHAPE, np.uint8))
    with pytest.raises(ModelError, match="CASE_002.nii.gz is empty"):
        load_nifti_studies(root)
    (root / "labelsTr" / "CASE_002.nii.gz").unlink()
    with pytest.raises(ModelError, match="CASE_002: no mask"):
        load_nifti_studies(root)


def test_reports_csv_needs_its_columns(tmp_path):
    root = _nnunet(tmp_path / "D")
    csv = tmp_path / "r.csv"
    csv.write_text("name,text\nCASE_001,x\n")
    with pytest.raises(ModelError, match="case.*report_text"):
        load_nifti_studies(root, csv)


def test_open_ms_patient_reads():
    case = OPEN_MS / "patient26"
    if not case.is_dir():
        pytest.skip(f"real data absent: {case} (see shared/data/open-ms/README.md)")
    st = load_nifti_studies(OPEN_MS, include=["patient26"])[0]
    assert set(st.volumes) >= {"T1", "T1C", "T2", "FLAIR"}
    assert st.shape == (182, 218, 182)
    assert int(st.mask.sum()) == 8227  # lesion volume given in the data set's README
    img = nib.load(str(case / "T1.nii.gz"))
    # The LPS affine describes the same physical points as the file's RAS affine.
    ijk = np.array([10, 20, 30, 1.0])
    assert np.allclose(st.affine @ ijk, np.diag([-1, -1, 1, 1]) @ img.affine @ ijk)


def test_train_and_evaluate_commands_read_nifti(tmp_path, monkeypatch):
    from pgsam_node.cli import main

    monkeypatch.chdir(tmp_path)
    root = _nnunet(tmp_path / "D")
    out = tmp_path / "model"
    assert main(["train", "--data", str(root), "--out", str(out), "--steps", "2", "--batch-size", "2", "--no-text", "--threads", "1", "--no-progress"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["training"]["data"].startswith("NIfTI studies under") and "CASE_002" in cfg["training"]["data"]
    js = tmp_path / "m.json"
    assert main(["evaluate", "--model", str(out), "--data", str(root), "--json", str(js), "--quiet", "--threads", "1"]) == 0
    assert [c["case"] for c in json.loads(js.read_text())["cases"]] == ["CASE_001", "CASE_002"]
