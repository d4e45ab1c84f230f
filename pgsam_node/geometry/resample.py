"""Resample a volume onto another volume's grid in patient coordinates.

For every reference voxel centre ``(i, j, k)`` the patient position ``reference.affine @ (i, j, k,
1)`` is mapped into the source's voxel indices with ``inv(volume.affine)``; the source is then
sampled there. Because the mapping goes through patient (LPS) coordinates, any difference in
pixel spacing, slice thickness, field of view, in-plane orientation (axial / coronal / sagittal /
oblique) and gantry-tilt shear is handled by the same code.

Trilinear sampling uses :func:`torch.nn.functional.grid_sample` with ``align_corners=True``: with
that convention the normalised coordinate -1 is the centre of the first voxel and +1 the centre
of the last, so a fractional index ``t`` in ``[0, N-1]`` maps to ``2 t / (N - 1) - 1`` exactly;
``align_corners=False`` would put -1 on the outer edge of the first voxel and shift every sample
by half a voxel.

A reference voxel counts as *valid* (the sequence has data there) when its centre falls inside
the source's voxel footprints, i.e. every source index lies in ``[-0.5, N - 0.5]``. Within the
outer half-voxel the edge value is replicated (``padding_mode="border"``) rather than blended with
zeros; outside the footprint the output is 0 and the mask is False.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .volume import Volume

#: Reference voxels processed per chunk (bounds the float64 coordinate grid to ~100 MB).
CHUNK_VOXELS = 4_000_000
#: Tolerance (in source voxels) on the footprint test, so coincident edges count as inside.
_EDGE_EPS = 1e-4


def _index_map(volume: Volume, reference: Volume) -> np.ndarray:
    """4 x 4 matrix mapping reference voxel indices (i, j, k, 1) to source voxel indices."""
    return np.linalg.inv(volume.affine) @ reference.affine


def _source_indices(t: np.ndarray, z0: int, z1: int, ny: int, nx: int) -> np.ndarray:
    """Source (i, j, k) of reference slices ``z0:z1``: ``(z1 - z0, ny, nx, 3)`` float64."""
    k = np.arange(z0, z1, dtype=np.float64)[:, None, None, None]
    j = np.arange(ny, dtype=np.float64)[None, :, None, None]
    i = np.arange(nx, dtype=np.float64)[None, None, :, None]
    return i * t[:3, 0] + j * t[:3, 1] + k * t[:3, 2] + t[:3, 3]


def _footprint(src: np.ndarray, shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """(n, Y, X) bool: inside the source's voxel footprints on all three axes."""
    nz, ny, nx = shape_zyx
    lim = np.array([nx, ny, nz], dtype=np.float64)
    return np.all((src >= -0.5 - _EDGE_EPS) & (src <= lim - 0.5 + _EDGE_EPS), axis=-1)


def _chunks(reference: Volume) -> list[tuple[int, int]]:
    nz, ny, nx = reference.shape
    per = max(1, CHUNK_VOXELS // max(1, ny * nx))
    return [(z0, min(nz, z0 + per)) for z0 in range(0, nz, per)]


def resample_to(volume: Volume, reference: Volume, device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Trilinear resampling of ``volume`` onto ``reference``'s grid, through patient coordinates.

    Parameters
    ----------
    volume
        Source volume (``array`` (Zs, Ys, Xs), any orientation/spacing/FOV).
    reference
        Volume whose grid (``shape`` (Z, Y, X) and ``affine``) defines the output.
    device
        Torch device for the interpolation ("cpu" or "cuda").

    Returns
    -------
    values : numpy.ndarray
        float32 ``(Z, Y, X)`` of the reference: source intensities at the reference voxel
        centres; 0 where the source has no data.
    valid : numpy.ndarray
        bool ``(Z, Y, X)``: True where the reference voxel centre lies inside the source's voxel
        footprints.

    Notes
    -----
    When both grids coincide (:meth:`Volume.same_grid`) the source array is returned unchanged
    (no interpolation). Memory is bounded by processing ``CHUNK_VOXELS`` reference voxels at a
    time along Z; the source array is held once as float32.
    """
    nz, ny, nx = reference.shape
    if volume.same_grid(reference):
        return np.array(volume.array, dtype=np.float32, copy=True), np.ones((nz, ny, nx), dtype=bool)
    t = _index_map(volume, reference)
    sz, sy, sx = volume.shape
    src_t = torch.as_tensor(np.ascontiguousarray(volume.array, dtype=np.float32), device=device)[None, None]
    # normalised coordinate = 2 t / (N - 1) - 1 (align_corners=True); a 1-voxel axis maps to 0
    denom = np.array([max(sx - 1, 1), max(sy - 1, 1), max(sz - 1, 1)], dtype=np.float64)
    single = np.array([sx == 1, sy == 1, sz == 1])
    values = np.zeros((nz, ny, nx), dtype=np.float32)
    valid = np.zeros((nz, ny, nx), dtype=bool)
    for z0, z1 in _chunks(reference):
        src = _source_indices(t, z0, z1, ny, nx)
        inside = _footprint(src, volume.shape)
        if not inside.any():
            continue
        norm = 2.0 * src / denom - 1.0
        norm[..., single] = 0.0
        grid = torch.as_tensor(norm.astype(np.float32), device=device)[None]  # (1, n, Y, X, 3) as (x, y, z)
        with torch.no_grad():
            out = F.grid_sample(src_t, grid, mode="bilinear", padding_mode="border", align_corners=True)
        chunk = out[0, 0].cpu().numpy()
        chunk[~inside] = 0.0
        values[z0:z1] = chunk
        valid[z0:z1] = inside
    return values, valid


def mask_to_reference(mask_volume: Volume, reference: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour resampling of a label volume onto ``reference``'s grid.

    Parameters
    ----------
    mask_volume
        Label volume (e.g. a ground-truth tumour mask loaded with ``load_series``); ``array``
        (Zs, Ys, Xs) of label values.
    reference
        Volume whose grid defines the output.

    Returns
    -------
    labels : numpy.ndarray
        ``(Z, Y, X)`` of the reference, dtype of ``mask_volume.array``: the label of the source
        voxel whose footprint contains each reference voxel centre (ties at exactly half a voxel
        go to the higher index); 0 outside the source.
    valid : numpy.ndarray
        bool ``(Z, Y, X)``: where the label volume covers the reference voxel.

    Notes
    -----
    No interpolation ever mixes labels. When the grids coincide the labels are returned
    unchanged, voxel for voxel.
    """
    nz, ny, nx = reference.shape
    src_arr = np.asarray(mask_volume.array)
    if mask_volume.same_grid(reference):
        return src_arr.copy(), np.ones((nz, ny, nx), dtype=bool)
    t = _index_map(mask_volume, reference)
    sz, sy, sx = mask_volume.shape
    labels = np.zeros((nz, ny, nx), dtype=src_arr.dtype)
    valid = np.zeros((nz, ny, nx), dtype=bool)
    for z0, z1 in _chunks(reference):
        src = _source_indices(t, z0, z1, ny, nx)
        inside = _footprint(src, mask_volume.shape)
        if not inside.any():
            continue
        idx = np.floor(src + 0.5).astype(np.int64)
        i = np.clip(idx[..., 0], 0, sx - 1)
        j = np.clip(idx[..., 1], 0, sy - 1)
        k = np.clip(idx[..., 2], 0, sz - 1)
        chunk = src_arr[k, j, i]
        chunk[~inside] = 0
        labels[z0:z1] = chunk
        valid[z0:z1] = inside
    return labels, valid
