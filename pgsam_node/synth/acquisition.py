"""A phantom as the scanner acquires it, without writing DICOM.

:func:`pgsam_node.synth.dicom_writer.write_study` renders each sequence on its own acquisition grid
(T1 sometimes coronal or oblique, T2 sometimes tilted, other matrices, spacings and slab
positions; :func:`~pgsam_node.synth.dicom_writer.plan_series`) and the node's geometry stage then
resamples every series onto the reference (T1C). :func:`acquire` does the same in memory, with the
same plans and the geometry stage's own :func:`~pgsam_node.geometry.resample_to`, so a model can
be trained on what the node really feeds it (through-plane blur of a coronal T1 seen axially,
partial coverage, tilted T2) rather than only on the fast path's single common grid
(:func:`~pgsam_node.synth.phantom.generate_case`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pgsam_node.findings import Findings
from pgsam_node.geometry import Volume, resample_to
from pgsam_node.synth.dicom_writer import draw_scanner, plan_series
from pgsam_node.synth.phantom import Grid, case_report, make_phantom


@dataclass
class AcquiredCase:
    """Channels resampled onto the T1C grid (``valid`` marks where each series has data)."""

    seed: int
    volumes: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    mask: np.ndarray
    affine: np.ndarray
    report: str
    findings: Findings
    language: str
    distractor: str | None
    vendor: str
    planes: dict[str, str]


def _volume(array: np.ndarray, grid: Grid) -> Volume:
    return Volume(array=array.astype(np.float32), affine=np.asarray(grid.affine(), dtype=np.float64),
                  spacing=grid.spacing, frame_of_reference_uid="1.2.3")


def acquire(seed: int, language: str | None = None, distractor: str | None = "random", appearance_jitter: float = 1.0,
            fat_sat_off: float = 0.0) -> AcquiredCase:
    """Render phantom ``seed`` on per-series acquisition grids and resample onto T1C, as the node does.

    The plans and noise streams are drawn as :func:`~pgsam_node.synth.dicom_writer.write_study` draws
    them, so ``acquire(s)`` is the study ``pgsam-node synth --seed s`` writes, minus the DICOM
    encoding (12-bit quantisation and rescale).
    """
    ph = make_phantom(int(seed), distractor=distractor, appearance_jitter=appearance_jitter, fat_sat_off=fat_sat_off)
    rng, vendor, *_ = draw_scanner(seed)  # write_study's draws, so the series plans are the same
    plans = plan_series(ph, rng, vendor)
    text, findings, lang = case_report(ph, int(seed), language)
    ref_grid = plans["T1C"].grid
    reference = _volume(np.zeros(ref_grid.shape, np.float32), ref_grid)
    volumes, valid = {}, {}
    for idx, role in enumerate(("T1", "T2", "T1C")):
        plan = plans[role]
        arr = ph.render(role, plan.grid, np.random.default_rng([int(seed), 0xA0 + idx]))
        if role == "T1C":
            volumes[role], valid[role] = arr.astype(np.float32), np.ones(arr.shape, bool)
        else:
            volumes[role], valid[role] = resample_to(_volume(arr, plan.grid), reference)
    return AcquiredCase(
        seed=int(seed), volumes=volumes, valid=valid, mask=ph.lesion_mask(ref_grid).astype(np.uint8),
        affine=np.asarray(ref_grid.affine(), dtype=np.float64), report=text, findings=findings, language=lang,
        distractor=ph.distractor, vendor=vendor, planes={r: p.plane for r, p in plans.items()},
    )
