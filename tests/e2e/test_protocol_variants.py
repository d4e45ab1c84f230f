"""Protocols that differ from the training data, through the real node (DICOM in over a real
association, assembly, the report from the embedded RIS, the bundled model, a SEG sent to a
receiving PACS):

* the post-contrast T1 (the reference series) acquired coronally: the model runs on the axial
  working grid and the SEG lies on the coronal series' own frames (dciodvfy clean) and matches
  the synthetic truth;
* STIR instead of a T2 series: the STIR series stands in for T2 and is among the run's inputs;
* T2 and T1C without fat saturation: the image check hands the study to the companion model, and
  the run records which model ran and why;
* a report that names no region: the DICOM headers' region (BodyPartExamined BRAIN) routes the
  study."""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pydicom
from pydicom import dcmread

from pgsam_node.db.models import Run, Series, Study
from pgsam_node.encode.read import read_seg_mask
from pgsam_node.inference.router import BUNDLED_MODELS
from pgsam_node.node import Node
from pgsam_node.synth.dicom_writer import write_study
from pgsam_node.synth.minipacs import MiniPacs
from pgsam_node.synth.phantom import make_phantom
from pgsam_node.training.metrics import dice

from ..dicom_tools import assert_dciodvfy_clean
from .pacs_flow import send_study_with_report, wait_finished


@contextmanager
def processed(study, seed: int, tmp_path, node_settings, **overrides):
    """Push ``study`` (with its report in the RIS) through a started node that sends to a
    receiving PACS; yields (node, the study's row id, the files the PACS received) once DONE."""
    pacs = MiniPacs(tmp_path / "pacs", ae_title="TESTPACS").start()
    settings = node_settings(destinations=[{"name": "pacs", "ae_title": "TESTPACS", "host": "127.0.0.1", "port": pacs.port}], **overrides)
    node = Node(settings, web=False).start()
    try:
        assert send_study_with_report(node, settings, study, seed, tmp_path) == sum(len(p) for p in study.paths_by_role.values())
        state, why = wait_finished(node, study.study_uid)
        assert state == "DONE", f"{state}: {why}"
        with node.db.session() as s:
            study_id = s.query(Study).filter_by(study_uid=study.study_uid).one().id
        yield node, study_id, pacs.wait_for(1, 60)
    finally:
        node.stop()
        pacs.stop()


def test_coronal_t1c_study_through_the_node(tmp_path, node_settings):
    seed = 1000305
    study = write_study(seed, tmp_path / "study", t1c_plane="coronal")
    assert study.plans["T1C"].plane == "coronal"
    with processed(study, seed, tmp_path, node_settings) as (node, study_id, received):
        with node.db.session() as s:
            codes = [n.get("code") for n in s.get(Study, study_id).notes or [] if isinstance(n, dict)]
            run = s.query(Run).filter_by(study_id=study_id).order_by(Run.id.desc()).first()
            assert run.metrics["reference_role"] == "T1C"
        assert "axial_working_grid" in codes, codes
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


def test_stir_instead_of_t2_through_the_node(tmp_path, node_settings):
    """A head-and-neck protocol with STIR instead of T2: the node uses the STIR series as the T2
    (assembly records it as standing in) and the run's inputs hold its instances."""
    seed = 1000301
    study = write_study(seed, tmp_path / "study")
    stir_uids = set()
    for p in study.paths_by_role["T2"]:
        ds = pydicom.dcmread(p)
        ds.SeriesDescription = ds.ProtocolName = "AX STIR"
        ds.ScanningSequence, ds.InversionTime = "IR", 160
        ds.save_as(p, enforce_file_format=True)
        stir_uids.add(str(ds.SOPInstanceUID))
    with processed(study, seed, tmp_path, node_settings) as (node, study_id, received):
        with node.db.session() as s:
            stir = s.query(Series).filter_by(study_id=study_id, series_uid=study.series_uids["T2"]).one()
            assert stir.role == "T2" and stir.role_selected and stir.role_reason.startswith("T2 (stands in): OTHER: rule stir")
            run = s.query(Run).filter_by(study_id=study_id).order_by(Run.id.desc()).first()
            assert stir_uids <= set(run.input_uids), "the STIR instances are not among the run's inputs"
        assert received


def test_study_without_fat_saturation_goes_to_the_companion_model(tmp_path, node_settings):
    seed = 1000400
    study = write_study(make_phantom(seed, fat_sat_off=1.0), tmp_path / "study")
    with processed(study, seed, tmp_path, node_settings) as (node, study_id, received):
        with node.db.session() as s:
            run = s.query(Run).filter_by(study_id=study_id).order_by(Run.id.desc()).first()
            assert "|parotid-tiny-nfs" in run.model_version
            assert run.metrics["model_used"].startswith("parotid-tiny-nfs-"), run.metrics
            assert any("not fat-saturated" in n and "T2 (fat rank" in n for n in run.metrics["model_notes"])
            assert run.metrics["region"] == {"region": "parotid", "from": "report"}
    segs = [p for p in received if dcmread(p, stop_before_pixels=True).Modality == "SEG"]
    assert len(segs) == 1
    assert_dciodvfy_clean(segs[0])
    # The SEG names the weights that produced it: the companion's.
    algorithm = dcmread(segs[0], stop_before_pixels=True).SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    nfs = json.loads((BUNDLED_MODELS / "parotid-tiny-nfs" / "config.json").read_text())
    assert str(algorithm.AlgorithmVersion).endswith("+" + nfs["weights_sha256"][:12]), algorithm.AlgorithmVersion
    pred, _ = read_seg_mask(segs[0], study.paths_by_role["T1C"])
    d = dice(pred, study.mask)
    assert d > 0.7, f"Dice {d:.3f} of the SEG against the synthetic truth"


def test_a_report_without_a_region_is_routed_by_the_dicom_headers(tmp_path, node_settings):
    """BodyPartExamined BRAIN and a report that names no organ: the study goes to the brain route
    (here a small bundled model stands in for the zero-shot brain model, to keep the test fast)."""
    seed = 1000402
    study = write_study(seed, tmp_path / "study")
    study.report_text = "Enhancing mass on the right, 2 cm, well defined."
    for paths in study.paths_by_role.values():
        for p in paths:
            ds = pydicom.dcmread(p)
            ds.BodyPartExamined, ds.StudyDescription = "BRAIN", "MRI HEAD W/WO CONTRAST"
            ds.save_as(p, enforce_file_format=True)
    routes = {"by_region": {"brain": "parotid-tiny-nfs"}, "non_fat_sat": None}
    with processed(study, seed, tmp_path, node_settings, model=routes) as (node, study_id, received):
        with node.db.session() as s:
            run = s.query(Run).filter_by(study_id=study_id).order_by(Run.id.desc()).first()
            assert run.model_version.startswith("parotid-tiny-nfs-"), (run.model_version, run.metrics.get("region"))
            assert run.metrics["region"] == {"region": "brain", "from": "dicom_descriptions"}
            assert run.metrics["findings"]["gland"] is None  # the model got the report's own findings
    assert received
