#!/usr/bin/env python3
"""Resampling speed and memory: ``resample_to`` vs SciPy's ``affine_transform`` (anchor).

Builds a source volume (default 200 x 512 x 512, float32, smooth content) and a reference grid
of the same size rotated 30 degrees (oblique) with a different spacing, resamples with
``pgsam_node.geometry.resample_to`` (torch grid_sample, chunked along Z) and with
``scipy.ndimage.affine_transform(order=1)`` on the same index mapping, and prints the seconds of
each, the ratio node/anchor, the largest difference between the two results (they implement
the same trilinear interpolation) and the peak resident memory growth of each.

Usage: python benchmarks/geometry_resample.py [--shape 200 512 512] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgsam_node.geometry import Volume, resample_to  # noqa: E402


def _rot_x(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def _affine(shape, spacing, rot, centre) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([spacing[2], spacing[1], spacing[0]])
    half = (np.array(shape[::-1], float) - 1) / 2
    a[:3, 3] = np.asarray(centre) - a[:3, :3] @ half
    return a


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[200, 512, 512], metavar=("Z", "Y", "X"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = ap.parse_args()
    import torch
    from scipy import ndimage

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(args.shape)
    z, y, x = np.meshgrid(*(np.linspace(0, 6, n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)
    src_arr = (100 + 30 * np.sin(x) * np.cos(y) + 20 * np.sin(z + 0.3 * x)).astype(np.float32)
    src = Volume(src_arr, _affine(shape, (1.0, 0.45, 0.45), np.eye(3), [0, 0, 0]), (1.0, 0.45, 0.45))
    ref = Volume(
        np.zeros(shape, np.float32), _affine(shape, (1.1, 0.5, 0.5), _rot_x(30), [2, -3, 1]), (1.1, 0.5, 0.5)
    )
    print(f"shape {shape} ({np.prod(shape) / 1e6:.1f} M voxels), device {args.device}, torch threads {torch.get_num_threads()}")

    rss0 = _rss_mb()
    t0 = time.perf_counter()
    values, valid = resample_to(src, ref, device=args.device)
    t_node = time.perf_counter() - t0
    rss1 = _rss_mb()

    # anchor: scipy maps output (z, y, x) -> input (z, y, x); our matrix maps (i, j, k) -> (i, j, k)
    t = np.linalg.inv(src.affine) @ ref.affine
    perm = np.zeros((4, 4))
    perm[0, 2] = perm[1, 1] = perm[2, 0] = perm[3, 3] = 1  # (i, j, k) <-> (k, j, i)
    m = perm @ t @ perm
    t0 = time.perf_counter()
    anchor = ndimage.affine_transform(src_arr, m[:3, :3], offset=m[:3, 3], order=1, mode="nearest", output=np.float32)
    t_anchor = time.perf_counter() - t0
    rss2 = _rss_mb()

    diff = float(np.abs(values - anchor)[valid].max()) if valid.any() else float("nan")
    print(f"resample_to          {t_node:8.2f} s   peak RSS growth {rss1 - rss0:8.0f} MB   valid {valid.mean():.1%}")
    print(f"scipy affine_transform {t_anchor:6.2f} s   peak RSS growth {max(0.0, rss2 - rss1):8.0f} MB (after ours)")
    print(f"ratio node/anchor    {t_node / t_anchor:8.2f}   (lower is faster)")
    print(f"max |node - anchor| on valid voxels: {diff:.2e} (range {src_arr.min():.0f}..{src_arr.max():.0f})")


if __name__ == "__main__":
    main()
