"""Zero-shot lesion proposals: where the report's lesion can be, from left-right asymmetry.

A localisation head learned from a handful of studies memorises where its training lesions were
(docs/model.md, "what goes wrong"). This module needs no training. It uses two things that hold
on any site's studies:

* **Paired anatomy is nearly symmetric.** The brain's hemispheres and the two parotid glands mirror
  each other across the mid-sagittal plane; a unilateral lesion breaks that symmetry. The plane is
  estimated per study (rotation and offset that best match the mean slice to its mirror image).
* **The report says which contrast defines the lesion.** "Enhancing" means brighter on T1C *than
  on T1*; "T2 hyperintense" (and, unless stated otherwise, T1 hypointense) means brighter on T2
  than on T1. Scoring contrasts between sequences, not one sequence, cancels what is bright on
  every sequence (fat, scalp, vessels) and what the mirror misaligns by a few millimetres.

Per sequence, the asymmetry at a voxel is how much brighter it is than the brightest point
within ``tolerance_mm`` of its mirror point (and, negatively, darker than the darkest): a
misregistration of the plane up to that tolerance scores zero. The score map weighs the
sequences' asymmetries by the report's signal description; its positive 3-D components on the
side the report names (either side when it names none or both) are ranked by their summed score.
The best one (or several, for a report of multiple lesions) is the lesion *region*; its *core* is
the part where the lesion's defining contrast alone is strong (for an enhancing mass, the
enhancement rather than the surrounding T2 signal). Each slice's box prompts come from the core's
2-D parts, with a margin, for the pretrained SAM decoder to segment.

Shapes: images (Z, S, H, W) in [0, 1] at the model's input size; boxes ``x0, y0, x1, y1`` in those
pixels. No patient data leaves this module; its notes hold counts and angles only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from pgsam_node.findings import Findings


@dataclass(frozen=True)
class ProposalParams:
    """Fixed settings of the proposal stage (physical units, not tuned per study)."""

    smooth_mm: float = 2.0
    #: Mirror misregistration that scores zero asymmetry.
    tolerance_mm: float = 4.0
    #: Voxels closer than this to the body surface are not scored (skin and scalp edges).
    surface_mm: float = 6.0
    #: Components keep voxels above max(abs_threshold, rel_threshold x the 99.95th percentile).
    rel_threshold: float = 0.4
    abs_threshold: float = 0.05
    #: Hysteresis: a kept component grows into connected voxels above this fraction of the threshold
    #: (the weaker edge slices of the same lesion); 1 = no growth.
    grow_fraction: float = 0.5
    grow_slices: int = 2
    grow_mm: float = 4.0
    #: Thin structures (edges) narrower than this are opened away before components are taken.
    opening_mm: float = 2.0
    #: Extra components kept for a report of several lesions: summed score >= this x the best.
    multi_fraction: float = 0.25
    max_regions: int = 4
    #: Core = region voxels whose defining-contrast score >= this x its 95th percentile there.
    core_fraction: float = 0.4
    box_margin_mm: float = 3.0
    box_margin_fraction: float = 0.1
    max_boxes_per_slice: int = 4
    #: Core parts smaller than this (mm^2 on a slice) give no box.
    min_box_area_mm2: float = 12.0
    #: A post-contrast study whose report describes no signal (or has no report) is scored by its
    #: enhancement (:func:`signal_weights`); False = T2-bright / T1-dark assumed, as before 2026-12-05.
    assume_enhancement: bool = True
    #: Decoded box masks whose SAM-predicted IoU is more than this below the study's best are dropped.
    iou_margin: float = 0.2


@dataclass
class Proposal:
    """What :func:`propose` found.

    Attributes
    ----------
    boxes
        slice index -> list of (4,) float32 boxes in input pixels.
    region
        (Z, H, W) bool lesion region (input size), empty when nothing was found.
    key_role
        The sequence the decoder should see (the lesion's defining contrast: T1C for an
        enhancing lesion, else T2, else the first present).
    notes
        Counts and angles for the run record.
    """

    boxes: dict[int, list[np.ndarray]] = field(default_factory=dict)
    region: np.ndarray | None = None
    key_role: str | None = None
    notes: list[str] = field(default_factory=list)
    params: ProposalParams = field(default_factory=ProposalParams)
    #: (summed score, rank score) of every candidate component, best first.
    candidates: list[tuple[float, float]] = field(default_factory=list)


def _slice_mm(a: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64)[:3, 2]))


def _size_agreement(lab: np.ndarray, n: int, findings: Findings | None, px: float, dz: float, sigma: float = 0.5) -> np.ndarray:
    """(n,) factor in (0, 1]: how well each component's largest extent (mm) matches the
    report's lesion size (log-normal, ``sigma`` in natural-log units); 1 without a stated size."""
    out = np.ones(n)
    size = findings.size_mm if findings is not None and findings.size_mm else None
    if not size:
        return out
    for i, sl in enumerate(ndi.find_objects(lab)):
        if sl is None:
            continue
        ext = max((sl[0].stop - sl[0].start) * dz, (sl[1].stop - sl[1].start) * px, (sl[2].stop - sl[2].start) * px)
        out[i] = float(np.exp(-np.log(max(ext, 1e-3) / size) ** 2 / (2 * sigma * sigma)))
    return out


