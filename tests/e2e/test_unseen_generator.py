"""A study from the third phantom generator, which no model has trained on, through the real
node: its series folders say nothing of their roles (the headers do: Philips-style
``T1W_mDIXON_W_GD`` post-contrast, a T2 tilted by a few degrees, rescale slopes), its report is in
another wording, and the SEG the PACS receives must lie on the post-contrast T1 and cover the
generator's truth."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pydicom
from pydicom import dcmread

from pgsam_node.db.models import Run, Series, Study
from pgsam_node.encode.read import read_seg_mask
from pgsam_node.synth.third import write_foreign_study
from pgsam_node.training.metrics import dice

from ..dicom_tools import assert_dciodvfy_clean
from .test_protocol_variants import processed


def test_a_study_of_an_unseen_generator_through_the_node(tmp_path, node_settings):
    seed = 7
    fs = write_foreign_study(seed, tmp_path / "study")
    by_folder = {sub.name: sorted(sub.glob("*.dcm")) for sub in sorted(fs.folder.iterdir()) if sub.is_dir()}
    first = {name: dcmread(paths[0], stop_before_pixels=True) for name, paths in by_folder.items()}
    tilted = [n for n, ds in first.items() if abs(float(ds.ImageOrientationPatient[5])) > 0.01]
    assert tilted, "seed 7 was chosen for its tilted T2"
    ds0 = next(iter(first.values()))
    study = SimpleNamespace(accession_number=str(ds0.AccessionNumber), study_uid=str(ds0.StudyInstanceUID),
                            patient_id=str(ds0.PatientID), study_date=str(ds0.StudyDate), study_time=str(ds0.StudyTime)[:6],
                            report_text=fs.report, paths_by_role=by_folder)
    with processed(study, seed, tmp_path, node_settings) as (node, study_id, received):
        with node.db.session() as s:
            roles = {str(x.series_uid): x.role for x in s.query(Series).filter_by(study_id=study_id)}
            run = s.query(Run).filter_by(study_id=study_id).order_by(Run.id.desc()).first()
            assert run.metrics["reference_role"] == "T1C"
            findings = run.metrics["findings"]
            assert findings["side"] == fs.side and findings["gland"] == "parotid"
            assert s.get(Study, study_id).state == "DONE"
    named = {n: roles[str(ds.SeriesInstanceUID)] for n, ds in first.items()}
    assert sorted(named.values()) == ["T1", "T1C", "T2"], named
    assert named[tilted[0]] == "T2"
    t1c = next(n for n, r in named.items() if r == "T1C")
    segs = [p for p in received if dcmread(p, stop_before_pixels=True).Modality == "SEG"]
    assert len(segs) == 1
    assert_dciodvfy_clean(segs[0])
    seg = pydicom.dcmread(segs[0])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first[t1c].SeriesInstanceUID
    pred, _ = read_seg_mask(segs[0], by_folder[t1c])
    assert pred.shape == fs.truth.shape
    d = dice(np.asarray(pred, bool), fs.truth > 0)
    assert d > 0.7, f"Dice {d:.3f} of the SEG on the unseen generator's T1C against its truth"
