"""``python -m pgsam_node ris import|lookup`` as an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from pgsam_node.db import Database, Report

from ..helpers import PROJECT_ROOT

HEADER = "accession_number,study_instance_uid,patient_id,status,report_time,report_text,version,study_date\n"
GOOD = (
    HEADER
    + 'A100,1.2.840.5.1,P1,P,2026-11-20T09:00:00,"Prelim: left parotid mass.",,20261120\n'
    + 'A100,1.2.840.5.1,P1,F,2026-11-20T12:00:00,"Left parotid: 2.3 x 1.8 cm mass, superficial lobe.\nIMPRESSION: pleomorphic adenoma.",,20261120\n'
    + 'A200,1.2.840.5.2,P2,FINAL,20261121083000,"右侧腮腺未见异常。左侧腮腺浅叶见一结节，约1.5cm，考虑沃辛瘤。",,2026-11-21\n'
)


def _run(args, cfg):
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    env.pop("PGSAM_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "pgsam_node", "ris", *args, "--config", str(cfg)],
        capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, timeout=120,
    )


def _cfg(tmp_path):
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump({"storage": {"root": str(tmp_path / "storage")}, "logging": {"level": "WARNING"}}))
    return cfg


def _rows(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'storage' / 'node.sqlite3'}")
    try:
        with db.session() as s:
            return [(r.source_key, r.version, r.status) for r in s.query(Report).order_by(Report.id)]
    finally:
        db.dispose()


def test_import_is_idempotent_and_versions(tmp_path):
    cfg = _cfg(tmp_path)
    csv_file = tmp_path / "reports.csv"
    csv_file.write_text(GOOD, encoding="utf-8")
    r = _run(["import", str(csv_file)], cfg)
    assert r.returncode == 0, r.stderr
    assert "3 row(s): 2 new report(s), 1 new version(s), 0 already present" in r.stdout
    assert _rows(tmp_path) == [("acc:A100", 1, "P"), ("acc:A100", 2, "F"), ("acc:A200", 1, "FINAL")]
    r = _run(["import", str(csv_file)], cfg)
    assert r.returncode == 0 and "0 new report(s), 0 new version(s), 3 already present" in r.stdout
    # A corrected report for A200 becomes version 2.
    csv_file.write_text(HEADER + 'A200,1.2.840.5.2,P2,C,2026-11-22T08:00:00,"Corrected: 1.6 cm.",,20261121\n', encoding="utf-8")
    assert _run(["import", str(csv_file)], cfg).returncode == 0
    assert _rows(tmp_path)[-1] == ("acc:A200", 2, "C")
    # Lookup picks the final report and prints no report text.
    r = _run(["lookup", "--accession", "A100"], cfg)
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["found"] and out["status"] == "F" and out["version"] == 2
    assert "pleomorphic" not in r.stdout + r.stderr
    r = _run(["lookup", "--accession", "NONE"], cfg)
    assert r.returncode == 1 and json.loads(r.stdout)["found"] is False


def test_bad_rows_are_named_and_nothing_is_imported(tmp_path):
    cfg = _cfg(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text(
        HEADER
        + 'A1,1.2.3,P1,F,2026-11-20T09:00:00,"fine",,20261120\n'
        + 'A2,1.2.3,P1,DRAFTISH,2026-11-20T09:00:00,"bad status",,20261120\n'
        + 'A3,1.2.x,P1,F,2026-11-20T09:00:00,"bad uid",,20261120\n'
        + 'A4,1.2.4,P1,F,yesterday,"bad time",,20261120\n'
        + 'A5,1.2.5,P1,F,2026-11-20T09:00:00,"",,20261120\n'
        + 'A6,1.2.6,P1,F,2026-11-20T09:00:00,"bad version",two,20261120\n',
        encoding="utf-8",
    )
    r = _run(["import", str(bad)], cfg)
    assert r.returncode == 2
    assert "5 bad row(s), nothing imported" in r.stderr
    for line, what in ((3, "status 'DRAFTISH'"), (4, "study_instance_uid"), (5, "report_time"), (6, "report_text is empty"), (7, "version")):
        assert f"line {line}: " in r.stderr and what in r.stderr
    assert "bad status" not in r.stderr  # no report text in errors
    assert _rows(tmp_path) == []


def test_missing_columns_and_version_conflict(tmp_path):
    cfg = _cfg(tmp_path)
    f = tmp_path / "r.csv"
    f.write_text("accession_number,patient_id,report_text\nA1,P1,x\n", encoding="utf-8")
    r = _run(["import", str(f)], cfg)
    assert r.returncode == 2 and "header lacks column(s) study_instance_uid, status, report_time" in r.stderr
    f.write_text(HEADER + 'A1,1.2.3,P1,F,2026-11-20T09:00:00,"one",1,20261120\nA1,1.2.3,P1,F,2026-11-20T10:00:00,"two",1,20261120\n')
    r = _run(["import", str(f)], cfg)
    assert r.returncode == 2 and "line 3: version 1 of this report is already stored" in r.stderr
    assert _rows(tmp_path) == []
