"""A study whose post-contrast T1 (the reference series) is coronal, through the real node: DICOM in
over a real association, assembly, the report from the embedded RIS, the bundled model on the
axial working grid, and a SEG sent to a receiving PACS that lies on the coronal series' own frames
(dciodvfy clean) and matches the synthetic truth."""

from __future__ import annotations

import numpy as np
from pydicom import dcmread

from pgsam_node.db.models import Run, Study
from pgsam_node.encode.read import read_seg_mask
from pgsam_node.node import Node
from pgsam_node.synth.dicom_writer import write_study
from pgsam_node.synth.minipacs import MiniPacs
from pgsam_node.training.metrics import dice

from ..dicom_tools import assert_dciodvfy_clean
from .pacs_flow import send_study_with_report, wait_finished

SEED = 1000305


def test_coronal_t1c_study_through_the_node(tmp_path, node_settings):
    pacs = MiniPacs(tmp_path / "pacs", ae_title="TESTPACS").start()
    settings = node_settings(destinations=[{"name": "pacs", "ae_title": "TESTPACS", "host": "127.0.0.1", "port": pacs.port}])
    study = write_study(SEED, tmp_path / "study", t1c_plane="coronal")
    assert study.plans["T1C"].plane == "coronal"
    node = Node(settings, web=False).start()
    try:
        assert send_study_with_report(node, settings, study, SEED, tmp_path) == sum(len(p) for p in study.paths_by_role.values())
        state, why = wait_finished(node, study.study_uid)
        assert state == "DONE", f"{state}: {why}"
        with node.db.session() as s:
            st = s.query(Study).filter_by(study_uid=study.study_uid).one()
            codes = [n.get("code") for n in st.notes or [] if isinstance(n, dict)]
            run = s.query(Run).filter_by(study_id=st.id).order_by(Run.id.desc()).first()
            assert run.metrics["reference_role"] == "T1C"
        assert "axial_working_grid" in codes, codes
        received = pacs.wait_for(1, 60)
    finally:
        node.stop()
        pacs.stop()
    segs = [p for p in received if dcmread(p, stop_before_pixels=True).Modality == "SEG"]
    assert len(segs) == 1
    seg = dcmread(segs[0])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study.series_uids["T1C"]
    # The SEG's frames lie on the coronal slices: same orientation as the source series.
    iop = np.asarray(seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float)
    src_iop = np.asarray(dcmread(study.paths_by_role["T1C"][0], stop_before_pixels=True).ImageOrientationPatient, float)
    np.testing.assert_allclose(iop, src_iop, atol=1e-4)
    assert_dciodvfy_clean(segs[0])
    pred, _ = read_seg_mask(segs[0], study.paths_by_role["T1C"])
    assert pred.shape == study.mask.shape
    d = dice(pred, study.mask)
    assert d > 0.7, f"Dice {d:.3f} of the SEG on the coronal T1C against the synthetic truth"
