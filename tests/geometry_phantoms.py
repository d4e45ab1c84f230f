"""Analytic phantoms for the geometry tests: grids as 4 x 4 affines and fields of patient position.

A phantom is a function of patient position (LPS mm) sampled on a grid given by a 4 x 4 affine
((i, j, k, 1) = (column, row, slice, 1) -> LPS). ``tests.factories.MRSeries.from_volume`` writes
it as real DICOM files (single-frame MR, or one Enhanced MR object), so loading them exercises the
whole path.
"""

from __future__ import annotations

import numpy as np


def rotation(axis: str, degrees: float) -> np.ndarray:
    """3 x 3 rotation about the LPS x, y or z axis."""
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


AXIAL = (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
CORONAL = (np.array([1.0, 0, 0]), np.array([0, 0, -1.0]))
SAGITTAL = (np.array([0, 1.0, 0]), np.array([0, 0, -1.0]))


def make_affine(origin, row_dir, col_dir, spacing_zyx, slice_dir=None) -> np.ndarray:
    """Affine of a grid: origin = first voxel centre, unit row/column directions, (z, y, x) spacing."""
    r = np.asarray(row_dir, float) / np.linalg.norm(row_dir)
    c = np.asarray(col_dir, float) / np.linalg.norm(col_dir)
    n = np.cross(r, c) if slice_dir is None else np.asarray(slice_dir, float) / np.linalg.norm(slice_dir)
    a = np.eye(4)
    a[:3, 0] = r * spacing_zyx[2]
    a[:3, 1] = c * spacing_zyx[1]
    a[:3, 2] = n * spacing_zyx[0]
    a[:3, 3] = origin
    return a


def centred_affine(centre, row_dir, col_dir, spacing_zyx, shape_zyx, slice_dir=None) -> np.ndarray:
    """Affine of a grid whose centre voxel position is ``centre`` (LPS)."""
    a = make_affine([0, 0, 0], row_dir, col_dir, spacing_zyx, slice_dir)
    half = (np.array([shape_zyx[2], shape_zyx[1], shape_zyx[0]], float) - 1) / 2
    a[:3, 3] = np.asarray(centre, float) - a[:3, :3] @ half
    return a


def world_points(affine: np.ndarray, shape_zyx) -> np.ndarray:
    """LPS position of every voxel centre: ``(Z, Y, X, 3)``."""
    z, y, x = shape_zyx
    k, j, i = np.meshgrid(np.arange(z), np.arange(y), np.arange(x), indexing="ij")
    idx = np.stack([i, j, k], axis=-1).astype(float)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def smooth_field(p: np.ndarray) -> np.ndarray:
    """Smooth analytic test function of LPS position (wavelengths 60-90 mm), range about 40..160."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    return 100 + 30 * np.sin(2 * np.pi * x / 70) * np.cos(2 * np.pi * y / 90) + 20 * np.sin(2 * np.pi * (z + 0.3 * x) / 60) + 0.1 * z


def sphere(p: np.ndarray, centre, radius: float, edge_mm: float) -> np.ndarray:
    """Anti-aliased ball occupancy in [0, 1] (linear ramp of width ``edge_mm`` at the surface)."""
    r = np.linalg.norm(p - np.asarray(centre, float), axis=-1)
    return np.clip(0.5 - (r - radius) / edge_mm, 0.0, 1.0)
