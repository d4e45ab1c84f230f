"""Which of the two parotid models should segment a study? Dice of the main model alone, the
fat-saturation companion alone, the mean of their two probability maps, and the fat-saturation
switch (the node's choice), on the same studies.

Both models run on every study with their own post-processing (side filter, growth towards the
stated size); the mean is of their probability maps, thresholded at 0.5, without post-processing
(the predictor has no entry point for post-processing a map it did not make), so it is a lower
bound of what an averaging predictor would give. No fallback. The switch's column is the
companion's Dice where the images say T2 or T1C is not fat-saturated
(:func:`pgsam_node.inference.fat_sat.not_fat_saturated`, the node's own check), else the main
model's. The anchor printed last is the switch: each other column as a ratio of it.

    python benchmarks/model_choice.py --set third|second|fourth|ours [--seed-base S] [--cases 16]
        [--fat-sat-off P] [--appearance-jitter F] [--companion MODEL] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from _results import write_json  # benchmarks/, the script's own folder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pgsam_node.training.metrics import dice  # noqa: E402

COLUMNS = ("main", "companion", "mean", "switch")


def load_case(args, seed: int, tmp: Path, geometry):
    """(channels, valid, findings, report, affine, truth, study volumes) of one study of the set."""
    if args.set in ("second", "third", "fourth"):
        from foreign_phantoms import foreign_case

        fs, sv, _named, findings, truth = foreign_case(args.set, seed, tmp / "study", geometry)
        return dict(sv.channels), dict(sv.valid), findings, fs.report, np.asarray(sv.grid.affine, dtype=np.float64), truth, sv
    from phantom_dicom import dicom_study

    (chan, valid, findings, report, affine), truth, _meta, sv = dicom_study(
        seed, tmp, appearance_jitter=args.appearance_jitter, geometry=geometry, fat_sat_off=args.fat_sat_off)
    return chan, valid, findings, report, affine, truth, sv


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=("third", "second", "fourth", "ours"), default="third")
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--seed-base", type=int, default=None, help="default: 100 for third, 0 for second and fourth, 1,000,700 for ours")
    ap.add_argument("--fat-sat-off", type=float, default=0.5, metavar="P", help="ours only: probability that T2, and T1C, are not fat-saturated")
    ap.add_argument("--appearance-jitter", type=float, default=1.0, metavar="F", help="ours only: signals spread F times")
    ap.add_argument("--companion", default=None, help="companion folder or bundled name (default: the embedded default's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    base = args.seed_base if args.seed_base is not None else {"third": 100, "second": 0, "fourth": 0, "ours": 1_000_700}[args.set]

    import torch

    from pgsam_node.config import load_settings
    from pgsam_node.inference.fat_sat import not_fat_saturated
    from pgsam_node.inference.predictor import Predictor
    from pgsam_node.inference.router import resolve_model

    torch.set_num_threads(args.threads)
    settings = load_settings(None, model={"device": "cpu"})
    main_model = Predictor.from_settings(settings.model)
    companion = Predictor.from_dir(resolve_model(args.companion or settings.model.fat_sat_companion()), device="cpu")
    print(f"main {main_model.model_version}  companion {companion.model_version}  set {args.set} seeds {base}..{base + args.cases - 1}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.cases):
            seed = base + i
            chan, valid, findings, report, affine, truth, sv = load_case(args, seed, Path(tmp) / str(seed), settings.geometry)
            probs, row = {}, {"seed": seed}
            for name, model in (("main", main_model), ("companion", companion)):
                res = model.predict(chan, valid, findings, report, affine)
                probs[name] = res.prob
                row[name] = dice(sv.to_reference(res.mask)[0].astype(bool), truth)
            mean = ((probs["main"] + probs["companion"]) / 2 >= 0.5).astype(np.uint8)
            row["mean"] = dice(sv.to_reference(mean)[0].astype(bool), truth)
            bright = not_fat_saturated(chan, valid, threshold=settings.model.fat_rank_threshold)
            row["switch"] = row["companion"] if bright else row["main"]
            row["switch_to"] = "companion" if bright else "main"
            rows.append(row)
            print(f"seed {seed}  switch -> {row['switch_to']:<9}  " + "  ".join(f"{c} {row[c]:.3f}" for c in COLUMNS), flush=True)
    means = {c: float(np.mean([r[c] for r in rows])) for c in COLUMNS}
    print("\nmean Dice over", len(rows), "studies: " + "  ".join(f"{c} {means[c]:.3f}" for c in COLUMNS))
    print("ratio to the switch (the anchor): " + "  ".join(f"{c} {means[c] / means['switch']:.2f}" for c in COLUMNS[:3]))
    if args.json:
        write_json(args.json, {"set": args.set, "seed_base": base, "means": means, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
