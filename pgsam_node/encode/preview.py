"""PNG previews of a mask over the reference series (demo output, dashboard)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage


def window(image: np.ndarray, p_low: float = 1.0, p_high: float = 99.0) -> np.ndarray:
    """(Y, X) intensities → uint8 grey with a robust window."""
    img = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(img, [p_low, p_high])
    scale = max(float(hi - lo), 1e-6)
    return (np.clip((img - lo) / scale, 0, 1) * 255).astype(np.uint8)


def overlay_rgb(image: np.ndarray, fills=(), outlines=()) -> np.ndarray:
    """Grey (Y, X) image with masks blended in (``fills``) or outlined (``outlines``).

    ``fills`` / ``outlines``: sequences of (mask (Y, X) bool, (r, g, b)). Returns (Y, X, 3) uint8.
    """
    grey = window(image)
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    for mask, color in fills:
        m = np.asarray(mask, bool)
        rgb[m] = 0.55 * rgb[m] + 0.45 * np.asarray(color, np.float32)
    for mask, color in outlines:
        m = np.asarray(mask, bool)
        edge = m & ~ndimage.binary_erosion(m)
        rgb[edge] = color
    return rgb.clip(0, 255).astype(np.uint8)


def best_slice(*masks: np.ndarray) -> int:
    """Index along Z with the largest total mask area (the middle slice when all are empty)."""
    area = sum(np.asarray(m, bool).reshape(m.shape[0], -1).sum(axis=1) for m in masks)
    return int(np.argmax(area)) if np.any(area) else masks[0].shape[0] // 2


def write_overlay_png(reference_paths: list[Path], truth: np.ndarray | None, pred: np.ndarray, out: Path) -> Path:
    """Write the slice with the most lesion: prediction filled red, truth outlined green.

    ``reference_paths``: one file per slice of the reference grid (Z order of the masks).
    """
    from pydicom import dcmread

    masks = [pred] + ([truth] if truth is not None else [])
    z = best_slice(*masks)
    ds = dcmread(reference_paths[z])
    img = ds.pixel_array.astype(np.float32)
    outlines = [(truth[z], (40, 220, 40))] if truth is not None else []
    rgb = overlay_rgb(img, fills=[(pred[z], (230, 40, 40))], outlines=outlines)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(out)
    return out
