"""A real brain-tumour study with no report in the RIS, through the whole node.

The report is the strongest guide the model has, but sites push studies that are not reported
yet, and ``ris.on_missing_report: run_without_text`` (the default) runs them at the deadline. Here
PGBM-001 (../shared/data/tcia-pgbm) arrives over a real association with nothing in the RIS:

* the study is routed by its DICOM headers (BodyPartExamined BRAIN) to the bundled zero-shot
  brain model, not the parotid default;
* with no signal description the proposals score the post-contrast study by its enhancement
  (``ProposalParams.assume_enhancement``), so the enhancing tumour is found, not its larger oedema;
* the SEG the receiving PACS gets scores Dice > 0.5 against the expert mask (README: 0.752; the
  rule before 2026-12-05 gave 0.099 on this study).
"""

from __future__ import annotations

import numpy as np
from pydicom import dcmread

from pgsam_node.commands.demo import send_files
from pgsam_node.db.models import Run, Study
from pgsam_node.encode.read import read_seg_mask
from pgsam_node.geometry import load_series
from pgsam_node.node import Node
from pgsam_node.synth.minipacs import MiniPacs
from pgsam_node.training.metrics import dice

from ..dicom_tools import assert_dciodvfy_clean
from .pacs_flow import wait_finished


def test_unreported_tcia_study_is_routed_by_its_headers_and_its_enhancing_tumour_found(tmp_path, node_settings, shared_data):
    study_dir = sorted(shared_data.glob("PGBM-001*"))[0]
    first = dcmread(next((study_dir / "T1post").glob("*.dcm")), stop_before_pixels=True)
    assert str(first.get("BodyPartExamined", "")).upper() == "BRAIN"
    pacs = MiniPacs(tmp_path / "pacs", ae_title="TESTPACS").start()
    settings = node_settings(destinations=[{"name": "pacs", "ae_title": "TESTPACS", "host": "127.0.0.1", "port": pacs.port}],
                             ris={"wait_seconds": 1.0})
    assert settings.ris.on_missing_report == "run_without_text"
    node = Node(settings, web=False).start()
    try:
        files = [p for sub in ("T1prereg", "T1post", "T2reg", "MaskTumor") for p in sorted((study_dir / sub).glob("*.dcm"))]
        assert send_files(files, "127.0.0.1", node.listener.port, settings.dicom.ae_title) == len(files)
        state, why = wait_finished(node, str(first.StudyInstanceUID), timeout=300)
        assert state == "DONE", f"{state}: {why}"
        with node.db.session() as s:
            st = s.query(Study).filter_by(study_uid=str(first.StudyInstanceUID)).one()
            run = s.query(Run).filter_by(study_id=st.id).order_by(Run.id.desc()).first()
            metrics = dict(run.metrics or {})
        received = pacs.wait_for(1, 60)
    finally:
        node.stop()
        pacs.stop()
    assert metrics["region"] == {"region": "brain", "from": "dicom_descriptions"}, metrics.get("region")
    assert str(metrics["model_used"]).startswith("brain-lesion-litemedsam"), metrics.get("model_used")
    notes = " ".join(metrics.get("model_notes") or [])
    assert "decoder sees T1C" in notes, notes
    segs = [p for p in received if dcmread(p, stop_before_pixels=True).Modality == "SEG"]
    assert len(segs) == 1
    assert_dciodvfy_clean(segs[0])
    # Both in slice order (the file names are not).
    reference = load_series(sorted((study_dir / "T1post").glob("*.dcm")))
    pred, _ = read_seg_mask(segs[0], reference.paths)
    truth = load_series(sorted((study_dir / "MaskTumor").glob("*.dcm"))).array > 0
    assert pred.shape == truth.shape
    d = dice(pred, truth)
    assert d > 0.5, f"Dice {d:.3f} of the unreported study's SEG against the expert mask"
    assert np.asarray(pred).any()
