"""Keep the tissue that enhances: the zero-shot mask of an enhancing lesion, trimmed to enhancement.

A box prompt around a rim-enhancing tumour makes the pretrained SAM decoder fill the box's object:
the enhancing rim, its necrotic centre and some of the brain around it. Brain-tumour response
assessment measures the *enhancing* disease, and brain-tumour masks drawn for it (the TCIA
Brain-Tumor-Progression masks among them) hold the enhancing tissue without the necrosis. For a
lesion the proposals scored by its enhancement, a model whose ``config.json`` sets
``enhancing_tissue_z`` keeps only the mask's voxels that enhance:

* **What T1C would be without contrast** is predicted from the T1 by a robust straight-line fit
  over the tissue around the mask (a shell ``shell_mm`` wide in-plane and one slice above and below,
  the mask itself and the darkest 2 % of the T1 left out; five rounds of least squares, each dropping
  voxels more than 2.5 robust SDs off the line, so vessels and other enhancing tissue in the shell do
  not bend it). Gain, offset and the sequences' windows drop out, so no vendor- or site-specific
  intensity is assumed, and the tissue the lesion sits in is the reference for "does not enhance".
* **Enhancement** at a voxel is T1C minus that prediction, in robust SDs of the fit's residual
  (1.4826 x MAD). A voxel enhances above ``z``; 2 is the usual two-sided 95 % bound of the
  residual. It is not smoothed: an enhancing rim is a few millimetres thick, and smoothing would
  carry its enhancement into the necrosis and brain beside it; isolated noise voxels are removed
  with the other small components afterwards.

Nothing is trimmed (and a note says why) without a T1, when the fit has too few voxels or no spread,
or when fewer than ``min_kept`` of the mask's voxels enhance (then the decoder's mask is likely not
on the enhancing lesion at all, and trimming would leave specks).

Shapes: volumes (Z, Y, X) on one grid; the mask likewise. Notes hold counts only.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from pgsam_node.inference.proposals import slab_footprint

#: Fewer reference (shell) voxels than this: no fit.
MIN_FIT_VOXELS = 1000


def enhancement_z(t1c: np.ndarray, t1: np.ndarray, reference: np.ndarray, rounds: int = 5, clip: float = 2.5) -> np.ndarray | None:
    """(Z, Y, X) float32: T1C minus its robust linear prediction from T1 (fitted over the
    ``reference`` voxels), in robust SDs of the residual; None when there is no usable fit (too few
    reference voxels, no T1 spread, or a constant residual)."""
    t1c = np.nan_to_num(np.asarray(t1c, np.float64))
    t1 = np.nan_to_num(np.asarray(t1, np.float64))
    x, y = t1[reference], t1c[reference]
    if x.size < MIN_FIT_VOXELS or np.ptp(x) <= 0:
        return None
    keep = np.ones(x.size, bool)
    a = b = med = s = 0.0
    for _ in range(rounds):
        if keep.sum() < MIN_FIT_VOXELS or np.ptp(x[keep]) <= 0:
            return None
        a, b = np.polyfit(x[keep], y[keep], 1)
        r = y - (a * x + b)
        med = float(np.median(r[keep]))
        s = 1.4826 * float(np.median(np.abs(r[keep] - med)))
        if not np.isfinite(s) or s <= 0:
            return None
        keep = np.abs(r - med) < clip * s
    return ((t1c - (a * t1 + b) - med) / s).astype(np.float32)


def _radii(pixel_mm: tuple[float, float], shell_mm: float) -> tuple[int, int]:
    return tuple(max(1, int(round(shell_mm / max(p, 1e-6)))) for p in pixel_mm)  # type: ignore[return-value]


def around_box(mask: np.ndarray, pixel_mm: tuple[float, float], shell_mm: float) -> tuple[slice, slice, slice]:
    """The mask's bounding box grown by the shell (``shell_mm`` in-plane, one slice)."""
    ry, rx = _radii(pixel_mm, shell_mm)
    zz, ys, xs = np.nonzero(mask)
    return (slice(max(0, zz.min() - 1), zz.max() + 2), slice(max(0, ys.min() - ry), ys.max() + ry + 1),
            slice(max(0, xs.min() - rx), xs.max() + rx + 1))


def shell_around(mask: np.ndarray, pixel_mm: tuple[float, float], shell_mm: float) -> np.ndarray:
    """(Z, Y, X) bool: voxels within ``shell_mm`` in-plane (and one slice above or below) of the
    mask, the mask excluded."""
    out = np.zeros(mask.shape, bool)
    box = around_box(mask, pixel_mm, shell_mm)  # only there can the dilation reach
    out[box] = ndi.binary_dilation(mask[box], slab_footprint(*_radii(pixel_mm, shell_mm)))
    return out & ~mask


def enhancing_tissue(mask: np.ndarray, channels: dict[str, np.ndarray], valid: dict[str, np.ndarray] | None,
                     affine: np.ndarray, z_min: float, min_kept: float = 0.1, shell_mm: float = 20.0) -> tuple[np.ndarray, str]:
    """The mask's voxels whose enhancement (:func:`enhancement_z`) is above ``z_min``, and a note.

    Returns the mask unchanged (with the reason in the note) when it cannot be trimmed safely.
    Works on the mask's bounding box grown by the shell, so a large study costs no full-volume
    float copies.
    """
    mask = np.asarray(mask, bool)
    n = int(mask.sum())
    if n == 0:
        return mask, ""
    if "T1C" not in channels or "T1" not in channels:
        return mask, "enhancing tissue: needs T1 and T1C; mask kept as decoded"
    a = np.asarray(affine, np.float64)
    pixel_mm = (float(np.linalg.norm(a[:3, 1])), float(np.linalg.norm(a[:3, 0])))  # (row, column) spacing
    box = around_box(mask, pixel_mm, shell_mm)
    t1 = np.asarray(channels["T1"])[box].astype(np.float64)
    t1c = np.asarray(channels["T1C"])[box].astype(np.float64)
    ok = np.isfinite(t1) & np.isfinite(t1c)
    for role in ("T1C", "T1"):
        if valid and role in valid:
            ok &= np.asarray(valid[role], bool)[box]
    # Background air: below the 2nd percentile of the whole T1 (a strided sample is enough).
    sample = np.asarray(channels["T1"])[::2, ::4, ::4].astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if not ok.any() or sample.size == 0:
        return mask, "enhancing tissue: T1 and T1C share no valid voxel; mask kept as decoded"
    m = mask[box]
    reference = shell_around(m, pixel_mm, shell_mm) & ok & (t1 > np.percentile(sample, 2))
    z = enhancement_z(np.where(ok, t1c, 0.0), np.where(ok, t1, 0.0), reference)
    if z is None:
        return mask, "enhancing tissue: no T1-to-T1C fit around the mask (too few or constant voxels); mask kept as decoded"
    out = np.zeros_like(mask)
    out[box] = m & ok & (z > z_min)
    kept = int(out.sum())
    if kept < min_kept * n:
        return mask, f"enhancing tissue: only {kept} of {n} voxel(s) enhance; mask kept as decoded"
    return out, f"enhancing tissue: kept {kept} of {n} voxel(s) enhancing above {z_min:g} SD"
