"""The anchor: packaged LiteMedSAM zero-shot on the real studies, with boxes from the expert mask.

Two prompt regimes per study, same slices, same encoder pass:

* ``box/slice`` — on every evaluated slice that holds lesion, one box per 2-D connected lesion
  component of the expert mask (TCIA tumours: one; MS: each lesion), masks united. The best a box
  prompt can be: the ceiling a report-guided model on this backbone starts from.
* ``loose 3-D box`` — one box: the mask's 3-D bounding box widened by 10 % of its size in-plane,
  applied on every evaluated slice inside its slice range.

Dice is 3-D over the evaluated slices (``--stride`` > 1 evaluates every n-th slice of the mask's
slice range to bound the CPU time; said in the output). Sequence: T1C (post-contrast T1) for the
brain tumours, FLAIR for MS (where white-matter lesions show). Usage::

    python benchmarks/litemedsam_anchor.py [--stride-ms 4] [--json runs/anchor.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _results import write_json  # benchmarks/, the script's own folder
import torch
from scipy import ndimage
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "data"


def _norm(vol: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(vol[np.isfinite(vol)], [0.5, 99.5])
    return np.clip((vol - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def _resize(a: np.ndarray, size, mode: str) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    kw = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(t, size=size, mode=mode, **kw)[0, 0].numpy()


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else 1.0


def run_study(net, image: np.ndarray, mask: np.ndarray, stride: int) -> dict:
    """image (Z, Y, X) raw, mask (Z, Y, X) 0/1 -> Dice per regime and encoder seconds."""
    z_has = np.nonzero(mask.reshape(mask.shape[0], -1).any(1))[0]
    z0, z1 = int(z_has.min()), int(z_has.max())
    zs = list(range(z0, z1 + 1, stride))
    y, x = mask.shape[1:]
    sy, sx = 256 / y, 256 / x
    ys, xs = np.nonzero(mask.any(0))
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    loose = [(xs.min() - 0.1 * w) * sx, (ys.min() - 0.1 * h) * sy, (xs.max() + 0.1 * w) * sx, (ys.max() + 0.1 * h) * sy]
    loose = np.clip(loose, 0, 255).astype(np.float32)
    img = _norm(image)
    pred = {"box/slice": np.zeros((len(zs), y, x), bool), "loose 3-D box": np.zeros((len(zs), y, x), bool)}
    enc_s = 0.0
    with torch.inference_mode():
        for i, k in enumerate(zs):
            sl = torch.from_numpy(_resize(img[k], (256, 256), "bilinear"))[None, None].expand(1, 3, 256, 256)
            t0 = time.perf_counter()
            emb = net.image_encoder(sl)
            enc_s += time.perf_counter() - t0
            boxes = {"loose 3-D box": [loose]}
            lab, n = ndimage.label(mask[k])
            boxes["box/slice"] = [
                np.array([s[1].start * sx, s[0].start * sy, (s[1].stop - 1) * sx, (s[0].stop - 1) * sy], np.float32) for s in ndimage.find_objects(lab)
            ] if n else []
            for regime, bl in boxes.items():
                if not bl:
                    continue
                bt = torch.from_numpy(np.stack(bl))[:, None, :]
                sparse, dense = net.prompt_encoder(points=None, boxes=bt, masks=None)
                low, _ = net.mask_decoder(image_embeddings=emb, image_pe=net.prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
                                          dense_prompt_embeddings=dense, multimask_output=False)
                prob = torch.sigmoid(low[:, 0]).amax(0).numpy()  # union over the boxes
                pred[regime][i] = _resize(prob, (y, x), "bilinear") > 0.5
    gt = mask[zs].astype(bool)
    return {"slices": len(zs), "stride": stride, "encoder_s_per_slice": enc_s / len(zs), **{r: _dice(p, gt) for r, p in pred.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stride-ms", type=int, default=4, help="evaluate every n-th slice of the MS mask range (182 slices, 1 mm)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from pgsam_node.model.litemedsam import packaged_litemedsam
    from pgsam_node.training.dicom_data import load_dicom_studies
    from pgsam_node.training.nifti_data import load_nifti_studies

    net = packaged_litemedsam()
    jobs = []
    if (SHARED / "tcia-pgbm").is_dir():
        jobs += [(st, "T1C", 1) for st in load_dicom_studies(SHARED / "tcia-pgbm")]
    if (SHARED / "open-ms").is_dir():
        jobs += [(st, "FLAIR", args.stride_ms) for st in load_nifti_studies(SHARED / "open-ms")]
    if not jobs:
        print("no real data under ../shared/data: nothing to measure")
        return 1
    rows = {}
    print(f"{'study':<20} {'seq':<6} {'slices':>6} {'box/slice':>10} {'loose 3-D':>10} {'enc s/slice':>12}")
    for st, role, stride in jobs:
        r = run_study(net, st.volumes[role], st.mask, stride)
        rows[st.case_id] = {"sequence": role, **r}
        print(f"{st.case_id:<20} {role:<6} {r['slices']:>6} {r['box/slice']:>10.3f} {r['loose 3-D box']:>10.3f} {r['encoder_s_per_slice']:>12.2f}", flush=True)
    for regime in ("box/slice", "loose 3-D box"):
        print(f"mean {regime}: {np.mean([v[regime] for v in rows.values()]):.3f}")
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
