"""A fixed field of view for the model: the same millimetres per input pixel on every scanner.

The predictor resizes each slice to the model's square input. Without this step a 290 mm field of
view reaches the model at 2.3 mm per pixel and a 160 mm one at 1.25 mm, so a gland and its lesion
appear at a size the model never saw in training (its studies span 180-240 mm). With
``input_fov_mm`` set in the model folder's ``config.json``, the predictor first cuts (or pads with
invalid voxels) a square of that many millimetres, centred on the body, out of every slice, runs
the model on it and puts the mask back on the full grid. Row and column spacings are taken apart,
so a rectangular pixel no longer stretches the anatomy either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pgsam_node.geometry.normalize import NormParams, percentile_normalize
from pgsam_node.model.coords import body_centre


@dataclass(frozen=True)
class Window:
    """Rows ``r0:r0+h`` and columns ``c0:c0+w`` of the source grid (they may run past its edges)."""

    r0: int
    c0: int
    h: int
    w: int

    def affine(self, affine: np.ndarray) -> np.ndarray:
        """The window's own voxel -> LPS matrix: same axes, origin moved to its first pixel."""
        a = np.array(affine, dtype=np.float64)
        a[:3, 3] = a[:3, :3] @ np.array([self.c0, self.r0, 0.0]) + a[:3, 3]
        return a

    def _overlap(self, shape_yx: tuple[int, int]) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
        """(source rows, cols), (window rows, cols) where the window and a source of ``shape_yx`` meet."""
        y, x = shape_yx
        sr0, sr1 = max(0, self.r0), min(y, self.r0 + self.h)
        sc0, sc1 = max(0, self.c0), min(x, self.c0 + self.w)
        if sr0 >= sr1 or sc0 >= sc1:
            return None
        return ((slice(sr0, sr1), slice(sc0, sc1)),
                (slice(sr0 - self.r0, sr1 - self.r0), slice(sc0 - self.c0, sc1 - self.c0)))

    def cut(self, arr: np.ndarray, fill=0) -> np.ndarray:
        """(Z, h, w) of a (Z, Y, X) array; outside the source filled with ``fill``."""
        out = np.full((arr.shape[0], self.h, self.w), fill, dtype=arr.dtype)
        both = self._overlap(arr.shape[1:])
        if both is not None:
            (sr, sc), (wr, wc) = both
            out[:, wr, wc] = arr[:, sr, sc]
        return out

    def cut_study(self, channels: dict[str, np.ndarray], valid: dict[str, np.ndarray] | None
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(volumes, valid masks) of a study cut to the window: float32 volumes, 0 outside the
        source; a sequence without a valid mask counts as valid where it is finite."""
        cut = {r: self.cut(np.asarray(v, dtype=np.float32)) for r, v in channels.items()}
        cut_valid = {r: self.cut(np.asarray(valid[r] if valid and r in valid else np.isfinite(v), dtype=bool), False)
                     for r, v in channels.items()}
        return cut, cut_valid

    def paste(self, arr: np.ndarray, shape_yx: tuple[int, int], fill=0) -> np.ndarray:
        """Inverse of :meth:`cut`: a (Z, h, w) array back on the (Z, Y, X) source grid."""
        out = np.full((arr.shape[0], *shape_yx), fill, dtype=arr.dtype)
        both = self._overlap(shape_yx)
        if both is not None:
            (sr, sc), (wr, wc) = both
            out[:, sr, sc] = arr[:, wr, wc]
        return out


def body_window(channels: dict[str, np.ndarray], valid: dict[str, np.ndarray] | None, affine: np.ndarray,
                fov_mm: float, norm: NormParams = NormParams()) -> Window:
    """The square of ``fov_mm`` millimetres, centred in-plane on the body, on the grid of ``channels``.

    The body centre is the centroid of the voxels above 10 % of the percentile window (``norm``,
    the model's own), averaged over the sequences (:func:`pgsam_node.model.coords.body_centre`), as
    the model's own coordinates use it.
    """
    if not fov_mm > 0:
        raise ValueError(f"fov_mm must be > 0, not {fov_mm!r}")
    a = np.asarray(affine, dtype=np.float64)
    normed = []
    for role, v in channels.items():
        vm = valid.get(role) if valid else None
        normed.append(percentile_normalize(v, None if vm is None else np.asarray(vm, bool), norm))
    centre = body_centre(np.mean(normed, axis=0), a)
    col, row, _ = np.linalg.solve(a[:3, :3], centre - a[:3, 3])
    col_mm, row_mm = float(np.linalg.norm(a[:3, 0])), float(np.linalg.norm(a[:3, 1]))
    w = max(8, int(round(fov_mm / col_mm)))
    h = max(8, int(round(fov_mm / row_mm)))
    return Window(r0=int(round(row - (h - 1) / 2)), c0=int(round(col - (w - 1) / 2)), h=h, w=w)
