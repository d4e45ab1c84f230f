"""Dice on parotid phantoms from an independent generator (--generator second|third|fourth), read as the node reads them.

The generators: ``second`` (pgsam_node/synth/second.py; its training cases also feed the trainer,
so the bundled models have seen its kind of study), ``third`` (pgsam_node/synth/third.py; held out
of training until late on 2026-12-05, since then in the fat-saturation companion's) and ``fourth``
(pgsam_node/synth/fourth.py, written on 2026-12-06 and held out of all training: it measures
transfer to a generator the models never saw).

Each study is written as DICOM in folders named s01, s02, s03 (no role in the name); the node's
own classifier assigns the roles from the headers, the geometry stage builds the volumes, the
report parser reads the report, the router picks the model and the mask is scored on the
post-contrast T1's grid. The anchor, measured in the same run: the same number of our own
generator's studies through the same DICOM path (benchmarks/phantom_dicom.py's reader).

    python benchmarks/foreign_phantoms.py [--generator second|third|fourth] [--cases 16] [--seed-base 0] [--model DIR] [--no-fallback] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import write_json  # benchmarks/, the script's own folder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pgsam_node.training.metrics import dice  # noqa: E402


def read_study(folder: Path, geometry):
    """(StudyVolumes, roles) of a folder of series folders, roles from the headers as the node assigns them."""
    import pydicom

    from pgsam_node.assemble.classify import classify_series, shared_exam_values
    from pgsam_node.geometry import build_study_volumes
    from pgsam_node.ingest.evidence import classification_headers

    headers = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(sub.glob("*.dcm"))
        headers[sub.name] = (classification_headers(pydicom.dcmread(files[0], stop_before_pixels=True)), files)
    shared = shared_exam_values([h for h, _ in headers.values()])
    roles: dict[str, list[Path]] = {}
    named = {}
    for name, (h, files) in headers.items():
        role, _reason = classify_series(h, shared=shared)
        named[name] = role
        if role != "OTHER" and role not in roles:
            roles[role] = files
    return build_study_volumes(roles, geometry), named


def foreign_case(generator: str, seed: int, folder: Path, geometry):
    """(study record, study volumes, roles, findings, truth) of one study of ``generator``
    written to ``folder`` and read as the node reads it; the truth (bool) moved from the
    post-contrast T1's grid, where the generator draws it, onto the study's reference grid."""
    from pgsam_node.geometry import Volume, mask_to_reference
    from pgsam_node.reports.parse import parse_report

    fs = importlib.import_module(f"pgsam_node.synth.{generator}").write_foreign_study(seed, folder)
    sv, named = read_study(fs.folder, geometry)
    t1c = sv.volumes.get("T1C", sv.reference)
    truth_vol = Volume(array=fs.truth.astype(np.float32), affine=np.asarray(t1c.affine, dtype=np.float64), spacing=t1c.spacing)
    truth, _ = mask_to_reference(truth_vol, sv.reference)
    return fs, sv, named, parse_report(fs.report), np.asarray(truth) > 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", choices=("second", "third", "fourth"), default="second",
                    help="phantom generator: pgsam_node.synth.second (default), .third or .fourth (held out of all training)")
    ap.add_argument("--flip-tta", choices=("on", "off"), default=None,
                    help="model.flip_tta: average each slice's answer with its left-right mirrored one (default: the embedded default's)")
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--seed-base", type=int, default=0)
    ap.add_argument("--model", type=Path, default=None, help="model folder used as model.path (default: the embedded default)")
    ap.add_argument("--no-fallback", action="store_true", help="model.fallback off (the default model alone)")
    ap.add_argument("--no-keep-stated-regions", action="store_true",
                    help="model.fallback_keep_stated_regions off: a doubted mask always goes to the fallback")
    ap.add_argument("--non-fat-sat", default=None, metavar="MODEL",
                    help="model.non_fat_sat: companion for studies not fat-saturated (folder or bundled name; "
                         "'none' = off; default: the embedded default's, applied only without --model)")
    ap.add_argument("--size-shrink-ceiling", type=float, default=None, metavar="P",
                    help="model.size_shrink_ceiling (default: the embedded default's; 0 = never cut a region wider than the stated size)")
    ap.add_argument("--no-anchor", action="store_true", help="skip our own generator's studies")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import torch

    from phantom_dicom import model_stack

    from pgsam_node.inference.choice import model_that_ran

    torch.set_num_threads(args.threads)
    settings, router = model_stack(args)
    print(f"model: {router.default.model_version}  fallback: {settings.model.fallback}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.cases):
            seed = args.seed_base + i
            t = time.perf_counter()
            fs, sv, named, findings, truth = foreign_case(args.generator, seed, Path(tmp) / f"f{seed}", settings.geometry)
            model = router.for_findings(findings)
            res = model.predict(dict(sv.channels), dict(sv.valid), findings, fs.report, np.asarray(sv.grid.affine, dtype=np.float64))
            mask, _ = sv.to_reference(res.mask)
            d = dice(mask.astype(bool), truth)
            secs = time.perf_counter() - t
            rows.append({"seed": seed, "dice": d, "kind": fs.kind, "side": fs.side, "lobe": fs.lobe, "fat_sat": fs.fat_sat,
                         "roles": named, "reference": sv.reference_role, "seconds": secs, "notes": res.notes})
            print(f"seed {seed}  {fs.kind:<20} {fs.side:<5} {fs.lobe:<11} fs {fs.fat_sat}  roles {named}  Dice {d:.3f}  "
                  f"({secs:.0f} s; {model_that_ran(model)})", flush=True)
            import shutil

            shutil.rmtree(fs.folder, ignore_errors=True)
    mean = float(np.mean([r["dice"] for r in rows]))
    line = f"\nmean Dice over {len(rows)} foreign studies: {mean:.3f}"
    if not args.no_anchor:
        from phantom_dicom import dicom_study

        anchor = []
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.cases):
                (chan, valid, findings, report, affine), truth, _meta, sv = dicom_study(1_000_400 + i, Path(tmp), geometry=settings.geometry)
                res = router.for_findings(findings).predict(chan, valid, findings, report, affine)
                mask, _ = sv.to_reference(res.mask)
                anchor.append(dice(mask.astype(bool), truth))
        a = float(np.mean(anchor))
        line += f"; our generator, same path (seeds 1,000,400+): {a:.3f}; ratio {mean / a if a else float('nan'):.2f}"
    print(line)
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
