"""Where studies for training and evaluation come from: synthetic phantoms or DICOM folders.

Both produce :class:`~.data.StudyArrays` (volumes on one reference grid, reference mask, report
text, findings), so the trainer and the evaluator do not care about the source.
"""

from __future__ import annotations

import logging

import numpy as np

from pgsam_node.inference.preprocessing import StudyArrays

log = logging.getLogger(__name__)

#: Seeds of synthetic training studies start here; evaluation seeds start at EVAL_SEED_BASE, so
#: the two sets never overlap.
TRAIN_SEED_BASE = 0
EVAL_SEED_BASE = 1_000_000


def acquired_study(seed: int, language: str | None = None, distractor: str | None = "random", appearance_jitter: float = 1.0) -> StudyArrays:
    """Synthetic study ``seed`` as the node receives it: each sequence on its own acquisition grid
    (coronal / oblique T1, tilted T2, other matrices) resampled onto T1C by the geometry stage
    (:func:`pgsam_node.synth.acquisition.acquire`); the study ``pgsam-node synth --seed`` writes."""
    from pgsam_node.synth.acquisition import acquire

    case = acquire(seed, language=language, distractor=distractor, appearance_jitter=appearance_jitter)
    f = case.findings
    meta = {
        "seed": seed,
        "distractor": case.distractor,
        "language": case.language,
        "diagnosis": getattr(f, "diagnosis", None) or "none",
        "side": getattr(f, "side", None),
        "vendor": case.vendor,
        "planes": case.planes,
    }
    return StudyArrays(
        case_id=f"acquired-{seed}",
        volumes=case.volumes,
        valid=case.valid,
        mask=case.mask,
        affine=case.affine,
        report=case.report,
        findings=f,
        meta=meta,
    )


def synthetic_study(seed: int, size: int = 128, n_slices: int = 24, language: str | None = None, distractor: str | None = "random",
                    appearance_jitter: float = 1.0) -> StudyArrays:
    """One synthetic study from :mod:`pgsam_node.synth.phantom` as :class:`StudyArrays`."""
    from pgsam_node.synth import phantom as synthetic

    case = synthetic.generate_case(seed, size=size, n_slices=n_slices, language=language, distractor=distractor,
                                   appearance_jitter=appearance_jitter)
    vols = {r: np.asarray(v, dtype=np.float32) for r, v in case.volumes.items()}
    valid = {r: np.isfinite(v) for r, v in vols.items()}
    f = case.findings
    meta = {
        "seed": seed,
        "distractor": case.distractor,
        "language": case.language,
        "diagnosis": getattr(f, "diagnosis", None) or "none",
        "side": getattr(f, "side", None),
    }
    return StudyArrays(
        case_id=f"synthetic-{seed}",
        volumes=vols,
        valid=valid,
        mask=np.asarray(case.mask, dtype=np.uint8),
        affine=np.asarray(case.grid.affine(), dtype=np.float64),
        report=case.report,
        findings=f,
        meta=meta,
    )
