"""Inference speed of PG-SAM presets, with a ratio against an anchor measured in the same run.

Anchor: one forward pass of the plain ``segment_anything`` vit_b image encoder (random weights,
one 1024 x 1024 image, ``torch.inference_mode``) on the same device. Every measurement runs in
its own subprocess so peak memory (max RSS, and peak CUDA memory on a GPU) is per measurement.

Measured:

* ``tiny`` - the bundled parotid model (``Predictor.from_dir(None)``) on a synthetic study
  (128 x 128, ``--slices-tiny`` slices, three sequences, report text);
* ``vit_b`` - PG-SAM with the official vit_b dimensions and random weights (1024 px input) on a
  synthetic study with ``--slices-vit-b`` slices;
* ``litemedsam`` - a model folder on the litemedsam preset (``--litemedsam-model``; without one,
  the preset as built, whose untrained head selects few slices) through the node's predictor (on a CPU: first pass on one
  sequence, full model only on the selected slices) on a real TCIA study when ``../shared/data`` is
  there, else a synthetic one; its own anchor, measured in the same run, is a plain packaged
  LiteMedSAM encoder pass over every slice of the same study's three sequences: the ratio is what
  slice selection, batching and embedding reuse buy.

Usage: ``python benchmarks/inference.py [--slices-tiny 24] [--slices-vit-b 2] [--threads N]``.
Prints seconds per study, per slice, peak memory and the ratios; no assertion.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _peak() -> dict:
    import torch

    out = {"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if torch.cuda.is_available():
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _anchor(q, threads: int, repeats: int) -> None:
    import torch
    from segment_anything import sam_model_registry

    torch.set_num_threads(threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    enc = sam_model_registry["vit_b"]().image_encoder.to(dev).eval()
    x = torch.rand(1, 3, 1024, 1024, device=dev)
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            t = time.perf_counter()
            enc(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    q.put({"seconds": min(times), "device": str(dev), **_peak()})


def _study(n_slices: int):
    from pgsam_node.training.sources import synthetic_study

    return synthetic_study(1_000_000, size=128, n_slices=n_slices)


def _predict(q, which: str, n_slices: int, threads: int, repeats: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from pgsam_node.inference.predictor import Predictor, resolve_device

    if which == "tiny":
        pred = Predictor.from_dir(None, device="auto", batch_size=8)
    else:
        from pgsam_node.model.pgsam import build_model
        from pgsam_node.model.presets import ModelConfig, get_preset

        torch.manual_seed(0)
        cfg = ModelConfig(arch=get_preset("vit_b"), name="vit_b-random", version="vit_b-random")
        dev = resolve_device("auto")
        pred = Predictor(build_model(cfg).to(dev).eval(), cfg, dev, batch_size=2)
    st = _study(n_slices)
    pred.predict(st.volumes, st.valid, st.findings, st.report, st.affine)  # warm-up (text encoder load, allocations)
    best = None
    for _ in range(repeats):
        t = time.perf_counter()
        res = pred.predict(st.volumes, st.valid, st.findings, st.report, st.affine)
        dt = time.perf_counter() - t
        if best is None or dt < best[0]:
            best = (dt, res.seconds)
    q.put({"seconds": best[0], "stages": best[1], "slices": n_slices, "device": str(pred.device), **_peak()})


def _litemedsam(q, model_dir: str, threads: int) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from pgsam_node.inference.predictor import Predictor
    from pgsam_node.model.litemedsam import packaged_litemedsam
    from pgsam_node.training.dicom_data import load_dicom_studies

    tcia = ROOT / ".." / "shared" / "data" / "tcia-pgbm"
    if tcia.is_dir():
        st = load_dicom_studies(tcia, ROOT / "config" / "tcia-pgbm-reports.csv", include=["PGBM-001_19911119"])[0]
    else:
        st = _study(24)
    if Path(model_dir).is_dir():
        pred = Predictor.from_dir(model_dir, device="auto", batch_size=8, embedding_cache_slices=256)
    else:  # no trained folder: the preset as built (untrained head), which says so in the output
        from pgsam_node.inference.predictor import resolve_device
        from pgsam_node.model.pgsam import build_model
        from pgsam_node.model.presets import ModelConfig, get_preset

        torch.manual_seed(0)
        cfg = ModelConfig(arch=get_preset("litemedsam"), name="litemedsam-untrained", version="litemedsam-untrained", context_slices=1)
        dev = resolve_device("auto")
        pred = Predictor(build_model(cfg).to(dev).eval(), cfg, dev, batch_size=8, embedding_cache_slices=256)
    pred.text_embedding(st.report)  # load the text encoder outside the timing
    t = time.perf_counter()
    res = pred.predict(st.volumes, st.valid, st.findings, st.report, st.affine)
    node_s = time.perf_counter() - t
    net = packaged_litemedsam().to(pred.device)
    from pgsam_node.geometry.normalize import NormParams
    from pgsam_node.inference.preprocessing import prepare_study

    prep = prepare_study(st.volumes, st.valid, st.affine, ["T1", "T2", "T1C"], 256, NormParams())
    x = torch.from_numpy(prep.images.reshape(-1, 256, 256)[prep.seq_valid.reshape(-1)])  # every present (slice, sequence)
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(x), 8):
            net.image_encoder(x[i : i + 8, None].expand(-1, 3, 256, 256).to(pred.device))
        if pred.device.type == "cuda":
            torch.cuda.synchronize()
    plain_s = time.perf_counter() - t
    q.put({"seconds": node_s, "plain_encoder_seconds": plain_s, "slices": int(prep.images.shape[0]), "encodes_plain": int(len(x)),
           "encodes_node": pred.embeddings.misses, "notes": res.notes, "mask_voxels": int(np.asarray(res.mask).sum()),
           "device": str(pred.device), "study": st.case_id, **_peak()})


def _run(target, *args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(q, *args))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices-tiny", type=int, default=24)
    ap.add_argument("--slices-vit-b", type=int, default=2)
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-vit-b", action="store_true")
    ap.add_argument("--skip-litemedsam", action="store_true")
    ap.add_argument("--litemedsam-model", type=Path, default=ROOT / "pgsam_node" / "resources" / "models" / "brain-lesion-litemedsam",
                    help="model folder on the litemedsam preset (absent: the untrained preset)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    anchor = _run(_anchor, args.threads, args.repeats)
    a = anchor["seconds"]
    print(f"anchor: segment_anything vit_b image encoder, 1 image 1024x1024, {anchor['device']}, {args.threads} threads: {a:.3f} s")
    rows = {"anchor": anchor}
    todo = [("tiny", args.slices_tiny)] + ([] if args.skip_vit_b else [("vit_b", args.slices_vit_b)])
    print(f"{'preset':<8}{'slices':>7}{'s/study':>10}{'s/slice':>10}{'slice/anchor':>14}{'study/anchor':>14}{'peak RSS MB':>13}")
    for which, n in todo:
        r = _run(_predict, which, n, args.threads, args.repeats)
        rows[which] = r
        per_slice = r["seconds"] / n
        print(f"{which:<8}{n:>7}{r['seconds']:>10.3f}{per_slice:>10.4f}{per_slice / a:>14.3f}{r['seconds'] / a:>14.2f}{r['max_rss_mb']:>13.0f}"
              + (f"  cuda peak {r['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in r else ""))
    if "vit_b" in rows:
        full = rows["vit_b"]["seconds"] / args.slices_vit_b * args.slices_tiny
        print(f"vit_b extrapolated to a {args.slices_tiny}-slice study: {full:.1f} s ({full / a:.1f} anchors)")
    if not args.skip_litemedsam:
        r = _run(_litemedsam, str(args.litemedsam_model), args.threads)
        rows["litemedsam"] = r
        which = args.litemedsam_model.name if args.litemedsam_model.is_dir() else "untrained preset"
        print(f"litemedsam ({which}) on {r['study']} ({r['slices']} slices, {r['device']}): node {r['seconds']:.1f} s/study "
              f"({r['encodes_node']} encoder passes) vs plain packaged-LiteMedSAM encoder over every slice and sequence "
              f"{r['plain_encoder_seconds']:.1f} s ({r['encodes_plain']} passes): ratio {r['seconds'] / r['plain_encoder_seconds']:.2f}; "
              f"{'; '.join(r['notes'])}; peak RSS {r['max_rss_mb']:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
