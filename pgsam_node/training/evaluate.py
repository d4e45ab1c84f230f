"""Evaluation of a model folder on studies with reference masks (synthetic or DICOM).

Per case: Dice, IoU, HD95 (mm, 3-D, from the grid spacing) and lesion detection, for the node's
full output (model + report-side post-processing) and for the raw thresholded model output.
Summaries: mean over all cases, per diagnosis, and over the cases with / without a distractor.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from typing import Iterable

import numpy as np

from pgsam_node.inference.preprocessing import StudyArrays
from pgsam_node.training.metrics import case_metrics, dice

log = logging.getLogger(__name__)


def evaluate_studies(predictor, studies: Iterable[StudyArrays], use_text: bool = True, postprocess: bool = True, progress: bool = False) -> dict:
    """Run the predictor on every study and compute metrics.

    Parameters
    ----------
    predictor
        A :class:`pgsam_node.inference.predictor.Predictor`.
    studies
        Studies with ``mask``.
    use_text
        False: give the model no report text and no findings (the no-text ablation; the
        report-side post-processing then has nothing to go on either).
    postprocess
        Apply the predictor's report-side / small-component filter.

    Returns
    -------
    dict
        {"cases": [...], "summary": {...}} ready for JSON.
    """
    from tqdm import tqdm

    cases = []
    for st in tqdm(studies, desc="evaluating", unit="study", disable=not progress):
        text = st.report if use_text else None
        findings = st.findings if use_text else None
        res = predictor.predict(st.volumes, st.valid, findings, text, st.affine, postprocess=postprocess)
        ref = st.mask.astype(bool)
        m = case_metrics(res.mask.astype(bool), ref, st.spacing_zyx)
        raw = res.prob >= predictor.threshold
        m["dice_raw"] = dice(raw, ref)
        m["case"] = st.case_id
        m["seconds"] = round(res.seconds.get("total", 0.0), 3)
        m.update({k: v for k, v in st.meta.items() if k in ("seed", "diagnosis", "distractor", "language", "side")})
        cases.append(m)
    return {"cases": cases, "summary": summarize(cases)}


def _mean(vals: list) -> float | None:
    v = [x for x in vals if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(v)) if v else None


def _group(cases: list[dict]) -> dict:
    return {
        "n": len(cases),
        "dice": _mean([c["dice"] for c in cases]),
        "dice_raw": _mean([c["dice_raw"] for c in cases]),
        "iou": _mean([c["iou"] for c in cases]),
        "hd95_mm": _mean([c["hd95_mm"] for c in cases]),
        "hd95_undefined": sum(1 for c in cases if c["hd95_mm"] is None),
        "lesions": sum(c["ref_lesions"] for c in cases),
        "lesions_detected": sum(c["detected"] for c in cases),
        "false_positive_components": sum(c["false_positives"] for c in cases),
        "detection_rate": (sum(c["detected"] for c in cases) / max(1, sum(c["ref_lesions"] for c in cases))),
    }


def summarize(cases: list[dict]) -> dict:
    """Mean metrics overall, per diagnosis and by distractor presence."""
    by_dx = defaultdict(list)
    for c in cases:
        by_dx[c.get("diagnosis") or "unknown"].append(c)
    with_d = [c for c in cases if c.get("distractor")]
    without_d = [c for c in cases if not c.get("distractor")]
    return {
        "all": _group(cases),
        "per_diagnosis": {k: _group(v) for k, v in sorted(by_dx.items())},
        "with_distractor": _group(with_d),
        "without_distractor": _group(without_d),
    }


def format_table(result: dict) -> str:
    """Human-readable per-case and summary table."""
    lines = [f"{'case':<22}{'diagnosis':<26}{'distr.':<12}{'Dice':>7}{'raw':>7}{'IoU':>7}{'HD95mm':>9}{'det':>6}{'FP':>4}"]
    for c in result["cases"]:
        hd = "-" if c["hd95_mm"] is None else f"{c['hd95_mm']:.1f}"
        lines.append(
            f"{c['case']:<22}{str(c.get('diagnosis')):<26}{str(c.get('distractor') or '-'):<12}{c['dice']:>7.3f}{c['dice_raw']:>7.3f}{c['iou']:>7.3f}{hd:>9}"
            f"{c['detected']:>3}/{c['ref_lesions']:<2}{c['false_positives']:>4}"
        )
    lines.append("")

    def row(name, g):
        if not g["n"]:
            return f"{name:<34} n=0"
        hd = "-" if g["hd95_mm"] is None else f"{g['hd95_mm']:.2f}"
        return (
            f"{name:<34} n={g['n']:<4} Dice {g['dice']:.3f}  raw {g['dice_raw']:.3f}  IoU {g['iou']:.3f}  HD95 {hd} mm  "
            f"detected {g['lesions_detected']}/{g['lesions']}  FP comps {g['false_positive_components']}"
        )

    s = result["summary"]
    lines.append(row("ALL", s["all"]))
    lines.append(row("with distractor", s["with_distractor"]))
    lines.append(row("without distractor", s["without_distractor"]))
    for k, g in s["per_diagnosis"].items():
        lines.append(row(f"  {k}", g))
    return "\n".join(lines)
