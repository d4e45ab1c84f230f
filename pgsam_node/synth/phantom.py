"""Synthetic head-and-neck multi-sequence MR studies with parotid lesions and matching reports.

An analytic phantom is defined in patient coordinates (DICOM LPS, millimetres: +x = patient left,
+y = posterior, +z = superior, PS3.3 C.7.6.2.1.1). It can be rendered on *any* voxel grid (axial,
coronal, oblique; any spacing), so the same case drives the fast training path
(:func:`generate_case`, all sequences on one axial grid) and the DICOM writer
(:mod:`pgsam_node.synth.dicom_writer`, one grid per series).

Contents of a phantom: head/neck outline (skin, subcutaneous fat), masseter, medial pterygoid,
sternocleidomastoid, paraspinal and tongue-base muscles, mandibular ramus (cortex + marrow), C2
vertebra, spinal canal (CSF + cord), airway, carotid / jugular / retromandibular vessels, two
parotid glands split into a superficial and a deep lobe by a facial-nerve plane ``|x| = x_fn``,
optional submandibular glands, one TARGET lesion (the one the report describes) and optional
distractors: lymph nodes (neck level II or intraparotid) and a second lesion in the other parotid
that the report does not describe.

Intensities follow per-tissue / per-diagnosis tables (:data:`TISSUE_SIGNAL`,
:data:`LESION_APPEARANCE`) for T1 (no fat saturation), T2 (fat-saturated) and T1C (fat-saturated,
post-gadolinium), with partial volume (soft edges whose width is one voxel along the surface
normal), a smooth multiplicative bias field and Rician noise.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from pgsam_node.findings import Findings

ROLES = ("T1", "T2", "T1C")

#: Distractor kinds ``make_phantom`` accepts (plus ``"random"`` and None).
DISTRACTORS = ("lymph_node", "contralateral_lesion")

#: Diagnoses the generator draws, with their sampling weights.
DIAGNOSIS_WEIGHTS = {
    "pleomorphic_adenoma": 0.32,
    "warthin_tumour": 0.20,
    "basal_cell_adenoma": 0.08,
    "mucoepidermoid_carcinoma": 0.10,
    "adenoid_cystic_carcinoma": 0.09,
    "acinic_cell_carcinoma": 0.07,
    "lymphoma": 0.14,
}

#: Normal-tissue signal (relative units, ~0..1) per sequence. T2 and T1C are fat-saturated.
TISSUE_SIGNAL: dict[str, dict[str, float]] = {
    "air": {"T1": 0.0, "T2": 0.0, "T1C": 0.0},
    "fat": {"T1": 0.95, "T2": 0.12, "T1C": 0.13},
    "skin": {"T1": 0.55, "T2": 0.35, "T1C": 0.45},
    "muscle": {"T1": 0.38, "T2": 0.22, "T1C": 0.32},
    "cortex": {"T1": 0.03, "T2": 0.03, "T1C": 0.03},
    "marrow": {"T1": 0.85, "T2": 0.15, "T1C": 0.16},
    "csf": {"T1": 0.12, "T2": 0.95, "T1C": 0.12},
    "cord": {"T1": 0.45, "T2": 0.55, "T1C": 0.42},
    "mucosa": {"T1": 0.40, "T2": 0.60, "T1C": 0.70},
    "artery": {"T1": 0.05, "T2": 0.04, "T1C": 0.95},
    "vein": {"T1": 0.10, "T2": 0.08, "T1C": 0.85},
    "parotid": {"T1": 0.62, "T2": 0.40, "T1C": 0.45},
    "submandibular": {"T1": 0.45, "T2": 0.42, "T1C": 0.55},
    "node": {"T1": 0.37, "T2": 0.62, "T1C": 0.52},
}

#: Signals that change when T2 or T1C is acquired *without* fat saturation (fast spin echo: fat
#: and marrow bright; the fatty parotid gland brighter); the tables above are fat-saturated.
NON_FAT_SAT_SIGNAL: dict[str, dict[str, float]] = {
    "fat": {"T2": 0.80, "T1C": 0.90},
    "marrow": {"T2": 0.70, "T1C": 0.80},
    "parotid": {"T2": 0.62, "T1C": 0.66},
}

#: Per-diagnosis lesion appearance. ``signal`` = mean intensities (same units as TISSUE_SIGNAL);
#: ``het`` = internal heterogeneity (relative amplitude of a smooth texture) per sequence;
#: ``foci`` = kind of internal foci; ``margins``; ``lobulation`` = boundary perturbation
#: amplitude; ``words`` = the signal words a report uses (vs. the parotid gland).
LESION_APPEARANCE: dict[str, dict] = {
    "pleomorphic_adenoma": {
        "signal": {"T1": 0.30, "T2": 0.92, "T1C": 0.72},
        "het": {"T1": 0.05, "T2": 0.10, "T1C": 0.15},
        "foci": None, "margins": "well_defined", "lobulation": 0.08,
        "words": {"T1": "hypo", "T2": "hyper", "enhancement": "progressive"},
    },
    "warthin_tumour": {
        "signal": {"T1": 0.33, "T2": 0.48, "T1C": 0.50},
        "het": {"T1": 0.05, "T2": 0.12, "T1C": 0.08},
        "foci": "warthin", "margins": "well_defined", "lobulation": 0.04,
        "words": {"T1": "hypo", "T2": "iso", "enhancement": "mild"},
    },
    "basal_cell_adenoma": {
        "signal": {"T1": 0.32, "T2": 0.66, "T1C": 0.88},
        "het": {"T1": 0.03, "T2": 0.05, "T1C": 0.05},
        "foci": None, "margins": "well_defined", "lobulation": 0.02,
        "words": {"T1": "hypo", "T2": "hyper", "enhancement": "avid"},
    },
    "mucoepidermoid_carcinoma": {
        "signal": {"T1": 0.34, "T2": 0.52, "T1C": 0.66},
        "het": {"T1": 0.08, "T2": 0.20, "T1C": 0.22},
        "foci": "cystic", "margins": "ill_defined", "lobulation": 0.10,
        "words": {"T1": "hypo", "T2": "iso", "enhancement": "heterogeneous"},
    },
    "adenoid_cystic_carcinoma": {
        "signal": {"T1": 0.35, "T2": 0.58, "T1C": 0.68},
        "het": {"T1": 0.06, "T2": 0.15, "T1C": 0.20},
        "foci": "necrotic", "margins": "ill_defined", "lobulation": 0.10,
        "words": {"T1": "hypo", "T2": "hyper", "enhancement": "heterogeneous"},
    },
    "acinic_cell_carcinoma": {
        "signal": {"T1": 0.36, "T2": 0.55, "T1C": 0.62},
        "het": {"T1": 0.05, "T2": 0.12, "T1C": 0.15},
        "foci": "cystic", "margins": "well_defined", "lobulation": 0.05,
        "words": {"T1": "hypo", "T2": "hyper", "enhancement": "heterogeneous"},
    },
    "lymphoma": {
        "signal": {"T1": 0.40, "T2": 0.46, "T1C": 0.53},
        "het": {"T1": 0.02, "T2": 0.03, "T1C": 0.04},
        "foci": None, "margins": "well_defined", "lobulation": 0.03,
        "words": {"T1": "hypo", "T2": "iso", "enhancement": "mild"},
    },
}

_MALIGNANT = {"mucoepidermoid_carcinoma", "adenoid_cystic_carcinoma", "acinic_cell_carcinoma", "lymphoma"}


# --------------------------------------------------------------------------------------------
# Grid
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Grid:
    """A voxel grid in patient (LPS) space.

    Parameters
    ----------
    shape : (Z, Y, X) voxel counts (slices, rows, columns).
    spacing : (z, y, x) mm — slice spacing, row spacing (between rows), column spacing.
    origin : LPS position (mm) of the centre of voxel (k=0, j=0, i=0) — the first slice's
        ImagePositionPatient.
    direction : 3×3 array; column 0 = LPS direction of increasing column index i (DICOM IOP row
        direction), column 1 = increasing row index j (IOP column direction), column 2 =
        increasing slice index k (along the slice normal when right-handed).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(s) for s in self.origin)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Grid):
            return NotImplemented
        return (self.shape == other.shape and self.spacing == other.spacing and self.origin == other.origin
                and np.array_equal(self.direction, other.direction))

    __hash__ = None  # mutable

    def index_matrix(self) -> np.ndarray:
        """3×3 matrix mapping index (i, j, k) to an LPS offset in mm (columns scaled by spacing)."""
        sz, sy, sx = self.spacing
        return self.direction * np.array([sx, sy, sz])[None, :]

    def affine(self) -> np.ndarray:
        """4×4 matrix: voxel (i column, j row, k slice, 1) → LPS (x, y, z, 1) in mm."""
        a = np.eye(4)
        a[:3, :3] = self.index_matrix()
        a[:3, 3] = self.origin
        return a

    def world_to_index(self, points: np.ndarray) -> np.ndarray:
        """LPS points (N, 3) → continuous indices (N, 3) in (i, j, k) order."""
        inv = np.linalg.inv(self.affine())
        p = np.c_[np.asarray(points, float).reshape(-1, 3), np.ones(len(np.asarray(points).reshape(-1, 3)))]
        return (p @ inv.T)[:, :3]

    def slice_positions(self) -> np.ndarray:
        """(Z, 3) LPS positions of each slice's first voxel (the DICOM ImagePositionPatient)."""
        k = np.arange(self.shape[0])[:, None]
        return np.asarray(self.origin)[None, :] + k * self.index_matrix()[:, 2][None, :]

    def center(self) -> np.ndarray:
        """LPS position of the grid centre (mm)."""
        ijk = (np.array(self.shape[::-1], float) - 1) / 2
        return self.affine()[:3, :3] @ ijk + np.asarray(self.origin)

    @classmethod
    def from_center(
        cls,
        center: Iterable[float],
        shape: tuple[int, int, int],
        spacing: tuple[float, float, float],
        direction: np.ndarray | None = None,
    ) -> Grid:
        """Grid of ``shape``/``spacing`` whose centre lies at ``center`` (LPS mm)."""
        d = np.eye(3) if direction is None else np.asarray(direction, float)
        sz, sy, sx = spacing
        m = d * np.array([sx, sy, sz])[None, :]
        half = (np.array(shape[::-1], float) - 1) / 2
        origin = np.asarray(list(center), float) - m @ half
        return cls(shape, spacing, tuple(origin), d)