def proposal_images(channels: dict[str, np.ndarray], valid: dict[str, np.ndarray] | None, sequences: list[str], img_size: int) -> np.ndarray:
    """(Z, S, H, W) inputs of :func:`propose`: each sequence scaled by its 0.5-99.5 percentile window
    like the model's input, but not clipped at the top (up to 4x the window): a bright lesion
    that is rarer than 0.5 % of the voxels keeps its contrast. Missing sequences are zeros."""
    from pgsam_node.inference.preprocessing import resize_slices

    shape = next(iter(channels.values())).shape
    out = np.zeros((shape[0], len(sequences), img_size, img_size), np.float32)
    for j, role in enumerate(sequences):
        if role not in channels:
            continue
        v = np.asarray(channels[role], np.float32)
        vm = np.asarray(valid[role], bool) if valid and role in valid else np.isfinite(v)
        sel = v[vm & np.isfinite(v)]
        if sel.size == 0:
            continue
        lo, hi = np.percentile(sel, [0.5, 99.5])
        if not np.isfinite(hi - lo) or hi - lo < 1e-6:
            continue
        n = np.clip((np.nan_to_num(v, nan=lo) - lo) / (hi - lo), 0.0, 4.0)
        n[~vm] = 0.0
        out[:, j] = resize_slices(n, (img_size, img_size))
    return out


def signal_weights(findings: Findings | None, present: list[str], assume_enhancement: bool = True) -> tuple[dict[str, float], dict[str, float], str | None]:
    """Sequence weights of the region score and of the core score, and the key sequence.

    Without any signal description (no report, or a report that names none) a post-contrast study
    is scored by its enhancement: contrast was given to show the lesion, and enhancement (T1C
    brighter than T1) is specific where T2 brightness also marks oedema around it. Without a T1C
    the lesion is assumed T2-hyperintense and T1-hypointense (true of most tumours, cysts, oedema
    and demyelination). Weights of absent sequences are dropped.
    """
    sig = dict(findings.signal) if findings and findings.signal else {}
    if not sig and assume_enhancement:
        sig = {"enhancement": "assumed"}
    enh = sig.get("enhancement") not in (None, "none", "no", "absent")
    t2 = sig.get("T2", "hyper")
    t1 = sig.get("T1", "hypo")
    region: dict[str, float] = {}
    core: dict[str, float] = {}
    if enh and "T1C" in present:
        core = {"T1C": 1.0, "T1": -1.0} if "T1" in present else {"T1C": 1.0}
        region = dict(core)
        if "T2" in present and t2 == "hyper":
            region["T2"] = 0.5
    elif "T2" in present and t2 in ("hyper", "hypo"):
        sign = 1.0 if t2 == "hyper" else -1.0
        core = {"T2": sign}
        if "T1" in present and t1 in ("hypo", "hyper"):
            core["T1"] = -0.5 if t1 == "hypo" else 0.5
        region = dict(core)
    else:
        first = next((r for r in ("T1C", "T2", "T1") if r in present), None)
        if first:
            core = {first: 1.0}
            region = dict(core)
    key = next((r for r, w in core.items() if w > 0), None)
    return region, core, key


