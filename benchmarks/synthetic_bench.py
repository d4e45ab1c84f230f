"""Speed of the synthetic data generator (training path and DICOM writer).

Prints seconds per case and a ratio against an anchor measured in the same run: the anchor is
the irreducible work of one case — drawing the Rician noise for three volumes of the same size
(6 normal draws + sqrt per voxel) — so the ratio says how many "noise passes" a case costs and
is comparable across machines.

Usage: python benchmarks/synthetic_bench.py [--size 128] [--slices 24] [--cases 20] [--dicom 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from pgsam_node.synth.phantom import generate_case
from pgsam_node.synth.dicom_writer import write_study


def _anchor(shape: tuple[int, int, int], repeats: int = 5) -> float:
    rng = np.random.default_rng(0)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(3):
            a = rng.standard_normal(shape, dtype=np.float32)
            b = rng.standard_normal(shape, dtype=np.float32)
            np.sqrt(a * a + b * b)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--slices", type=int, default=24)
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--dicom", type=int, default=2, help="DICOM studies to write (0 = skip)")
    args = ap.parse_args()

    shape = (args.slices, args.size, args.size)
    anchor = _anchor(shape)
    generate_case(0, size=args.size, n_slices=args.slices)  # warm-up (imports, caches)
    times = []
    for s in range(1, args.cases + 1):
        t = time.perf_counter()
        generate_case(s, size=args.size, n_slices=args.slices)
        times.append(time.perf_counter() - t)
    per_case = float(np.median(times))
    print(f"anchor (Rician noise for 3 volumes {shape}): {anchor * 1000:.1f} ms")
    print(f"generate_case size={args.size} slices={args.slices}: median {per_case * 1000:.1f} ms "
          f"(max {max(times) * 1000:.1f} ms) = {per_case / anchor:.1f}x anchor; {1 / per_case:.1f} cases/s")
    if args.dicom:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            n_files = 0
            for s in range(args.dicom):
                st = write_study(1000 + s, Path(tmp) / str(s))
                n_files += sum(len(p) for p in st.paths_by_role.values())
            dt = (time.perf_counter() - t) / args.dicom
        print(f"write_study: {dt:.2f} s per study ({n_files / args.dicom:.0f} files) = {dt / anchor:.0f}x anchor")


if __name__ == "__main__":
    main()
