"""Training/evaluation studies from real DICOM folders (TCIA Brain-Tumor-Progression)."""

from __future__ import annotations

import numpy as np
import pytest

from pgsam_node.errors import ModelError
from pgsam_node.training.dicom_data import load_dicom_studies, read_reports_csv


def test_load_tcia_studies_with_mask_and_reports(shared_data, tmp_path):
    csv_path = tmp_path / "reports.csv"
    csv_path.write_text("study,report\nPGBM-001_19911119,Enhancing mass in the left frontal lobe.\n", encoding="utf-8")
    studies = load_dicom_studies(shared_data, csv_path)
    assert [s.case_id for s in studies] == ["PGBM-001_19911119", "PGBM-003_19950329"]
    for st in studies:
        assert set(st.volumes) == {"T1", "T2", "T1C"}
        z, y, x = st.shape
        assert st.mask.shape == (z, y, x) and st.mask.dtype == np.uint8
        assert 100 < int(st.mask.sum()) < st.mask.size // 10
        assert all(v.shape == (z, y, x) for v in st.valid.values())
        sz, sy, sx = st.spacing_zyx
        assert sy == pytest.approx(0.6875, abs=1e-3) and sz > 4
    assert studies[0].report.startswith("Enhancing mass") and studies[1].report is None


def test_reports_csv_needs_columns(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,text\n1,x\n")
    with pytest.raises(ModelError, match="'study' and 'report'"):
        read_reports_csv(bad)
    with pytest.raises(ModelError, match="does not exist"):
        load_dicom_studies(tmp_path / "nope")
