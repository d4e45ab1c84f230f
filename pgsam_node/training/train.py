"""Training loop: Dice + BCE, AdamW with warm-up and cosine decay, safetensors checkpoints.

Studies are prepared once (normalised, resized, 8-bit) into an in-memory cache (and, for
synthetic data, an on-disk ``.npz`` cache) so the CPU spends its time on the model. Batches are
slices sampled half from slices with lesion and half from slices without (distractor-only slices
included), with flips (the affine is flipped too, so "left" stays the patient's left), intensity
jitter, sequence dropout and report-text dropout (so the model degrades gracefully without text or
with a missing sequence). Deterministic for a given seed on a given machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch.nn import functional as F

from pgsam_node.errors import ModelError
from pgsam_node.findings import findings_vector
from pgsam_node.geometry.normalize import NormParams
from pgsam_node.model.checkpoint import load_model_dir, load_sam_checkpoint, save_model_dir
from pgsam_node.inference.preprocessing import StudyArrays, flip_affine, prepare_study
from pgsam_node.model.coords import patient_coordinate_map
from pgsam_node.model.pgsam import build_model
from pgsam_node.model.presets import PAROTID_LABELS, ModelConfig, get_preset
from pgsam_node.training.augment import AugmentOptions, augment_slice

log = logging.getLogger(__name__)

TRAIN_STATE = "train_state.pt"


@dataclass
class TrainOptions:
    """Options of one training run (see ``pgsam-node train --help``)."""

    out: Path
    preset: str = "tiny"
    steps: int = 1200
    epochs: float | None = None
    seed: int = 0
    resume: bool = False
    use_text: bool = True
    sequences: list[str] = field(default_factory=lambda: ["T1", "T2", "T1C"])
    batch_size: int = 16
    lr: float = 6e-4
    weight_decay: float = 0.01
    warmup: int = 60
    context_slices: int = 3
    checkpoint_every: int = 200
    device: str = "auto"
    sam_checkpoint: Path | None = None
    text_encoder: Path | None = None
    task: str = "parotid-lesion"
    labels: list[dict] = field(default_factory=lambda: list(PAROTID_LABELS))
    command: str = ""
    data_description: str = ""
    #: Model folder whose weights initialise the run (fine-tuning); tensors of other shapes are skipped.
    init: Path | None = None
    #: The model's ``input_fov_mm`` (None: that of ``init``, else 0 = whole slice). The caller cuts
    #: the training studies to the same window (:func:`build_train_set`'s ``fov_mm``).
    input_fov_mm: float | None = None
    # augmentation / regularisation
    p_flip: float = 0.5
    p_seq_drop: float = 0.2
    #: A dropped slice loses 1..this many of its sequences (never all); 1 = one, as before.
    seq_drop_max: int = 1
    p_text_drop: float = 0.1
    p_findings_drop: float = 0.1
    p_both_drop: float = 0.1
    lesion_fraction: float = 0.5
    #: Probability that a training slice also gets the geometric / bias-field / resolution / noise
    #: augmentation of :mod:`.augment` (0 = off, the sampler's random stream unchanged).
    p_augment: float = 0.0
    augment_noise: float = 0.03
    progress: bool = True


@dataclass
class TrainSet:
    """Prepared studies in memory (8-bit images) plus per-slice indices for sampling."""

    images: list[np.ndarray]  # each (Z, S, H, W) uint8
    masks: list[np.ndarray]  # each (Z, H, W) uint8 (0/255 soft)
    seq_valid: list[np.ndarray]  # each (Z, S) bool
    affines: list[np.ndarray]
    shapes_yx: list[tuple[int, int]]
    centres: list[np.ndarray]
    texts: list[str | None]
    findings: np.ndarray  # (N, FINDINGS_DIM)
    case_ids: list[str]

    def slice_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(M, 2) (study, slice) pairs with lesion and without lesion."""
        pos, neg = [], []
        for i, m in enumerate(self.masks):
            for k in range(m.shape[0]):
                if not self.seq_valid[i][k].any():
                    continue
                (pos if m[k].max() >= 128 else neg).append((i, k))
        return np.array(pos, dtype=np.int64).reshape(-1, 2), np.array(neg, dtype=np.int64).reshape(-1, 2)

    def save(self, path: Path) -> None:
        # A per-process temporary name: concurrent runs may build the same cache.
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(
            tmp,
            n=len(self.images),
            **{f"img{i}": a for i, a in enumerate(self.images)},
            **{f"msk{i}": a for i, a in enumerate(self.masks)},
            **{f"val{i}": a for i, a in enumerate(self.seq_valid)},
            affines=np.stack(self.affines),
            shapes=np.array(self.shapes_yx),
            centres=np.stack(self.centres),
            texts=np.array(json.dumps(self.texts)),
            findings=self.findings,
            case_ids=np.array(json.dumps(self.case_ids)),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> TrainSet:
        with np.load(path) as d:
            n = int(d["n"])
            return cls(
                images=[d[f"img{i}"] for i in range(n)],
                masks=[d[f"msk{i}"] for i in range(n)],
                seq_valid=[d[f"val{i}"] for i in range(n)],
                affines=list(d["affines"]),
                shapes_yx=[tuple(int(v) for v in s) for s in d["shapes"]],
                centres=list(d["centres"]),
                texts=json.loads(str(d["texts"])),
                findings=d["findings"],
                case_ids=json.loads(str(d["case_ids"])),
            )


def in_body_window(st: StudyArrays, fov_mm: float, norm: NormParams) -> StudyArrays:
    """``st`` cut to the square of ``fov_mm`` mm centred on the body, the window the predictor
    gives a model whose ``input_fov_mm`` is ``fov_mm`` (:mod:`pgsam_node.inference.field_of_view`);
    outside the source the volumes are 0 and invalid, the mask 0."""
    from pgsam_node.inference.field_of_view import body_window

    win = body_window(st.volumes, st.valid, st.affine, fov_mm, norm)
    volumes, valid = win.cut_study(st.volumes, st.valid)
    return StudyArrays(
        case_id=st.case_id,
        volumes=volumes,
        valid=valid,
        mask=None if st.mask is None else win.cut(np.asarray(st.mask)),
        affine=win.affine(st.affine),
        report=st.report,
        findings=st.findings,
        meta=dict(st.meta),
    )


def build_train_set(studies: Iterable[StudyArrays], sequences: list[str], img_size: int, norm: NormParams, progress: bool = False,
                    fov_mm: float = 0.0) -> TrainSet:
    """Prepare studies (normalise, resize, quantise to 8 bit) for training.

    ``fov_mm`` > 0: each study is first cut to the body window of that size (:func:`in_body_window`),
    so that a model with ``input_fov_mm`` = ``fov_mm`` trains on what it will be shown."""
    from tqdm import tqdm

    ts = TrainSet([], [], [], [], [], [], [], np.zeros((0, 0), np.float32), [])
    fvs = []
    for st in tqdm(studies, desc="preparing studies", disable=not progress, unit="study"):
        if st.mask is None:
            raise ModelError(f"study {st.case_id} has no reference mask")
        if fov_mm > 0:
            st = in_body_window(st, fov_mm, norm)
        p = prepare_study(st.volumes, st.valid, st.affine, sequences, img_size, norm, mask=st.mask)
        ts.images.append(np.round(np.clip(p.images, 0, 1) * 255).astype(np.uint8))
        ts.masks.append(np.round(np.clip(p.mask, 0, 1) * 255).astype(np.uint8))
        ts.seq_valid.append(p.seq_valid)
        ts.affines.append(p.affine)
        ts.shapes_yx.append(p.shape_yx)
        ts.centres.append(p.centre_lps)
        ts.texts.append(st.report)
        fvs.append(findings_vector(st.findings))
        ts.case_ids.append(st.case_id)
    ts.findings = np.asarray(fvs, dtype=np.float32)
    return ts


#: Where synthetic training studies come from (``train --acquisition``).
ACQUISITIONS = ("grid", "scanner", "mixed")


def synthetic_train_set(seeds: list[int], sequences: list[str], img_size: int, norm: NormParams, cache_dir: Path | None,
                        progress: bool = False, size: int = 128, n_slices: int = 24, acquisition: str = "grid",
                        appearance_jitter: float = 1.0, fat_sat_off: float = 0.0, second_generator: int = 0,
                        fov_mm: float = 0.0, third_generator: int = 0) -> TrainSet:
    """Generate (or load from ``cache_dir``) the prepared synthetic training studies.

    ``acquisition``: ``grid`` draws each phantom on one common axial grid (the fast path,
    :func:`~.sources.synthetic_study`); ``scanner`` renders every sequence on its own acquisition
    grid and resamples it onto T1C as the node does (:func:`~.sources.acquired_study`); ``mixed``
    takes both versions of every seed. ``appearance_jitter`` widens the spread of tissue and lesion
    signals (:func:`~pgsam_node.synth.phantom.make_phantom`; 1 = the generator's own);
    ``fat_sat_off`` is the probability that a study's T2, and its T1C, are not fat-saturated.
    ``second_generator`` adds that many studies of the second, independent generator
    (:func:`~.sources.other_generator_study`, seeds from ``SECOND_TRAIN_SEED_BASE``);
    ``third_generator`` as many of the third (seeds from ``THIRD_TRAIN_SEED_BASE``).
    ``fov_mm`` > 0 cuts every study to the body window of that size (:func:`build_train_set`).
    """
    from pgsam_node.inference import preprocessing
    from pgsam_node.synth import acquisition as acq
    from pgsam_node.synth import dicom_writer
    from pgsam_node.synth import phantom as synthetic
    from pgsam_node.synth import second
    from pgsam_node.training.sources import (
        SECOND_TRAIN_SEED_BASE,
        THIRD_TRAIN_SEED_BASE,
        acquired_study,
        other_generator_study,
        synthetic_study,
    )

    if acquisition not in ACQUISITIONS:
        raise ModelError(f"unknown acquisition {acquisition!r}; expected one of {', '.join(ACQUISITIONS)}")
    src = Path(synthetic.__file__).read_bytes() + Path(preprocessing.__file__).read_bytes()
    params: list = [seeds, sequences, img_size, asdict(norm), size, n_slices]
    if acquisition != "grid":  # the grid key stays as it was, so existing caches stay valid
        src += Path(acq.__file__).read_bytes() + Path(dicom_writer.__file__).read_bytes()
        params.append(acquisition)
    if appearance_jitter != 1.0:
        params.append(["appearance_jitter", appearance_jitter])
    if fat_sat_off:
        params.append(["fat_sat_off", fat_sat_off])
    if second_generator:
        src += Path(second.__file__).read_bytes()
        params.append(["second_generator", second_generator])
    if third_generator:
        from pgsam_node.synth import third

        src += Path(third.__file__).read_bytes()
        params.append(["third_generator", third_generator])
    if fov_mm > 0:
        src += Path(__file__).read_bytes()
        params.append(["fov_mm", fov_mm])
    key = hashlib.sha256(src + json.dumps(params).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"synthetic-{key}.npz" if cache_dir else None
    if path is not None and path.is_file():
        log.info("loading prepared synthetic studies from %s", path)
        return TrainSet.load(path)

    def studies():
        for s in seeds:
            if acquisition in ("grid", "mixed"):
                yield synthetic_study(s, size=size, n_slices=n_slices, appearance_jitter=appearance_jitter, fat_sat_off=fat_sat_off)
            if acquisition in ("scanner", "mixed"):
                yield acquired_study(s, appearance_jitter=appearance_jitter, fat_sat_off=fat_sat_off)
        for i in range(second_generator):
            yield other_generator_study(SECOND_TRAIN_SEED_BASE + i)
        for i in range(third_generator):
            yield other_generator_study(THIRD_TRAIN_SEED_BASE + i, generator="third")

    ts = build_train_set(studies(), sequences, img_size, norm, progress=progress, fov_mm=fov_mm)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        ts.save(path)
    return ts


class SliceSampler:
    """Draws augmented training batches from a :class:`TrainSet` (numpy RNG, deterministic)."""

    def __init__(self, ts: TrainSet, opts: TrainOptions, img_size: int, text_emb: np.ndarray | None, rng: np.random.Generator) -> None:
        self.ts = ts
        self.opts = opts
        self.img_size = img_size
        self.text_emb = text_emb  # (N, T) or None
        self.rng = rng
        self.pos, self.neg = ts.slice_index()
        self._aug = AugmentOptions(p_flip=0.0, noise=opts.augment_noise)  # flips are drawn above, with the affine
        if len(self.pos) == 0 and len(self.neg) == 0:
            raise ModelError("the training set has no usable slice")

    def _context(self, img: np.ndarray, k: int) -> np.ndarray:
        z = img.shape[0]
        c = self.opts.context_slices
        if c == 1:
            return img[k][:, None]
        half = c // 2
        return np.stack([img[min(max(k + d, 0), z - 1)] for d in range(-half, half + 1)], axis=1)

    def batch(self, n: int) -> dict[str, torch.Tensor]:
        o, rng, ts = self.opts, self.rng, self.ts
        imgs, msks, vals, crds, temb, tval, fvec = [], [], [], [], [], [], []
        for _ in range(n):
            use_pos = len(self.pos) > 0 and (len(self.neg) == 0 or rng.random() < o.lesion_fraction)
            pool = self.pos if use_pos else self.neg
            i, k = pool[rng.integers(len(pool))]
            x = self._context(ts.images[i], k).astype(np.float32) / 255.0  # (S, C, H, W)
            m = ts.masks[i][k].astype(np.float32) / 255.0
            v = ts.seq_valid[i][k].copy()
            aff = ts.affines[i]
            ny, nx = ts.shapes_yx[i]
            if rng.random() < o.p_flip:
                x, m = x[..., ::-1], m[..., ::-1]
                aff = flip_affine(aff, "x", nx)
            if rng.random() < o.p_flip:
                x, m = x[..., ::-1, :], m[..., ::-1, :]
                aff = flip_affine(aff, "y", ny)
            # Intensity jitter per sequence (gamma and contrast), applied to all context slices.
            for s in range(x.shape[0]):
                g = math.exp(rng.uniform(-0.3, 0.3))
                x[s] = np.clip(np.clip(x[s], 0, 1) ** g * rng.uniform(0.85, 1.15), 0, 1)
            present = np.flatnonzero(v)
            if len(present) > 1 and rng.random() < o.p_seq_drop:
                if o.seq_drop_max > 1:  # (the default draws exactly as before: one sequence)
                    k = int(rng.integers(1, min(o.seq_drop_max, len(present) - 1) + 1))
                    v[rng.choice(present, size=k, replace=False)] = False
                else:
                    v[rng.choice(present)] = False
            x[~v] = 0.0
            crd = patient_coordinate_map(aff, k, (ny, nx), (self.img_size, self.img_size), ts.centres[i])
            if o.p_augment > 0 and rng.random() < o.p_augment:
                # Rotation, scale, elastic warp (the coordinate map moves with the pixels, so the
                # report's side stays true), bias field, resolution loss and noise per sequence.
                x, m, crd = augment_slice(x, v, m, crd, rng, self._aug)
            f = ts.findings[i].copy()
            has_text = self.text_emb is not None and ts.texts[i] is not None
            r = rng.random()
            if r < o.p_text_drop:
                has_text = False
            elif r < o.p_text_drop + o.p_findings_drop:
                f = np.asarray(findings_vector(None), dtype=np.float32)
            elif r < o.p_text_drop + o.p_findings_drop + o.p_both_drop:
                has_text = False
                f = np.asarray(findings_vector(None), dtype=np.float32)
            imgs.append(np.ascontiguousarray(x))
            msks.append(np.ascontiguousarray(m))
            vals.append(v)
            crds.append(crd)
            temb.append(self.text_emb[i] if self.text_emb is not None else np.zeros(1, np.float32))
            tval.append(has_text)
            fvec.append(f)
        return collate(imgs, msks, vals, crds, temb if self.text_emb is not None else None, tval, fvec)


def collate(imgs: list, msks: list, vals: list, crds: list, temb: list | None, tval: list, fvec: list) -> dict[str, torch.Tensor | None]:
    """Stack per-sample arrays into a training batch: images (B, S, K, H, W), mask (B, 1, H, W),
    valid (B, S), coords (B, 2, H, W), text_emb (B, T) or None, text_valid (B,), findings (B, F)."""
    return {
        "images": torch.from_numpy(np.stack(imgs)),
        "mask": torch.from_numpy(np.stack(msks))[:, None],
        "valid": torch.from_numpy(np.stack(vals)),
        "coords": torch.from_numpy(np.stack(crds)),
        "text_emb": torch.from_numpy(np.stack(temb)).float() if temb is not None else None,
        "text_valid": torch.from_numpy(np.array(tval, dtype=bool)),
        "findings": torch.from_numpy(np.stack(fvec)).float(),
    }


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE + soft Dice over the batch; logits and target (B, 1, H, W)."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
    p = torch.sigmoid(logits.float())
    inter = (p * target).sum()
    dice = (2 * inter + 1.0) / (p.sum() + target.sum() + 1.0)
    loss = bce + (1 - dice)
    return loss, {"bce": float(bce.detach()), "dice": float(dice.detach())}


def forward_batch(model, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Run the model on a sampler batch (moves tensors to ``device``)."""
    def dev(t):
        return None if t is None else t.to(device)

    return model(dev(batch["images"]), dev(batch["valid"]), dev(batch["coords"]), dev(batch["text_emb"]), dev(batch["text_valid"]), dev(batch["findings"]))


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def train(opts: TrainOptions, train_set: TrainSet, on_step: Callable[[int, dict], None] | None = None) -> ModelConfig:
    """Train a PG-SAM model and write its folder to ``opts.out``.

    Returns the saved :class:`ModelConfig`. With ``opts.resume`` the run continues from
    ``opts.out / train_state.pt`` (same options expected).
    """
    from tqdm import tqdm

    from pgsam_node.inference.predictor import resolve_device

    device = resolve_device(opts.device)
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    arch = get_preset(opts.preset)
    cfg = ModelConfig(
        arch=arch,
        sequences=list(opts.sequences),
        use_text=opts.use_text,
        context_slices=opts.context_slices,
        task=opts.task,
        labels=list(opts.labels),
        name=Path(opts.out).name,
    )
    text_emb = None
    if opts.use_text:
        from pgsam_node.model.text_encoder import TextEncoder

        enc = TextEncoder(opts.text_encoder)
        cfg.text_encoder = enc.name
        cfg.text_dim = enc.dim
        texts = [t or "" for t in train_set.texts]
        text_emb = enc.encode(texts)
    model = build_model(cfg)
    if opts.init:
        # The field of view the weights were tuned to see stays with them (inference/field_of_view.py).
        cfg.input_fov_mm = _init_from(model, Path(opts.init)).input_fov_mm
    elif opts.sam_checkpoint:
        load_sam_checkpoint(model, opts.sam_checkpoint)
    elif arch.official_sam:
        log.warning("training preset %s without an official SAM checkpoint: image encoder starts random", arch.name)
    if opts.input_fov_mm is not None:  # an explicit choice (train --input-fov-mm) wins over --init's
        cfg.input_fov_mm = opts.input_fov_mm
    model.to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=opts.lr, weight_decay=opts.weight_decay)
    sampler = SliceSampler(train_set, opts, arch.img_size, text_emb, rng)
    n_slices = len(sampler.pos) + len(sampler.neg)
    total = opts.steps if opts.epochs is None else max(1, int(math.ceil(opts.epochs * n_slices / opts.batch_size)))
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    start = 0
    state_path = out / TRAIN_STATE
    if opts.resume:
        if not state_path.is_file():
            raise ModelError(f"--resume: no {TRAIN_STATE} in {out}")
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        start = int(st["step"])
        rng.bit_generator.state = st["numpy_rng"]
        sampler.rng = rng
        torch.set_rng_state(st["torch_rng"])
        log.info("resuming at step %d of %d", start, total)
    cfg.training = {
        "command": opts.command,
        "seed": opts.seed,
        "steps": total,
        "batch_size": opts.batch_size,
        "lr": opts.lr,
        "data": opts.data_description,
        "train_cases": len(train_set.case_ids),
        "train_slices": n_slices,
        "loss": "bce + soft dice",
        "optimizer": "AdamW",
        "init": str(opts.init) if opts.init else None,
        "p_augment": opts.p_augment,
        "augment_noise": opts.augment_noise if opts.p_augment > 0 else None,
    }
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    model.train()
    bar = tqdm(range(start, total), initial=start, total=total, desc="training", unit="step", disable=not opts.progress)
    ema = None
    t_start = time.perf_counter()
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, opts.lr, opts.warmup)
        batch = sampler.batch(opts.batch_size)
        with torch.autocast("cuda", enabled=use_amp):
            logits = forward_batch(model, batch, device)
        loss, parts = dice_bce_loss(logits, batch["mask"].to(device))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        lv = float(loss.detach())
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        bar.set_postfix(loss=f"{ema:.3f}", dice=f"{parts['dice']:.2f}")
        if on_step:
            on_step(step, {"loss": lv, **parts})
        if (step + 1) % opts.checkpoint_every == 0 or step + 1 == total:
            cfg.training["steps_done"] = step + 1
            cfg.training["train_seconds"] = round(time.perf_counter() - t_start, 1)
            _checkpoint(model, opt, cfg, out, step + 1, rng)
            log.info("step %d/%d loss %.4f (ema %.4f)", step + 1, total, lv, ema)
            model.train()
    model.eval()
    return cfg


def _init_from(model, folder: Path) -> ModelConfig:
    """Copy every tensor of the model folder whose name and shape match (fine-tuning start); its config."""
    src, src_cfg = load_model_dir(folder)
    theirs = src.state_dict()
    ours = model.state_dict()
    same = {k: v for k, v in theirs.items() if k in ours and ours[k].shape == v.shape}
    if not same:
        raise ModelError(f"--init {folder}: no tensor fits this architecture")
    model.load_state_dict(same, strict=False)
    log.info("initialised %d of %d tensors from %s", len(same), len(ours), folder)
    return src_cfg


def _checkpoint(model, opt, cfg: ModelConfig, out: Path, step: int, rng: np.random.Generator) -> None:
    save_model_dir(model, cfg, out, half=True)
    tmp = out / (TRAIN_STATE + ".tmp")
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()},
        tmp,
    )
    tmp.replace(out / TRAIN_STATE)
