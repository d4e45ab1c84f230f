"""Seed data for the operations tests: a study that went through the state machine, with real
DICOM files (synthetic MR series from :mod:`tests.factories` and a SEG built with highdicom) under the
storage root, series with roles, a run, outbox items and a report.

Seeding goes through :func:`pgsam_node.db.lifecycle.transition`, so the timeline is what the pipeline
would record.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import FileDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from pgsam_node.db.models import (
    Instance,
    OutboxItem,
    Report,
    Run,
    Series,
    Study,
    StudyState,
    utcnow,
)
from pgsam_node.db.lifecycle import transition

from .factories import Geometry, MRSeries

S = StudyState
REPORT_TEXT = "MRI parotid: 23 mm well-circumscribed lesion in the right superficial lobe, likely pleomorphic adenoma."
FINDINGS = {"present": True, "side": "right", "gland": "parotid", "lobe": "superficial", "size_mm": 23.0,
            "diagnosis": "pleomorphic_adenoma", "hedged": True}


@dataclass
class Seeded:
    study_id: int
    study_uid: str
    source_uids: list[str]
    best_uid: str  # source slice with the largest mask area
    seg_path: str
    instance_paths: list[str] = field(default_factory=list)
    output_paths: list[str] = field(default_factory=list)


#: The seeded series' patient, study and grid (48 x 48 pixels of 1 mm, 3 mm slices) for the factory.
OPS_SERIES = {"patient_id": "OPS-TEST-0001", "patient_name": "Test^Ops", "study_date": "20261123", "study_time": "101500",
              "manufacturer": "Synthetic", "pixels": "blob",
              "geometry": Geometry(rows=48, columns=48, pixel_spacing=(1.0, 1.0), slice_spacing=3.0, origin=(0.0, 0.0, 0.0))}


def segment_description() -> hd.seg.SegmentDescription:
    """Segment 1 "Lesion" (SNOMED CT neoplasm), automatic, PG-SAM."""
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Lesion",
        segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
        segmented_property_type=hd.sr.CodedConcept("108369006", "SCT", "Neoplasm"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="PG-SAM", version="test", family=hd.sr.CodedConcept("123109", "DCM", "Artificial Intelligence")),
    )


def make_seg(sources: list[FileDataset], areas: list[int]) -> tuple[hd.seg.Segmentation, int]:
    """A BINARY SEG over ``sources`` with a square of about ``areas[k]`` pixels on slice k."""
    n, rows, cols = len(sources), sources[0].Rows, sources[0].Columns
    mask = np.zeros((n, rows, cols), dtype=bool)
    for k, a in enumerate(areas):
        side = int(round(a ** 0.5))
        if side:
            mask[k, 10 : 10 + side, 12 : 12 + side] = True
    desc = segment_description()
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc], series_instance_uid=generate_uid(), series_number=9001,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="PG-SAM Node",
        manufacturer_model_name="pgsam", software_versions="test", device_serial_number="1",
    )
    return seg, int(np.argmax(mask.reshape(n, -1).sum(axis=1)))


def seed_study(db, storage_root: Path, state: str = "DONE", with_seg: bool = True, accession: str = "ACC-OPS-1",
               outbox_state: str = "SENT", age_days: float = 0.0, with_report: bool = True) -> Seeded:
    """Create one study row set and its files; ``state`` is reached through recorded transitions.

    ``state``: DONE (through RUNNING/ENCODED/SENDING), FAILED (after RUNNING), NO_FINDING, READY.
    ``age_days`` back-dates the state change (for retention).
    """
    study_uid, t1c_uid, t2_uid = generate_uid(), generate_uid(), generate_uid()
    sources = MRSeries(study_uid=study_uid, series_uid=t1c_uid, n_slices=6, series_number=5, description="T1 POST GD",
                       accession_number=accession, **OPS_SERIES).datasets()
    t2 = MRSeries(study_uid=study_uid, series_uid=t2_uid, n_slices=3, series_number=3, description="T2 TSE AX",
                  accession_number="ACC-OPS-1", **OPS_SERIES).datasets()
    inst_paths: list[str] = []
    with db.transaction() as s:
        st = Study(study_uid=study_uid, patient_id="OPS-TEST-0001", accession_number=accession, study_date="20261123",
                   study_description="MRI PAROTID W/WO")
        s.add(st)
        s.flush()
        for series_ds, role, reason, number, desc in (
            (sources, "T1C", "T1-weighted with contrast agent (ContrastBolusAgent, 'POST GD' in description)", 5, "T1 POST GD"),
            (t2, "T2", "TR 4000 ms / TE 100 ms, 'T2' in description", 3, "T2 TSE AX"),
        ):
            se = Series(study_id=st.id, series_uid=series_ds[0].SeriesInstanceUID, modality="MR", sop_class_uid=MRImageStorage,
                        series_number=number, description=desc, role=role, role_reason=reason, role_selected=True,
                        instance_count=len(series_ds), frame_of_reference_uid=series_ds[0].FrameOfReferenceUID)
            s.add(se)
            s.flush()
            for ds in series_ds:
                rel = f"spool/{study_uid}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
                p = Path(storage_root) / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                ds.save_as(p, enforce_file_format=True)
                s.add(Instance(series_id=se.id, sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=MRImageStorage,
                               transfer_syntax_uid=ExplicitVRLittleEndian, instance_number=int(ds.InstanceNumber), path=rel,
                               size_bytes=p.stat().st_size, calling_aet="TESTSCU"))
                inst_paths.append(rel)
        # a series left unclassified, with its reason
        s.add(Series(study_id=st.id, series_uid=generate_uid(), modality="MR", series_number=1, description="LOCALIZER",
                     role="OTHER", role_reason="localizer (ImageType LOCALIZER)", role_selected=False, instance_count=0))
        if with_report:
            rep = Report(source_key=accession, accession_number=accession, study_instance_uid=study_uid, patient_id="OPS-TEST-0001",
                         study_date="20261123", status="F", report_text=REPORT_TEXT, version=1, source="csv")
            s.add(rep)
            s.flush()
            st.report_ref, st.report_hash = f"reports:{rep.id}", "ab" * 32
        transition(s, st, S.STABLE, "no instance for 30 s")
        transition(s, st, S.READY, "T1C, T2 present; report found")
        seg_rel, best, out_paths = "", 0, []
        if state in ("DONE", "FAILED", "NO_FINDING", "SENDING"):
            transition(s, st, S.RUNNING, "claimed by worker-1")
            run = Run(study_id=st.id, version=st.version, idempotency_key=generate_uid()[-40:], input_uids=[d.SOPInstanceUID for d in sources],
                      report_hash=st.report_hash, model_version="pgsam-tiny-test", worker="worker-1",
                      stage_seconds={"load": 0.5, "infer": 2.25, "encode": 0.25}, metrics={"findings": FINDINGS})
            s.add(run)
            s.flush()
            if state == "FAILED":
                run.status, run.error = "FAILED", "InferenceError: CUDA out of memory"  # as the pipeline records
                run.finished_at = utcnow()
                transition(s, st, S.FAILED, "inference_failed: CUDA out of memory")
            elif state == "NO_FINDING":
                run.status = "NO_FINDING"
                run.finished_at = utcnow()
                transition(s, st, S.NO_FINDING, "empty mask")
            else:
                if with_seg:
                    seg, best = make_seg(sources, [0, 16, 100, 49, 0, 0])
                    seg_rel = f"outputs/{study_uid}/v{st.version}/seg.dcm"
                    p = Path(storage_root) / seg_rel
                    p.parent.mkdir(parents=True, exist_ok=True)
                    seg.save_as(p)
                    out_paths = [seg_rel]
                    run.output_paths = out_paths
                    run.output_uids = [seg.SOPInstanceUID]
                run.status = "ENCODED"  # pipeline: ENCODED until delivered, then SENT
                run.finished_at = utcnow()
                transition(s, st, S.ENCODED, "SEG written")
                transition(s, st, S.SENDING, "queued for PACS")
                if with_seg:
                    s.add(OutboxItem(study_id=st.id, run_id=run.id, destination="pacs", sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
                                     sop_instance_uid=seg.SOPInstanceUID, path=seg_rel, state=outbox_state,
                                     attempts=1 if outbox_state == "SENT" else 3,
                                     last_error=None if outbox_state == "SENT" else "association rejected by PACS",
                                     sent_at=utcnow() if outbox_state == "SENT" else None))
                if state == "DONE":
                    run.status = "SENT"
                    transition(s, st, S.DONE, "all results delivered")
        if age_days:
            old = utcnow() - dt.timedelta(days=age_days)
            st.state_changed_at = old
            for e in st.events:
                e.at = old
        sid = st.id
    return Seeded(sid, study_uid, [d.SOPInstanceUID for d in sources], sources[best].SOPInstanceUID if with_seg else "",
                  seg_rel, inst_paths, out_paths)
