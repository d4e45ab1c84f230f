"""Does a viewer's screenshot show a segment's colour where the mask is, and nowhere else?

Pure numpy; the viewer test (``tests/e2e/test_ohif.py``) feeds it two screenshots of the same
viewport and slice, segmentation shown and hidden, and the mapping from the slice's voxel
(column, row) to screenshot pixels.

- *Expected*: the mask slice projected to the screen (each screenshot pixel centre mapped back to
  the voxel it falls in, nearest voxel).
- *Overlay*: pixels whose colour moved towards the segment's display colour when the segmentation
  was shown (at least ``toward`` closer in RGB), i.e. the overlay colour appears there.
- *Changed*: pixels that changed at all (any channel by more than ``changed``): anything the
  viewer drew, whatever its colour.

The check passes when the overlay covers the mask's interior (``core``: the expected region eroded
by ``margin`` pixels, which absorbs the outline and resampling at the edge) and nothing changed
outside the mask's surroundings (``halo``: dilated by ``margin``), up to a small tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class ScreenMapping:
    """Screenshot pixel = ``origin + col * d_col + row * d_row`` for the centre of voxel
    (col, row) of the displayed slice; ``viewport`` is the (x0, y0, x1, y1) screenshot box of the
    viewport's canvas."""

    origin: tuple[float, float]
    d_col: tuple[float, float]
    d_row: tuple[float, float]
    viewport: tuple[int, int, int, int]

    def voxel_of_pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """(col, row) of the nearest voxel centre for every pixel centre of the viewport box."""
        x0, y0, x1, y1 = self.viewport
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(float)
        px = xs + 0.5 - self.origin[0]
        py = ys + 0.5 - self.origin[1]
        m = np.array([[self.d_col[0], self.d_row[0]], [self.d_col[1], self.d_row[1]]])
        inv = np.linalg.inv(m)
        col = inv[0, 0] * px + inv[0, 1] * py
        row = inv[1, 0] * px + inv[1, 1] * py
        return np.rint(col).astype(int), np.rint(row).astype(int)

    @property
    def pixels_per_voxel(self) -> float:
        return float(min(np.hypot(*self.d_col), np.hypot(*self.d_row)))


def project_mask(mask2d: np.ndarray, mapping: ScreenMapping) -> np.ndarray:
    """The (rows, cols) mask slice as a boolean image of the viewport box."""
    col, row = mapping.voxel_of_pixels()
    rows, cols = mask2d.shape
    inside = (col >= 0) & (col < cols) & (row >= 0) & (row < rows)
    out = np.zeros(col.shape, dtype=bool)
    out[inside] = mask2d[row[inside], col[inside]] > 0
    return out


@dataclass(frozen=True)
class OverlayVerdict:
    expected_px: int      # pixels of the projected mask
    core_px: int          # expected, eroded by the margin
    overlay_px: int       # pixels that moved towards the segment colour
    changed_px: int       # pixels that changed at all
    exact_colour_px: int  # changed pixels showing the display colour itself (OHIF's outline)
    covered: float        # fraction of core pixels showing the overlay colour
    stray_px: int         # changed pixels outside the halo (expected dilated by the margin)
    stray_limit: int
    min_covered: float
    margin_px: int

    @property
    def ok(self) -> bool:
        return self.covered >= self.min_covered and self.stray_px <= self.stray_limit

    def __str__(self) -> str:
        return (f"expected {self.expected_px} px (core {self.core_px}), overlay colour on {self.overlay_px} px "
                f"({self.exact_colour_px} exactly the display colour), "
                f"changed {self.changed_px} px; core covered {self.covered:.3f} (need >= {self.min_covered}), "
                f"stray {self.stray_px} px outside the mask + {self.margin_px} px (limit {self.stray_limit})")


def check_overlay(shown: np.ndarray, hidden: np.ndarray, expected: np.ndarray, colour: tuple[int, int, int], *,
                  margin_px: int = 3, min_covered: float = 0.95, stray_fraction: float = 0.02, stray_min: int = 30,
                  toward: float = 20.0, changed: int = 12, exact_tolerance: int = 6) -> OverlayVerdict:
    """Compare the shown / hidden screenshots of the viewport box with the expected region.

    Parameters
    ----------
    shown, hidden
        (H, W, 3) uint8 RGB crops of the viewport, segmentation shown and hidden.
    expected
        (H, W) bool, :func:`project_mask` of the mask slice.
    colour
        The segment's display colour (sRGB).
    margin_px
        Erosion / dilation of the expected region (outline width, resampling at the edge).
    min_covered
        Fraction of the eroded region that must show the overlay colour.
    stray_fraction, stray_min
        Changed pixels allowed outside the dilated region: ``max(stray_min, stray_fraction *
        expected pixels)``.
    toward, changed, exact_tolerance
        RGB distance the colour must move towards the display colour to count as overlay; per
        channel change that counts as changed; per channel distance to the display colour that
        counts as the colour itself (reported as ``exact_colour_px``, not part of ``ok``).
    """
    a = shown.astype(float)
    b = hidden.astype(float)
    c = np.asarray(colour, float)
    closer = np.linalg.norm(b - c, axis=-1) - np.linalg.norm(a - c, axis=-1)
    overlay = closer >= toward
    diff = np.abs(a - b).max(axis=-1) > changed
    exact = diff & (np.abs(a - c).max(axis=-1) <= exact_tolerance)
    struct = np.ones((3, 3), bool)
    core = ndimage.binary_erosion(expected, struct, iterations=margin_px) if margin_px else expected
    halo = ndimage.binary_dilation(expected, struct, iterations=margin_px) if margin_px else expected
    n_core = int(core.sum())
    covered = float((overlay & core).sum()) / n_core if n_core else 1.0
    return OverlayVerdict(
        expected_px=int(expected.sum()), core_px=n_core, overlay_px=int(overlay.sum()), changed_px=int(diff.sum()),
        exact_colour_px=int(exact.sum()),
        covered=covered, stray_px=int((diff & ~halo).sum()),
        stray_limit=max(stray_min, int(stray_fraction * expected.sum())), min_covered=min_covered, margin_px=margin_px)
