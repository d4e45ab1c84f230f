"""Dice on synthetic parotid studies written as DICOM, read back the way the node reads them.

The training and ``evaluate --data synthetic`` path draws phantoms straight onto one axial grid.
The node never sees that: it gets three DICOM series per study, each on its own acquisition grid
(T1 sometimes coronal or oblique, T2 sometimes tilted, vendor-specific headers, spacings and
slice counts; :mod:`pgsam_node.synth.dicom_writer`), which the geometry stage resamples onto the
reference series. This benchmark writes held-out studies that way (seeds from ``--seed-base``,
disjoint from the training seeds 0..199), builds the study volumes with
:func:`pgsam_node.geometry.build_study_volumes` exactly as the node does, runs the node's model
stack (``model.path`` with ``model.by_region`` and ``model.fallback`` from the embedded default, or
``--model DIR`` as ``model.path``) and scores whole-volume Dice against the written ground truth
resampled onto the same reference grid.

The anchor, measured in the same run, is the same model on the same seeds through the fast
training path (one common axial grid, no DICOM): the ratio says what the acquisition geometry
costs. Usage::

    python benchmarks/phantom_dicom.py [--cases 8] [--seed-base 1000000] [--model DIR] [--appearance-jitter F] [--size-growth-floor P] \
        [--t1c-plane coronal] [--working-plane reference] [--json out.json]

``--fat-sat-off 1`` renders T2 and T1C without fat saturation (fat and marrow bright).
``--t1c-plane coronal|sagittal`` writes the post-contrast T1 (the reference series) in that plane;
``--working-plane reference`` runs the model on its own slices instead of the axial working grid.

``--appearance-jitter F`` draws a shifted test set: the same anatomy with tissue and lesion signals
spread F times as widely around the generator's tables (a stand-in for another phantom generator).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import write_json  # benchmarks/, the script's own folder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pgsam_node.inference.choice import model_that_ran  # noqa: E402
from pgsam_node.training.metrics import dice  # noqa: E402


def dicom_study(seed: int, tmp: Path, appearance_jitter: float = 1.0, t1c_plane: str = "axial", geometry=None, fat_sat_off: float = 0.0):
    """Write one study as DICOM, read it back through the geometry stage; (arrays, truth, meta)."""
    from pgsam_node.geometry import Volume, build_study_volumes, mask_to_reference
    from pgsam_node.reports.parse import parse_report
    from pgsam_node.synth.dicom_writer import write_study
    from pgsam_node.synth.phantom import make_phantom

    ph = make_phantom(seed, appearance_jitter=appearance_jitter, fat_sat_off=fat_sat_off)
    study = write_study(ph, tmp / f"case_{seed}", truth_path=tmp / f"truth_{seed}.npz", t1c_plane=t1c_plane)
    sv = build_study_volumes({r: list(p) for r, p in study.paths_by_role.items()}, geometry)
    g = study.grids["T1C"]
    truth_vol = Volume(array=study.mask.astype(np.float32), affine=np.asarray(g.affine(), dtype=np.float64), spacing=g.spacing)
    truth, _ = mask_to_reference(truth_vol, sv.reference)
    meta = {"vendor": study.vendor, "planes": {r: p.plane for r, p in study.plans.items()}, "reference": sv.reference_role}
    meta["working_grid"] = sv.working is not None
    return (dict(sv.channels), dict(sv.valid), parse_report(study.report_text), study.report_text,
            np.asarray(sv.grid.affine, dtype=np.float64)), np.asarray(truth) > 0, meta, sv


def model_stack(args, **sections):
    """(settings, ModelRouter) of the embedded default with the model overrides that ``args`` gives
    (``--model``, ``--no-fallback`` and, where the script has them, ``--non-fat-sat``,
    ``--no-keep-stated-regions``, ``--size-growth-floor`` and ``--size-shrink-ceiling``); ``sections`` are further settings sections."""
    from pgsam_node.config import load_settings
    from pgsam_node.inference.router import ModelRouter

    overrides: dict = {}
    if args.model is not None:
        overrides["path"] = str(args.model)
    if args.no_fallback:
        overrides["fallback"] = None
    if getattr(args, "non_fat_sat", None) is not None:
        overrides["non_fat_sat"] = None if args.non_fat_sat.lower() == "none" else args.non_fat_sat
    if getattr(args, "no_keep_stated_regions", False):
        overrides["fallback_keep_stated_regions"] = False
    if getattr(args, "size_growth_floor", None) is not None:
        overrides["size_growth_floor"] = args.size_growth_floor
    if getattr(args, "size_shrink_ceiling", None) is not None:
        overrides["size_shrink_ceiling"] = args.size_shrink_ceiling
    if getattr(args, "flip_tta", None) is not None:
        overrides["flip_tta"] = args.flip_tta == "on"
    settings = load_settings(None, model=overrides, **sections)
    return settings, ModelRouter.from_settings(settings.model)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flip-tta", choices=("on", "off"), default=None,
                    help="model.flip_tta: average each slice's answer with its left-right mirrored one (default: the embedded default's)")
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--seed-base", type=int, default=1_000_000)
    ap.add_argument("--model", type=Path, default=None, help="model folder used as model.path (default: the embedded default)")
    ap.add_argument("--no-fallback", action="store_true", help="model.fallback off (the default model alone)")
    ap.add_argument("--non-fat-sat", default=None, metavar="MODEL",
                    help="model.non_fat_sat: companion for studies not fat-saturated (folder or bundled name; "
                         "'none' = off; default: the embedded default's, applied only without --model)")
    ap.add_argument("--appearance-jitter", type=float, default=1.0, metavar="F",
                    help="a shifted test set: tissue and lesion signals spread F times the generator's own")
    ap.add_argument("--size-growth-floor", type=float, default=None, metavar="P",
                    help="model.size_growth_floor (default: the embedded default's; 0 = no growth towards the report's size)")
    ap.add_argument("--fat-sat-off", type=float, default=0.0, metavar="P",
                    help="probability that a study's T2, and its T1C, are not fat-saturated (1 = neither is)")
    ap.add_argument("--t1c-plane", choices=("axial", "coronal", "sagittal"), default="axial",
                    help="plane of the post-contrast T1 (the reference series); the anchor stays axial")
    ap.add_argument("--working-plane", choices=("axial", "reference"), default=None,
                    help="geometry.working_plane (default: the embedded default's, axial)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import torch

    from pgsam_node.training.sources import synthetic_study

    torch.set_num_threads(args.threads)
    settings, router = model_stack(args, **({"geometry": {"working_plane": args.working_plane}} if args.working_plane else {}))
    print(f"model: {router.default.model_version}  non-fat-sat companion: {settings.model.fat_sat_companion()}  "
          f"fallback: {settings.model.fallback}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.cases):
            seed = args.seed_base + i
            (chan, valid, findings, report, affine), truth, meta, sv = dicom_study(seed, Path(tmp), args.appearance_jitter, args.t1c_plane, settings.geometry,
                                                                    args.fat_sat_off)
            t = time.perf_counter()
            model = router.for_findings(findings)
            res = model.predict(chan, valid, findings, report, affine)
            mask, _ = sv.to_reference(res.mask)  # as the pipeline does: scored on the reference series' grid
            d_dicom = dice(mask.astype(bool), truth)
            secs = time.perf_counter() - t
            # the anchor: the same phantom on the training path's grid
            st = synthetic_study(seed, appearance_jitter=args.appearance_jitter, fat_sat_off=args.fat_sat_off)
            fast = router.for_findings(st.findings).predict(st.volumes, st.valid, st.findings, st.report, st.affine)
            d_fast = dice(fast.mask.astype(bool), st.mask.astype(bool))
            rows.append({"seed": seed, "dice_dicom": d_dicom, "dice_fast_path": d_fast, "seconds": secs, **meta,
                         "notes": res.notes})
            ran = model_that_ran(model)
            print(f"seed {seed}  {meta['vendor']:<8} planes {meta['planes']}  Dice DICOM {d_dicom:.3f}  fast path {d_fast:.3f}  "
                  f"({secs:.0f} s; {ran})", flush=True)
    dd = float(np.mean([r["dice_dicom"] for r in rows]))
    df = float(np.mean([r["dice_fast_path"] for r in rows]))
    print(f"\nmean Dice over {len(rows)} studies: DICOM path {dd:.3f}; fast path (anchor) {df:.3f}; "
          f"ratio {dd / df if df else float('nan'):.2f}")
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
