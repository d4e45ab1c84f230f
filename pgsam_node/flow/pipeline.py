"""The one place that sequences the stages for a claimed study.

``RUNNING``: series by role → report + findings → volumes on the reference grid → PG-SAM → mask
→ SEG (+ optional SR / overlay) → validate → files renamed into ``outputs/`` → outbox rows and the
``ENCODED → SENDING`` transition committed together. The outbox job delivers; :func:`finish_sent`
moves fully delivered studies to ``DONE``.

Idempotency: a run is keyed by (StudyInstanceUID, input SOP instance UIDs, report hash, model
version); output UIDs are derived from the same key, so a run repeated after a crash writes the same
SEG (same SOP Instance UID) and the PACS ends up with one object per study version.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from sqlalchemy import select

from pgsam_node.config import Settings
from pgsam_node.db import Database, Instance, OutboxItem, OutboxState, Run, Study, StudyState, utcnow
from pgsam_node.errors import GeometryError, InferenceError, NodeError, PipelineError, RisError
from pgsam_node.findings import Findings
from pgsam_node.inference import StudyPredictor
from pgsam_node.inference.choice import model_that_ran
from pgsam_node.logsetup import uid_hash
from pgsam_node.assemble.readiness import selected_series
from pgsam_node.db.lifecycle import transition
from pgsam_node.flow.worker import Claim, Heartbeat, release

log = logging.getLogger(__name__)


@dataclass
class StudyInputs:
    """What a run reads, gathered in one short DB transaction."""

    study_id: int
    study_uid: str
    version: int
    paths_by_role: dict[str, list[Path]]
    input_uids: list[str]
    report_text: str | None
    report_hash: str | None
    findings: Findings | None
    #: The region the study's and the chosen series' descriptions name (DICOM headers), used to
    #: route the study when the report names none (or there is no report).
    region_hint: str | None = None


@dataclass
class RunResult:
    state: str
    reason: str
    stage_seconds: dict[str, float] = field(default_factory=dict)
    output_paths: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


def _merge_notes(old: list | None, new: list) -> list:
    """Study notes without repeats (a re-run records the same geometry notes again)."""
    out = list(old or [])
    for n in new:
        if n not in out:
            out.append(n)
    return out


def model_segment_codes(cfg) -> dict | None:
    """The model folder's segment description as ``{"segment_codes": {category, type, anatomy}}``."""
    labels = getattr(cfg, "labels", None) or []
    if not labels:
        return None
    first = labels[0]
    out = {"segment_codes": {k: first[k] for k in ("category", "type", "anatomy") if k in first}}
    if first.get("name"):
        out["segment_label"] = first["name"]
    return out


def idempotency_key(study_uid: str, input_uids: list[str], report_hash: str | None, model_version: str) -> str:
    h = hashlib.sha256()
    for part in (study_uid, *sorted(input_uids), report_hash or "-", model_version):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _body_part(paths_by_role: dict[str, list[Path]]) -> str | None:
    """BodyPartExamined of the first readable input file (``BRAIN``, ``NECK``...), or None."""
    import pydicom

    for paths in paths_by_role.values():
        for path in paths[:1]:
            try:
                value = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["BodyPartExamined"]).get("BodyPartExamined")
            except Exception:  # an unreadable file is the geometry stage's to report
                continue
            if value:
                return str(value)[:64]
    return None


def gather_inputs(db: Database, settings: Settings, study_id: int) -> StudyInputs:
    from pgsam_node.reports.parse import parse_report, region_in_text

    with db.session() as s:
        study = s.get(Study, study_id)
        chosen = selected_series(study)
        if not chosen:
            raise PipelineError("no T1, T2 or post-contrast T1 series selected", reason="no_sequences")
        paths_by_role: dict[str, list[Path]] = {}
        input_uids: list[str] = []
        for role, se in chosen.items():
            insts = s.scalars(select(Instance).where(Instance.series_id == se.id)).all()
            paths_by_role[role] = [settings.storage_root / i.path for i in insts]
            input_uids += [i.sop_instance_uid for i in insts]
        # The report the wait step matched travels on the study row (reports.wait): no second RIS search.
        text = study.report_text if study.report_ref else None
        described = [study.study_description, *(se.description for se in chosen.values())]
        inputs = StudyInputs(
            study_id=study.id,
            study_uid=study.study_uid,
            version=study.version,
            paths_by_role=paths_by_role,
            input_uids=input_uids,
            report_text=text,
            report_hash=study.report_hash,
            findings=parse_report(text) if text else None,
        )
    # A file read: after the session is closed.
    described.append(_body_part(paths_by_role))
    inputs.region_hint = region_in_text(" / ".join(d for d in described if d))
    return inputs


