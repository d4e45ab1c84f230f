"""Does a mask agree with what the report says? The trigger of the second opinion (``model.fallback``).

A model trained on one kind of image can fail in two ways on another: it finds nothing, or it
finds a scatter of false positives. The second is the worse one for a radiologist (a SEG that
looks like an answer) and the usual one on real MR for a model trained on phantoms (tens of
components all over the head). The report gives two checks that need no ground truth:

* **count** — a report that states one lesion (or N) is doubted when the mask has more than
  ``components_per_lesion`` x N separate 3-D components (26-connected, after the predictor's own
  post-processing);
* **size** — a report that states the lesion's largest diameter S is doubted when the largest
  component's largest extent (its bounding box along the grid axes, in mm) is below S / ratio or
  above S x ratio.

Both limits are config keys (``model.fallback_components_per_lesion``, ``model.fallback_size_ratio``;
0 switches a check off) with lenient defaults (5 and 3.0), so a correct mask with a few satellite
specks, of a lobulated lesion, or measured on another plane is not doubted (on 64 synthetic
studies, a limit of 3 doubted two correct masks with 4 regions each; real MR out of the model's
domain gave 40-57).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pgsam_node.findings import Findings
from pgsam_node.inference.sizing import extent_mm, largest_region


def doubt(mask: np.ndarray, affine: np.ndarray | None, findings: Findings | None,
          components_per_lesion: int = 5, size_ratio: float = 3.0) -> str | None:
    """Why the report contradicts a non-empty mask, or None (no contradiction, or nothing to check).

    Parameters
    ----------
    mask
        (Z, Y, X) mask, non-zero = lesion.
    affine
        4 x 4 voxel (x, y, z) -> LPS mm; None = no size check.
    findings
        The report's findings (``count``, ``size_mm``).
    """
    if findings is None or not mask.any():
        return None
    labels, n = ndimage.label(mask.astype(bool), structure=ndimage.generate_binary_structure(3, 3))
    lesions = findings.count if findings.count and findings.count > 0 else 1
    if components_per_lesion > 0 and n > components_per_lesion * lesions:
        return f"{n} separate regions where the report states {lesions} lesion(s)"
    if size_ratio > 0 and findings.size_mm and affine is not None:
        extent = extent_mm(largest_region(mask, labels), affine)
        if extent < findings.size_mm / size_ratio or extent > findings.size_mm * size_ratio:
            return f"largest region {extent:.0f} mm where the report states {findings.size_mm:.0f} mm"
    return None


def stated_regions(mask: np.ndarray, findings: Findings | None) -> np.ndarray:
    """``mask`` reduced to as many of its largest 26-connected regions as the report states lesions
    (1 when it states no count): the model's own answer without its scatter."""
    labels, n = ndimage.label(mask.astype(bool), structure=ndimage.generate_binary_structure(3, 3))
    lesions = findings.count if findings is not None and findings.count and findings.count > 0 else 1
    if n <= lesions:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.argsort(sizes)[::-1][:lesions] + 1
    return np.isin(labels, keep)
