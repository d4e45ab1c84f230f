"""Training recipe for a preset on a frozen pretrained encoder (``litemedsam``), for small site datasets.

The encoder (and SAM's prompt encoder) never change: their output comes from the slice bank's
cached embeddings (:mod:`.slice_bank`). Two stages, both AdamW:

1. **Localisation** (``steps_loc``, cheap: no decoder pass) — the report-conditioned box head and
   the report context learn where the lesion is, from the per-sequence embeddings, the
   patient-coordinate map and the report (heat-map Dice + BCE).
2. **Prompts and decoder** (``steps_dec``) — the cross-sequence attention, the report's sparse
   tokens and dense prompt, the detail branch and (at ``decoder_lr_scale`` of the rate) SAM's mask
   decoder learn to turn a box plus the report into the mask, with teacher-forced boxes (a random
   lesion component's box, jittered), while the heat loss keeps the head trained.

Batches mix real and synthetic cases (``real_fraction``), lesion and lesion-free slices
(``lesion_fraction``); a sequence is dropped with ``p_seq_drop`` (missing-sequence robustness) and
the report text / findings with ``p_text_drop`` / ``p_findings_drop``. Augmented slices come from
the bank (laterality-consistent, see :mod:`.augment`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from pgsam_node.findings import findings_vector
from pgsam_node.training.box_loss import box_head_loss
from pgsam_node.training.slice_bank import SliceBank
from pgsam_node.training.train import collate

log = logging.getLogger(__name__)


@dataclass
class FrozenTrainOptions:
    """Options of the frozen-encoder recipe (defaults sized for a 2-core CPU)."""

    steps_loc: int = 300
    batch_loc: int = 8
    lr_loc: float = 2e-3
    steps_dec: int = 40
    batch_dec: int = 4
    lr_dec: float = 5e-4
    decoder_lr_scale: float = 0.1
    weight_decay: float = 0.01
    real_fraction: float = 0.7
    lesion_fraction: float = 0.6
    p_seq_drop: float = 0.3
    p_text_drop: float = 0.15
    p_findings_drop: float = 0.1
    jitter_px: float = 5.0
    seed: int = 0
    #: Sequence roles the model uses (a subset of the bank's, in the bank's order).
    sequences: list[str] = field(default_factory=lambda: ["T1", "T2", "T1C"])


class BankSampler:
    """Draws training batches from a :class:`SliceBank` (numpy RNG, deterministic).

    Parameters
    ----------
    bank
        The slice bank.
    cases
        Bank case indices to train on.
    text_emb
        (N_cases, T) sentence embeddings per bank case, or None (no-text model).
    text_emb_mirror
        (N_cases, T) embeddings of the side-swapped reports (for mirrored items).
    """

    def __init__(self, bank: SliceBank, cases: list[int], opts: FrozenTrainOptions, text_emb: np.ndarray | None, rng: np.random.Generator,
                 text_emb_mirror: np.ndarray | None = None) -> None:
        self.bank, self.opts, self.text_emb, self.rng = bank, opts, text_emb, rng
        self.text_emb_mirror = text_emb_mirror
        self.seq_idx = [bank.sequences.index(s) for s in opts.sequences]
        items = bank.items_of(cases)
        self.pools: dict[tuple[str, bool], list[int]] = {}
        keep = {id(it) for it in items}
        #: float32 embeddings of the model's sequences, converted once (a batch is then a copy).
        self.emb32: dict[int, torch.Tensor] = {}
        for i, it in enumerate(bank.items):
            if id(it) in keep and it.valid[self.seq_idx].any():
                self.pools.setdefault((bank.cases[it.case].kind, it.lesion), []).append(i)
                self.emb32[i] = torch.from_numpy(it.emb[self.seq_idx].astype(np.float32))
        if not self.pools:
            raise ValueError("no training slice in the bank for these cases")

    def _pick(self) -> int:
        o, rng = self.opts, self.rng
        kinds = sorted({k for k, _ in self.pools})
        if len(kinds) > 1:
            kind = "real" if ("real" in kinds and rng.random() < o.real_fraction) else [k for k in kinds if k != "real"][0] if "real" in kinds else kinds[0]
        else:
            kind = kinds[0]
        lesion = rng.random() < o.lesion_fraction
        pool = self.pools.get((kind, lesion)) or self.pools.get((kind, not lesion))
        return pool[int(rng.integers(len(pool)))]

    def batch(self, n: int) -> dict[str, torch.Tensor | None]:
        o, rng, bank = self.opts, self.rng, self.bank
        s_idx = self.seq_idx
        imgs, msks, vals, crds, embs, temb, tval, fvec = [], [], [], [], [], [], [], []
        none_vec = np.asarray(findings_vector(None), dtype=np.float32)
        for _ in range(n):
            idx = self._pick()
            it = bank.items[idx]
            case = bank.cases[it.case]
            v = it.valid[s_idx].copy()
            present = np.flatnonzero(v)
            if len(present) > 1 and rng.random() < o.p_seq_drop:
                v[rng.choice(present)] = False
            x = it.images[s_idx].astype(np.float32) / 255.0
            x[~v] = 0.0
            e = self.emb32[idx] * torch.from_numpy(v.astype(np.float32))[:, None, None, None]
            has_text = self.text_emb is not None and bool(case.text) and (not it.mirrored or self.text_emb_mirror is not None)
            f = case.mirrored_findings_vec if it.mirrored else case.findings_vec
            r = rng.random()
            if r < o.p_text_drop:
                has_text = False
            elif r < o.p_text_drop + o.p_findings_drop:
                f = none_vec
            imgs.append(x[:, None])
            msks.append(it.mask.astype(np.float32) / 255.0)
            vals.append(v)
            crds.append(it.coords.astype(np.float32))
            embs.append(e)
            if self.text_emb is None:
                temb.append(np.zeros(1, np.float32))
            else:
                src = self.text_emb_mirror if (it.mirrored and self.text_emb_mirror is not None) else self.text_emb
                temb.append(src[it.case])
            tval.append(has_text)
            fvec.append(f)
        batch = collate(imgs, msks, vals, crds, temb if self.text_emb is not None else None, tval, fvec)
        batch["embeddings"] = torch.stack(embs)
        return batch


def _params(*modules) -> list[torch.nn.Parameter]:
    return [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]


def _run_stage(model, sampler: BankSampler, groups: list[dict], steps: int, batch: int, decoder: bool, opts: FrozenTrainOptions,
               gen: torch.Generator, stage: str, on_step: Callable[[str, int, dict], None] | None) -> list[float]:
    if steps <= 0:
        return []
    opt = torch.optim.AdamW(groups, weight_decay=opts.weight_decay)
    base = [g["lr"] for g in opt.param_groups]
    losses = []
    warm = max(1, steps // 10)
    for step in range(steps):
        f = min(1.0, (step + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * step / steps)))
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * f
        loss, parts = box_head_loss(model, sampler.batch(batch), jitter_px=opts.jitter_px, gen=gen, decoder=decoder)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if on_step:
            on_step(stage, step, {"loss": losses[-1], **parts})
    return losses


def train_frozen(model, bank: SliceBank, cases: list[int], opts: FrozenTrainOptions, text_emb: np.ndarray | None = None,
                 on_step: Callable[[str, int, dict], None] | None = None, text_emb_mirror: np.ndarray | None = None) -> dict:
    """Train a frozen-encoder PG-SAM in place on the bank's ``cases``.

    Parameters
    ----------
    model
        PG-SAM with a localisation head, built with ``opts.sequences``.
    text_emb
        (N_cases, T) report embeddings per bank case (None for a no-text model).
    text_emb_mirror
        (N_cases, T) embeddings of the side-swapped reports, for the bank's mirrored items.

    Returns
    -------
    dict
        Training record: steps, seconds, first/last loss of each stage.
    """
    if model.box_head is None:
        raise ValueError("the frozen-encoder recipe needs a preset with a localisation head (litemedsam)")
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    gen = torch.Generator().manual_seed(opts.seed)
    for p in list(model.image_encoder.parameters()) + list(model.prompt_encoder.parameters()):
        p.requires_grad_(False)
    sampler = BankSampler(bank, cases, opts, text_emb if model.cfg.use_text else None, rng,
                          text_emb_mirror if model.cfg.use_text else None)
    model.train()
    model.image_encoder.eval()
    pg = model.prompt_generator
    ctx_mods = [pg.context] if pg.use_text else []
    ctx_params = _params(*ctx_mods) + ([pg.null_text] if pg.use_text else [pg.default_context])
    t0 = time.perf_counter()
    loc = _run_stage(model, sampler, [{"params": _params(model.box_head) + ctx_params, "lr": opts.lr_loc}], opts.steps_loc, opts.batch_loc,
                     False, opts, gen, "localisation", on_step)
    t1 = time.perf_counter()
    light = _params(model.fusion, model.detail, model.box_head) + [p for n, p in pg.named_parameters() if p.requires_grad]
    dec = _run_stage(model, sampler, [{"params": light, "lr": opts.lr_dec},
                                      {"params": _params(model.mask_decoder), "lr": opts.lr_dec * opts.decoder_lr_scale}],
                     opts.steps_dec, opts.batch_dec, True, opts, gen, "decoder", on_step)
    t2 = time.perf_counter()
    model.eval()

    def ends(v: list[float]) -> list[float]:
        k = max(1, len(v) // 10)
        return [round(float(np.mean(v[:k])), 4), round(float(np.mean(v[-k:])), 4)] if v else []

    return {"steps_loc": opts.steps_loc, "steps_dec": opts.steps_dec, "seconds_loc": round(t1 - t0, 1), "seconds_dec": round(t2 - t1, 1),
            "loss_loc_first_last": ends(loc), "loss_dec_first_last": ends(dec), "train_cases": [bank.cases[c].case_id for c in cases]}


def drop_wrong_side(logits: torch.Tensor, coords: torch.Tensor, findings) -> torch.Tensor:
    """The node's report-side rule on 2-D slices: lesion components whose centre lies on a side the
    report excludes get logits -20 (as :func:`pgsam_node.inference.predictor.side_filter` does in 3-D).

    logits (B, 1, H, W), coords (B, 2, H, W) (channel 0: left-right from the body centre, + = left).
    """
    from scipy import ndimage

    if findings is None:
        return logits
    allowed = {"left", "right"}
    if findings.side in ("left", "right"):
        allowed = {findings.side}
    allowed -= {s for s in (findings.negated_sides or []) if s in ("left", "right")} - ({findings.side} if findings.side else set())
    if allowed == {"left", "right"}:
        return logits
    out = logits.clone()
    pos = (logits[:, 0] > 0).cpu().numpy()
    lr = coords[:, 0].cpu().numpy()
    for i in range(pos.shape[0]):
        lab, n = ndimage.label(pos[i])
        for j in range(1, n + 1):
            side = "left" if lr[i][lab == j].mean() >= 0 else "right"
            if side not in allowed:
                out[i, 0][torch.from_numpy(lab == j)] = -20.0
    return out


@torch.inference_mode()
def predict_case(model, bank: SliceBank, case: int, text_emb: np.ndarray | None = None, batch: int = 8, use_findings: bool = True,
                 side_rule: bool = True) -> np.ndarray:
    """Mask of a bank case's evaluation slices (variant 0) on the original grid.

    With ``side_rule`` the node's post-processing rule is applied: components on a side the
    report excludes are dropped (the report's findings are used only when the model uses text).

    Returns
    -------
    numpy.ndarray
        (len(eval_slices), Y, X) bool.
    """
    c = bank.cases[case]
    seq_idx = [bank.sequences.index(s) for s in model.cfg.sequences]
    by_k = {it.k: it for it in bank.items if it.case == case and it.variant == 0}
    out = np.zeros((len(c.eval_slices),) + tuple(c.shape_yx), bool)
    fvec = c.findings_vec if (use_findings and model.cfg.use_text) else np.asarray(findings_vector(None), np.float32)
    has_text = text_emb is not None and model.cfg.use_text and bool(c.text)
    for s in range(0, len(c.eval_slices), batch):
        ks = c.eval_slices[s : s + batch]
        its = [by_k[k] for k in ks]
        b = len(its)
        emb = torch.from_numpy(np.stack([it.emb[seq_idx].astype(np.float32) for it in its]))
        images = torch.from_numpy(np.stack([it.images[seq_idx].astype(np.float32)[:, None] / 255.0 for it in its]))
        valid = torch.from_numpy(np.stack([it.valid[seq_idx] for it in its]))
        coords = torch.from_numpy(np.stack([it.coords.astype(np.float32) for it in its]))
        temb = torch.from_numpy(np.repeat(text_emb[None], b, 0)).float() if has_text else None
        tval = torch.ones(b, dtype=torch.bool) if has_text else None
        fv = torch.from_numpy(np.repeat(fvec[None], b, 0))
        logits = model(images, valid, coords, temb, tval, fv, embeddings=emb)
        if side_rule and model.cfg.use_text:
            logits = drop_wrong_side(logits, coords, c.findings)
        up = F.interpolate(logits.float(), size=tuple(c.shape_yx), mode="bilinear", align_corners=False)[:, 0]
        out[s : s + b] = (up > 0).numpy()
    return out


def fit_frozen_model(
    out,
    real: list,
    synthetic: list,
    preset: str,
    sequences: list[str],
    use_text: bool,
    opts: FrozenTrainOptions,
    cache_dir,
    task: str,
    labels: list[dict],
    command: str = "",
    data_description: str = "",
    variants: int = 2,
    max_eval: int = 12,
    max_aug: int = 4,
    text_encoder=None,
    progress: bool = False,
    arch_overrides: dict | None = None,
    mirror: bool = True,
):
    """Build the slice bank, train with :func:`train_frozen` and write the model folder ``out``.

    Parameters
    ----------
    real, synthetic
        :class:`~pgsam_node.inference.preprocessing.StudyArrays` with masks; batches mix the two
        (``opts.real_fraction``); either may be empty.
    sequences
        The model's sequences (a subset of T1, T2, T1C for the ablations).
    arch_overrides
        Preset fields to replace (tests: a small encoder with a localisation head).

    Returns
    -------
    ModelConfig
        The saved configuration (version, weights hash, training record).
    """
    from pathlib import Path

    from pgsam_node.geometry.normalize import NormParams
    from pgsam_node.model.checkpoint import save_model_dir
    from pgsam_node.model.pgsam import build_model
    from pgsam_node.model.presets import ModelConfig, get_preset
    from pgsam_node.training.embed_cache import EmbeddingCache
    from pgsam_node.training.slice_bank import build_bank

    arch = get_preset(preset, **(arch_overrides or {}))
    if not arch.box_head:
        raise ValueError(f"preset {preset!r} has no localisation head; use the plain trainer")
    cfg = ModelConfig(arch=arch, sequences=list(sequences), use_text=use_text, context_slices=1, task=task, labels=list(labels), name=Path(out).name)
    torch.manual_seed(opts.seed)
    model = build_model(cfg)
    bank_model = model if list(sequences) == ["T1", "T2", "T1C"] else build_model(ModelConfig(arch=arch, context_slices=1))
    if not arch.pretrained:
        bank_model.load_state_dict(model.state_dict(), strict=False)  # same random encoder as the model's
    cache = EmbeddingCache(Path(cache_dir), _encoder_id(arch, opts.seed))
    bank = build_bank([(st, "real") for st in real], bank_model, ["T1", "T2", "T1C"], cache, NormParams(), variants=variants,
                      max_eval=max_eval, n_neg=1, max_aug=max_aug, progress=progress, mirror=mirror)
    bank = build_bank([(st, "synthetic") for st in synthetic], bank_model, ["T1", "T2", "T1C"], cache, NormParams(), variants=1,
                      max_eval=6, n_neg=1, bank=bank, progress=progress)
    text_emb = text_emb_mirror = None
    if use_text:
        from pgsam_node.model.text_encoder import TextEncoder

        enc = TextEncoder(text_encoder)
        cfg.text_encoder, cfg.text_dim = enc.name, enc.dim
        text_emb = enc.encode([c.text or "" for c in bank.cases])
        text_emb_mirror = enc.encode([c.mirrored_text or "" for c in bank.cases])
    opts.sequences = list(sequences)
    rec = train_frozen(model, bank, list(range(len(bank.cases))), opts, text_emb, text_emb_mirror=text_emb_mirror)
    cfg.training = {
        "command": command,
        "recipe": "frozen encoder (pgsam_node.training.train_frozen)",
        "seed": opts.seed,
        "data": data_description,
        "bank_items": len(bank.items),
        "augmentation_variants": variants,
        **{k: v for k, v in vars(opts).items() if k != "sequences"},
        **rec,
    }
    return save_model_dir(model, cfg, out, half=True)


def _encoder_id(arch, seed: int) -> str:
    """Identity of the frozen encoder in embedding-cache keys: the packaged weights' id, or the
    preset and seed of a randomly initialised one."""
    if arch.pretrained == "litemedsam":
        from pgsam_node.model.litemedsam import LITEMEDSAM_ID

        return LITEMEDSAM_ID
    return f"{arch.name}:random-init-seed-{seed}"
