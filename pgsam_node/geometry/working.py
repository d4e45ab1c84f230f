"""An axial working grid for a study whose reference series is coronal, sagittal or steeply oblique.

The models see a study one slice at a time, and every model was trained, and every zero-shot rule
written, on axial slices: the proposals mirror left against right within a slice, the localiser
learnt what a parotid gland looks like in an axial section. Parotid protocols often acquire the
post-contrast T1 coronally, and brain-tumour protocols as a sagittal 3-D volume; that series is
the reference (``geometry.reference_roles``), so without this step the model would be handed
coronal or sagittal slices (synthetic parotid studies, bundled model: Dice 0.87 with an axial
T1C, 0.68 coronal, 0.57 sagittal; docs/geometry.md).

When the reference's slice normal is more than ``geometry.axial_max_tilt_deg`` away from the
head-feet axis, :func:`axial_grid` builds an axis-aligned axial grid over the reference's field
(square in-plane, the reference's finest in-plane spacing, ``geometry.working_slice_mm`` between
slices), every sequence is resampled onto it from its native grid, and the model's mask comes back
onto the reference grid with :func:`to_reference` (trilinear, 0.5), so the SEG still references
the reference series' own images.

The grid is an empty broadcast array (no memory): only its shape and affine are used.
"""

from __future__ import annotations

import math

import numpy as np

from pgsam_node.geometry.resample import resample_to
from pgsam_node.geometry.volume import Volume


def tilt_from_axial(reference: Volume) -> float:
    """Angle in degrees between the reference's slice normal and the head-feet axis (0 = axial)."""
    return math.degrees(math.acos(min(1.0, abs(float(reference.normal[2])))))


def plane_name(reference: Volume) -> str:
    """"axial", "coronal" or "sagittal": the patient axis the slice normal is closest to."""
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(reference.normal)))]


def axial_grid(reference: Volume, slice_mm: float, max_slices: int, max_matrix: int) -> Volume:
    """An axial grid (LPS-aligned: columns to the patient's left, rows posterior, slices superior)
    over the reference's field of view.

    Parameters
    ----------
    reference
        The reference series' volume.
    slice_mm
        Slice spacing (mm); at least the reference's own resolution along the head-feet axis, and
        widened so that the grid has at most ``max_slices`` slices.
    max_slices, max_matrix
        Upper bounds of the slice count and of the in-plane matrix.

    Returns
    -------
    Volume
        ``array`` is a read-only zero broadcast of the grid's shape (it holds no memory).
    """
    nz, ny, nx = reference.shape
    corners = np.array([[i, j, k] for i in (-0.5, nx - 0.5) for j in (-0.5, ny - 0.5) for k in (-0.5, nz - 0.5)])
    lps = reference.index_to_lps(corners)
    lo, hi = lps.min(axis=0), lps.max(axis=0)
    centre = (lo + hi) / 2
    # The native head-feet resolution: the spacing of the voxel axis (column, row or slice) that
    # runs most nearly head-feet.
    native_z = float(np.linalg.norm(reference.affine[:3, int(np.argmax(np.abs(reference.affine[2, :3])))]))
    side = float(max(hi[0] - lo[0], hi[1] - lo[1]))
    px = max(float(min(reference.spacing[1], reference.spacing[2])), side / max_matrix)
    n_xy = max(1, int(math.ceil(side / px)))
    extent_z = float(hi[2] - lo[2])
    dz = max(float(slice_mm), native_z, extent_z / max(1, max_slices))
    n_z = max(1, int(math.ceil(extent_z / dz)))
    affine = np.eye(4)
    affine[:3, :3] = np.diag([px, px, dz])
    affine[:3, 3] = centre - np.array([px * (n_xy - 1) / 2, px * (n_xy - 1) / 2, dz * (n_z - 1) / 2])
    empty = np.broadcast_to(np.float32(0), (n_z, n_xy, n_xy))
    return Volume(array=empty, affine=affine, spacing=(dz, px, px), frame_of_reference_uid=reference.frame_of_reference_uid)


def to_reference(mask: np.ndarray, prob: np.ndarray | None, grid: Volume, reference: Volume) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's (Z, Y, X) mask (and probability) on ``grid`` -> the reference grid.

    Trilinear interpolation of the mask as 0/1, kept at >= 0.5 (smoother than nearest neighbour
    across the working grid's thicker slices); the probability is interpolated as it is.
    """
    m, _ = resample_to(Volume(array=np.asarray(mask, np.float32), affine=grid.affine, spacing=grid.spacing), reference)
    out_mask = (m >= 0.5).astype(np.uint8)
    out_prob = None
    if prob is not None:
        out_prob, _ = resample_to(Volume(array=np.asarray(prob, np.float32), affine=grid.affine, spacing=grid.spacing), reference)
    return out_mask, out_prob