#: Standard orientations (columns: i, j, k directions).
AXIAL = np.eye(3)  # rows left-to-right on screen = patient R→L (+x), down = posterior, slices inferior→superior
# A right-handed coronal frame: i = +x, j = -z, k = i × j = (+x) × (-z) = +y (posterior).
CORONAL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix from angles (radians) about x, then y, then z."""
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Ellipsoid:
    """An (optionally lobulated, optionally clipped by a half-space) ellipsoid in LPS mm.

    ``semi`` are the semi-axes along the columns of ``rot``. A semi-axis of ``inf`` makes a
    cylinder. ``lobes`` = list of (amplitude, frequency vector (3,), phase) perturbing the
    boundary radius. ``blur_mm`` widens the edge beyond partial volume (ill-defined margins).
    ``clip`` = (normal (3,), offset): keep only points with normal·p >= offset.
    """

    center: np.ndarray
    semi: np.ndarray
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    lobes: list = field(default_factory=list)
    blur_mm: float = 0.0
    clip: tuple | None = None

    def reach(self) -> float:
        s = np.where(np.isfinite(self.semi), self.semi, 0.0)
        amp = sum(abs(a) for a, _, _ in self.lobes)
        return float(s.max() * (1 + amp) + 2 * self.blur_mm + 1.0)

    def box(self, grid: Grid) -> tuple[slice, slice, slice] | None:
        """Index-space bounding box (k, j, i slices) of the shape within ``grid``; None if outside."""
        r = np.where(np.isfinite(self.semi), self.semi * (1.0 + sum(abs(a) for a, _, _ in self.lobes)), 1e5)
        r = r + 2 * self.blur_mm + 1.0
        # Extent of a rotated box along world axes.
        half = np.abs(self.rot) @ r
        half = np.minimum(half, 1e5)
        corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
        pts = self.center[None, :] + corners * half[None, :]
        idx = grid.world_to_index(pts)
        lo = np.floor(idx.min(0)).astype(np.int64) - 1
        hi = np.ceil(idx.max(0)).astype(np.int64) + 2
        shp = np.array(grid.shape[::-1])
        lo = np.clip(lo, 0, shp)
        hi = np.clip(hi, 0, shp)
        if np.any(hi <= lo):
            return None
        return (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))

    def fraction(self, grid: Grid, box: tuple[slice, slice, slice]) -> np.ndarray:
        """Partial-volume fraction (0..1) of each voxel in ``box`` covered by the shape.

        Returns
        -------
        np.ndarray float32 of the box's shape (z, y, x).
        """
        m_idx = grid.index_matrix()
        # Local coordinates u = R^T (p - c), p = origin + M idx: linear in the indices.
        lin = self.rot.T @ m_idx  # (3 local, 3 index)
        off = self.rot.T @ (np.asarray(grid.origin) - self.center)
        ks = np.arange(box[0].start, box[0].stop, dtype=np.float32)[:, None, None]
        js = np.arange(box[1].start, box[1].stop, dtype=np.float32)[None, :, None]
        is_ = np.arange(box[2].start, box[2].stop, dtype=np.float32)[None, None, :]
        finite = np.isfinite(self.semi)
        v = []  # u / a
        for m in range(3):
            if not finite[m]:
                v.append(None)
                continue
            inv_a = 1.0 / float(self.semi[m])
            # Python floats (weak scalars) keep the arithmetic in float32 (NEP 50).
            u = float(lin[m, 0] * inv_a) * is_ + float(lin[m, 1] * inv_a) * js + (float(lin[m, 2] * inv_a) * ks + float(off[m] * inv_a))
            v.append(u)
        used = [m for m in range(3) if v[m] is not None]
        rho2 = v[used[0]] ** 2
        for m in used[1:]:
            rho2 = rho2 + v[m] ** 2
        rho = np.sqrt(rho2) + np.float32(1e-6)
        if self.lobes:
            # Boundary radius f(direction) = 1 + Σ a cos(w·û + φ) in the normalised local frame.
            pert = np.zeros_like(rho)
            for a, w, ph in self.lobes:
                arg = None
                for m in used:
                    t = v[m] * np.float32(w[m])
                    arg = t if arg is None else arg + t
                pert += np.float32(a) * np.cos(arg / rho + np.float32(ph))
            rho = rho / (1.0 + pert)
        # Gradient of rho (ignoring the lobulation term): world ∇ρ = R (u / a²) / ρ.
        # Index-space gradient = M^T ∇ρ = lin^T (v / a) / ρ.
        g_idx = []
        for c in range(3):
            acc = None
            for m in used:
                t = v[m] * np.float32(lin[m, c] / self.semi[m])
                acc = t if acc is None else acc + t
            g_idx.append(acc)
        gi = np.sqrt(g_idx[0] ** 2 + g_idx[1] ** 2 + g_idx[2] ** 2) / rho + np.float32(1e-6)
        d_idx = (rho - 1.0) / gi  # signed distance in voxel units along the normal
        if self.blur_mm > 0:
            gw2 = None
            for m in used:
                t = (v[m] / np.float32(self.semi[m])) ** 2
                gw2 = t if gw2 is None else gw2 + t
            gw = np.sqrt(gw2) / rho + np.float32(1e-6)  # |∇ρ| in 1/mm
            width_world = gi / gw  # mm per voxel along the normal
            d_world = (rho - 1.0) / gw
            d_idx = d_world / np.sqrt(width_world**2 + np.float32(self.blur_mm) ** 2)
        frac = np.clip(np.float32(0.5) - d_idx, 0.0, 1.0)
        if self.clip is not None:
            normal, offset = self.clip
            g = np.asarray(normal, float) @ m_idx  # index-space gradient of the plane
            gn = float(np.linalg.norm(g)) + 1e-9
            dist = (float(np.asarray(normal) @ np.asarray(grid.origin)) - offset) + float(g[0]) * is_ + float(g[1]) * js + float(g[2]) * ks
            frac = frac * np.clip(np.float32(0.5) + dist / np.float32(gn), 0.0, 1.0)
        return frac.astype(np.float32, copy=False)


@dataclass(eq=False)
class Layer:
    """A shape painted with a tissue's signal (later layers cover earlier ones).

    ``signal`` maps role → mean intensity; ``texture`` = list of (amplitude per role dict,
    wave vector (3,) 1/mm, phase) modulating the signal smoothly; ``within`` = index of an
    earlier layer whose fraction also gates this one (foci inside a lesion).
    """

    name: str
    shape: Ellipsoid
    signal: dict[str, float]
    texture: list = field(default_factory=list)
    within: int | None = None


@dataclass(eq=False)
class Lesion:
    """A parotid lesion: its shape, side, lobe, diagnosis and diameters (mm, largest first)."""

    shape: Ellipsoid
    side: str
    lobe: str
    diagnosis: str
    diameters_mm: list[float]
    margins: str
    layer_index: int = -1


# --------------------------------------------------------------------------------------------
# Phantom
# --------------------------------------------------------------------------------------------


def _side_sign(side: str) -> float:
    # LPS: +x is patient LEFT.
    return 1.0 if side == "left" else -1.0


@dataclass(eq=False)
class Phantom:
    """Analytic head-and-neck phantom at parotid level (LPS mm).

    Attributes
    ----------
    seed : the seed it was made from.
    layers : painted in order onto air.
    target : the lesion the report describes.
    distractor : None, "lymph_node" or "contralateral_lesion".
    distractor_lesions : lesions not described by the report (contralateral lesion).
    nodes : lymph-node layers (indices into ``layers``).
    glands : per side, {"center", "x_fn", "superficial", "deep"} (the two lobe ellipsoids).
    gains, bias, noise : per-role scanner gain, bias-field coefficients, noise sigma (relative).
    """

    seed: int
    layers: list[Layer]
    target: Lesion
    distractor: str | None
    distractor_lesions: list[Lesion]
    nodes: list[int]
    glands: dict[str, dict]
    head_center: np.ndarray
    gains: dict[str, float]
    bias: dict[str, np.ndarray]
    noise: dict[str, float]

    # ---- truth -------------------------------------------------------------------------
    @property
    def findings(self) -> Findings:
        """The target lesion's findings (what a correct report says)."""
        t = self.target
        app = LESION_APPEARANCE[t.diagnosis]
        return Findings(
            present=True,
            side=t.side,
            gland="parotid",
            lobe=t.lobe,
            size_mm=float(t.diameters_mm[0]),
            dimensions_mm=[float(d) for d in t.diameters_mm],
            count=1,
            margins=t.margins,
            signal=dict(app["words"]),
            diagnosis=t.diagnosis,
            hedged=False,
            negated_sides=[],
            language=None,
        )

    def lesion_mask(self, grid: Grid) -> np.ndarray:
        """Binary mask (Z, Y, X) uint8 of the target lesion on ``grid`` (voxel centre inside)."""
        out = np.zeros(grid.shape, np.uint8)
        box = self.target.shape.box(grid)
        if box is not None:
            out[box] = self.target.shape.fraction(grid, box) >= 0.5
        return out

    def gland_mask(self, grid: Grid, side: str, lobe: str | None = None) -> np.ndarray:
        """Binary mask (Z, Y, X) uint8 of a parotid gland (optionally one lobe) on ``grid``."""
        g = self.glands[side]
        out = np.zeros(grid.shape, np.float32)
        for part in ("superficial", "deep"):
            shp = g[part]
            box = shp.box(grid)
            if box is None:
                continue
            out[box] = np.maximum(out[box], shp.fraction(grid, box))
        out = out >= 0.5
        if lobe is not None:
            # Lobe = side of the facial-nerve plane |x| = x_fn (superficial = lateral).
            pts = _voxel_x(grid)
            lateral = np.abs(pts) >= g["x_fn"]
            out &= lateral if lobe == "superficial" else ~lateral
        return out.astype(np.uint8)

    # ---- rendering ---------------------------------------------------------------------
    def render_all(
        self, roles: Iterable[str], grid: Grid, rng: np.random.Generator, noise: bool = True
    ) -> dict[str, np.ndarray]:
        """Render several sequences on one grid, sharing the geometry work.

        Returns
        -------
        dict role → np.ndarray float32 (Z, Y, X), scanner-like intensities (≥ 0).
        """
        roles = list(roles)
        for r in roles:
            if r not in ROLES:
                raise ValueError(f"unknown role {r!r}; expected one of {ROLES}")
        vols = {r: np.zeros(grid.shape, np.float32) for r in roles}
        fracs: dict[int, tuple] = {}
        for li, layer in enumerate(self.layers):
            box = layer.shape.box(grid)
            if box is None:
                continue
            f = layer.shape.fraction(grid, box)
            if layer.within is not None:
                parent = fracs.get(layer.within)
                if parent is None:
                    continue
                pbox, pf = parent
                f = f * _crop(pf, pbox, box)
            fracs[li] = (box, f)
            tex = None
            if layer.texture:
                tex = _texture_fields(layer.texture, grid, box, roles)
            for r in roles:
                val = np.float32(layer.signal[r])
                sub = vols[r][box]
                if tex is not None and tex.get(r) is not None:
                    target = val * (1.0 + tex[r])
                    sub += f * (target - sub)
                else:
                    sub += f * (val - sub)
        out = {}
        for r in roles:
            v = vols[r] * _bias_field(self.bias[r], grid, self.head_center)
            v *= np.float32(self.gains[r])
            if noise:
                sigma = np.float32(self.noise[r] * self.gains[r])
                n1 = rng.standard_normal(grid.shape, dtype=np.float32)
                n2 = rng.standard_normal(grid.shape, dtype=np.float32)
                v = np.sqrt((v + sigma * n1) ** 2 + (sigma * n2) ** 2)
            out[r] = v.astype(np.float32, copy=False)
        return out

    def render(self, role: str, grid: Grid, rng: np.random.Generator, noise: bool = True) -> np.ndarray:
        """Render one sequence ("T1", "T2" or "T1C") on ``grid``.

        Returns
        -------
        np.ndarray float32 (Z, Y, X).
        """
        return self.render_all([role], grid, rng, noise=noise)[role]

    def reference_grid(
        self, rng: np.random.Generator, size: int = 128, n_slices: int = 24
    ) -> Grid:
        """An axial grid covering both parotids: FOV 180–220 mm, 3–5 mm slices, lesion inside."""
        fov = float(rng.uniform(180.0, 220.0))
        d = min(self.target.diameters_mm)
        z_hi = float(np.clip(d / 2.5, 3.0, 5.0))
        dz = float(rng.uniform(3.0, z_hi)) if z_hi > 3.0 else 3.0
        dx = fov / size
        gz = np.mean([self.glands[s]["center"][2] for s in ("left", "right")])
        cz = gz + rng.uniform(-4, 4)
        # Keep the whole target lesion inside the slab with one slice of margin; a slab thinner
        # than the lesion is centred on it.
        half = dz * (n_slices - 1) / 2 - dz
        tz = float(self.target.shape.center[2])
        slack = half - max(self.target.diameters_mm) / 2
        cz = tz if slack <= 0 else float(np.clip(cz, tz - slack, tz + slack))
        center = (self.head_center[0] + rng.uniform(-5, 5), self.head_center[1] + rng.uniform(-8, 8), cz)
        return Grid.from_center(center, (n_slices, size, size), (dz, dx, dx), AXIAL)


