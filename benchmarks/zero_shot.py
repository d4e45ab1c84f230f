"""Report-guided zero-shot proposals + packaged LiteMedSAM, through the node's predictor.

Nothing is trained, so every study here is held out. For each real study (../shared/data) and each
held-out synthetic parotid study, the bundled ``brain-lesion-litemedsam`` folder (or ``--model``)
segments the whole study from its images and report, as ``pgsam-node`` does, in three regimes:

* ``report`` — the report's findings (side, signal description, size, count);
* ``no report`` — no findings (either side, T2-bright / T1-dark assumed, no size);
* ``single`` — only one sequence given (default T1C), with the report.

Two Dice figures per study: over the whole volume (what the node sends: false positives on any
slice count) and over the evaluation slices of ``benchmarks/real_loo.py`` (the lesion's slice
range strided to at most 12), so the rows can sit beside that table. Usage::

    python benchmarks/zero_shot.py [--synthetic 8] [--skip-real] [--model DIR | --default-stack] [--json out.json]

``--default-stack`` runs the node's default model stack with routing off instead (``model.path``
plus ``model.fallback``): what a parotid-configured node does with studies out of its domain.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _results import write_json  # benchmarks/, the script's own folder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pgsam_node.training.metrics import dice  # noqa: E402
SHARED = ROOT / ".." / "shared" / "data"


def studies(args):
    from pgsam_node.training.sources import EVAL_SEED_BASE, synthetic_study

    out = []
    if not args.skip_real:
        from pgsam_node.training.dicom_data import load_dicom_studies
        from pgsam_node.training.nifti_data import load_nifti_studies

        if (SHARED / "tcia-pgbm").is_dir():
            out += [("real", st) for st in load_dicom_studies(SHARED / "tcia-pgbm", ROOT / "config" / "tcia-pgbm-reports.csv")]
        if (SHARED / "open-ms").is_dir():
            out += [("real", st) for st in load_nifti_studies(SHARED / "open-ms", ROOT / "config" / "open-ms-reports.csv")]
    out += [("synthetic", synthetic_study(EVAL_SEED_BASE + i)) for i in range(args.synthetic)]
    return out


def eval_slices(st) -> list[int]:
    from pgsam_node.training.slice_bank import select_slices

    z = st.mask.shape[0]
    return select_slices(st.mask.astype(np.float32), np.ones((z, 1), bool), max_eval=12, n_neg=0)[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "pgsam_node" / "resources" / "models" / "brain-lesion-litemedsam")
    ap.add_argument("--synthetic", type=int, default=8, help="held-out synthetic parotid studies (EVAL seeds)")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--single", default="T1C")
    ap.add_argument("--regimes", default="report,no report,single")
    ap.add_argument("--studies", default=None, help="comma-separated prefixes of the case ids to run (default all)")
    ap.add_argument("--default-stack", action="store_true",
                    help="instead of --model: the embedded default model.path with model.fallback and routing off "
                         "(every study goes to parotid-tiny, its result checked against the report)")
    ap.add_argument("--no-keep-stated-regions", action="store_true",
                    help="with --default-stack: model.fallback_keep_stated_regions off (a doubted mask always goes to the fallback)")
    ap.add_argument("--size-growth-floor", type=float, default=None, metavar="P",
                    help="model.size_growth_floor (default: the embedded default's; 0 = no growth towards the report's size)")
    ap.add_argument("--no-assume-enhancement", action="store_true",
                    help="score a study without a signal description as T2-bright / T1-dark even when it has a T1C "
                         "(the proposals' rule before 2026-12-05; model.assume_enhancement false)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import torch

    from pgsam_node.inference.predictor import Predictor

    torch.set_num_threads(args.threads)
    options = {} if args.size_growth_floor is None else {"size_growth_floor": args.size_growth_floor}
    if args.no_assume_enhancement:
        options["assume_enhancement"] = False
    if args.default_stack:
        from pgsam_node.config import load_settings
        from pgsam_node.inference.router import ModelRouter

        keep = {"fallback_keep_stated_regions": False} if args.no_keep_stated_regions else {}
        router = ModelRouter.from_settings(load_settings(None, model={"by_region": {}, "device": "cpu", **options, **keep}).model)
    else:
        pred = Predictor.from_dir(args.model, device="cpu", **options)
    regimes = [r.strip() for r in args.regimes.split(",")]
    rows = []
    for kind, st in studies(args):
        if args.studies and not any(st.case_id.startswith(p) for p in args.studies.split(",")):
            continue
        gt = st.mask.astype(bool)
        ev = eval_slices(st)
        row = {"study": st.case_id, "kind": kind}
        for regime in regimes:
            vols, valid, findings = st.volumes, st.valid, st.findings
            if regime == "no report":
                findings = None
            elif regime == "single":
                vols = {args.single: st.volumes[args.single]} if args.single in st.volumes else {}
                valid = {args.single: st.valid[args.single]} if st.valid and args.single in st.valid else None
            if not vols:
                continue
            t = time.perf_counter()
            model = router.for_findings(findings) if args.default_stack else pred
            res = model.predict(vols, valid, findings, st.report, st.affine)
            m = res.mask.astype(bool)
            row[regime] = {"dice_volume": dice(m, gt), "dice_eval_slices": dice(m[ev], gt[ev]), "seconds": time.perf_counter() - t,
                           "notes": res.notes}
            print(f"{kind:<10}{st.case_id:<20}{regime:<10} Dice volume {row[regime]['dice_volume']:.3f}  eval slices "
                  f"{row[regime]['dice_eval_slices']:.3f}  ({row[regime]['seconds']:.0f} s) {'; '.join(res.notes)}", flush=True)
        rows.append(row)
    print()
    print(f"{'':<32}" + "".join(f"{r + ' (vol / eval)':>26}" for r in regimes))
    for kind in ("real", "synthetic"):
        sel = [r for r in rows if r["kind"] == kind]
        if not sel:
            continue
        for r in sel:
            print(f"{kind:<10}{r['study']:<22}" + "".join(
                f"{r[g]['dice_volume']:>17.3f} / {r[g]['dice_eval_slices']:.3f}" if g in r else f"{'-':>26}" for g in regimes))
        print(f"{kind + ' mean':<32}" + "".join(
            f"{np.mean([r[g]['dice_volume'] for r in sel if g in r]):>17.3f} / {np.mean([r[g]['dice_eval_slices'] for r in sel if g in r]):.3f}"
            for g in regimes))
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
