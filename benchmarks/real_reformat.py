"""The real TCIA brain-tumour studies with their post-contrast T1 reformatted sagittally or coronally.

A stand-in for a site whose brain protocol acquires the T1C as a sagittal 3-D volume: each study's
T1post is resampled onto a sagittal (or coronal) grid over its field, written as a DICOM series in
the same frame of reference, and the study (that series, T1prereg, T2reg) goes through the
geometry stage and the node's model stack with its report, as the node runs it. Dice against the
expert mask on the reformatted series' grid, with the model on the axial working grid
(``geometry.working_plane: axial``, the default) and on the reformatted slices themselves
(``reference``); the anchor is the original axial study in the same run. Usage::

    python benchmarks/real_reformat.py [--plane sagittal|coronal] [--threads 2] [--json out.json]

Needs ``../shared/data/tcia-pgbm``. The reformat interpolates the 6.5 mm axial slices, so it is
blurrier along head-feet than a true 3-D acquisition.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import write_json  # benchmarks/, the script's own folder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / ".." / "shared" / "data" / "tcia-pgbm"


def reformat_grid(vol, plane: str, px: float = 0.9, step: float = 1.5):
    """A sagittal or coronal grid (Volume with an empty array) over ``vol``'s field."""
    from pgsam_node.geometry import Volume

    z, y, x = vol.shape
    corners = vol.index_to_lps(np.array([[i, j, k] for i in (0, x - 1) for j in (0, y - 1) for k in (0, z - 1)]))
    lo, hi = corners.min(0), corners.max(0)
    a = np.eye(4)
    if plane == "sagittal":  # columns anterior -> posterior, rows head -> feet, slices right -> left
        a[:3, 0], a[:3, 1], a[:3, 2] = [0, px, 0], [0, 0, -px], [step, 0, 0]
        shape = (int((hi[0] - lo[0]) / step) + 1, int((hi[2] - lo[2]) / px) + 1, int((hi[1] - lo[1]) / px) + 1)
    else:  # coronal: columns right -> left, rows head -> feet, slices anterior -> posterior
        a[:3, 0], a[:3, 1], a[:3, 2] = [px, 0, 0], [0, 0, -px], [0, step, 0]
        shape = (int((hi[1] - lo[1]) / step) + 1, int((hi[2] - lo[2]) / px) + 1, int((hi[0] - lo[0]) / px) + 1)
    a[:3, 3] = [lo[0], lo[1], hi[2]]
    return Volume(array=np.broadcast_to(np.float32(0), shape), affine=a, spacing=(step, px, px))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plane", choices=("sagittal", "coronal"), default="sagittal")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"needs {DATA} (the TCIA studies beside the repository)")
        return 2
    import pydicom
    import torch

    from pgsam_node.config import load_settings
    from pgsam_node.geometry import build_study_volumes, load_series, mask_to_reference, resample_to
    from pgsam_node.inference.router import ModelRouter
    from pgsam_node.reports.parse import parse_report
    from pgsam_node.training.metrics import dice
    from tests.factories import MRSeries

    torch.set_num_threads(args.threads)
    reports = {r["study"]: r["report"] for r in csv.DictReader(open(ROOT / "config" / "tcia-pgbm-reports.csv"))}
    rows = []
    for study in sorted(reports):
        sd = DATA / study
        files = {d: sorted((sd / d).glob("*.dcm")) for d in ("T1post", "T1prereg", "T2reg", "MaskTumor")}
        t1c, mask = load_series(files["T1post"]), load_series(files["MaskTumor"])
        findings = parse_report(reports[study])
        row: dict = {"study": study, "plane": args.plane}
        with tempfile.TemporaryDirectory() as tmp:
            grid = reformat_grid(t1c, args.plane)
            values, _ = resample_to(t1c, grid)
            for_uid = str(pydicom.dcmread(files["T1post"][0], stop_before_pixels=True).FrameOfReferenceUID)
            series = MRSeries.from_volume(np.clip(values, 0, 65535).astype(np.uint16), grid.affine, role="T1C", frame_of_reference_uid=for_uid)
            variants = {"reformatted": series.write(Path(tmp) / "t1c"), "original axial": files["T1post"]}
            for name, t1c_paths in variants.items():
                for plane in (("axial", "reference") if name == "reformatted" else ("axial",)):
                    settings = load_settings(None, geometry={"working_plane": plane})
                    sv = build_study_volumes({"T1C": t1c_paths, "T1": files["T1prereg"], "T2": files["T2reg"]}, settings.geometry)
                    truth, _ = mask_to_reference(mask, sv.reference)
                    model = ModelRouter.from_settings(settings.model).for_findings(findings)
                    t = time.perf_counter()
                    res = model.predict(sv.channels, sv.valid, findings, reports[study], sv.grid.affine)
                    pred, _ = sv.to_reference(res.mask)
                    key = name if name != "reformatted" else f"{args.plane}, model on {'axial working grid' if plane == 'axial' else 'its own slices'}"
                    row[key] = d = dice(pred > 0, truth > 0)
                    print(f"{study}  {key:<45} Dice {d:.3f}  ({time.perf_counter() - t:.0f} s, {model.model_version})", flush=True)
        rows.append(row)
    keys = [k for k in rows[0] if k not in ("study", "plane")]
    for k in keys:
        print(f"mean {k}: {np.mean([r[k] for r in rows]):.3f}")
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
