"""``pgsam-node synth``: studies, reports.csv and truth files a node and `ris import` can use."""

from __future__ import annotations

import csv
import json

import numpy as np
import pydicom
import pytest

from pgsam_node.cli import main
from pgsam_node.commands.synth_cmd import REPORT_COLUMNS


def test_synth_command_writes_studies_reports_and_truth(tmp_path, capsys):
    out = tmp_path / "synth"
    rc = main(["synth", "--out", str(out), "--cases", "2", "--seed", "40", "--language", "zh", "--vendor", "philips"])
    assert rc == 0
    with (out / "reports.csv").open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == REPORT_COLUMNS
        rows = list(reader)
    assert len(rows) == 2
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert [m["seed"] for m in manifest] == [40, 41]
    for row, m in zip(rows, manifest):
        assert row["status"] == "F"
        assert "腮腺" in row["report_text"] and "\n" in row["report_text"]  # multi-line text survives CSV
        assert row["study_instance_uid"] == m["study_instance_uid"]
        assert len(row["study_date"]) == 8 and row["report_time"][:10].replace("-", "") >= row["study_date"]
        case_dir = out / m["dir"]
        files = sorted(case_dir.glob("*/*.dcm"))
        assert len(files) >= 3 * 18
        series = set()
        for f in files[:: max(1, len(files) // 12)]:
            d = pydicom.dcmread(f, stop_before_pixels=True)
            assert d.StudyInstanceUID == row["study_instance_uid"]
            assert d.AccessionNumber == row["accession_number"] and d.PatientID == row["patient_id"]
            assert d.Manufacturer == "Philips Medical Systems"
            series.add(d.SeriesInstanceUID)
        assert series <= {s["series_instance_uid"] for s in m["series"].values()}
        # only DICOM under the case folder (storescu +sd +r stops at anything else)
        assert all(p.suffix == ".dcm" for p in case_dir.rglob("*") if p.is_file())
        truth = np.load(out / m["truth"])
        assert truth["mask"].shape == tuple(m["series"]["T1C"]["shape"]) and truth["mask"].sum() > 0
        assert truth["affine"].shape == (4, 4)
        f = m["findings"]
        assert f["side"] in ("left", "right") and f["gland"] == "parotid" and f["language"] == "zh"
    assert "wrote 2 studies" in capsys.readouterr().out


def test_synth_command_rejects_bad_counts(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--out", str(tmp_path), "--cases", "0"])
    assert exc.value.code == 2
    assert not (tmp_path / "reports.csv").exists()