def routing_findings(inputs: StudyInputs) -> tuple[Findings | None, str | None]:
    """(the findings the study is routed by, where its region came from: report, dicom_descriptions or None).

    A report that names no region (or no report) is routed by the DICOM descriptions' region; the
    model itself still gets the report's own findings.
    """
    f = inputs.findings
    if f is not None and f.gland:
        return f, "report"
    if not inputs.region_hint:
        return f, None
    return (replace(f, gland=inputs.region_hint) if f is not None else Findings(gland=inputs.region_hint)), "dicom_descriptions"


class Pipeline:
    """Runs claimed studies; keeps the predictor loaded between studies.

    Parameters
    ----------
    predictor_factory
        Called once, lazily, to load the model (a seam for tests that need no model).
    """

    def __init__(self, db: Database, settings: Settings, predictor_factory: Callable[[], StudyPredictor] | None = None):
        self.db, self.settings = db, settings
        self._predictor: StudyPredictor | None = None
        self._factory = predictor_factory
        self._load_lock = threading.Lock()
        #: What ``/readyz`` shows: ``state`` is "not loaded", "loading", "loaded" or "failed".
        self.model_status: dict = {"state": "not loaded"}

    @property
    def predictor(self) -> StudyPredictor:
        """The loaded predictor; the first caller loads it, concurrent callers wait for that load."""
        if self._predictor is not None:
            return self._predictor
        with self._load_lock:
            if self._predictor is None:
                t0 = time.monotonic()
                self.model_status = {"state": "loading", "since": utcnow().isoformat()}
                try:
                    self._predictor = self._load()
                except Exception as exc:
                    self.model_status = {"state": "failed", "error": type(exc).__name__}
                    raise
                self.model_status = {"state": "loaded", "load_seconds": round(time.monotonic() - t0, 2),
                                     "model_version": str(self._predictor.model_version)}
        return self._predictor

    def _load(self) -> StudyPredictor:
        if self._factory is not None:
            return self._factory()
        from pgsam_node.inference.router import ModelRouter

        return ModelRouter.from_settings(self.settings.model)

    def preload(self) -> bool:
        """Load the model now (the node calls this in the background after the DICOM port is open).

        Returns False, after logging, when the model cannot be loaded: studies then fail with the
        model's error one by one, as they would have without the preload.
        """
        try:
            _ = self.predictor
        except Exception:  # noqa: BLE001 - reported in model_status and again per study
            log.exception("cannot load the model from %s", self.settings.model.path)
            return False
        return True

    # ---------------------------------------------------------------- worker entry point
    def process(self, claim: Claim, heartbeat: Heartbeat | None = None) -> RunResult:
        t_start = time.monotonic()
        deadline = t_start + self.settings.worker.study_timeout_seconds
        try:
            result = self._run(claim, heartbeat, deadline)
        except RisError as exc:
            # A RIS that is down delays a study, never fails it: back to READY; the attempt counts.
            self._requeue(claim, f"RIS unavailable while reading the report: {exc}")
            return RunResult(StudyState.READY.value, str(exc))
        except NodeError as exc:
            reason = getattr(exc, "reason", type(exc).__name__)
            self._fail(claim, f"{reason}: {exc}")
            return RunResult(StudyState.FAILED.value, str(exc))
        except Exception as exc:  # noqa: BLE001 - an unexpected error fails this study, not the worker
            log.exception("study %s: unexpected error", uid_hash(claim.study_uid))
            self._fail(claim, f"internal error: {type(exc).__name__}: {exc}")
            return RunResult(StudyState.FAILED.value, str(exc))
        return result

    def _check(self, claim: Claim, heartbeat: Heartbeat | None, deadline: float) -> None:
        if heartbeat is not None and heartbeat.lost.is_set():
            raise _LeaseLost()
        if time.monotonic() > deadline:
            raise PipelineError(f"study exceeded worker.study_timeout_seconds={self.settings.worker.study_timeout_seconds}", reason="timeout")

    def _requeue(self, claim: Claim, reason: str) -> None:
        with self.db.transaction() as s:
            study = s.get(Study, claim.study_id)
            if study is None or study.lease_owner != claim.worker_id or study.state != StudyState.RUNNING.value:
                return
            release(s, study)
            if (study.attempts or 0) >= self.settings.worker.max_attempts:
                transition(s, study, StudyState.FAILED, f"gave up after {study.attempts} attempts: {reason}", actor=claim.worker_id)
            else:
                transition(s, study, StudyState.READY, reason, actor=claim.worker_id)

    def _fail(self, claim: Claim, reason: str) -> None:
        with self.db.transaction() as s:
            study = s.get(Study, claim.study_id)
            if study is None or study.lease_owner != claim.worker_id or study.state != StudyState.RUNNING.value:
                return  # lease lost: another worker owns the study now
            release(s, study)
            transition(s, study, StudyState.FAILED, reason, actor=claim.worker_id)
            run = s.scalars(select(Run).where(Run.study_id == study.id, Run.version == study.version).order_by(Run.id.desc())).first()
            if run is not None and run.status == "RUNNING":
                run.status, run.error, run.finished_at = "FAILED", reason, utcnow()

    def _run(self, claim: Claim, heartbeat: Heartbeat | None, deadline: float) -> RunResult:
        from pgsam_node.encode import algorithm_info, build_outputs, segment_codes_for
        from pgsam_node.encode.common import segment_label_for, sends_nothing, with_segment_label
        from pgsam_node.geometry.study import build_study_volumes
        from pgsam_node.deliver.outbox import queue_outputs, write_outputs

        st = self.settings
        timings: dict[str, float] = {}
        t = time.monotonic()
        inputs = gather_inputs(self.db, st, claim.study_id)
        timings["gather"] = time.monotonic() - t
        # The model for the study's region (model.by_region), or the default with its fallback.
        route, region_from = routing_findings(inputs)
        predictor = self.predictor.for_findings(route)
        model_version = predictor.model_version
        key = idempotency_key(inputs.study_uid, inputs.input_uids, inputs.report_hash, model_version)
        with self.db.transaction() as s:
            run = s.scalars(select(Run).where(Run.idempotency_key == key)).first()
            if run is None:
                run = Run(study_id=claim.study_id, version=inputs.version, idempotency_key=key)
                s.add(run)
            run.input_uids = sorted(inputs.input_uids)
            run.report_hash = inputs.report_hash
            run.model_version = model_version
            run.worker = claim.worker_id
            run.status, run.error, run.started_at, run.finished_at = "RUNNING", None, utcnow(), None
            s.flush()
            run_id = run.id
        self._check(claim, heartbeat, deadline)

        self._mark_stage(run_id, "geometry")
        t = time.monotonic()
        try:
            vols = build_study_volumes(inputs.paths_by_role, st.geometry)
        except GeometryError as exc:
            raise PipelineError(str(exc), reason=f"geometry:{exc.reason}") from exc
        timings["geometry"] = time.monotonic() - t
        self._check(claim, heartbeat, deadline)

        self._mark_stage(run_id, "inference")
        t = time.monotonic()
        try:
            result = predictor.predict(vols.channels, vols.valid, inputs.findings, inputs.report_text, vols.grid.affine)
            # Back onto the reference series' grid when the model ran on an axial working grid.
            result.mask, result.prob = vols.to_reference(result.mask, result.prob)
        except (RuntimeError, ValueError) as exc:
            raise InferenceError(f"inference failed: {exc}") from exc
        timings["inference"] = time.monotonic() - t
        self._check(claim, heartbeat, deadline)

        ref = vols.reference
        voxel_ml = float(abs(ref.spacing[0] * ref.spacing[1] * ref.spacing[2])) / 1000.0
        n_vox = int(result.mask.sum())
        metrics = {"stage": "done", "lesion_voxels": n_vox, "lesion_ml": round(n_vox * voxel_ml, 3), "reference_role": vols.reference_role}
        # Which model produced the mask (behind the region route, the fat-saturation switch and the
        # fallback) and what it noted: model names, counts and sizes, never report text.
        metrics["model_used"] = model_that_ran(predictor)
        metrics["model_notes"] = [str(n) for n in getattr(result, "notes", [])]
        # The findings the model was given, for the dashboard/API (the report text stays in the RIS).
        metrics["findings"] = asdict(inputs.findings) if inputs.findings is not None else None
        metrics["region"] = {"region": route.gland if route is not None else None, "from": region_from}
        notes = [{"code": n.code, "message": n.message} for n in getattr(vols, "notes", [])]

        if sends_nothing(result.mask, st.seg):  # the policy is encode's; checked before the encode work
            return self._no_finding(claim, run_id, timings, metrics, notes)

        self._mark_stage(run_id, "encode")
        t = time.monotonic()
        cfg = getattr(predictor, "cfg", None)
        algorithm = algorithm_info(getattr(cfg, "weights_sha256", None))
        described = model_segment_codes(cfg)
        datasets = build_outputs(
            mask=result.mask,
            prob=result.prob,
            source_paths=ref.paths,
            frame_numbers=ref.frame_numbers,
            findings=inputs.findings,
            settings=with_segment_label(st, segment_label_for(st, described)),
            algorithm=algorithm,
            run_version=inputs.version,
            codes=segment_codes_for(st, described),
        )
        timings["encode"] = time.monotonic() - t
        self._check(claim, heartbeat, deadline)

        # Files renamed into place (fsync) before the transaction that queues them commits.
        rel_paths = write_outputs(st, inputs.study_uid, datasets)

        with self.db.transaction() as s:
            study = s.get(Study, claim.study_id)
            self._own(study, claim)
            run = s.get(Run, run_id)
            run.status, run.finished_at = "ENCODED", utcnow()
            run.stage_seconds, run.metrics = timings, metrics
            run.output_uids = [str(ds.SOPInstanceUID) for ds in datasets]
            run.output_paths = rel_paths
            study.notes = _merge_notes(study.notes, notes)
            release(s, study)
            transition(s, study, StudyState.ENCODED, f"{len(datasets)} object(s) encoded", actor=claim.worker_id)
            queue_outputs(s, st, study.id, inputs.study_uid, run.id, datasets, paths=rel_paths)
            if st.destinations:
                transition(s, study, StudyState.SENDING, f"queued for {', '.join(d.name for d in st.destinations)}", actor=claim.worker_id)
            else:
                transition(s, study, StudyState.DONE, "no destinations configured; outputs kept locally", actor=claim.worker_id)
        log.info("study %s encoded (%d voxels)", uid_hash(inputs.study_uid), n_vox, extra={"study": uid_hash(inputs.study_uid)})
        return RunResult(StudyState.SENDING.value if st.destinations else StudyState.DONE.value, "encoded", timings, rel_paths, metrics)

    def _mark_stage(self, run_id: int, stage: str) -> None:
        """Record the stage in progress on the run (dashboard; crash tests wait for it)."""
        with self.db.transaction() as s:
            run = s.get(Run, run_id)
            run.metrics = {**(run.metrics or {}), "stage": stage}

    def _no_finding(self, claim: Claim, run_id: int, timings: dict, metrics: dict, notes: list) -> RunResult:
        with self.db.transaction() as s:
            study = s.get(Study, claim.study_id)
            self._own(study, claim)
            run = s.get(Run, run_id)
            run.status, run.finished_at, run.stage_seconds, run.metrics = "NO_FINDING", utcnow(), timings, metrics
            study.notes = _merge_notes(study.notes, notes)
            release(s, study)
            transition(s, study, StudyState.NO_FINDING, "model found no lesion; no SEG sent (seg.empty_result=no_seg)", actor=claim.worker_id)
        return RunResult(StudyState.NO_FINDING.value, "no lesion", timings, [], metrics)

    @staticmethod
    def _own(study: Study, claim: Claim) -> None:
        if study is None or study.lease_owner != claim.worker_id or study.state != StudyState.RUNNING.value:
            raise _LeaseLost()


class _LeaseLost(PipelineError):
    def __init__(self) -> None:
        super().__init__("lease lost to another worker; result discarded", reason="lease_lost")


def finish_sent(db: Database, now: dt.datetime | None = None) -> list[str]:
    """SENDING studies whose current outputs are all SENT become DONE; any DEAD item → FAILED."""
    done: list[str] = []
    with db.transaction() as s:
        for study in s.scalars(select(Study).where(Study.state == StudyState.SENDING.value)).all():
            run = s.scalars(
                select(Run).where(Run.study_id == study.id, Run.status == "ENCODED").order_by(Run.id.desc())
            ).first()
            if run is None:
                continue
            items = s.scalars(select(OutboxItem).where(OutboxItem.run_id == run.id)).all()
            if not items:
                continue
            states = {i.state for i in items}
            if states == {OutboxState.SENT.value}:
                run.status = "SENT"
                transition(s, study, StudyState.DONE, f"{len(items)} object(s) delivered")
                done.append(study.study_uid)
            elif OutboxState.DEAD.value in states:
                dead = [i for i in items if i.state == OutboxState.DEAD.value]
                transition(s, study, StudyState.FAILED, f"delivery failed permanently to {dead[0].destination}: {dead[0].last_error}")
    return done