def _voxel_x(grid: Grid) -> np.ndarray:
    m = grid.index_matrix()
    k = np.arange(grid.shape[0], dtype=np.float32)[:, None, None]
    j = np.arange(grid.shape[1], dtype=np.float32)[None, :, None]
    i = np.arange(grid.shape[2], dtype=np.float32)[None, None, :]
    return np.float32(grid.origin[0]) + np.float32(m[0, 0]) * i + np.float32(m[0, 1]) * j + np.float32(m[0, 2]) * k


def _crop(arr: np.ndarray, abox: tuple, bbox: tuple) -> np.ndarray:
    """Values of ``arr`` (covering ``abox``) on ``bbox``; zero outside ``abox``."""
    out = np.zeros(tuple(s.stop - s.start for s in bbox), np.float32)
    src, dst = [], []
    for a, b in zip(abox, bbox):
        lo, hi = max(a.start, b.start), min(a.stop, b.stop)
        if hi <= lo:
            return out
        src.append(slice(lo - a.start, hi - a.start))
        dst.append(slice(lo - b.start, hi - b.start))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def _box_world(grid: Grid, box: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = grid.index_matrix()
    o = np.asarray(grid.origin)
    ks = np.arange(box[0].start, box[0].stop, dtype=np.float32)[:, None, None]
    js = np.arange(box[1].start, box[1].stop, dtype=np.float32)[None, :, None]
    is_ = np.arange(box[2].start, box[2].stop, dtype=np.float32)[None, None, :]
    return tuple(np.float32(o[a]) + np.float32(m[a, 0]) * is_ + np.float32(m[a, 1]) * js + np.float32(m[a, 2]) * ks for a in range(3))


def _texture_fields(texture: list, grid: Grid, box: tuple, roles: list[str]) -> dict[str, np.ndarray]:
    """Smooth relative modulation Σ amp_r cos(w·p + φ) on the box, per role."""
    m = grid.index_matrix()
    o = np.asarray(grid.origin)
    ks = np.arange(box[0].start, box[0].stop, dtype=np.float32)[:, None, None]
    js = np.arange(box[1].start, box[1].stop, dtype=np.float32)[None, :, None]
    is_ = np.arange(box[2].start, box[2].stop, dtype=np.float32)[None, None, :]
    out: dict[str, np.ndarray] = {}
    for amps, w, ph in texture:
        wi = np.asarray(w) @ m  # phase per index step
        w0 = float(np.asarray(w) @ o) + ph
        wave = np.cos(np.float32(wi[0]) * is_ + np.float32(wi[1]) * js + (np.float32(wi[2]) * ks + np.float32(w0)))
        for r in roles:
            a = amps.get(r, 0.0)
            if a:
                out[r] = out[r] + np.float32(a) * wave if r in out else np.float32(a) * wave
    return out


def _bias_field(coef: np.ndarray, grid: Grid, center: np.ndarray) -> np.ndarray:
    """Smooth multiplicative field exp(quadratic polynomial in (p - centre)/100 mm), (Z, Y, X)."""
    m = grid.index_matrix()
    if np.allclose(m, np.diag(np.diag(m))):
        # Axis-aligned grid: x, y, z each depend on one index, so the polynomial is a sum of
        # 1-D terms plus one 2-D (x·y) term — a few broadcasts instead of full-volume algebra.
        nz, ny, nx = grid.shape
        x = ((grid.origin[0] + m[0, 0] * np.arange(nx)) - center[0]) / 100
        y = ((grid.origin[1] + m[1, 1] * np.arange(ny)) - center[1]) / 100
        z = ((grid.origin[2] + m[2, 2] * np.arange(nz)) - center[2]) / 100
        c = coef
        ex = (c[0] * x + c[3] * x * x).astype(np.float32)
        ey = (c[1] * y + c[4] * y * y).astype(np.float32)
        ez = (c[2] * z + c[5] * z * z).astype(np.float32)
        exy = np.exp(ey[:, None] + ex[None, :] + (c[6] * np.outer(y, x)).astype(np.float32))
        return np.exp(ez)[:, None, None] * exy[None, :, :]
    x, y, z = _box_world(grid, tuple(slice(0, n) for n in grid.shape))
    x = (x - np.float32(center[0])) / 100
    y = (y - np.float32(center[1])) / 100
    z = (z - np.float32(center[2])) / 100
    c = coef.astype(np.float32)
    e = c[0] * x + c[1] * y + c[2] * z + c[3] * x * x + c[4] * y * y + c[5] * z * z + c[6] * x * y
    return np.exp(e).astype(np.float32)


def _jitter(sig: dict[str, float], rng: np.random.Generator, rel: float = 0.05) -> dict[str, float]:
    return {r: max(0.0, v * (1.0 + rel * float(rng.standard_normal()))) for r, v in sig.items()}


def _lesion_layers(
    lesion: Lesion, rng: np.random.Generator, signal_scale: float = 1.0, jitter: float = 1.0
) -> list[Layer]:
    """The lesion layer plus its internal foci layers (``within`` set by the caller)."""
    app = LESION_APPEARANCE[lesion.diagnosis]
    sig = _jitter({r: v * signal_scale for r, v in app["signal"].items()}, rng, 0.06 * jitter)
    texture = []
    for _ in range(3):
        wdir = rng.standard_normal(3)
        wdir /= np.linalg.norm(wdir)
        wl = rng.uniform(6.0, 14.0)  # wavelength mm
        texture.append(({r: app["het"][r] / 1.7 for r in ROLES}, wdir * (2 * math.pi / wl), rng.uniform(0, 2 * math.pi)))
    layers = [Layer(f"lesion:{lesion.diagnosis}", lesion.shape, sig, texture)]
    foci = app["foci"]
    r_les = min(lesion.diameters_mm) / 2
    if foci and r_les >= 4:
        n = int(rng.integers(1, 4))
        for _ in range(n):
            rr = rng.uniform(0.15, 0.3) * r_les + 1.0
            off = rng.standard_normal(3)
            off = off / np.linalg.norm(off) * rng.uniform(0, max(0.0, r_les - rr - 1.0))
            c = lesion.shape.center + off
            if foci == "warthin":
                # Proteinaceous / haemorrhagic foci: T1 bright; cysts T2 bright; no enhancement.
                fs = {"T1": 0.80, "T2": 0.75, "T1C": 0.25}
            elif foci == "cystic":
                fs = {"T1": 0.25, "T2": 0.90, "T1C": 0.20}
            else:  # necrotic
                fs = {"T1": 0.28, "T2": 0.80, "T1C": 0.18}
            layers.append(Layer("focus", Ellipsoid(c, np.array([rr, rr * 0.8, rr * 0.9]), _random_rotation(rng)), fs))
    return layers


def _gland(side: str, rng: np.random.Generator, yp: float, zp: float) -> dict:
    s = _side_sign(side)
    x_fn = rng.uniform(40.0, 44.0)
    sup = Ellipsoid(
        np.array([s * (x_fn + rng.uniform(7, 10)), yp + rng.uniform(-2, 2), zp + rng.uniform(-2, 2)]),
        np.array([rng.uniform(11, 14), rng.uniform(21, 25), rng.uniform(22, 27)]),
        rotation(0.0, 0.0, s * rng.uniform(-0.25, 0.05)),
    )
    deep = Ellipsoid(
        np.array([s * (x_fn - rng.uniform(7, 10)), yp + rng.uniform(2, 6), zp - rng.uniform(0, 5)]),
        np.array([rng.uniform(9, 12), rng.uniform(11, 15), rng.uniform(14, 19)]),
        rotation(0.0, 0.0, s * rng.uniform(-0.3, 0.0)),
    )
    center = (sup.center * 2 + deep.center) / 3
    return {"side": side, "x_fn": float(x_fn), "superficial": sup, "deep": deep, "center": center}


def _place_lesion(
    gland: dict, lobe: str, diameters: list[float], diagnosis: str, margins: str, rng: np.random.Generator
) -> Lesion:
    s = _side_sign(gland["side"])
    x_fn = gland["x_fn"]
    part = gland[lobe]
    # Centre strictly on the stated side of the facial-nerve plane (margin ≥ 3 mm) and inside the lobe.
    r_min = min(diameters) / 2
    for _ in range(50):
        off = rng.uniform(-0.55, 0.55, 3) * part.semi
        c = part.center + part.rot @ off
        ax = abs(c[0])
        margin = min(3.0 + 0.3 * r_min, 8.0)
        if lobe == "superficial" and ax >= x_fn + margin:
            break
        if lobe == "deep" and ax <= x_fn - margin:
            break
    else:
        c = part.center.copy()
        c[0] = s * (x_fn + 8.0 if lobe == "superficial" else x_fn - 8.0)
    semi = np.array(diameters, float) / 2
    rot = _random_rotation(rng)
    app = LESION_APPEARANCE[diagnosis]
    amp = app["lobulation"]
    lobes = []
    if amp > 0:
        for _ in range(3):
            lobes.append((amp / 3 * rng.uniform(0.5, 1.0), rng.standard_normal(3) * rng.uniform(2.0, 4.0), rng.uniform(0, 2 * math.pi)))
    if margins == "ill_defined":
        for _ in range(2):
            lobes.append((0.03, rng.standard_normal(3) * rng.uniform(6.0, 9.0), rng.uniform(0, 2 * math.pi)))
    blur = float(rng.uniform(1.5, 3.0)) if margins == "ill_defined" else 0.0
    shape = Ellipsoid(c, semi, rot, lobes, blur)
    return Lesion(shape, gland["side"], lobe, diagnosis, [float(d) for d in diameters], margins)


def _sample_diameters(rng: np.random.Generator, lo: float = 8.0, hi: float = 40.0) -> list[float]:
    d1 = float(np.round(np.exp(rng.uniform(math.log(lo), math.log(hi)))))
    d1 = float(np.clip(d1, lo, hi))
    d2 = float(max(lo * 0.75, np.round(d1 * rng.uniform(0.65, 0.95))))
    d3 = float(max(lo * 0.6, np.round(d1 * rng.uniform(0.55, 0.9))))
    return sorted([d1, min(d2, d1), min(d3, d1)], reverse=True)


def make_phantom(seed: int, distractor: str | None = "random", diagnosis: str | None = None,
                 appearance_jitter: float = 1.0, fat_sat_off: float = 0.0) -> Phantom:
    """Build a random phantom, deterministic in ``seed``.

    Parameters
    ----------
    seed : any non-negative int.
    distractor : "random" (~40 % of cases get one: 20 % lymph nodes, ~20 % a contralateral
        lesion, more often for Warthin tumours), None (no distractor), "lymph_node" or
        "contralateral_lesion".
    diagnosis : force the target diagnosis (a key of :data:`LESION_APPEARANCE`); random if None.
    appearance_jitter : scales the random spread of every tissue's and lesion's signal around the
        tables (1 = the tables' own 4 % / 6 %). The random stream is the same whatever the value,
        so ``appearance_jitter=3`` is the same anatomy with tissue contrasts three times as
        spread: domain randomisation for training, or a shifted test set.
    fat_sat_off : probability that T2, and independently T1C, is acquired without fat saturation
        (:data:`NON_FAT_SAT_SIGNAL`); drawn from its own stream, so 0 (the default) leaves every
        phantom as before and 1 gives the same anatomy with both sequences non-fat-saturated.
    """
    if not appearance_jitter >= 0:
        raise ValueError(f"appearance_jitter must be >= 0, not {appearance_jitter!r}")
    if not 0.0 <= fat_sat_off <= 1.0:
        raise ValueError(f"fat_sat_off must be within [0, 1], not {fat_sat_off!r}")
    rng = np.random.default_rng([int(seed), 0x5A11])
    u = rng.uniform()  # drawn whatever the caller chose, so the rest of the stream stays aligned
    names = list(DIAGNOSIS_WEIGHTS)
    p = np.array(list(DIAGNOSIS_WEIGHTS.values()))
    drawn = names[int(rng.choice(len(names), p=p / p.sum()))]
    diagnosis = diagnosis or drawn
    if diagnosis not in LESION_APPEARANCE:
        raise ValueError(f"unknown diagnosis {diagnosis!r}; expected one of {tuple(LESION_APPEARANCE)}")
    if distractor == "random":
        # ~40 % of cases: lymph nodes 20 %, a contralateral lesion ~20 % (Warthin tumours are
        # often bilateral, so they get one more often).
        p_contra = 0.35 if diagnosis == "warthin_tumour" else 0.18
        distractor = "contralateral_lesion" if u < p_contra else ("lymph_node" if u < p_contra + 0.2 else None)
    if distractor not in (None, *DISTRACTORS):
        raise ValueError(f"unknown distractor {distractor!r}; expected one of {DISTRACTORS}, None or 'random'")

    tissue = {k: _jitter(v, rng, 0.04 * appearance_jitter) for k, v in TISSUE_SIGNAL.items()}
    tissue["air"] = dict(TISSUE_SIGNAL["air"])
    if fat_sat_off > 0:
        fs_rng = np.random.default_rng([int(seed), 0xFA75])
        for role in ("T2", "T1C"):
            if fs_rng.uniform() < fat_sat_off:
                for name, sig in NON_FAT_SAT_SIGNAL.items():
                    tissue[name][role] = float(sig[role] * (1 + fs_rng.normal(0, 0.04 * appearance_jitter)))
    hc = np.array([rng.uniform(-3, 3), rng.uniform(0, 8), rng.uniform(-5, 5)])
    yp = hc[1] + rng.uniform(-2, 4)
    zp = hc[2] + rng.uniform(-3, 3)
    head_semi = np.array([rng.uniform(70, 80), rng.uniform(86, 96), rng.uniform(150, 170)])
    head_rot = rotation(0.0, 0.0, rng.uniform(-0.05, 0.05))
    layers: list[Layer] = []

    def add(name, shape, sig, texture=None, within=None) -> int:
        layers.append(Layer(name, shape, sig, texture or [], within))
        return len(layers) - 1

    # The head/neck is a tall ellipsoid centred above the parotids, so the neck narrows caudally.
    head_c = hc + [0, 0, 30]
    add("skin", Ellipsoid(head_c, head_semi, head_rot), tissue["skin"])
    add("fat", Ellipsoid(head_c, head_semi - np.array([2.5, 2.5, 2.5]), head_rot), tissue["fat"])
    # Midline structures.
    add("tongue", Ellipsoid(hc + [0, -40, -20], np.array([32.0, 34.0, 45.0]) * rng.uniform(0.9, 1.1, 3)), tissue["muscle"])
    add("paraspinal", Ellipsoid(hc + [0, 58, -10], np.array([42.0, 24.0, 140.0]) * rng.uniform(0.9, 1.1, 3)), tissue["muscle"])
    add("prevertebral", Ellipsoid(hc + [0, 18, 0], np.array([20.0, 7.0, 120.0])), tissue["muscle"])
    add("mucosa", Ellipsoid(hc + [0, 2, 0], np.array([17.0, 11.0, 90.0])), tissue["mucosa"])
    add("airway", Ellipsoid(hc + [0, 2, 0], np.array([rng.uniform(9, 13), rng.uniform(5, 8), 100.0])), tissue["air"])
    vb = hc + [0, 32, 0]
    add("vertebra_cortex", Ellipsoid(vb, np.array([13.0, 11.0, 300.0])), tissue["cortex"])
    add("vertebra_marrow", Ellipsoid(vb, np.array([11.0, 9.0, 300.0])), tissue["marrow"])
    add("canal", Ellipsoid(hc + [0, 50, 0], np.array([9.0, 7.5, 300.0])), tissue["csf"])
    add("cord", Ellipsoid(hc + [0, 50, 0], np.array([5.0, 4.0, 300.0])), tissue["cord"])

    glands = {s: _gland(s, rng, yp, zp) for s in ("left", "right")}
    for side in ("left", "right"):
        s = _side_sign(side)
        g = glands[side]
        xf = g["x_fn"]
        yg = g["superficial"].center[1]
        add(f"scm_{side}", Ellipsoid(np.array([s * (xf + 6), yg + 30, zp - 40]), np.array([9.0, 14.0, 90.0]), rotation(s * 0.15, 0, s * 0.5)), tissue["muscle"])
        add(f"masseter_{side}", Ellipsoid(np.array([s * (xf + 11), yg - 27, zp - 5]), np.array([7.0, 15.0, 38.0]), rotation(0, 0, s * -0.15)), tissue["muscle"])
        add(f"pterygoid_{side}", Ellipsoid(np.array([s * (xf - 12), yg - 24, zp - 5]), np.array([6.0, 13.0, 30.0]), rotation(0, 0, s * 0.35)), tissue["muscle"])
        ramus = np.array([s * (xf + 1.5), yg - 24, zp - 5])
        add(f"ramus_cortex_{side}", Ellipsoid(ramus, np.array([4.0, 11.0, 38.0]), rotation(0, 0, s * -0.1)), tissue["cortex"])
        add(f"ramus_marrow_{side}", Ellipsoid(ramus, np.array([2.2, 8.5, 35.0]), rotation(0, 0, s * -0.1)), tissue["marrow"])
        # Faint parenchymal texture (fat / ducts): three smooth waves of random direction.
        gl_tex = [({"T1": 0.02, "T2": 0.025, "T1C": 0.025}, rng.standard_normal(3) * rng.uniform(0.4, 0.9), rng.uniform(0, 6.3))
                  for _ in range(3)]
        add(f"parotid_deep_{side}", g["deep"], tissue["parotid"], gl_tex)
        add(f"parotid_superficial_{side}", g["superficial"], tissue["parotid"], gl_tex)
        # Retromandibular vein (in the gland, at the facial-nerve plane), ICA and IJV.
        add(f"rmv_{side}", Ellipsoid(np.array([s * (xf + 0.5), yg + 2, zp]), np.array([2.5, 2.5, 60.0])), tissue["vein"])
        add(f"ica_{side}", Ellipsoid(np.array([s * 24, yg + 14, zp]), np.array([3.5, 3.5, 300.0])), tissue["artery"])
        add(f"ijv_{side}", Ellipsoid(np.array([s * 30, yg + 21, zp]), np.array([5.5, 4.5, 300.0])), tissue["vein"])
        if rng.uniform() < 0.7:
            add(f"submandibular_{side}", Ellipsoid(np.array([s * 30, yg - 30, zp - 45]), np.array([11.0, 15.0, 11.0])), tissue["submandibular"])

    # Target lesion.
    side = "left" if rng.uniform() < 0.5 else "right"
    lobe = "superficial" if rng.uniform() < 0.72 else "deep"
    diam = _sample_diameters(rng, 8.0, 40.0 if lobe == "superficial" else 32.0)
    app = LESION_APPEARANCE[diagnosis]
    margins = app["margins"]
    if diagnosis in ("acinic_cell_carcinoma", "mucoepidermoid_carcinoma") and rng.uniform() < 0.35:
        margins = "ill_defined" if margins == "well_defined" else "well_defined"
    target = _place_lesion(glands[side], lobe, diam, diagnosis, margins, rng)

    distractor_lesions: list[Lesion] = []
    other = "right" if side == "left" else "left"
    if distractor == "contralateral_lesion":
        # Same diagnosis (Warthin is often bilateral) or another benign look-alike.
        p_same = 0.85 if diagnosis == "warthin_tumour" else 0.6
        d2 = diagnosis if rng.uniform() < p_same else str(rng.choice(["pleomorphic_adenoma", "warthin_tumour", "basal_cell_adenoma"]))
        lobe2 = "superficial" if rng.uniform() < 0.75 else "deep"
        dd = _sample_diameters(rng, 8.0, 30.0)
        distractor_lesions.append(_place_lesion(glands[other], lobe2, dd, d2, LESION_APPEARANCE[d2]["margins"], rng))

    # Lymph-node candidates (placed later, avoiding the lesions).
    node_specs = []
    if distractor == "lymph_node":
        n = int(rng.integers(1, 4))
        for _ in range(n):
            nside = side if rng.uniform() < 0.5 else other
            g = glands[nside]
            s = _side_sign(nside)
            if rng.uniform() < 0.45:
                sup = g["superficial"]
                c = sup.center + np.array([s * rng.uniform(0, 6), rng.uniform(-12, 12), rng.uniform(-16, 10)])
            else:
                c = np.array([s * rng.uniform(24, 36), sup_y(g) + rng.uniform(8, 22), zp + rng.uniform(-28, -8)])
            long_ax = rng.uniform(6, 14)
            node_specs.append((c, np.array([long_ax / 2, long_ax / 2 * rng.uniform(0.5, 0.75), long_ax / 2 * rng.uniform(0.55, 0.8)])))

    def far_enough(c, r) -> bool:
        for les in [target, *distractor_lesions]:
            if np.linalg.norm(c - les.shape.center) < r + max(les.diameters_mm) / 2 + 3.0:
                return False
        return True

    # Paint nodes before lesions so a lesion always covers whatever it overlaps.
    nodes = []
    for c, semi in node_specs:
        if not far_enough(c, semi.max()):
            continue
        rot = _random_rotation(rng)
        nodes.append(add("node", Ellipsoid(c, semi, rot), tissue["node"]))
        add("node_hilum", Ellipsoid(c, semi * np.array([0.3, 0.25, 0.3]), rot), tissue["fat"], within=nodes[-1])
    if distractor == "lymph_node" and not nodes:
        # Guarantee at least one node: level II, on the side opposite the target.
        s = _side_sign(other)
        c = np.array([s * 30.0, glands[other]["superficial"].center[1] + 16, zp - 14])
        nodes.append(add("node", Ellipsoid(c, np.array([5.0, 3.5, 4.0]), _random_rotation(rng)), tissue["node"]))

    # Small normal level II nodes (< 7 mm, fatty hilum) are present in most necks; they are not
    # distractors of the "lymph_node" kind and no report describes them as lesions.
    for _ in range(int(rng.integers(0, 3))):
        nside = "left" if rng.uniform() < 0.5 else "right"
        s = _side_sign(nside)
        c = np.array([s * rng.uniform(22, 34), sup_y(glands[nside]) + rng.uniform(10, 24), zp + rng.uniform(-35, -15)])
        semi = np.array([rng.uniform(2.0, 3.5), rng.uniform(1.5, 2.5), rng.uniform(2.0, 3.0)])
        if far_enough(c, semi.max()):
            rot = _random_rotation(rng)
            li = add("node_small", Ellipsoid(c, semi, rot), tissue["node"])
            add("node_hilum", Ellipsoid(c, semi * 0.35, rot), tissue["fat"], within=li)

    for les in distractor_lesions:
        lls = _lesion_layers(les, rng, jitter=appearance_jitter)
        les.layer_index = add(lls[0].name, lls[0].shape, lls[0].signal, lls[0].texture)
        for f in lls[1:]:
            add(f.name, f.shape, f.signal, within=les.layer_index)
    lls = _lesion_layers(target, rng, jitter=appearance_jitter)
    target.layer_index = add(lls[0].name, lls[0].shape, lls[0].signal, lls[0].texture)
    for f in lls[1:]:
        add(f.name, f.shape, f.signal, within=target.layer_index)

    gains = {r: float(rng.uniform(400, 1600)) for r in ROLES}
    bias = {r: rng.normal(0.0, [0.12, 0.12, 0.08, 0.15, 0.15, 0.08, 0.10]) for r in ROLES}
    noise = {r: float(rng.uniform(0.012, 0.03)) for r in ROLES}
    return Phantom(
        seed=int(seed), layers=layers, target=target, distractor=distractor,
        distractor_lesions=distractor_lesions, nodes=nodes, glands=glands, head_center=hc,
        gains=gains, bias=bias, noise=noise,
    )


def sup_y(g: dict) -> float:
    """Antero-posterior centre (mm) of a gland's superficial lobe."""
    return float(g["superficial"].center[1])


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------

_DX_EN = {
    "pleomorphic_adenoma": ["pleomorphic adenoma", "pleomorphic adenoma (benign mixed tumour)", "benign mixed tumor (pleomorphic adenoma)"],
    "warthin_tumour": ["Warthin tumour", "Warthin's tumor", "Warthin tumor", "papillary cystadenoma lymphomatosum (Warthin tumour)"],
    "basal_cell_adenoma": ["basal cell adenoma"],
    "mucoepidermoid_carcinoma": ["mucoepidermoid carcinoma"],
    "adenoid_cystic_carcinoma": ["adenoid cystic carcinoma"],
    "acinic_cell_carcinoma": ["acinic cell carcinoma"],
    "lymphoma": ["lymphoma", "parotid lymphoma", "lymphoma (MALT type)"],
}
_DX_ZH = {
    "pleomorphic_adenoma": ["多形性腺瘤", "多形性腺瘤（混合瘤）"],
    "warthin_tumour": ["Warthin瘤", "沃辛瘤", "腺淋巴瘤（Warthin瘤）"],
    "basal_cell_adenoma": ["基底细胞腺瘤"],
    "mucoepidermoid_carcinoma": ["黏液表皮样癌", "粘液表皮样癌"],
    "adenoid_cystic_carcinoma": ["腺样囊性癌"],
    "acinic_cell_carcinoma": ["腺泡细胞癌"],
    "lymphoma": ["淋巴瘤"],
}
_SIG_EN = {"hypo": ["hypointense", "low signal"], "iso": ["isointense", "intermediate signal", "intermediate"],
           "hyper": ["hyperintense", "high signal", "bright"]}
_ENH_EN = {"progressive": ["progressive enhancement", "gradual, progressive enhancement on delayed images"],
           "mild": ["mild enhancement", "mild homogeneous enhancement"],
           "avid": ["avid homogeneous enhancement", "marked enhancement"],
           "heterogeneous": ["heterogeneous enhancement", "heterogeneous enhancement with non-enhancing areas"]}
_SIG_ZH = {"hypo": "低信号", "iso": "等信号", "hyper": "高信号"}
_ENH_ZH = {"progressive": ["渐进性强化", "延迟期渐进性强化"], "mild": ["轻度强化", "轻度均匀强化"],
           "avid": ["明显均匀强化", "明显强化"], "heterogeneous": ["不均匀强化", "不均匀强化，内见无强化区"]}


def _fmt_num(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".") if abs(v - round(v)) > 1e-9 else f"{int(round(v))}"


def _size_phrase(dims: list[float], rng: np.random.Generator, language: str) -> str:
    """'2.3 x 1.8 cm', '23×18 mm', '2.3厘米', … (largest first)."""
    n = int(rng.choice([1, 2, 2, 3]))
    d = dims[:n]
    unit_cm = rng.uniform() < 0.55
    vals = [_fmt_num(x / 10) if unit_cm else _fmt_num(x) for x in d]
    if language == "zh":
        sep = str(rng.choice(["×", " × ", "x", "*"]))
        unit = str(rng.choice(["cm", "厘米"])) if unit_cm else str(rng.choice(["mm", "毫米"]))
        return sep.join(vals) + unit
    sep = str(rng.choice([" x ", " × ", "×", " by "]))
    unit = "cm" if unit_cm else "mm"
    space = " " if rng.uniform() < 0.7 else ""
    return sep.join(vals) + space + unit


def _en_report(f: Findings, rng: np.random.Generator, meta: dict, extra: dict) -> str:
    side, lobe = f.side, f.lobe
    size = _size_phrase(f.dimensions_mm, rng, "en")
    dx = str(rng.choice(_DX_EN[f.diagnosis]))
    margin = {"well_defined": str(rng.choice(["well-circumscribed", "well-defined", "sharply marginated"])),
              "ill_defined": str(rng.choice(["ill-defined", "poorly marginated", "infiltrative"]))}[f.margins]
    t1 = str(rng.choice(_SIG_EN[f.signal["T1"]]))
    t2 = str(rng.choice(_SIG_EN[f.signal["T2"]]))
    if f.signal["T2"] == "hyper" and f.diagnosis == "pleomorphic_adenoma":
        t2 = str(rng.choice(["markedly hyperintense", "very bright", "markedly T2 hyperintense"]))
    enh = str(rng.choice(_ENH_EN[f.signal["enhancement"]]))
    lobe_txt = {"superficial": str(rng.choice(["superficial lobe", "superficial portion"])),
                "deep": str(rng.choice(["deep lobe", "deep portion"]))}[lobe]
    kind = str(rng.choice(["mass", "lesion", "nodule" if f.size_mm < 20 else "mass", "solid lesion"]))
    v = int(rng.integers(0, 3))
    if v == 0:
        body = (f"A {margin} {kind} is seen in the {lobe_txt} of the {side} parotid gland, measuring {size}. "
                f"It is {t1} on T1-weighted images and {t2} on T2-weighted images, with {enh} after gadolinium.")
    elif v == 1:
        body = (f"{side.capitalize()} parotid gland, {lobe_txt}: {margin} {kind} measuring approximately {size}, "
                f"{t2} on T2 and {t1} on T1, showing {enh}.")
    else:
        body = (f"There is a {size} {margin} {kind} arising from the {lobe_txt} of the {side} parotid. "
                f"Signal: T1 {t1}, T2 {t2}. Post-contrast: {enh}.")
    if lobe == "deep" and rng.uniform() < 0.4:
        body += " It extends towards the parapharyngeal space through the stylomandibular tunnel."
    if lobe == "superficial" and rng.uniform() < 0.3:
        body += " It lies lateral to the retromandibular vein."
    sentences = [body]
    other = "right" if side == "left" else "left"
    if extra["other_normal"]:
        sentences.append(str(rng.choice([f"The {other} parotid gland is unremarkable.",
                                          f"Normal {other} parotid gland.",
                                          f"The contralateral ({other}) parotid is normal."])))
        meta["negated_sides"] = [other]
    if extra["nodes"]:
        sentences.append(str(rng.choice(["A few subcentimetre level II lymph nodes with preserved fatty hila, likely reactive.",
                                          "Small cervical lymph nodes of benign morphology.",
                                          "Small lymph nodes are noted, not pathologically enlarged."])))
    elif rng.uniform() < 0.5:
        sentences.append(str(rng.choice(["No cervical lymphadenopathy.", "No pathologically enlarged lymph nodes."])))
    if len(sentences) > 1 and rng.uniform() < 0.3:
        first, rest = sentences[0], sentences[1:]
        rng.shuffle(rest)
        sentences = [first, *rest]
    hedge = rng.uniform() < 0.4
    meta["hedged"] = bool(hedge)
    if hedge:
        imp = str(rng.choice([f"Findings are suggestive of {dx}.", f"Likely {dx}.",
                              f"Suspicious for {dx}.", f"Appearance favours {dx}."]))
        if rng.uniform() < 0.5:
            imp = f"{side.capitalize()} parotid {lobe} lobe {kind}. " + imp
    else:
        imp = str(rng.choice([f"{side.capitalize()} parotid {lobe} lobe {dx}.", f"{dx[0].upper() + dx[1:]} of the {side} parotid gland ({lobe} lobe).",
                              f"{side.capitalize()} parotid {kind} in keeping with {dx}."]))
    header = str(rng.choice(["MRI NECK WITH AND WITHOUT CONTRAST", "MR PAROTID GLANDS", "MRI parotid (T1, T2 FS, T1 FS post-Gd)"]))
    tech = str(rng.choice(["", "Technique: axial T1, axial T2 fat-saturated and post-gadolinium T1 fat-saturated images. "]))
    return f"{header}\n{tech}Findings: " + " ".join(sentences) + f"\nImpression: {imp}"


def _zh_report(f: Findings, rng: np.random.Generator, meta: dict, extra: dict) -> str:
    side = {"left": str(rng.choice(["左侧", "左"])), "right": str(rng.choice(["右侧", "右"]))}[f.side]
    lobe = {"superficial": "浅叶", "deep": "深叶"}[f.lobe]
    size = _size_phrase(f.dimensions_mm, rng, "zh")
    dx = str(rng.choice(_DX_ZH[f.diagnosis]))
    margin = {"well_defined": str(rng.choice(["边界清楚", "边界清晰", "边缘光整"])),
              "ill_defined": str(rng.choice(["边界不清", "边界模糊", "边缘不规则"]))}[f.margins]
    t1 = _SIG_ZH[f.signal["T1"]]
    t2 = _SIG_ZH[f.signal["T2"]]
    if f.diagnosis == "pleomorphic_adenoma":
        t2 = "明显高信号"
    enh = str(rng.choice(_ENH_ZH[f.signal["enhancement"]]))
    kind = str(rng.choice(["肿块", "结节" if f.size_mm < 20 else "肿块", "占位", "异常信号影"]))
    v = int(rng.integers(0, 2))
    if v == 0:
        body = f"{side}腮腺{lobe}见一{kind}，大小约{size}，{margin}，T1WI呈{t1}，T2WI呈{t2}，增强扫描呈{enh}。"
    else:
        body = f"{side}腮腺{lobe}可见{kind}影，T2WI呈{t2}，T1WI呈{t1}，{margin}，最大截面约{size}，增强后{enh}。"
    sentences = [body]
    other = "右侧" if f.side == "left" else "左侧"
    if extra["other_normal"]:
        sentences.append(str(rng.choice([f"{other}腮腺未见异常。", f"{other}腮腺形态、信号未见明显异常。", "对侧腮腺未见异常。"])))
        meta["negated_sides"] = ["right" if f.side == "left" else "left"]
    if extra["nodes"]:
        sentences.append(str(rng.choice(["颈部见数个小淋巴结，考虑反应性增生。", "双侧颈部Ⅱ区见小淋巴结，形态规则。"])))
    elif rng.uniform() < 0.5:
        sentences.append("颈部未见肿大淋巴结。")
    hedge = rng.uniform() < 0.5
    meta["hedged"] = bool(hedge)
    if hedge:
        imp = str(rng.choice([f"{side}腮腺{lobe}占位，考虑{dx}。", f"{side}腮腺{lobe}{kind}，{dx}可能性大。", f"{side}腮腺{lobe}病变，倾向{dx}。"]))
    else:
        imp = str(rng.choice([f"{side}腮腺{lobe}{dx}。", f"{side}腮腺{lobe}{kind}：{dx}。"]))
    header = str(rng.choice(["腮腺MRI平扫+增强", "颌面部MR增强扫描", "MRI 腮腺"]))
    return f"{header}\n影像所见：" + "".join(sentences) + f"\n诊断意见：{imp}"


def compose_report(
    findings: Findings, rng: np.random.Generator, language: str = "en", *,
    other_gland_normal: bool | None = None, mention_nodes: bool = False,
) -> tuple[str, Findings]:
    """Write a radiologist-style report for ``findings`` and return it with the findings it states.

    The returned findings copy carries what the text adds (``hedged``, ``negated_sides``,
    ``language``). ``other_gland_normal``: whether the report may call the other gland normal
    (must be False when the other gland has a lesion); None = random.
    """
    if language not in ("en", "zh"):
        raise ValueError(f"language must be 'en' or 'zh', not {language!r}")
    if findings.side not in ("left", "right") or findings.diagnosis not in _DX_EN:
        raise ValueError("findings need side left/right and a known diagnosis")
    if other_gland_normal is None:
        other_gland_normal = bool(rng.uniform() < 0.5)
    meta: dict = {"hedged": False, "negated_sides": []}
    extra = {"other_normal": bool(other_gland_normal and rng.uniform() < 0.7), "nodes": mention_nodes}
    text = (_en_report if language == "en" else _zh_report)(findings, rng, meta, extra)
    out = copy.deepcopy(findings)
    out.hedged = meta["hedged"]
    out.negated_sides = meta["negated_sides"]
    out.language = language
    return text, out


def report_text(findings: Findings, rng: np.random.Generator, language: str = "en") -> str:
    """A radiologist-style report (English or Chinese) describing ``findings``.

    Parameters
    ----------
    findings : the target lesion (side, lobe, dimensions_mm, diagnosis, margins, signal).
    rng : randomness for the wording.
    language : "en" or "zh".
    """
    return compose_report(findings, rng, language, other_gland_normal=False)[0]


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class SyntheticCase:
    """One training case: three sequences on one axial grid, the target mask and its report.

    ``volumes[role]`` and ``mask`` are (Z, Y, X); ``findings`` includes what the report states
    (hedged, negated sides, language).
    """

    seed: int
    volumes: dict[str, np.ndarray]
    mask: np.ndarray
    findings: Findings
    report: str
    language: str
    distractor: str | None
    grid: Grid


def case_report(phantom: Phantom, seed: int, language: str | None = None) -> tuple[str, Findings, str]:
    """The report of a phantom's case: (text, stated findings, language); deterministic in seed."""
    rng = np.random.default_rng([int(seed), 0xE7])
    lang = language or ("en" if rng.uniform() < 0.55 else "zh")
    text, f = compose_report(
        phantom.findings, rng, lang,
        # Never call the other gland normal when it holds the (undescribed) distractor lesion.
        other_gland_normal=False if phantom.distractor == "contralateral_lesion" else None,
        mention_nodes=bool(phantom.nodes) and rng.uniform() < 0.7,
    )
    return text, f, lang


def generate_case(
    seed: int, size: int = 128, n_slices: int = 24, language: str | None = None, distractor="random",
    diagnosis: str | None = None, appearance_jitter: float = 1.0, fat_sat_off: float = 0.0,
) -> SyntheticCase:
    """Fast training case: T1, T2, T1C on one common axial grid, deterministic in ``seed``.

    Returns
    -------
    SyntheticCase with volumes float32 (n_slices, size, size) and mask uint8 of the same shape.
    """
    ph = make_phantom(seed, distractor=distractor, diagnosis=diagnosis, appearance_jitter=appearance_jitter,
                      fat_sat_off=fat_sat_off)
    rng = np.random.default_rng([int(seed), 0x6E1D])
    grid = ph.reference_grid(rng, size=size, n_slices=n_slices)
    vols = ph.render_all(ROLES, grid, rng)
    mask = ph.lesion_mask(grid)
    text, f, lang = case_report(ph, seed, language)
    return SyntheticCase(seed=int(seed), volumes=vols, mask=mask, findings=f, report=text, language=lang,
                         distractor=ph.distractor, grid=grid)


def generate_cases(seeds: Iterable[int], **kwargs) -> Iterator[SyntheticCase]:
    """Yield :func:`generate_case` for each seed (keyword arguments are passed through)."""
    for s in seeds:
        yield generate_case(int(s), **kwargs)
