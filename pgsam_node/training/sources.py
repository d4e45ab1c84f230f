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
#: Seeds of the second generator's training studies (benchmarks/foreign_phantoms.py evaluates on 0..).
SECOND_TRAIN_SEED_BASE = 500_000
#: First seed of the third generator's training studies (``train --third-generator``); its benchmark
#: seeds stay far below.
THIRD_TRAIN_SEED_BASE = 700_000


def _phantom_study(case_id: str, seed: int, case, volumes: dict, valid: dict, mask: np.ndarray, affine: np.ndarray,
                   **extra) -> StudyArrays:
    """StudyArrays of a synthetic case (``generate_case`` or ``acquire``), with the meta both share."""
    f = case.findings
    meta = {
        "seed": seed,
        "distractor": case.distractor,
        "language": case.language,
        "diagnosis": getattr(f, "diagnosis", None) or "none",
        "side": getattr(f, "side", None),
        **extra,
    }
    return StudyArrays(case_id=case_id, volumes=volumes, valid=valid, mask=mask, affine=affine, report=case.report,
                       findings=f, meta=meta)


def acquired_study(seed: int, language: str | None = None, distractor: str | None = "random", appearance_jitter: float = 1.0,
                   fat_sat_off: float = 0.0) -> StudyArrays:
    """Synthetic study ``seed`` as the node receives it: each sequence on its own acquisition grid
    (coronal / oblique T1, tilted T2, other matrices) resampled onto T1C by the geometry stage
    (:func:`pgsam_node.synth.acquisition.acquire`); the study ``pgsam-node synth --seed`` writes."""
    from pgsam_node.synth.acquisition import acquire

    case = acquire(seed, language=language, distractor=distractor, appearance_jitter=appearance_jitter, fat_sat_off=fat_sat_off)
    return _phantom_study(f"acquired-{seed}", seed, case, case.volumes, case.valid, case.mask, case.affine,
                          vendor=case.vendor, planes=case.planes)


def synthetic_study(seed: int, size: int = 128, n_slices: int = 24, language: str | None = None, distractor: str | None = "random",
                    appearance_jitter: float = 1.0, fat_sat_off: float = 0.0) -> StudyArrays:
    """One synthetic study from :mod:`pgsam_node.synth.phantom` as :class:`StudyArrays`."""
    from pgsam_node.synth import phantom as synthetic

    case = synthetic.generate_case(seed, size=size, n_slices=n_slices, language=language, distractor=distractor,
                                   appearance_jitter=appearance_jitter, fat_sat_off=fat_sat_off)
    vols = {r: np.asarray(v, dtype=np.float32) for r, v in case.volumes.items()}
    valid = {r: np.isfinite(v) for r, v in vols.items()}
    return _phantom_study(f"synthetic-{seed}", seed, case, vols, valid, np.asarray(case.mask, dtype=np.uint8),
                          np.asarray(case.grid.affine(), dtype=np.float64))


def other_generator_study(seed: int, generator: str = "second") -> StudyArrays:
    """Study ``seed`` of the second (or, with ``generator="third"``, the third) independent phantom
    generator (:mod:`pgsam_node.synth.second`, :mod:`pgsam_node.synth.third`), drawn on one 128 px
    grid of 210 mm; findings parsed from its report, as the node does."""
    import importlib

    from pgsam_node.reports.parse import parse_report

    c = importlib.import_module(f"pgsam_node.synth.{generator}").training_case(int(seed))
    f = parse_report(c.report)
    meta = {"seed": int(seed), "generator": generator, "distractor": None, "language": "en",
            "diagnosis": f.diagnosis or "none", "side": f.side, "kind": c.kind}
    return StudyArrays(case_id=f"{generator}-{seed}", volumes=c.volumes, valid={r: np.ones(v.shape, bool) for r, v in c.volumes.items()},
                       mask=c.mask.astype(np.uint8), affine=c.affine, report=c.report, findings=f, meta=meta)
