"""Input preparation shared by training, evaluation and inference.

A study is a set of volumes on one reference grid (Z, Y, X) with a 4x4 affine (voxel
(col, row, slice) -> LPS mm). :func:`prepare_study` normalises each sequence (percentile
window, :mod:`pgsam_node.geometry.normalize`), resizes every slice to the model's square input,
and records the body centre so that :func:`slice_inputs` can build the patient-coordinate map of
any slice. Training and inference call the same functions, so they see identical inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from pgsam_node.findings import Findings
from pgsam_node.geometry.normalize import NormParams, percentile_normalize
from pgsam_node.model.coords import body_centre, patient_coordinate_map

#: A sequence counts as present on a slice when at least this fraction of the slice is valid.
MIN_VALID_FRACTION = 0.2


def spacing_zyx(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (z, y, x) in mm of a 4 x 4 voxel (x, y, z) -> LPS affine: its column norms."""
    a = np.asarray(affine, dtype=np.float64)
    sx, sy, sz = (float(np.linalg.norm(a[:3, i])) for i in range(3))
    return (sz, sy, sx)


@dataclass
class StudyArrays:
    """One study with its reference segmentation, independent of where it came from.

    Attributes
    ----------
    volumes
        role -> (Z, Y, X) float32 raw intensities on the reference grid.
    valid
        role -> (Z, Y, X) bool, where the sequence has data.
    mask
        (Z, Y, X) uint8 reference mask (None at inference).
    affine
        4x4 voxel (col, row, slice) -> LPS.
    """

    case_id: str
    volumes: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    mask: np.ndarray | None
    affine: np.ndarray
    report: str | None = None
    findings: Findings | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(next(iter(self.volumes.values())).shape)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Voxel size (z, y, x) in mm, from the affine's column norms."""
        return spacing_zyx(self.affine)


@dataclass
class PreparedStudy:
    """Model-ready arrays of one study.

    Attributes
    ----------
    images
        (Z, S, H, W) float32 in [0, 1], sequences in model order, slices resized to H = W = img_size.
    seq_valid
        (Z, S) bool, sequence present on that slice.
    affine
        4x4 affine of the original grid.
    shape_yx
        (Y, X) of the original grid.
    centre_lps
        (3,) body centre in LPS mm.
    mask
        (Z, H, W) float32 resized reference mask, or None.
    """

    images: np.ndarray
    seq_valid: np.ndarray
    affine: np.ndarray
    shape_yx: tuple[int, int]
    centre_lps: np.ndarray
    mask: np.ndarray | None = None


def resize_slices(vol: np.ndarray, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """Resize (Z, Y, X) slice-wise to (Z, H, W) (antialiased when shrinking)."""
    if tuple(vol.shape[1:]) == tuple(size):
        return np.asarray(vol, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32))[:, None]
    shrink = size[0] < vol.shape[1] or size[1] < vol.shape[2]
    out = F.interpolate(t, size=size, mode=mode, align_corners=False, antialias=shrink and mode == "bilinear")
    return out[:, 0].numpy()


def prepare_study(
    volumes: dict[str, np.ndarray],
    valid: dict[str, np.ndarray] | None,
    affine: np.ndarray,
    sequences: list[str],
    img_size: int,
    norm: NormParams,
    mask: np.ndarray | None = None,
) -> PreparedStudy:
    """Normalise and resize a study for the model.

    Parameters
    ----------
    volumes
        role -> (Z, Y, X) raw intensities; roles not in ``sequences`` are ignored, roles of
        ``sequences`` that are absent count as missing.
    valid
        role -> (Z, Y, X) bool, or None (everything valid).
    affine
        4x4 voxel -> LPS of the grid.
    sequences
        Model sequence order, e.g. ["T1", "T2", "T1C"].
    img_size
        Model input size.
    norm
        Percentile window.
    mask
        Optional (Z, Y, X) reference mask.
    """
    shapes = {tuple(v.shape) for v in volumes.values()}
    if len(shapes) != 1:
        raise ValueError(f"volumes are not on one grid: shapes {sorted(shapes)}")
    z, y, x = shapes.pop()
    size = (img_size, img_size)
    imgs = np.zeros((z, len(sequences), img_size, img_size), dtype=np.float32)
    seq_valid = np.zeros((z, len(sequences)), dtype=bool)
    normed = []
    for s, role in enumerate(sequences):
        if role not in volumes:
            continue
        v = volumes[role]
        vm = valid.get(role) if valid else None
        if vm is None:
            vm = np.isfinite(v)
        vm = np.asarray(vm, dtype=bool)
        if not vm.any():
            continue
        n = percentile_normalize(v, vm, norm)
        normed.append(n)
        imgs[:, s] = resize_slices(n, size)
        seq_valid[:, s] = vm.reshape(z, -1).mean(axis=1) >= MIN_VALID_FRACTION
    mean_img = np.mean(normed, axis=0) if normed else np.zeros((z, y, x), np.float32)
    centre = body_centre(mean_img, affine)
    m = None
    if mask is not None:
        m = resize_slices(np.asarray(mask, dtype=np.float32), size)
    return PreparedStudy(images=imgs, seq_valid=seq_valid, affine=np.asarray(affine, np.float64), shape_yx=(y, x), centre_lps=centre, mask=m)


def flip_affine(affine: np.ndarray, axis: str, n: int) -> np.ndarray:
    """Affine of an image flipped along ``axis`` ("x" = columns, "y" = rows) of length ``n``."""
    m = np.eye(4)
    i = 0 if axis == "x" else 1
    m[i, i] = -1.0
    m[i, 3] = n - 1
    return np.asarray(affine, dtype=np.float64) @ m


def context_stack(images: np.ndarray, k: int, context_slices: int) -> np.ndarray:
    """(Z, S, H, W) -> (S, C, H, W) for slice ``k``: C = 1 (slice k) or 3 (k-1, k, k+1, clamped)."""
    z = images.shape[0]
    if context_slices == 1:
        return images[k][:, None]
    half = context_slices // 2
    idx = [min(max(k + d, 0), z - 1) for d in range(-half, half + 1)]
    return np.stack([images[i] for i in idx], axis=1)


def slice_inputs(p: PreparedStudy, k: int, context_slices: int, img_size: int, affine: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model inputs of slice ``k``: images (S, C, H, W), valid (S,), coords (2, H, W)."""
    a = p.affine if affine is None else affine
    coords = patient_coordinate_map(a, k, p.shape_yx, (img_size, img_size), p.centre_lps)
    return context_stack(p.images, k, context_slices), p.seq_valid[k], coords
