"""PNG previews of a mask over the reference series (demo output, dashboard)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from pgsam_node.geometry.load import as_displayed


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


def axis_letter(v) -> str:
    """Patient direction letter of a unit vector (PS3.3 C.7.6.1.1.1): its dominant axis, L/R, P/A, H/F."""
    v = np.asarray(v, dtype=float)
    i = int(np.argmax(np.abs(v)))
    return ("L", "P", "H")[i] if v[i] > 0 else ("R", "A", "F")[i]


_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}


def side_letters(iop) -> tuple[str, str] | None:
    """(left edge, right edge) patient-direction letters of an image with ImageOrientationPatient ``iop``.

    The row direction cosine (the first three values) points from the left edge of the displayed
    image to its right edge, so the right edge shows its letter and the left edge the opposite
    (an axial image in the usual orientation: R on the left, L on the right).
    """
    if iop is None or len(iop) != 6:
        return None
    right = axis_letter([float(x) for x in iop[:3]])
    return _OPPOSITE[right], right


def annotate(rgb: np.ndarray, legend, slice_text: str, sides: tuple[str, str] | None, max_side: int = 512) -> Image.Image:
    """Enlarge an RGB slice to about ``max_side`` pixels and draw a legend, the slice number and R/L markers.

    Parameters
    ----------
    rgb
        (Y, X, 3) uint8 from :func:`overlay_rgb`.
    legend
        [((r, g, b), label), ...] drawn as colour swatches at the bottom left.
    slice_text
        Top-left text, e.g. ``"slice 12 / 24"``.
    sides
        From :func:`side_letters`; None draws no marker.
    """
    from PIL import ImageDraw

    img = Image.fromarray(rgb, "RGB")
    scale = max(1, max_side // max(img.size))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    d = ImageDraw.Draw(img)
    d.rectangle([2, 2, 8 + 7 * len(slice_text), 16], fill=(0, 0, 0))
    d.text((5, 4), slice_text, fill=(255, 255, 255))
    if sides:
        mid = img.height // 2
        for x, letter in ((4, sides[0]), (img.width - 12, sides[1])):
            d.rectangle([x - 2, mid - 2, x + 9, mid + 12], fill=(0, 0, 0))
            d.text((x, mid), letter, fill=(255, 255, 0))
    y = img.height - 16 * len(legend) - 4
    for color, label in legend:
        d.rectangle([2, y - 2, 24 + 7 * len(label), y + 12], fill=(0, 0, 0))
        d.rectangle([5, y, 15, y + 10], fill=tuple(color))
        d.text((20, y), label, fill=(255, 255, 255))
        y += 16
    return img


PRED_COLOUR = (230, 40, 40)
TRUTH_COLOUR = (40, 220, 40)


def write_overlay_png(reference_paths: list[Path], truth: np.ndarray | None, pred: np.ndarray, out: Path) -> Path:
    """Write the slice with the most lesion: prediction filled red, truth outlined green, with a
    legend, the slice number and the patient's R/L (or A/P, H/F) at the image edges.

    ``reference_paths``: one file per slice of the reference grid (Z order of the masks).
    """
    from pydicom import dcmread

    masks = [pred] + ([truth] if truth is not None else [])
    z = best_slice(*masks)
    ds = dcmread(reference_paths[z])
    img = as_displayed(ds.pixel_array, ds).astype(np.float32)
    outlines = [(truth[z], TRUTH_COLOUR)] if truth is not None else []
    rgb = overlay_rgb(img, fills=[(pred[z], PRED_COLOUR)], outlines=outlines)
    legend = [(PRED_COLOUR, "PG-SAM prediction")] + ([(TRUTH_COLOUR, "truth (outline)")] if truth is not None else [])
    sides = side_letters(ds.get("ImageOrientationPatient"))
    out.parent.mkdir(parents=True, exist_ok=True)
    annotate(rgb, legend, f"slice {z + 1} / {len(reference_paths)}", sides).save(out)
    return out
