"""Was a sequence acquired with fat saturation? Read from the images, not the headers.

Fat is the brightest tissue on a non-contrast T1 (with fatty marrow) on every scanner, so the
brightest decile of the study's T1 within the body marks fat without a tissue model. On a T2 or a
post-contrast T1 acquired *with* fat saturation those voxels are dark; acquired without it they are
among the brightest. The score of a sequence is the mean percentile rank, among that sequence's own
body voxels, of its values at the T1's fat voxels. A rank is unchanged by any increasing intensity
mapping of that sequence (coil gain, windowing, a vendor's scaling), and the body and fat voxels
are fractions of the T1's own range, unchanged by its gain and offset, so no scanner-specific
intensity threshold is involved.
Fat brighter than the sequence's median tissue (score above ``threshold``, default 0.5) reads as
"not fat-saturated".

Headers are not used: ScanOptions (``FS``, ``SFS``, ``FAT_SAT``), SequenceName and
SeriesDescription are vendor-specific and often absent from anonymised exports, and STIR or Dixon
water images suppress fat without saying so in the same words.
"""

from __future__ import annotations

import numpy as np

from pgsam_node.inference.choice import ChoosingPredictor

#: Largest number of voxels sampled per sequence (a regular stride over the volume).
MAX_SAMPLES = 400_000
#: Voxels below this fraction of the T1's 99th percentile are outside the body (air, background).
BODY_FRACTION = 0.15
#: The T1's brightest share of body voxels taken as fat.
FAT_QUANTILE = 0.90
#: Fewest fat voxels (after sampling) for a score; fewer gives None (unknown).
MIN_FAT_VOXELS = 200


def fat_rank(
    channels: dict[str, np.ndarray], valid: dict[str, np.ndarray] | None, role: str, t1_role: str = "T1",
) -> float | None:
    """Mean percentile rank (0..1) of ``role`` at the T1's fat voxels, or None when it cannot tell.

    None: no T1 or no ``role``, the two volumes differ in shape, too few voxels where both are
    valid and inside the body, or a constant image.
    """
    t1, other = channels.get(t1_role), channels.get(role)
    if t1 is None or other is None or np.shape(t1) != np.shape(other) or np.ndim(t1) != 3:
        return None
    both = np.ones(np.shape(t1), dtype=bool)
    for r in (t1_role, role):
        if valid is not None and valid.get(r) is not None:
            both &= np.asarray(valid[r], dtype=bool)
    step = max(1, int(np.ceil(both.size / MAX_SAMPLES)))
    pick = np.flatnonzero(both.ravel()[::step]) * step
    a = np.asarray(t1, dtype=np.float32).ravel()[pick]
    b = np.asarray(other, dtype=np.float32).ravel()[pick]
    finite = np.isfinite(a) & np.isfinite(b)
    a, b = a[finite], b[finite]
    if a.size < MIN_FAT_VOXELS * 10:
        return None
    low, top = float(np.min(a)), float(np.percentile(a, 99))
    if not top > low:
        return None
    body = a > low + BODY_FRACTION * (top - low)
    a, b = a[body], b[body]
    if a.size < MIN_FAT_VOXELS * 10 or not float(np.ptp(b)) > 0:
        return None
    fat = a >= float(np.quantile(a, FAT_QUANTILE))
    if int(fat.sum()) < MIN_FAT_VOXELS:
        return None
    ordered = np.sort(b)
    # Mid-rank of each fat voxel's value among the body's values (ties count half).
    lo = np.searchsorted(ordered, b[fat], side="left")
    hi = np.searchsorted(ordered, b[fat], side="right")
    return float(np.mean((lo + hi) / 2.0) / ordered.size)


def fat_ranks(channels: dict[str, np.ndarray] | None, valid: dict[str, np.ndarray] | None,
              roles=("T2", "T1C")) -> dict[str, float | None]:
    """:func:`fat_rank` of each role, rounded to 3 decimals (None: cannot tell)."""
    out: dict[str, float | None] = {}
    for role in roles:
        score = fat_rank(channels, valid, role) if channels else None
        out[role] = None if score is None else round(score, 3)
    return out


def not_fat_saturated(
    channels: dict[str, np.ndarray] | None, valid: dict[str, np.ndarray] | None, roles=("T2", "T1C"), threshold: float = 0.5,
) -> dict[str, float]:
    """The roles among ``roles`` whose fat is brighter than their median tissue, with their scores.

    A role that cannot be scored (see :func:`fat_rank`) is left out: unknown counts as saturated,
    so the default model keeps a study the check cannot read.
    """
    return {role: score for role, score in fat_ranks(channels, valid, roles).items() if score is not None and score > threshold}


class FatSatSwitch(ChoosingPredictor):
    """The default predictor, or a companion trained on non-fat-saturated studies, per study.

    ``predict`` scores the study's T2 and T1C (:func:`not_fat_saturated`) and hands it to the
    companion (loaded on first need) when either is not fat-saturated; otherwise, or when the check
    cannot read the study (no T1), to the default. The model version is ``<default>|<companion>``;
    the result's notes say when the companion ran, and why.
    """

    joiner = "|"

    def __init__(self, default, companion_name: str, load_companion, threshold: float = 0.5) -> None:
        super().__init__(default, companion_name, load_companion)
        self.threshold = threshold

    @property
    def default(self):
        return self.first

    @property
    def companion_name(self) -> str:
        return self.second_name

    def predict(self, channels, valid, findings, report_text, affine, postprocess: bool = True):
        bright = not_fat_saturated(channels, valid, threshold=self.threshold)
        self.used = self._load_second() if bright else self.first
        res = self.used.predict(channels, valid, findings, report_text, affine, postprocess=postprocess)
        if bright:
            said = ", ".join(f"{role} (fat rank {score:.2f})" for role, score in sorted(bright.items()))
            res.notes = [f"fat is bright on {said}: not fat-saturated, so {self.used.model_version} segmented the study"] + list(res.notes)
        return res
