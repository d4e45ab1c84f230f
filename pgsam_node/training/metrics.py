"""Segmentation metrics on 3-D binary masks: Dice, IoU, HD95 (mm) and lesion detection."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient of two binary masks (1.0 when both are empty)."""
    p = np.asarray(pred, dtype=bool)
    r = np.asarray(ref, dtype=bool)
    s = int(p.sum()) + int(r.sum())
    if s == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / s


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    """Intersection over union (1.0 when both are empty)."""
    p = np.asarray(pred, dtype=bool)
    r = np.asarray(ref, dtype=bool)
    u = int(np.logical_or(p, r).sum())
    if u == 0:
        return 1.0
    return int(np.logical_and(p, r).sum()) / u


def _surface(mask: np.ndarray) -> np.ndarray:
    # Boundary voxels: in the mask and with at least one 6-neighbour outside it.
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Distances (mm) from every surface voxel of ``a`` to the nearest surface voxel of ``b``.

    ``spacing`` is the (z, y, x) voxel size in mm, in array axis order.
    """
    sa = _surface(np.asarray(a, dtype=bool))
    sb = _surface(np.asarray(b, dtype=bool))
    dt = ndimage.distance_transform_edt(~sb, sampling=spacing)
    return dt[sa]


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """95th percentile symmetric Hausdorff distance in mm.

    0.0 when both masks are empty; ``inf`` when exactly one is empty.
    """
    p = np.asarray(pred, dtype=bool)
    r = np.asarray(ref, dtype=bool)
    if not p.any() and not r.any():
        return 0.0
    if not p.any() or not r.any():
        return math.inf
    d = np.concatenate([surface_distances(p, r, spacing), surface_distances(r, p, spacing)])
    return float(np.percentile(d, 95))


@dataclass
class Detection:
    """Lesion-level detection counts (3-D connected components, 26-connectivity)."""

    ref_lesions: int
    detected: int
    pred_components: int
    false_positives: int

    def to_dict(self) -> dict:
        return asdict(self)


def detection(pred: np.ndarray, ref: np.ndarray, min_overlap: float = 0.1) -> Detection:
    """Count reference lesions hit by the prediction and predicted components hitting nothing.

    A reference lesion is detected when the prediction covers at least ``min_overlap`` of its
    voxels; a predicted component is a false positive when it covers no reference voxel.
    """
    p = np.asarray(pred, dtype=bool)
    r = np.asarray(ref, dtype=bool)
    st = ndimage.generate_binary_structure(3, 3)
    rl, nr = ndimage.label(r, structure=st)
    pl, npred = ndimage.label(p, structure=st)
    detected = 0
    for i in range(1, nr + 1):
        comp = rl == i
        if (p & comp).sum() >= min_overlap * comp.sum():
            detected += 1
    fp = 0
    for j in range(1, npred + 1):
        if not (r & (pl == j)).any():
            fp += 1
    return Detection(ref_lesions=nr, detected=detected, pred_components=npred, false_positives=fp)


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float]) -> dict:
    """All metrics of one case as a JSON-ready dict (``hd95_mm`` is None when undefined)."""
    h = hd95(pred, ref, spacing)
    det = detection(pred, ref)
    return {
        "dice": dice(pred, ref),
        "iou": iou(pred, ref),
        "hd95_mm": None if math.isinf(h) else h,
        **det.to_dict(),
        "lesion_detected": bool(det.ref_lesions == 0 or det.detected == det.ref_lesions),
        "ref_voxels": int(np.asarray(ref, bool).sum()),
        "pred_voxels": int(np.asarray(pred, bool).sum()),
    }