def symmetry_plane(mean_img: np.ndarray, max_angle: float = 12.0, step: float = 1.5) -> tuple[float, float, float]:
    """Rotation (degrees) and column offset of the left-right mirror axis of a (H, W) image.

    Returns (angle, axis column in the rotated frame, normalised correlation of the best fit).
    """
    h, w = mean_img.shape
    best = (-np.inf, 0.0, (w - 1) / 2.0)
    shifts = np.r_[np.arange(0, w // 3), np.arange(-(w // 3), 0)]
    for th in np.arange(-max_angle, max_angle + 1e-6, step):
        r = ndi.rotate(mean_img, th, reshape=False, order=1)
        r = r - r.mean()
        f = r[:, ::-1]
        fr = np.fft.rfft(r, n=2 * w, axis=1)
        ff = np.fft.rfft(f, n=2 * w, axis=1)
        cc = np.fft.irfft((fr * np.conj(ff)).sum(0), n=2 * w)
        vals = cc[shifts % (2 * w)] / max(float((r * r).sum()), 1e-9)
        i = int(np.argmax(vals))
        if vals[i] > best[0]:
            # cc[s] = sum_x r(x + s) r(W - 1 - x): x + s and W - 1 - x mirror about c = (W - 1 + s) / 2.
            best = (float(vals[i]), float(th), (w - 1 + float(shifts[i])) / 2.0)
    return best[1], best[2], best[0]


def mirror_map(shape: tuple[int, int], angle: float, axis: float) -> np.ndarray:
    """(2, H, W) row/column of each pixel's mirror point across the axis found by :func:`symmetry_plane`."""
    h, w = shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    t = np.deg2rad(angle)
    # ndimage.rotate(img, angle) moves (row, col) p to R (p - c) + c with R = [[cos, -sin], [sin, cos]].
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    p = np.stack([yy - cy, xx - cx], -1)
    q = p @ rot.T
    q[..., 1] = 2 * (axis - cx) - q[..., 1]
    src = q @ rot + [cy, cx]
    return np.moveaxis(src, -1, 0)


def lateral_map(shape: tuple[int, int], angle: float, axis: float) -> np.ndarray:
    """(H, W) signed distance in pixels from the mirror axis (positive towards higher columns)."""
    h, w = shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    t = np.deg2rad(angle)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    # Column in the rotated frame (ndimage.rotate's convention), minus the axis.
    return np.sin(t) * (yy - cy) + np.cos(t) * (xx - cx) + cx - axis


def _disk(r: int) -> np.ndarray:
    return np.hypot(*np.mgrid[-r : r + 1, -r : r + 1]) <= r


def slab_footprint(ry: int, rx: int | None = None) -> np.ndarray:
    """(3, 2 ry + 1, 2 rx + 1) bool: an in-plane ellipse of radii (ry, rx) pixels (a disk when rx
    is None) on the middle slice and only the centre voxel on the slices above and below; one
    dilation by it reaches that far in-plane and one slice through-plane."""
    rx = ry if rx is None else rx
    yy, xx = np.mgrid[-ry : ry + 1, -rx : rx + 1]
    fp = np.zeros((3, 2 * ry + 1, 2 * rx + 1), bool)
    fp[1] = (yy / ry) ** 2 + (xx / rx) ** 2 <= 1
    fp[0, ry, rx] = fp[2, ry, rx] = True
    return fp


def asymmetry(images: np.ndarray, body: np.ndarray, mirror: np.ndarray, smooth_px: float, tol_px: int) -> np.ndarray:
    """(Z, S, H, W) per-sequence asymmetry, zero outside ``body`` (Z, H, W) and its mirror."""
    z, s = images.shape[:2]
    sm = ndi.gaussian_filter(images, (0, 0, smooth_px, smooth_px))
    fp = _disk(max(1, tol_px))
    out = np.zeros_like(images)
    coords = [mirror[0], mirror[1]]
    for k in range(z):
        if not body[k].any():
            continue
        mb = ndi.map_coordinates(body[k].astype(np.float32), coords, order=0, mode="constant") > 0.5
        both = body[k] & mb
        for j in range(s):
            m = ndi.map_coordinates(sm[k, j], coords, order=1, mode="constant")
            hi = ndi.grey_dilation(m, footprint=fp)
            lo = ndi.grey_erosion(m, footprint=fp)
            out[k, j] = (np.maximum(sm[k, j] - hi, 0) + np.minimum(sm[k, j] - lo, 0)) * both
    return out


def body_mask(images: np.ndarray, valid: np.ndarray, surface_px: int) -> np.ndarray:
    """(Z, H, W) inside of the body, ``surface_px`` away from its surface."""
    z = images.shape[0]
    mean = np.zeros(images.shape[:1] + images.shape[2:], np.float32)
    for k in range(z):
        v = valid[k]
        if v.any():
            mean[k] = images[k, v].mean(0)
    out = np.zeros(mean.shape, bool)
    for k in range(z):
        if not valid[k].any():
            continue
        fg = ndi.binary_fill_holes(mean[k] > 0.05)
        if surface_px > 0:
            fg = ndi.binary_erosion(fg, iterations=surface_px)
        out[k] = fg
    return out


def _boxes(core2d: np.ndarray, margin_px: float, frac: float, min_area_px: float, limit: int) -> list[np.ndarray]:
    lab, n = ndi.label(core2d, ndi.generate_binary_structure(2, 2))
    out = []
    h, w = core2d.shape
    for i, sl in enumerate(ndi.find_objects(lab)):
        if sl is None:
            continue
        area = float((lab[sl] == i + 1).sum())
        if area < min_area_px:
            continue
        y0, y1, x0, x1 = sl[0].start, sl[0].stop - 1, sl[1].start, sl[1].stop - 1
        my = margin_px + frac * (y1 - y0 + 1)
        mx = margin_px + frac * (x1 - x0 + 1)
        out.append((area, np.array([max(0, x0 - mx), max(0, y0 - my), min(w - 1, x1 + mx), min(h - 1, y1 + my)], np.float32)))
    out.sort(key=lambda t: -t[0])
    return [b for _, b in out[:limit]]


def propose(images: np.ndarray, seq_valid: np.ndarray, sequences: list[str], affine: np.ndarray, shape_yx: tuple[int, int],
            findings: Findings | None, params: ProposalParams | None = None) -> Proposal:
    """Find the report's lesion without a trained localiser.

    Parameters
    ----------
    images
        (Z, S, H, W) normalised slices in [0, 1] (``PreparedStudy.images``).
    seq_valid
        (Z, S) bool.
    sequences
        The S roles in order.
    affine
        4x4 voxel (col, row, slice) -> LPS of the original grid (its columns and rows map onto
        the input pixels by scaling only).
    shape_yx
        (Y, X) of the original grid (for the pixel size at input resolution).
    findings
        The report's findings (side, signal, count); None = no report.
    """
    p = params or ProposalParams()
    out = Proposal(params=p)
    z, s, h, w = images.shape
    a = np.asarray(affine, np.float64)
    # Patient left-right (LPS x) must run along the image columns or rows for a mirror in-plane.
    col_lr, row_lr = abs(a[0, 0]) / max(np.linalg.norm(a[:3, 0]), 1e-9), abs(a[0, 1]) / max(np.linalg.norm(a[:3, 1]), 1e-9)
    if max(col_lr, row_lr) < 0.7:
        out.notes.append("proposals: left-right is not in the slice plane; no asymmetry proposals")
        return out
    transpose = row_lr > col_lr
    if transpose:
        images = images.transpose(0, 1, 3, 2)
        h, w = w, h
    # Pixel size (mm) at input resolution, along the image's columns (x) and rows (y).
    px_x = float(np.linalg.norm(a[:3, 0])) * shape_yx[1] / (images.shape[3] if not transpose else images.shape[2])
    px_y = float(np.linalg.norm(a[:3, 1])) * shape_yx[0] / (images.shape[2] if not transpose else images.shape[3])
    px = float(np.sqrt(px_x * px_y))
    present = [r for j, r in enumerate(sequences) if seq_valid[:, j].any()]
    wr, wc, key = signal_weights(findings, present, p.assume_enhancement)
    if not wr:
        out.notes.append("proposals: no usable sequence")
        return out
    out.key_role = key
    body = body_mask(images, seq_valid, int(round(p.surface_mm / px)))
    if not body.any():
        out.notes.append("proposals: empty body mask")
        return out
    mean_slice = (images.mean(1) * body).mean(0)
    angle, axis, corr = symmetry_plane(mean_slice)
    mirror = mirror_map((h, w), angle, axis)
    asym = asymmetry(images, body, mirror, p.smooth_mm / px, int(round(p.tolerance_mm / px)))
    asym *= seq_valid[:, :, None, None]

    def score(weights: dict[str, float]) -> np.ndarray:
        sc = np.zeros((z, h, w), np.float32)
        for r, wt in weights.items():
            sc += wt * asym[:, sequences.index(r)]
        return sc / max(sum(abs(v) for v in weights.values()), 1e-9)

    sr = score(wr)
    # Patient side of each pixel: LPS x grows towards the patient's left.
    lat = lateral_map((h, w), angle, axis)
    lr_dir = a[0, 1] if transpose else a[0, 0]
    left = (lat * np.sign(lr_dir)) > 0
    if findings is not None and findings.side in ("left", "right"):
        allowed = left if findings.side == "left" else ~left
        sr = np.where(allowed[None], sr, 0.0)
    elif findings is not None and findings.negated_sides:
        for side in findings.negated_sides:
            if side in ("left", "right"):
                sr = np.where((left if side == "left" else ~left)[None], 0.0, sr)
    if not (sr > 0).any():
        out.notes.append(f"proposals: plane {angle:+.1f} deg, no asymmetric signal")
        return out
    thr = max(p.abs_threshold, p.rel_threshold * float(np.percentile(sr, 99.95)))
    cand = sr > thr
    op = int(round(p.opening_mm / px))
    if op > 0:
        cand = np.stack([ndi.binary_opening(c, structure=_disk(op)) for c in cand])
    lab, n = ndi.label(cand, ndi.generate_binary_structure(3, 3))
    if n == 0:
        out.notes.append(f"proposals: plane {angle:+.1f} deg, nothing above threshold")
        return out
    mass = np.asarray(ndi.sum_labels(sr, lab, range(1, n + 1)), np.float64)
    if findings is not None and findings.size_mm:
        # The size is modelled by the prior, so the evidence is the mean score, not the sum
        # (which grows with the component and favours long vessels and edges).
        count = np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(np.float64)
        rank = mass / np.maximum(count, 1.0) * _size_agreement(lab, n, findings, px, _slice_mm(a))
    else:
        rank = mass
    order = np.argsort(-rank)
    out.candidates = [(float(mass[i]), float(rank[i])) for i in order]
    several = findings is not None and ((findings.count or 1) > 1 or findings.side == "bilateral")
    keep = [order[0]]
    if several:
        keep += [i for i in order[1 : p.max_regions] if rank[i] >= p.multi_fraction * rank[order[0]]]
    region = np.isin(lab, [i + 1 for i in keep])
    if p.grow_fraction < 1.0 and region.any():
        # Only near the component: up to grow_slices slices beyond it, grow_mm in-plane.
        fp = slab_footprint(max(1, int(round(p.grow_mm / px))))
        zone = region.copy()
        for _ in range(p.grow_slices):
            zone = ndi.binary_dilation(zone, structure=fp)
        low, _ = ndi.label((sr > p.grow_fraction * thr) & zone, ndi.generate_binary_structure(3, 3))
        region = region | np.isin(low, np.unique(low[region & (low > 0)]))
    sc = score(wc)
    inside = sc[region]
    ref = float(np.percentile(inside, 95)) if inside.size else 0.0
    core = region & (sc >= p.core_fraction * ref) if ref > 0 else region
    margin = p.box_margin_mm / px
    min_area = p.min_box_area_mm2 / (px * px)
    for k in range(z):
        if core[k].any():
            bs = _boxes(core[k], margin, p.box_margin_fraction, min_area, p.max_boxes_per_slice)
            if transpose:
                bs = [b[[1, 0, 3, 2]] for b in bs]
            if bs:
                out.boxes[k] = bs
    out.region = region.transpose(0, 2, 1) if transpose else region
    out.notes.append(f"proposals: plane {angle:+.1f} deg (fit {corr:.2f}), {n} candidate(s), {len(keep)} kept, "
                     f"boxes on {len(out.boxes)} slice(s), decoder sees {key}")
    return out
