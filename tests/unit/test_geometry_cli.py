"""``pgsam-node geometry inspect|study`` on synthetic DICOM series."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from pgsam_node.cli import main

from ..factories import MRSeries
from ..geometry_phantoms import AXIAL, CORONAL, make_affine, smooth_field, world_points
from ..helpers import PROJECT_ROOT

AX = make_affine([-10.0, -12.0, 20.0], AXIAL[0], AXIAL[1], (3.0, 1.5, 1.25))
COR = make_affine([-12.0, -15.0, 45.0], CORONAL[0], CORONAL[1], (2.0, 1.5, 1.5))


def _series(path, aff, shape, **kw):
    return MRSeries.from_volume(smooth_field(world_points(aff, shape)).astype(np.float32), aff, **kw).write(path)


def _json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_inspect_reports_each_series(tmp_path, capsys):
    _series(tmp_path / "in" / "good", AX, (6, 12, 14))
    _series(tmp_path / "in" / "bad", AX, (1, 12, 14))
    (tmp_path / "in" / "README.txt").write_text("not dicom")
    rc = main(["geometry", "inspect", str(tmp_path / "in")])
    out = _json_lines(capsys.readouterr().out)
    assert rc == 2
    by_ok = {o.get("ok"): o for o in out if "ok" in o}
    assert by_ok[True]["shape_zyx"] == [6, 12, 14] and by_ok[True]["files"] == 6
    assert by_ok[False]["reason"] == "single_slice"
    assert {"skipped_non_dicom": 1} in out


def test_study_command_subprocess(tmp_path):
    for_uid = "1.2.826.0.1.3680043.8.498.77"
    _series(tmp_path / "t1c", AX, (6, 12, 14), frame_of_reference_uid=for_uid)
    _series(tmp_path / "t2", COR, (10, 16, 20), frame_of_reference_uid=for_uid)
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    cmd = [sys.executable, "-m", "pgsam_node", "geometry", "study", "--role", f"T1C={tmp_path / 't1c'}", "--role", f"T2={tmp_path / 't2'}"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["reference_role"] == "T1C" and out["reference"]["shape_zyx"] == [6, 12, 14]
    assert out["coverage"]["T1C"] == 1.0 and 0 < out["coverage"]["T2"] <= 1.0
    # different frames of reference: under the default "drop" policy that role is left out ...
    _series(tmp_path / "t1", AX, (6, 12, 14), frame_of_reference_uid="1.2.3.4")
    res = subprocess.run(cmd + ["--role", f"T1={tmp_path / 't1'}"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(out["coverage"]) == {"T1C", "T2"} and any("frame_of_reference_mismatch" in n for n in out["notes"])
    # ... and under "refuse" the study is refused
    cfg = tmp_path / "refuse.yaml"
    cfg.write_text("geometry:\n  frame_of_reference_policy: refuse\n")
    res = subprocess.run(cmd + ["--role", f"T1={tmp_path / 't1'}", "--config", str(cfg)], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert json.loads(res.stdout.strip().splitlines()[-1])["reason"] == "frame_of_reference_mismatch"


def test_study_command_prints_the_fat_saturation_scores(tmp_path, capsys):
    from pgsam_node.synth.dicom_writer import write_study
    from pgsam_node.synth.phantom import make_phantom

    for off in (0.0, 1.0):
        study = write_study(make_phantom(1000402, fat_sat_off=off), tmp_path / f"s{off}")
        roles = [f"--role={r}={study.paths_by_role[r][0].parent}" for r in ("T1", "T2", "T1C")]
        assert main(["geometry", "study", *roles]) == 0
        ranks = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["fat_rank"]
        assert set(ranks) == {"T2", "T1C"}
        assert all((v > 0.5) == bool(off) for v in ranks.values()), (off, ranks)
    # Without a T1 the check cannot tell.
    assert main(["geometry", "study", f"--role=T1C={study.paths_by_role['T1C'][0].parent}"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["fat_rank"] == {"T2": None, "T1C": None}
