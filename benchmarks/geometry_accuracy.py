#!/usr/bin/env python3
"""Resampling accuracy on analytic phantoms written as DICOM (the numbers in docs/geometry.md).

For each (source grid -> reference grid) pair of the unit tests it writes both grids as
single-frame MR files, loads them with ``load_series``, resamples with ``resample_to`` and prints:
the max / RMS error of a smooth field (range about 40..160) at reference voxels inside the
source's sample lattice, and for an anti-aliased ball of radius 18 mm the centre offset (in
reference voxels, per axis) and the relative volume error, after trilinear resampling
(threshold 0.5) and after nearest-neighbour label resampling (``mask_to_reference``).

Usage: python benchmarks/geometry_accuracy.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pgsam_node.geometry import load_series, mask_to_reference, resample_to  # noqa: E402
from tests.factories import MRSeries  # noqa: E402
from tests.geometry_phantoms import smooth_field, sphere, world_points  # noqa: E402
from tests.unit.test_geometry_resample import GRIDS, SPHERE_CENTRE, SPHERE_R, _affine  # noqa: E402

PAIRS = [("coronal", "axial"), ("oblique30", "axial"), ("axial", "oblique30"), ("sagittal", "coronal"), ("small_fov", "axial")]


def _load(tmp: Path, name: str, func) -> object:
    aff = _affine(name)
    vals = func(world_points(aff, GRIDS[name][3])).astype(np.float32)
    return load_series(MRSeries.from_volume(vals, aff).write(tmp / f"{name}_{func.__name__}"))


def main() -> None:
    ball = lambda p: 100 * sphere(p, SPHERE_CENTRE, SPHERE_R, edge_mm=2.0)  # noqa: E731
    ball.__name__ = "ball"
    true_v = 4 / 3 * np.pi * SPHERE_R**3
    print(f"{'source -> reference':24s} {'max err':>8s} {'rms err':>8s} {'cover':>6s} | {'dC':>6s} {'dV':>7s} | {'NN dC':>6s} {'NN dV':>7s}")
    print("(dC: largest per-axis centre offset in reference voxels; dV: relative volume error)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for src_name, ref_name in PAIRS:
            src, ref = _load(tmp, src_name, smooth_field), _load(tmp, ref_name, smooth_field)
            values, valid = resample_to(src, ref)
            pts = world_points(ref.affine, ref.shape)
            idx = src.lps_to_index(pts.reshape(-1, 3)).reshape(pts.shape)
            interior = np.all((idx >= 0) & (idx <= np.array(src.shape[::-1]) - 1), axis=-1)
            err = np.abs(values - smooth_field(pts))[interior]
            row = f"{src_name + ' -> ' + ref_name:24s} {err.max():8.3f} {np.sqrt((err**2).mean()):8.3f} {valid.mean():6.1%} |"
            bsrc, bref = _load(tmp, src_name, ball), _load(tmp, ref_name, ball)
            bv, _ = resample_to(bsrc, bref)
            voxel = abs(np.linalg.det(bref.affine[:3, :3]))
            true_idx = bref.lps_to_index(SPHERE_CENTRE)
            tri = bv > 50
            bsrc.array = (bsrc.array > 50).astype(np.float32)
            nn = mask_to_reference(bsrc, bref)[0] > 0.5
            for mask in (tri, nn):
                c = bref.lps_to_index(pts[mask].mean(axis=0))
                row += f" {np.abs(c - true_idx).max():6.3f} {(mask.sum() * voxel - true_v) / true_v:+7.2%} |"
            print(row.rstrip("|"))


if __name__ == "__main__":
    main()
