"""Per-sequence intensity normalisation for the model (robust percentile clipping and scaling).

The parameters (percentiles) are recorded in the model's JSON configuration so training and
inference normalise identically.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class NormParams:
    p_low: float = 0.5
    p_high: float = 99.5

    def to_dict(self) -> dict:
        return asdict(self)


def percentile_normalize(volume: np.ndarray, valid: np.ndarray | None = None, params: NormParams = NormParams()) -> np.ndarray:
    """Clip to robust percentiles and scale to [0, 1].

    Parameters
    ----------
    volume
        (Z, Y, X) intensities of one sequence.
    valid
        (Z, Y, X) bool, where the sequence has data (after resampling); percentiles use only
        valid voxels and invalid voxels become 0.
    params
        Percentiles of the clipping window.

    Returns
    -------
    numpy.ndarray
        (Z, Y, X) float32 in [0, 1].
    """
    vol = np.asarray(volume, dtype=np.float32)
    sel = vol[valid] if valid is not None else vol.reshape(-1)
    sel = sel[np.isfinite(sel)]
    if sel.size == 0:
        return np.zeros_like(vol, dtype=np.float32)
    lo, hi = np.percentile(sel, [params.p_low, params.p_high])
    if not np.isfinite(hi - lo) or hi - lo < 1e-6:
        out = np.zeros_like(vol, dtype=np.float32)
    else:
        out = (np.clip(vol, lo, hi) - lo) / (hi - lo)
    out = np.nan_to_num(out, nan=0.0).astype(np.float32)
    if valid is not None:
        out[~valid] = 0.0
    return out
