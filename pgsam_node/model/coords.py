"""Patient-coordinate maps: where each pixel of a slice lies in the patient (LPS, millimetres).

The report's "left" is the patient's left (+x in DICOM LPS, PS3.3 C.7.6.2.1.1), which may be the
image's left or right depending on how the series was acquired or flipped. The prompt generator
therefore sees, for every pixel, its LPS position relative to the body centre, computed from the
slice affine, not the pixel's place in the image.
"""

from __future__ import annotations

import numpy as np

#: Millimetres per coordinate unit (so a head-and-neck FOV spans about -1..1).
COORD_SCALE_MM = 100.0


def voxel_to_lps(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Map (..., 3) voxel indices (col, row, slice) to (..., 3) LPS millimetres with a 4x4 affine."""
    a = np.asarray(affine, dtype=np.float64)
    return ijk @ a[:3, :3].T + a[:3, 3]


def body_centre(volume: np.ndarray, affine: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """LPS centre (3,) of the body: centroid of voxels brighter than ``threshold``.

    Parameters
    ----------
    volume
        (Z, Y, X) normalised intensities in [0, 1] (e.g. the mean of the sequences).
    affine
        4x4 voxel (col, row, slice) -> LPS matrix of the grid.
    """
    vol = np.asarray(volume)
    fg = vol > threshold
    if fg.sum() < 10:
        fg = np.ones_like(vol, dtype=bool)
    z, y, x = np.nonzero(fg)
    ijk = np.stack([x.mean(), y.mean(), z.mean()])
    return voxel_to_lps(affine, ijk[None])[0]


def patient_coordinate_map(affine: np.ndarray, z: float, shape_yx: tuple[int, int], out_hw: tuple[int, int], centre_lps: np.ndarray) -> np.ndarray:
    """(2, H, W) float32 map of (x, y) LPS offsets from ``centre_lps`` / COORD_SCALE_MM.

    Parameters
    ----------
    affine
        4x4 voxel (col, row, slice) -> LPS of the volume grid.
    z
        Slice index.
    shape_yx
        (Y, X) size of the original slice.
    out_hw
        (H, W) size of the resized slice the model sees; pixel centres are mapped back to the
        original grid the same way bilinear resizing with ``align_corners=False`` does.
    centre_lps
        (3,) body centre.
    """
    ny, nx = shape_yx
    h, w = out_hw
    rows = (np.arange(h) + 0.5) * (ny / h) - 0.5
    cols = (np.arange(w) + 0.5) * (nx / w) - 0.5
    cc, rr = np.meshgrid(cols, rows)
    ijk = np.stack([cc, rr, np.full_like(cc, float(z))], axis=-1)
    lps = voxel_to_lps(affine, ijk) - np.asarray(centre_lps, dtype=np.float64)
    return (lps[..., :2] / COORD_SCALE_MM).transpose(2, 0, 1).astype(np.float32)
