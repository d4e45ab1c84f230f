"""The slice bank: training and evaluation slices of a frozen-encoder preset, with their embeddings.

A pretrained encoder that stays frozen (``litemedsam``: about 1.4 s per 256² slice on a 2-core
CPU) is run once per (slice, augmentation variant, sequence); the embeddings go through the
content-addressed :class:`~.embed_cache.EmbeddingCache`, so a second run, another fold of a
leave-one-out or an ablation costs no encoder time at all. Training then moves only the small
modules (localisation head, fusion, report prompts, decoder).

Which slices:

* **evaluation slices** of a study: its lesion's slice range, every n-th slice so that at most
  ``max_eval`` are kept (the same rule the LiteMedSAM anchor uses, so both are measured on the
  same slices);
* **negative slices**: ``n_neg`` slices outside the lesion range (the model must say "nothing");
* **augmented variants** 1..V-1 of up to ``max_aug`` lesion slices, drawn by :mod:`.augment` from a
  seed derived from the case and slice, so the same bank is rebuilt bit for bit and hits the cache.

On a GPU the encoder is cheap, and the same recipe can use more variants (``variants``).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch

from pgsam_node.findings import Findings, findings_vector
from pgsam_node.geometry.normalize import NormParams
from pgsam_node.inference.preprocessing import StudyArrays, prepare_study
from pgsam_node.model.coords import patient_coordinate_map
from pgsam_node.training.augment import AugmentOptions, augment_slice, mirror_findings, mirror_report, mirror_slice
from pgsam_node.training.embed_cache import EmbeddingCache

log = logging.getLogger(__name__)


@dataclass
class BankCase:
    """One study in the bank.

    Attributes
    ----------
    eval_slices
        Slice indices (original grid) evaluated for this study.
    eval_masks
        (len(eval_slices), Y, X) uint8 reference mask on the original grid.
    primary
        Index (in the model's sequence order) of the sequence the anchor box prompts are run on.
    """

    case_id: str
    kind: str
    text: str | None
    findings: Findings | None
    shape_yx: tuple[int, int]
    eval_slices: list[int]
    eval_masks: np.ndarray
    primary: int

    @property
    def findings_vec(self) -> np.ndarray:
        return np.asarray(findings_vector(self.findings), dtype=np.float32)

    @property
    def mirrored_text(self) -> str | None:
        return mirror_report(self.text)

    @property
    def mirrored_findings_vec(self) -> np.ndarray:
        return np.asarray(findings_vector(mirror_findings(self.findings)), dtype=np.float32)


@dataclass
class BankItem:
    """One (slice, variant): images (S, H, W) uint8, mask (H, W) uint8, coords (2, H, W) float16,
    valid (S,) bool, emb (S, C, h, w) float16 (zeros for a missing sequence)."""

    case: int
    k: int
    variant: int
    images: np.ndarray
    mask: np.ndarray
    coords: np.ndarray
    valid: np.ndarray
    emb: np.ndarray
    #: The mirrored patient (:func:`.augment.mirror_slice`): the report's sides are swapped for it.
    mirrored: bool = False

    @property
    def lesion(self) -> bool:
        return bool(self.mask.max() >= 128)


@dataclass
class SliceBank:
    """Prepared slices with cached embeddings for a fixed sequence order."""

    sequences: list[str]
    cases: list[BankCase] = field(default_factory=list)
    items: list[BankItem] = field(default_factory=list)

    def case_index(self, case_id: str) -> int:
        return [c.case_id for c in self.cases].index(case_id)

    def items_of(self, cases: Iterable[int], variant: int | None = None) -> list[BankItem]:
        keep = set(cases)
        return [it for it in self.items if it.case in keep and (variant is None or it.variant == variant)]


def select_slices(mask: np.ndarray, seq_valid: np.ndarray, max_eval: int = 16, n_neg: int = 2) -> tuple[list[int], list[int]]:
    """Evaluation slices (lesion range, strided to at most ``max_eval``) and negative slices.

    Parameters
    ----------
    mask
        (Z, H, W) reference mask in [0, 1].
    seq_valid
        (Z, S) bool.
    """
    z = mask.shape[0]
    usable = seq_valid.any(axis=1)
    has = (mask.reshape(z, -1).max(axis=1) >= 0.5) & usable
    if not has.any():
        cand = np.flatnonzero(usable)
        return [int(k) for k in cand[np.linspace(0, len(cand) - 1, min(max_eval, len(cand))).astype(int)]] if len(cand) else [], []
    z0, z1 = int(np.flatnonzero(has).min()), int(np.flatnonzero(has).max())
    stride = max(1, math.ceil((z1 - z0 + 1) / max_eval))
    ev = [k for k in range(z0, z1 + 1, stride) if usable[k]]
    outside = np.array([k for k in range(z) if usable[k] and (k < z0 - 1 or k > z1 + 1)], dtype=int)
    neg = [int(k) for k in outside[np.linspace(0, len(outside) - 1, min(n_neg, len(outside))).astype(int)]] if len(outside) else []
    return ev, neg


def _seed(case_id: str, k: int, v: int, base: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{base}:{case_id}:{k}:{v}".encode()).digest()[:8], "little")


def encoder_fn(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """(B, 3, H, W) in [0, 1] -> (B, C, h, w): the model's frozen image encoder with its pixel normalisation."""
    def enc(x: torch.Tensor) -> torch.Tensor:
        return model.encode_slices(x.to(model.pixel_mean.device))

    return enc


def build_bank(
    studies: Iterable[tuple[StudyArrays, str]],
    model,
    sequences: list[str],
    cache: EmbeddingCache,
    norm: NormParams,
    variants: int = 2,
    max_eval: int = 16,
    n_neg: int = 2,
    max_aug: int = 8,
    primary: dict[str, str] | None = None,
    seed: int = 0,
    aug: AugmentOptions | None = None,
    batch_size: int = 8,
    progress: bool = False,
    bank: SliceBank | None = None,
    mirror: bool = False,
) -> SliceBank:
    """Prepare, augment and encode the bank's slices.

    Parameters
    ----------
    studies
        (study, kind) pairs; kind is "real" or "synthetic" (training batches mix the two).
    model
        A PG-SAM whose ``image_encoder`` is frozen.
    sequences
        Model sequence order.
    primary
        kind or case id -> role of the anchor's sequence (default: the first of T1C, T2, T1 present).
    bank
        Append to this bank (same sequences) instead of starting a new one.
    mirror
        Add the mirrored patient of each augmented lesion slice (report sides swapped), so a
        lesion seen only on one side still teaches the report's "left" and "right".
    """
    img = model.img_size
    if bank is None:
        bank = SliceBank(sequences=list(sequences))
    elif bank.sequences != list(sequences):
        raise ValueError(f"bank sequences {bank.sequences} != {sequences}")
    first_new = len(bank.items)
    pending: list[tuple[BankItem, int, np.ndarray]] = []  # (item, sequence index, encoder input)
    for st, kind in studies:
        p = prepare_study(st.volumes, st.valid, st.affine, list(sequences), img, norm, mask=st.mask)
        ev, neg = select_slices(p.mask, p.seq_valid, max_eval, n_neg)
        want = (primary or {}).get(st.case_id) or (primary or {}).get(kind)
        present = [r for r in ("T1C", "T2", "T1") if r in sequences and r in st.volumes]
        role = want if want in sequences and want in st.volumes else (present[0] if present else sequences[0])
        ci = len(bank.cases)
        bank.cases.append(BankCase(st.case_id, kind, st.report, st.findings, p.shape_yx, ev,
                                   np.asarray(st.mask[ev], dtype=np.uint8), sequences.index(role)))
        lesion_ev = [k for k in ev if p.mask[k].max() >= 0.5]
        aug_slices = [lesion_ev[i] for i in np.linspace(0, len(lesion_ev) - 1, min(max_aug, len(lesion_ev))).astype(int)] if lesion_ev else []
        todo = [(k, 0) for k in ev + neg] + [(k, v) for v in range(1, variants) for k in aug_slices]
        todo += [(k, -1) for k in aug_slices] if mirror else []
        for k, v in todo:
            x = p.images[k]  # (S, H, W)
            m = p.mask[k]
            crd = patient_coordinate_map(p.affine, k, p.shape_yx, (img, img), p.centre_lps)
            if v > 0:
                x, m, crd = augment_slice(x, p.seq_valid[k], m, crd, np.random.default_rng(_seed(st.case_id, k, v, seed)), aug)
            elif v < 0:
                x, m, crd = mirror_slice(x, m, crd)
            x8 = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
            it = BankItem(ci, k, v, x8, np.round(np.clip(m, 0, 1) * 255).astype(np.uint8), crd.astype(np.float16),
                          p.seq_valid[k].copy(), np.zeros(0, np.float16), mirrored=v < 0)
            bank.items.append(it)
            for s in np.flatnonzero(it.valid):
                pending.append((it, int(s), np.repeat(x8[s][None].astype(np.float32) / 255.0, 3, axis=0)))
    log.info("slice bank: %d case(s), %d slice item(s), %d encoder input(s)", len(bank.cases), len(bank.items), len(pending))
    enc = encoder_fn(model)
    chunk = 64
    done = 0
    for start in range(0, len(pending), chunk):
        part = pending[start : start + chunk]
        embs = cache.get_or_compute(np.stack([q[2] for q in part]), enc, batch_size=batch_size)
        for (it, s, _), e in zip(part, embs):
            if it.emb.size == 0:
                it.emb = np.zeros((len(sequences),) + e.shape, np.float16)
            it.emb[s] = e
        done += len(part)
        if progress:
            log.info("encoded %d/%d (cache hits %d, misses %d)", done, len(pending), cache.hits, cache.misses)
    for it in bank.items[first_new:]:
        if it.emb.size == 0:  # no valid sequence (never selected, but keep shapes defined)
            it.emb = np.zeros((len(sequences), model.cfg.arch.prompt_dim, model.cfg.arch.embed_size, model.cfg.arch.embed_size), np.float16)
    return bank
