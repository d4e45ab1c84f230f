"""Leave-one-out on the real studies: the litemedsam preset against its anchor and ablations.

One table, same studies, same slices (each study's lesion slice range, strided to at most 16
slices; the Dice is 3-D over those slices on the original grid):

* ``anchor box/slice`` — packaged LiteMedSAM, one box per 2-D lesion component from the expert mask
  (the best a box prompt can be), on the study's primary sequence (T1C for the brain tumours, T2
  for MS: FLAIR is not one of the model's sequences);
* ``anchor loose box`` — the same with one box around the whole 3-D mask, widened by 10 %;
* ``tiny`` — the bundled ``brain-tumour-tiny`` through the node's predictor (all slices, then the same slices scored);
* ``pgsam`` — the ``litemedsam`` preset trained by the frozen-encoder recipe on the other real
  studies plus synthetic ones, with report prompts, no box from the mask;
* ``no-text`` — the same recipe trained and run without report text / findings;
* ``single`` — the same recipe on one sequence (``--single`` role, default T1C).

Plus the synthetic parotid figure: the ``pgsam`` model of the last fold on held-out synthetic studies.

Encoder outputs are cached (``--cache``), so a rerun costs only training. Usage::

    python benchmarks/real_loo.py [--build-only] [--json runs/loo.json]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
from _results import write_json  # benchmarks/, the script's own folder
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pgsam_node.training.metrics import dice  # noqa: E402
SHARED = ROOT / ".." / "shared" / "data"
SEQUENCES = ["T1", "T2", "T1C"]


def load_real():
    from pgsam_node.training.dicom_data import load_dicom_studies
    from pgsam_node.training.nifti_data import load_nifti_studies

    out = []
    if (SHARED / "tcia-pgbm").is_dir():
        out += [(st, "real") for st in load_dicom_studies(SHARED / "tcia-pgbm", ROOT / "config" / "tcia-pgbm-reports.csv")]
    if (SHARED / "open-ms").is_dir():
        out += [(st, "real") for st in load_nifti_studies(SHARED / "open-ms", ROOT / "config" / "open-ms-reports.csv")]
    return out


def build(args):
    from pgsam_node.geometry.normalize import NormParams
    from pgsam_node.model.litemedsam import LITEMEDSAM_ID
    from pgsam_node.model.pgsam import build_model
    from pgsam_node.model.presets import ModelConfig, get_preset
    from pgsam_node.training.embed_cache import EmbeddingCache
    from pgsam_node.training.slice_bank import build_bank
    from pgsam_node.training.sources import EVAL_SEED_BASE, TRAIN_SEED_BASE, synthetic_study

    base = build_model(ModelConfig(arch=get_preset("litemedsam"), sequences=SEQUENCES, context_slices=1)).eval()
    cache = EmbeddingCache(args.cache, LITEMEDSAM_ID)
    real = load_real()
    if not real:
        return None, None, None
    primary = {st.case_id: ("T2" if "FLAIR" in st.volumes else "T1C") for st, _ in real}
    t = time.perf_counter()
    bank = build_bank(real, base, SEQUENCES, cache, NormParams(), variants=args.variants, max_eval=args.max_eval, n_neg=1, max_aug=args.max_aug,
                      primary=primary, progress=True, mirror=True)
    synth_train = [(synthetic_study(TRAIN_SEED_BASE + i), "synthetic") for i in range(args.synthetic)]
    bank = build_bank(synth_train, base, SEQUENCES, cache, NormParams(), variants=1, max_eval=6, n_neg=1, bank=bank, progress=True)
    synth_eval = [(synthetic_study(EVAL_SEED_BASE + i), "synthetic-eval") for i in range(args.synthetic_eval)]
    bank = build_bank(synth_eval, base, SEQUENCES, cache, NormParams(), variants=1, max_eval=6, n_neg=0, bank=bank, progress=True)
    print(f"slice bank: {len(bank.cases)} cases, {len(bank.items)} items, encoder cache hits {cache.hits} misses {cache.misses}, "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    return base, bank, real


def main() -> int:  # noqa: C901 - one linear script
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=ROOT / "runs" / "embed-cache")
    ap.add_argument("--variants", type=int, default=2, help="augmentation variants per real lesion slice (1 = none)")
    ap.add_argument("--max-eval", type=int, default=12, help="evaluation slices per real study (its lesion range, strided)")
    ap.add_argument("--max-aug", type=int, default=4, help="lesion slices per real study given augmented variants")
    ap.add_argument("--synthetic", type=int, default=4, help="synthetic training studies mixed in")
    ap.add_argument("--synthetic-eval", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--folds", default=None, help="comma-separated held-out case ids (default: every real case)")
    ap.add_argument("--single", default="T1C", help="the single-sequence ablation's sequence")
    ap.add_argument("--steps-loc", type=int, default=300)
    ap.add_argument("--steps-dec", type=int, default=40)
    ap.add_argument("--batch-dec", type=int, default=4)
    ap.add_argument("--lr-loc", type=float, default=2e-3)
    ap.add_argument("--parotid-only", action="store_true", help="train on the synthetic studies only and score the held-out synthetic ones")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    base, bank, real = build(args)
    if bank is None:
        print("no real data under ../shared/data: nothing to measure")
        return 1
    if args.build_only:
        return 0
    from pgsam_node.model.text_encoder import TextEncoder
    from pgsam_node.training.train_frozen import predict_case

    enc = TextEncoder(None)
    temb = enc.encode([c.text or "" for c in bank.cases])
    temb_m = enc.encode([c.mirrored_text or "" for c in bank.cases])
    real_idx = [i for i, c in enumerate(bank.cases) if c.kind == "real"]
    syn_idx = [i for i, c in enumerate(bank.cases) if c.kind == "synthetic"]
    syn_eval = [i for i, c in enumerate(bank.cases) if c.kind == "synthetic-eval"]
    if args.folds:
        real_idx_eval = [i for i in real_idx if bank.cases[i].case_id in args.folds.split(",")]
    else:
        real_idx_eval = real_idx
    rows: dict[str, dict] = {}
    if args.parotid_only:
        model, rec = train_one(bank, syn_idx, True, SEQUENCES, temb, temb_m, {"steps_loc": args.steps_loc, "steps_dec": args.steps_dec,
                                                                          "batch_dec": args.batch_dec, "lr_loc": args.lr_loc})
        syn = [dice(predict_case(model, bank, i, temb[i]), bank.cases[i].eval_masks.astype(bool)) for i in syn_eval]
        print(f"synthetic parotid, trained on {len(syn_idx)} synthetic studies only ({rec['seconds_loc'] + rec['seconds_dec']:.0f} s): "
              + ", ".join(f"{d:.3f}" for d in syn) + f"; mean {np.mean(syn):.3f}")
        return 0
    for ci in real_idx_eval:
        c = bank.cases[ci]
        rows[c.case_id] = {"slices": len(c.eval_slices), "primary": SEQUENCES[c.primary], **anchor(base, bank, ci)}
    tiny = tiny_rows(real, bank, real_idx_eval)
    for k, v in tiny.items():
        rows[k]["tiny"] = v
    variants = {"pgsam": (True, SEQUENCES), "no-text": (False, SEQUENCES), "single": (True, [args.single])}
    opts_kw = {"steps_loc": args.steps_loc, "steps_dec": args.steps_dec, "batch_dec": args.batch_dec, "lr_loc": args.lr_loc}
    last = None
    for held in real_idx_eval:
        c = bank.cases[held]
        train_cases = [i for i in real_idx if i != held] + syn_idx
        for name, (use_text, seqs) in variants.items():
            model, rec = train_one(bank, train_cases, use_text, seqs, temb, temb_m, opts_kw)
            pred = predict_case(model, bank, held, temb[held] if use_text else None)
            rows[c.case_id][name] = dice(pred, c.eval_masks.astype(bool))
            rows[c.case_id][name + "_train_s"] = rec["seconds_loc"] + rec["seconds_dec"]
            print(f"  fold {c.case_id:<20} {name:<8} Dice {rows[c.case_id][name]:.3f}  (train {rows[c.case_id][name + '_train_s']:.0f} s, "
                  f"loss loc {rec['loss_loc_first_last']} dec {rec['loss_dec_first_last']})", flush=True)
            if name == "pgsam":
                last = model
    cols = ["anchor box/slice", "anchor loose box", "tiny", "pgsam", "no-text", "single"]
    print(f"{'study':<20}{'seq':>5}{'slices':>7}" + "".join(f"{h:>18}" for h in cols))
    for k, r in rows.items():
        print(f"{k:<20}{r['primary']:>5}{r['slices']:>7}" + "".join(f"{r.get(h, float('nan')):>18.3f}" for h in cols))
    print(f"{'mean':<32}" + "".join(f"{np.mean([r[h] for r in rows.values() if h in r]):>18.3f}" for h in cols))
    if last is not None and syn_eval:
        syn = [dice(predict_case(last, bank, i, temb[i]), bank.cases[i].eval_masks.astype(bool)) for i in syn_eval]
        rows["synthetic-parotid"] = {"pgsam_last_fold": syn, "mean": float(np.mean(syn))}
        print("synthetic parotid (held-out seeds, last fold's pgsam model): " + ", ".join(f"{d:.3f}" for d in syn) + f"; mean {np.mean(syn):.3f}")
    write_json(args.json, rows)
    return 0


def train_one(bank, train_cases, use_text, seqs, temb, temb_m, opts_kw):
    from pgsam_node.model.pgsam import build_model
    from pgsam_node.model.presets import ModelConfig, get_preset
    from pgsam_node.training.train_frozen import FrozenTrainOptions, train_frozen

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=get_preset("litemedsam"), sequences=list(seqs), use_text=use_text, context_slices=1))
    rec = train_frozen(model, bank, train_cases, FrozenTrainOptions(sequences=list(seqs), **opts_kw), temb if use_text else None,
                       text_emb_mirror=temb_m if use_text else None)
    return model, rec


@torch.inference_mode()
def anchor(base, bank, ci) -> dict:
    """Packaged LiteMedSAM (the preset at initialisation) with boxes from the expert mask."""
    from torch.nn import functional as F

    from pgsam_node.model.box_head import component_boxes

    c = bank.cases[ci]
    by_k = {it.k: it for it in bank.items if it.case == ci and it.variant == 0}
    masks256 = np.stack([by_k[k].mask >= 128 for k in c.eval_slices])
    ys, xs = np.nonzero(masks256.any(0))
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    loose = np.clip([xs.min() - 0.1 * w, ys.min() - 0.1 * h, xs.max() + 0.1 * w, ys.max() + 0.1 * h], 0, 255).astype(np.float32)
    out = {"anchor box/slice": [], "anchor loose box": []}
    dense_one = base.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    for j, k in enumerate(c.eval_slices):
        it = by_k[k]
        emb = torch.from_numpy(it.emb[c.primary].astype(np.float32))[None]
        for regime, boxes in (("anchor box/slice", component_boxes(masks256[j])), ("anchor loose box", [loose] if masks256[j].any() else [])):
            if not boxes:
                out[regime].append(np.zeros(c.shape_yx, bool))
                continue
            p = len(boxes)
            bt = torch.from_numpy(np.stack(boxes))[:, None]
            dense = dense_one.expand(p, -1, emb.shape[-2], emb.shape[-1])
            logits, _ = base._decode(emb.expand(p, -1, -1, -1), torch.zeros(p, base.cfg.arch.num_sparse_tokens, emb.shape[1]), dense, None, bt)
            up = F.interpolate(logits.amax(0, keepdim=True), size=tuple(c.shape_yx), mode="bilinear", align_corners=False)[0, 0]
            out[regime].append((up > 0).numpy())
    gt = c.eval_masks.astype(bool)
    return {r: dice(np.stack(v), gt) for r, v in out.items()}


def tiny_rows(real, bank, idx) -> dict:
    """The bundled brain-tumour-tiny through the node's predictor, scored on the same slices."""
    from pgsam_node.inference.predictor import BUNDLED_MODEL_DIR, Predictor

    pred = Predictor.from_dir(BUNDLED_MODEL_DIR.parent / "brain-tumour-tiny", device="cpu")
    studies = {st.case_id: st for st, _ in real}
    out = {}
    for ci in idx:
        c = bank.cases[ci]
        st = studies[c.case_id]
        res = pred.predict(st.volumes, st.valid, st.findings, st.report, st.affine)
        out[c.case_id] = dice(res.mask[c.eval_slices].astype(bool), c.eval_masks.astype(bool))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
