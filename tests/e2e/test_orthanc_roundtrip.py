"""A real Orthanc as the PACS: it pushes a study to the node, the report comes from the RIS table,
the node sends the SEG back, and the test reads it from Orthanc and compares it with the truth."""

from __future__ import annotations

import csv
import glob

import numpy as np
from pydicom import dcmread

from pgsam_node.commands.ris_cmd import import_csv
from pgsam_node.commands.synth_cmd import report_row, write_reports_csv
from pgsam_node.db import Study
from pgsam_node.synth.dicom_writer import write_study
from pgsam_node.node import Node
from pgsam_node.encode.read import read_seg_mask
from pgsam_node.training.metrics import dice

from ..orthanc import OrthancServer, require_orthanc
from .pacs_flow import fetch_from_orthanc, push_and_wait


def test_synthetic_study_round_trip_through_orthanc(tmp_path, node_settings):
    require_orthanc()
    study = write_study(4242, tmp_path / "study", report_language="en")
    settings = node_settings(dicom={"allowed_calling_aets": ["ORTHANC"]})
    node = Node(settings, web=False)
    orthanc = OrthancServer(tmp_path / "orthanc", modalities={"pgsam": (settings.dicom.ae_title, "127.0.0.1", settings.dicom.port)})
    with orthanc:
        settings.destinations = [
            {"name": "orthanc", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
        ]
        csv_path = tmp_path / "reports.csv"
        write_reports_csv(csv_path, [report_row(study, 4242)])
        with node:
            assert import_csv(csv_path, settings, node.db).inserted == 1
            files = [p for paths in study.paths_by_role.values() for p in paths]
            out_uids, st = push_and_wait(orthanc, node, files, study.study_uid)
        seg_path = fetch_from_orthanc(orthanc, out_uids[0], tmp_path)
        seg = dcmread(seg_path)
        assert seg.Modality == "SEG"
        ref_series = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        assert ref_series == study.series_uids["T1C"], "SEG must reference the T1C (reference) series"
        pred, _ = read_seg_mask(seg_path, study.paths_by_role["T1C"])
        assert pred.shape == study.mask.shape
        d = dice(pred, study.mask)
        assert d > 0.5, f"Dice {d:.3f} of the SEG read back from Orthanc against the synthetic truth"


def _tcia_report(study_dir) -> tuple[str, str]:
    """A report written for the test from where the expert mask lies (patient left = +x LPS)."""
    files = sorted(glob.glob(str(study_dir / "MaskTumor" / "*.dcm")))
    xs = []
    for f in files:
        ds = dcmread(f)
        m = ds.pixel_array > 0
        if m.any():
            rows, cols = np.nonzero(m)
            ipp = np.array(ds.ImagePositionPatient, float)
            iop = np.array(ds.ImageOrientationPatient, float)
            sp = np.array(ds.PixelSpacing, float)
            pts = ipp + np.outer(cols * sp[1], iop[:3]) + np.outer(rows * sp[0], iop[3:])
            xs.append(pts[:, 0])
    side = "left" if np.concatenate(xs).mean() > 0 else "right"
    return side, (f"MRI brain with and without contrast. There is a heterogeneously enhancing mass in the {side} "
                  f"cerebral hemisphere with surrounding T2 hyperintense signal, consistent with recurrent "
                  f"glioblastoma. The contralateral hemisphere is unremarkable.")


def test_tcia_study_round_trip_through_orthanc(tmp_path, node_settings, shared_data):
    require_orthanc()
    study_dir = sorted(shared_data.glob("PGBM-001*"))[0]
    # The default configuration: the report names the brain, so model.by_region sends the study
    # to the bundled zero-shot brain-lesion-litemedsam, which has never seen this (or any) study.
    settings = node_settings()
    assert settings.model.by_region == {"brain": "brain-lesion-litemedsam"}
    node = Node(settings, web=False)
    orthanc = OrthancServer(tmp_path / "orthanc", modalities={"pgsam": (settings.dicom.ae_title, "127.0.0.1", settings.dicom.port)})
    first = dcmread(next((study_dir / "T1post").glob("*.dcm")), stop_before_pixels=True)
    side, text = _tcia_report(study_dir)
    csv_path = tmp_path / "reports.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["accession_number", "study_instance_uid", "patient_id", "status", "report_time", "report_text", "study_date"])
        w.writerow([first.get("AccessionNumber", ""), first.StudyInstanceUID, first.PatientID, "F", "1991-11-20 10:00:00", text, first.StudyDate])
    with orthanc:
        settings.destinations = [{"name": "orthanc", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}]
        files = [p for sub in ("T1prereg", "T1post", "T2reg", "MaskTumor") for p in sorted((study_dir / sub).glob("*.dcm"))]
        with node:
            import_csv(csv_path, settings, node.db)
            out_uids, st = push_and_wait(orthanc, node, files, str(first.StudyInstanceUID))
            with node.db.session() as s:
                roles = {se.description: (se.role, se.role_selected) for se in s.query(Study).filter_by(id=st.id).one().series}
        assert roles["T1post"] == ("T1C", True) and roles["T1pre_reg"] == ("T1", True) and roles["T2_reg"] == ("T2", True)
        assert roles["Mask_Tumor"][0] == "OTHER"
        seg_path = fetch_from_orthanc(orthanc, out_uids[0], tmp_path)
        seg = dcmread(seg_path)
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
        # The routed model's segment description: a brain lesion, not the parotid default's.
        segment = seg.SegmentSequence[0]
        assert segment.AnatomicRegionSequence[0].CodeMeaning == "Brain" and segment.SegmentLabel == "Lesion"
    # What the PACS got equals the model run directly on the same volumes and report.
    from pgsam_node.geometry import build_study_volumes, load_series
    from pgsam_node.reports.parse import parse_report

    vols = build_study_volumes({r: sorted((study_dir / d).glob("*.dcm")) for r, d in
                                (("T1", "T1prereg"), ("T1C", "T1post"), ("T2", "T2reg"))}, settings.geometry)
    routed = node.pipeline.predictor.for_findings(parse_report(text))
    assert routed.model_version.startswith("brain-lesion-litemedsam") and routed is not node.pipeline.predictor.default
    direct = routed.predict(vols.channels, vols.valid, parse_report(text), text, vols.grid.affine)
    pred, _ = read_seg_mask(seg_path, vols.reference.paths)
    truth = load_series(sorted((study_dir / "MaskTumor").glob("*.dcm"))).array > 0
    direct_mask, _ = vols.to_reference(direct.mask)
    assert pred.shape == truth.shape == direct_mask.shape
    assert dice(pred, direct_mask) > 0.99, "the SEG at the PACS differs from the model's own output"
    # Nothing was trained on this study: the Dice is what a site would get (README: 0.752 on PGBM-001).
    d = dice(pred, truth)
    assert d > 0.5, f"zero-shot brain model Dice {d:.3f} on PGBM-001 through the whole node"
