"""Slice augmentation that keeps laterality consistent with the affine.

Every spatial transform (flip, rotation, scale, elastic displacement) is applied through one
sampling grid to the sequences, the reference mask **and the patient-coordinate map**
(:func:`pgsam_node.model.coords.patient_coordinate_map`). The coordinate map says, for each pixel,
where it lies in the patient (LPS millimetres), so after a flip the pixel that shows the patient's
left still carries "left": what the report says about the side stays true of the augmented slice.

Intensity transforms are drawn per sequence: gamma, contrast, a smooth multiplicative bias field
(a low-order polynomial, as scanner receive-coil shading is) and a resolution change (down- then
up-sampling, as a thicker or coarser acquisition looks). All draws come from a numpy
``Generator``, so a seed gives the same augmented slice on every run (the embedding cache relies on it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class AugmentOptions:
    """Ranges of the random transforms (one draw per slice)."""

    p_flip: float = 0.5
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    elastic_px: float = 4.0
    elastic_grid: int = 5
    gamma: float = 0.3
    contrast: tuple[float, float] = (0.85, 1.15)
    bias: float = 0.3
    p_lowres: float = 0.3
    lowres: tuple[float, float] = (1.0, 2.0)
    #: Standard deviation of added Gaussian noise, as a fraction of the [0, 1] range; the level
    #: of each slice is drawn uniformly from 0 to this (0 = off, and no draw is made).
    noise: float = 0.0


def _grid(h: int, w: int, rng: np.random.Generator, o: AugmentOptions) -> torch.Tensor:
    """(1, H, W, 2) sampling grid (x, y in [-1, 1]) of one random flip/rotation/scale/elastic warp."""
    ang = math.radians(rng.uniform(-o.rotate_deg, o.rotate_deg))
    s = rng.uniform(*o.scale)
    flip = -1.0 if rng.random() < o.p_flip else 1.0
    # Output pixel p samples input at A @ p (normalised coordinates): inverse of the displayed warp.
    a = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]]) / s
    a = a @ np.diag([flip, 1.0])
    theta = torch.tensor(np.concatenate([a, np.zeros((2, 1))], axis=1)[None], dtype=torch.float32)
    grid = F.affine_grid(theta, [1, 1, h, w], align_corners=False)
    if o.elastic_px > 0:
        g = o.elastic_grid
        coarse = torch.from_numpy(rng.normal(0.0, 1.0, (1, 2, g, g)).astype(np.float32))
        disp = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0].permute(1, 2, 0)
        disp = disp * torch.tensor([2.0 * o.elastic_px / w, 2.0 * o.elastic_px / h])
        grid = grid + disp[None]
    return grid


def _bias_field(h: int, w: int, rng: np.random.Generator, amp: float) -> np.ndarray:
    """(H, W) smooth multiplicative field exp(2nd-order polynomial), mean about 1."""
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    terms = [x, y, x * y, x * x - 1 / 3, y * y - 1 / 3]
    field = sum(rng.uniform(-amp, amp) * t for t in terms)
    return np.exp(field).astype(np.float32)


def augment_slice(
    images: np.ndarray, valid: np.ndarray, mask: np.ndarray, coords: np.ndarray, rng: np.random.Generator, opts: AugmentOptions | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One random augmentation of a model-ready slice.

    Parameters
    ----------
    images
        (S, H, W) float32 in [0, 1], one image per sequence; or (S, C, H, W), C context slices
        per sequence, warped alike and given the same intensity draws as their sequence.
    valid
        (S,) bool: sequences present (absent ones stay zero).
    mask
        (H, W) float32 reference mask in [0, 1].
    coords
        (2, H, W) patient-coordinate map of the slice.
    rng
        Random generator (the only source of randomness).
    opts
        Transform ranges.

    Returns
    -------
    tuple of numpy.ndarray
        images (same shape as given), mask (H, W), coords (2, H, W), warped together.
    """
    o = opts or AugmentOptions()
    stacked = images.ndim == 4  # (S, C, H, W): C context slices per sequence share every draw
    imgs = images if stacked else images[:, None]
    s, c, h, w = imgs.shape
    grid = _grid(h, w, rng, o)
    img_t = torch.from_numpy(np.ascontiguousarray(imgs.reshape(s * c, h, w), dtype=np.float32))[None]
    out = F.grid_sample(img_t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0].numpy().reshape(s, c, h, w)
    m = F.grid_sample(torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None], grid, mode="bilinear",
                      padding_mode="zeros", align_corners=False)[0, 0].numpy()
    # The coordinate map moves with the pixels; outside the field of view it extends linearly-ish
    # (border values), which keeps "left of centre" meaningful at the edge.
    crd = F.grid_sample(torch.from_numpy(np.ascontiguousarray(coords, dtype=np.float32))[None], grid, mode="bilinear",
                        padding_mode="border", align_corners=False)[0].numpy()
    for i in range(s):
        if not valid[i]:
            out[i] = 0.0
            continue
        x = np.clip(out[i], 0.0, 1.0) ** math.exp(rng.uniform(-o.gamma, o.gamma))
        x = x * rng.uniform(*o.contrast) * _bias_field(h, w, rng, o.bias)
        if rng.random() < o.p_lowres:
            f = rng.uniform(*o.lowres)
            small = (max(8, int(round(h / f))), max(8, int(round(w / f))))
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
            t = F.interpolate(t, size=small, mode="bilinear", align_corners=False, antialias=True)
            t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
            x = t[:, 0].numpy()
        if o.noise > 0:
            x = x + rng.normal(0.0, rng.uniform(0.0, o.noise), x.shape).astype(np.float32)
        out[i] = np.clip(x, 0.0, 1.0)
    out = out if stacked else out[:, 0]
    return out.astype(np.float32), np.clip(m, 0.0, 1.0).astype(np.float32), crd.astype(np.float32)


_SIDE_SWAP = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT", "RIGHT": "LEFT"}


def mirror_report(text: str | None) -> str | None:
    """The report of the mirrored patient: every "left" and "right" swapped (case kept)."""
    import re

    if not text:
        return text
    return re.sub(r"\b(left|right|Left|Right|LEFT|RIGHT)\b", lambda m: _SIDE_SWAP[m.group(1)], text)


def mirror_findings(f):
    """Findings of the mirrored patient (side and negated sides swapped)."""
    from dataclasses import replace

    if f is None:
        return None
    swap = {"left": "right", "right": "left"}
    return replace(f, side=swap.get(f.side, f.side), negated_sides=[swap.get(s, s) for s in f.negated_sides])


def mirror_slice(images: np.ndarray, mask: np.ndarray, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The slice of the mirrored patient (reflected through the body's mid-sagittal plane).

    The image columns are reversed and the left-right coordinate negated, so the lesion that lay
    at the patient's left now lies at the patient's right, and the caller swaps the report's sides
    (:func:`mirror_report`, :func:`mirror_findings`): a new, laterality-consistent training case
    whose report says "right" where the original said "left". Input and output shapes (S, H, W),
    (H, W), (2, H, W); coords channel 0 is left-right (LPS x from the body centre), 1 anterior-posterior.
    """
    c = coords[:, :, ::-1].copy()
    c[0] = -c[0]
    return np.ascontiguousarray(images[:, :, ::-1]), np.ascontiguousarray(mask[:, ::-1]), c
