"""The fourth, independent parotid MR phantom generator (held out of ALL training).

No model of the node is trained on these studies: they exist only to measure how the models
transfer to a generator they never saw. The module shares no anatomy, signal values or lesion
shapes with the other generators (``phantom``, ``second``, ``third``); it borrows only the
:class:`~pgsam_node.synth.second.ForeignStudy` record that the benchmark reads.

What it models
--------------
* Anatomy: an axial head-and-neck slab at the parotid level in a head frame (x to the patient's
  left, y posterior, z superior, mm), built from rounded cylinders / ellipsoids and a
  superelliptic skin outline with an angular Fourier wobble: skin, subcutaneous fat, deep soft
  tissue, both parotids (superficial lobe, deep lobe through the stylomandibular tunnel,
  inferior tail; fat fraction varies with "age"), mandibular rami (dark cortex, fatty marrow),
  masseter, medial pterygoid, sternocleidomastoid, digastric, parapharyngeal fat, tonsils,
  oropharyngeal airway, C1/C2 with marrow, spinal canal (CSF) and cord, paraspinal muscles,
  retromandibular vein, external/internal carotid and jugular vein. Head size, left-right
  asymmetry of a few mm, and head yaw/roll/pitch are random.
* Signal: tissues carry (proton density, T1, T2, gadolinium concentration, fat fraction,
  flow); images come from spin-echo or spoiled-gradient-echo signal equations with the series'
  own TR/TE/flip at 1.5 T or 3 T; gadolinium shortens T1 (r1 = 4.2 /s/mM); flowing blood is
  a void before contrast and bright after; fat saturation leaves a residual that worsens
  laterally. Lesions: pleomorphic adenoma (lobulated, very T2 bright, capsule), Warthin tumour
  (often in the tail, cystic spaces), basal cell adenoma, oncocytoma, carcinoma (ill-defined,
  T2 intermediate, necrosis), lymphoma, nodal metastasis (necrotic centre), lipoma (fat, not
  enhancing) and cyst (thin enhancing wall). Distractors: a normal level-II / intraparotid node,
  a small unchanged nodule in the other gland.
* Acquisition: vendor header styles (Siemens, GE, Philips, Canon), SE or 3D GRE post-contrast
  T1, fat saturation on T2 and/or T1C, own grid per series (matrix, FOV, slice thickness,
  gaps, T2 possibly tilted), partial-Fourier/rectangular acquisition matrices zero-filled in
  k-space (Gibbs ringing and blur), vendor k-space filter, complex noise (Rician magnitude),
  coil bias, 12- or 16-bit storage with or without RescaleSlope.
* Report: free English text (findings with side, gland, lobe, size in mm or cm with one to three
  dimensions, T2 signal and enhancement; impression with a likely diagnosis).

Use :func:`write_foreign_study`; :func:`plan_study` gives the (cheap) plan of a seed, report
and stated size included, without rendering.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pgsam_node.synth.second import ForeignStudy

__all__ = ["KINDS", "StudyPlan", "plan_study", "write_foreign_study"]

_SALT = 0x4F5A4

# ---- tissues ---------------------------------------------------------------------------------
# (proton density, T1 ms at 1.5 T, T2 ms, gadolinium mM in the extracellular space, fat fraction, flow)
# flow: 0 static, 1 artery, 2 vein.  Fat itself is handled apart (see _FAT).
_FAT = (1.0, 270.0, 140.0)  # PD, T1, effective FSE T2 of fat
_T = {
    "skin": (0.80, 720.0, 45.0, 0.30, 0.05, 0),
    "deep": (0.74, 930.0, 38.0, 0.14, 0.22, 0),
    "muscle": (0.76, 960.0, 34.0, 0.12, 0.03, 0),
    "gland": (0.86, 840.0, 62.0, 0.34, 0.0, 0),  # fat fraction set per patient
    "cortex": (0.03, 1000.0, 6.0, 0.0, 0.0, 0),
    "marrow": (0.62, 720.0, 50.0, 0.10, 0.50, 0),
    "csf": (1.00, 3900.0, 1500.0, 0.0, 0.0, 0),
    "cord": (0.76, 800.0, 82.0, 0.0, 0.0, 0),
    "air": (0.015, 1000.0, 20.0, 0.0, 0.0, 0),
    "tonsil": (0.86, 1060.0, 96.0, 0.45, 0.0, 0),
    "artery": (0.90, 1350.0, 220.0, 2.2, 0.0, 1),
    "vein": (0.90, 1350.0, 200.0, 2.8, 0.0, 2),
    "node": (0.86, 1000.0, 88.0, 0.35, 0.0, 0),
    "fatpad": (0.80, 900.0, 40.0, 0.05, 0.92, 0),
}
# lesion kinds: tissue, weight, median diameter mm, edge width mm, lobulation, texture, lobe probabilities
KINDS: dict[str, dict] = {
    "pleomorphic_adenoma": dict(t=(0.95, 1250.0, 260.0, 0.45, 0.0, 0), w=0.29, d=24, edge=0.5, lob=0.22, tex=0.12,
                                lobe=(0.68, 0.22, 0.10)),
    "warthin_tumour": dict(t=(0.85, 950.0, 78.0, 0.38, 0.0, 0), w=0.21, d=22, edge=0.7, lob=0.08, tex=0.20,
                           lobe=(0.35, 0.08, 0.57)),
    "basal_cell_adenoma": dict(t=(0.90, 1100.0, 140.0, 0.85, 0.0, 0), w=0.07, d=15, edge=0.5, lob=0.04, tex=0.06,
                               lobe=(0.75, 0.10, 0.15)),
    "oncocytoma": dict(t=(0.85, 900.0, 66.0, 0.75, 0.0, 0), w=0.04, d=20, edge=0.6, lob=0.05, tex=0.08,
                       lobe=(0.7, 0.15, 0.15)),
    "carcinoma": dict(t=(0.85, 1050.0, 82.0, 0.50, 0.0, 0), w=0.12, d=28, edge=2.6, lob=0.30, tex=0.16,
                      lobe=(0.55, 0.33, 0.12)),
    "lymphoma": dict(t=(0.90, 1120.0, 96.0, 0.30, 0.0, 0), w=0.06, d=26, edge=0.9, lob=0.10, tex=0.04,
                     lobe=(0.6, 0.15, 0.25)),
    "metastasis": dict(t=(0.85, 1050.0, 100.0, 0.55, 0.0, 0), w=0.07, d=18, edge=1.2, lob=0.12, tex=0.10,
                       lobe=(0.7, 0.1, 0.2)),
    "lipoma": dict(t=(0.80, 900.0, 40.0, 0.0, 0.95, 0), w=0.05, d=25, edge=0.5, lob=0.06, tex=0.03,
                   lobe=(0.8, 0.1, 0.1)),
    "cyst": dict(t=(1.00, 3000.0, 1500.0, 0.0, 0.0, 0), w=0.09, d=15, edge=0.4, lob=0.02, tex=0.0,
                 lobe=(0.6, 0.1, 0.3)),
}
_CYSTIC = (1.0, 1700.0, 900.0, 0.0, 0.0, 0)  # proteinaceous fluid in Warthin / BCA spaces
_NECROSIS = (0.95, 2200.0, 600.0, 0.0, 0.0, 0)
_CAPSULE = (0.55, 900.0, 25.0, 0.25, 0.0, 0)

_DIAGNOSIS = {
    "pleomorphic_adenoma": ["pleomorphic adenoma", "a benign mixed tumour (pleomorphic adenoma)"],
    "warthin_tumour": ["Warthin tumour", "Warthin's tumor"],
    "basal_cell_adenoma": ["basal cell adenoma"],
    "oncocytoma": ["oncocytoma"],
    "carcinoma": ["mucoepidermoid carcinoma", "a primary salivary carcinoma"],
    "lymphoma": ["lymphoma", "parotid lymphoma"],
    "metastasis": ["an intraparotid nodal metastasis", "metastatic squamous cell carcinoma to an intraparotid node"],
    "lipoma": ["lipoma"],
    "cyst": ["a benign cyst", "a simple (lymphoepithelial) cyst"],
}
_T2_WORDS = {
    "pleomorphic_adenoma": "markedly hyperintense on T2-weighted images",
    "warthin_tumour": "heterogeneous with predominantly intermediate T2 signal and small cystic spaces",
    "basal_cell_adenoma": "moderately T2 hyperintense",
    "oncocytoma": "isointense to the gland on T2",
    "carcinoma": "intermediate to low T2 signal",
    "lymphoma": "homogeneous intermediate T2 signal",
    "metastasis": "T2 hyperintense centrally, suggesting necrosis",
    "lipoma": "of fat signal on all sequences",
    "cyst": "of fluid signal, very bright on T2",
}
_ENH_WORDS = {
    "pleomorphic_adenoma": "moderate heterogeneous enhancement",
    "warthin_tumour": "patchy enhancement of the solid parts",
    "basal_cell_adenoma": "avid homogeneous enhancement",
    "oncocytoma": "avid enhancement",
    "carcinoma": "heterogeneous enhancement and irregular, ill-defined margins",
    "lymphoma": "mild homogeneous enhancement",
    "metastasis": "rim enhancement",
    "lipoma": "no enhancement",
    "cyst": "only a thin enhancing wall",
}


@dataclass
class Lesion:
    centre: np.ndarray  # head frame, mm
    axes: np.ndarray  # semi-axes, mm
    rot: np.ndarray  # 3x3, columns = the axes' directions in the head frame
    bumps: np.ndarray  # (n, 3) unit directions
    heights: np.ndarray  # (n,)
    ripple: float  # irregular high-frequency margin (carcinoma)
    tissue: tuple
    edge: float
    tex: float
    kind: str

    def radius(self) -> float:
        return float(self.axes.max() * (1.0 + self.heights.sum() + self.ripple) + 2 * self.edge + 2)

    def level(self, hx, hy, hz):
        """Normalised level (< 1 inside) of the lesion at head-frame points."""
        d = np.stack([hx - self.centre[0], hy - self.centre[1], hz - self.centre[2]], axis=-1)
        q = (d @ self.rot) / self.axes
        rho = np.sqrt((q * q).sum(-1)) + 1e-6
        u = q / rho[..., None]
        g = 1.0 + (np.maximum(u @ self.bumps.T, 0.0) ** 4 * self.heights).sum(-1)
        if self.ripple:
            g = g + self.ripple * np.cos(7.0 * u[..., 0] + 3.0) * np.cos(6.0 * u[..., 1] - 1.0) * np.cos(5.0 * u[..., 2])
        return rho / g


@dataclass
class Tube:
    """Rounded cylinder / ellipsoid along z, elliptic in-plane, drifting with z."""

    cx: float
    cy: float
    ax: float
    ay: float
    z0: float
    z1: float
    tissue: tuple
    angle: float = 0.0
    drift: tuple = (0.0, 0.0)
    power: float = 4.0
    edge: float = 0.7
    tex: float = 0.0

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounding box (head frame) of the structure, with room for its soft edge."""
        hz = (self.z1 - self.z0) / 2
        c, s = abs(np.cos(self.angle)), abs(np.sin(self.angle))
        ex = np.hypot(self.ax * c, self.ay * s) + abs(self.drift[0]) * hz + 2 * self.edge
        ey = np.hypot(self.ax * s, self.ay * c) + abs(self.drift[1]) * hz + 2 * self.edge
        return (np.array([self.cx - ex, self.cy - ey, self.z0 - 2 * self.edge]),
                np.array([self.cx + ex, self.cy + ey, self.z1 + 2 * self.edge]))

    def centre(self) -> np.ndarray:
        return np.array([self.cx, self.cy, (self.z0 + self.z1) / 2])

    def level(self, hx, hy, hz):
        zm, hzl = (self.z0 + self.z1) / 2, (self.z1 - self.z0) / 2
        dz = hz - zm
        dx, dy = hx - self.cx - self.drift[0] * dz, hy - self.cy - self.drift[1] * dz
        c, s = np.cos(self.angle), np.sin(self.angle)
        u, v = (c * dx + s * dy) / self.ax, (-s * dx + c * dy) / self.ay
        r2 = u * u + v * v
        w2 = (dz / hzl) ** 2
        if self.power == 2:
            return np.sqrt(r2 + w2)
        return np.sqrt(np.sqrt(r2 * r2 + w2 * w2))  # power 4: a rounded cylinder


@dataclass
class Head:
    width: float
    depth: float
    y0: float
    power: float
    wobble: np.ndarray  # (k, 2) amplitude, phase for harmonics 2..
    fat: float
    structures: list = field(default_factory=list)  # (Tube-like, tissue or callable) in paint order
    gland_ff: float = 0.4
    side: str = "left"
    lesion: Lesion | None = None
    extra_lesion: Lesion | None = None

    def rho(self, hx, hy, hz):
        w = self.width * (1.0 + 0.0022 * hz)
        d = self.depth * (1.0 + 0.0012 * hz)
        phi = np.arctan2(hy - self.y0, hx)
        g = 1.0 + sum(a * np.cos((i + 2) * phi + p) for i, (a, p) in enumerate(self.wobble))
        p = self.power
        return (np.abs(hx / w) ** p + np.abs((hy - self.y0) / d) ** p) ** (1.0 / p) / g


@dataclass
class StudyPlan:
    seed: int
    kind: str
    side: str
    lobe: str
    dims_mm: list[float]  # stated dimensions, largest first
    report: str
    fat_sat: dict[str, bool]
    vendor: str
    field_t: float
    order: list[str]  # roles of s01, s02, s03
    head: Head
    series: dict[str, dict]
    rotation: np.ndarray
    offset: np.ndarray


# ---- anatomy ---------------------------------------------------------------------------------
def _rot(yaw: float, roll: float, pitch: float) -> np.ndarray:
    cz, sz = np.cos(yaw), np.sin(yaw)
    cy, sy = np.cos(roll), np.sin(roll)
    cx, sx = np.cos(pitch), np.sin(pitch)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


def _head(rng: np.random.Generator) -> Head:
    w, d = float(rng.uniform(64, 80)), float(rng.uniform(82, 98))
    wob = np.stack([rng.normal(0, 0.009, 4), rng.uniform(0, 2 * np.pi, 4)], axis=1)
    h = Head(width=w, depth=d, y0=float(rng.uniform(4, 12)), power=float(rng.uniform(2.2, 2.8)), wobble=wob,
             fat=float(rng.uniform(4, 10)), gland_ff=float(rng.uniform(0.25, 0.65)))
    sy = d / 90.0
    st = h.structures
    gland = _T["gland"][:4] + (h.gland_ff, 0)
    st += [Tube(0, -30 * sy, 26, 22 * sy, -60, 50, _T["muscle"]),  # tongue / soft palate
           Tube(0, 70 * sy, 44, 20 * sy, -60, 50, _T["muscle"])]  # paraspinal block
    st += [Tube(0, 70 * sy, 2.2, 16 * sy, -60, 50, _T["fatpad"], edge=0.5),  # nuchal septum fat
           Tube(0, 30 * sy, 13, 11, -60, 50, _T["cortex"]), Tube(0, 30 * sy, 11.5, 9.5, -60, 50, _T["marrow"], tex=0.1),
           Tube(0, 52 * sy, 11, 9, -60, 50, _T["csf"]), Tube(0, 52 * sy, 6, 5, -60, 50, _T["cord"]),
           Tube(0, -2 * sy, 9, 6, -60, 50, _T["air"], edge=0.6)]
    for s in (-1.0, 1.0):
        a = rng.normal(0, 1.5, 6)  # asymmetry, mm
        lat = w - h.fat - 3.0  # the parotid's lateral edge, just deep to the subcutaneous fat
        st += [Tube(s * (lat - 12 + a[0]), -14 * sy, 6.5, 20 * sy, -40, 40, _T["muscle"], angle=s * 0.12),  # masseter
               Tube(s * 36, -6 * sy, 6, 16, -40, 30, _T["muscle"], angle=s * 0.5),  # medial pterygoid
               Tube(s * (lat - 20 + a[1]), -12 * sy, 4.2, 17 * sy, -35, 40, _T["cortex"], angle=s * 0.1, power=2),
               Tube(s * (lat - 20 + a[1]), -12 * sy, 2.4, 15 * sy, -33, 38, _T["marrow"], angle=s * 0.1, power=2),
               Tube(s * (lat - 12), 42 * sy, 8, 16, -60, 50, _T["muscle"], angle=-s * 0.5),  # SCM
               Tube(s * 22, 36 * sy, 8, 7, -8, 8, _T["marrow"], power=2),  # C1 lateral mass
               Tube(s * 9, 19 * sy, 6, 4, -60, 50, _T["muscle"]),  # longus
               Tube(s * 25, 4 * sy, 5, 9, -40, 40, _T["fatpad"]),  # parapharyngeal fat
               Tube(s * 12, -2 * sy, 4.5, 7, -35, 15, _T["tonsil"], tex=0.08)]
        # the parotid: superficial lobe, deep lobe, tail, as one structure (smooth union)
        sup = Tube(s * (lat - 11 + a[2]), 14 * sy + a[3], 11.0, 20 * sy, -28, 32, gland, power=2)
        deep = Tube(s * (38 + a[4]), 12 * sy, 8.5, 9, -14, 26, gland, power=2)
        tail = Tube(s * (lat - 10), 25 * sy, 10, 11, -48, -12, gland, power=2)
        st.append(_Union([sup, deep, tail], gland, tex=0.06, parts={"superficial": sup, "deep": deep, "tail": tail},
                         side="left" if s > 0 else "right"))
        st += [Tube(s * (lat - 20), 32 * sy, 4, 8, -30, 10, _T["muscle"], angle=-s * 0.4),  # posterior digastric
               Tube(s * (lat - 17 + a[2]), 12 * sy, 2.8, 3.2, -60, 50, _T["vein"], drift=(0.02 * s, 0.03)),  # RMV
               Tube(s * (lat - 23), 9 * sy, 2.2, 2.2, -60, 50, _T["artery"], drift=(-0.02 * s, 0.0)),  # ECA
               Tube(s * 27, 20 * sy, 3.0, 3.0, -60, 50, _T["artery"], drift=(0.03 * s, 0.0)),  # ICA
               Tube(s * 33 + a[5], 30 * sy, 5.5 + 0.8 * (s < 0), 4.5, -60, 50, _T["vein"])]  # IJV
    return h


@dataclass
class _Union:
    members: list
    tissue: tuple
    tex: float = 0.0
    parts: dict = field(default_factory=dict)
    side: str = ""
    edge: float = 0.7

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        boxes = [m.box() for m in self.members]
        return np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)

    def centre(self) -> np.ndarray:
        return np.mean([m.centre() for m in self.members], axis=0)

    def level(self, hx, hy, hz):
        out = None
        for m in self.members:
            lv = m.level(hx, hy, hz)
            out = lv if out is None else np.minimum(out, lv)
        return out

    def scale(self) -> float:
        return min(min(m.ax, m.ay) for m in self.members)


def _lesion(rng: np.random.Generator, head: Head, kind: str, lobe: str, side: str, diameter: float) -> Lesion:
    spec = KINDS[kind]
    gl = next(s for s in head.structures if isinstance(s, _Union) and s.side == side)
    part = gl.parts[lobe]
    sgn = 1.0 if side == "left" else -1.0
    c = part.centre().copy()
    c += [sgn * rng.uniform(-3, 3), rng.uniform(-6, 6), 0.0]
    c[2] = {"superficial": rng.uniform(-10, 18), "deep": rng.uniform(-4, 16), "tail": rng.uniform(-36, -22)}[lobe]
    axes = diameter / 2 * np.array([1.0, rng.uniform(0.72, 0.95), rng.uniform(0.75, 1.1)])
    q, _ = np.linalg.qr(np.eye(3) + rng.normal(0, 0.25, (3, 3)))
    nb = int(rng.integers(3, 7))
    bumps = rng.normal(size=(nb, 3))
    bumps /= np.linalg.norm(bumps, axis=1, keepdims=True)
    heights = spec["lob"] * rng.uniform(0.4, 1.0, nb)
    les = Lesion(c, axes, q, bumps, heights, 0.06 if kind == "carcinoma" else 0.0, spec["t"], spec["edge"], spec["tex"], kind)
    # keep it in the head and off the midline
    r = les.radius() - 2 * les.edge - 2
    lat_room = head.width - 4.0 - abs(c[0])
    if r > lat_room:
        c[0] -= sgn * (r - lat_room)
    if abs(c[0]) - r < 14:
        f = max(0.5, (abs(c[0]) - 14) / r)
        les.axes = les.axes * f
    return les


def _extent(les: Lesion) -> np.ndarray:
    """Extent of the lesion along head x, y, z (mm) from a dense sampling of its surface."""
    i = np.arange(4000) + 0.5  # a Fibonacci sphere of directions
    zz, phi = 1 - 2 * i / 4000, np.pi * (1 + 5**0.5) * i
    u = np.stack([np.sqrt(1 - zz * zz) * np.cos(phi), np.sqrt(1 - zz * zz) * np.sin(phi), zz], axis=1)
    # bisect the radius along each direction (in the ellipsoid's normalised frame)
    lo, hi = np.zeros(len(u)), np.full(len(u), 3.0)
    pts = lambda t: les.centre + (u * t[:, None] * les.axes) @ les.rot.T  # noqa: E731
    for _ in range(18):
        mid = (lo + hi) / 2
        p = pts(mid)
        inside = les.level(p[:, 0], p[:, 1], p[:, 2]) < 1.0
        lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid)
    p = pts(lo)
    return p.max(0) - p.min(0)


# ---- signal ------------------------------------------------------------------------------------
def _signal(t: tuple, seq: dict, fat: bool = False) -> float:
    """Magnitude signal of a tissue's non-fat part (or of fat, ``fat=True``) for one sequence."""
    pd, t1, t2 = (_FAT if fat else t[:3])
    conc, flow = (0.0, 0) if fat else (t[3], t[5])
    if seq["field"] > 2:
        t1 *= 1.05 if fat or t1 > 2500 else 1.3
        t2 *= 0.92
    if seq["post"]:
        t1 = 1.0 / (1.0 / t1 + 0.0042 * conc)
        t2 = 1.0 / (1.0 / t2 + 0.005 * conc)
    tr, te = seq["tr"], seq["te"]
    e1 = np.exp(-tr / t1)
    if seq["gre"]:
        a = np.deg2rad(seq["flip"])
        s = pd * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1) * np.exp(-te / (0.6 * t2)) * 3.0
    else:
        s = pd * (1 - e1) * np.exp(-te / t2)
    if flow:
        s *= (0.55 if flow == 1 else 1.0) if seq["post"] else (0.05 if flow == 1 else 0.12)
    return float(s)


def _texture(rng_seed: int, hx, hy, hz, n: int = 4):
    r = np.random.default_rng([rng_seed, _SALT, 77])
    out = 0.0
    for _ in range(n):
        k = r.normal(size=3)
        k *= 2 * np.pi / (np.linalg.norm(k) * r.uniform(4.0, 12.0))
        out = out + np.cos(k[0] * hx + k[1] * hy + k[2] * hz + r.uniform(0, 2 * np.pi))
    return out / np.sqrt(n / 2)


# ---- grids and rendering -------------------------------------------------------------------
def _coords(geo: dict, rows: int, cols: int, rot: np.ndarray, off: np.ndarray):
    """Head-frame coordinate arrays (nz, rows, cols) of a series grid sampled at rows x cols."""
    fov, nz = geo["fov"], geo["nz"]
    dr, dc = fov / rows, fov / cols
    rd, cd, nd = geo["R"][:, 0], geo["R"][:, 1], geo["R"][:, 2]
    k = (np.arange(nz) - (nz - 1) / 2) * geo["step"]
    r = (np.arange(rows) - rows / 2) * dr
    c = (np.arange(cols) - cols / 2) * dc
    base = geo["centre"] - off
    out = []
    for ax in range(3):  # head = rot.T @ (P - off)
        a = rot[:, ax]
        out.append((float(a @ base) + k[:, None, None] * float(a @ nd) + r[None, :, None] * float(a @ cd)
                    + c[None, None, :] * float(a @ rd)).astype(np.float32))
    return out


def _block(coords, lo: np.ndarray, hi: np.ndarray):
    """Index slices of the voxels inside a head-frame box (conservatively), or None when none are.

    The head-frame coordinates are affine in the three indices along orthogonal directions, so a
    point's (fractional) index along each axis is its projection on that axis' step."""
    p0 = np.array([c[0, 0, 0] for c in coords], float)
    corners = np.array([[(lo, hi)[i][0], (lo, hi)[j][1], (lo, hi)[k][2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    out = []
    for ax in range(3):
        n = coords[0].shape[ax]
        idx = [0, 0, 0]
        idx[ax] = min(1, n - 1)
        step = np.array([c[tuple(idx)] for c in coords], float) - p0
        ds2 = float(step @ step) or 1.0
        t = (corners - p0) @ step / ds2
        a, b = max(int(np.floor(t.min())), 0), min(int(np.ceil(t.max())) + 1, n)
        if a >= b:
            return None
        out.append(slice(a, b))
    return tuple(out)


def _paint(img, fat, coords, struct, seq, tex_seed, scale=None):
    bl = _block(coords, *struct.box())
    if bl is None:
        return
    hx, hy, hz = (c[bl] for c in coords)
    lv = struct.level(hx, hy, hz)
    sc = scale if scale is not None else (struct.scale() if hasattr(struct, "scale") else min(struct.ax, struct.ay))
    f = np.clip(0.5 + (1.0 - lv) * sc / struct.edge, 0.0, 1.0)
    if not f.any():
        return
    t = struct.tissue
    s = _signal(t, seq) * (1.0 - t[4])
    if struct.tex:
        s = s * (1.0 + struct.tex * _texture(tex_seed, hx, hy, hz))
    img[bl] = img[bl] * (1 - f) + f * s
    fat[bl] = fat[bl] * (1 - f) + f * t[4]


def _paint_lesion(img, fat, coords, les: Lesion, seq, seed: int):
    bl = _block(coords, les.centre - les.radius(), les.centre + les.radius())
    if bl is None:
        return
    hx, hy, hz = (c[bl] for c in coords)
    lv = les.level(hx, hy, hz)
    sc = float(les.axes.min())
    f = np.clip(0.5 + (1.0 - lv) * sc / les.edge, 0.0, 1.0)
    if not f.any():
        return
    t = les.tissue
    s = np.full(lv.shape, _signal(t, seq) * (1 - t[4]), np.float32)
    tex = _texture(seed + 11, hx, hy, hz, n=10) if les.tex or les.kind in ("warthin_tumour", "basal_cell_adenoma") else 0.0
    if les.tex:
        s *= 1.0 + les.tex * tex
    k = les.kind
    if k in ("warthin_tumour", "basal_cell_adenoma"):  # cystic spaces
        w = np.clip((tex - (0.7 if k == "warthin_tumour" else 1.3)) * 3, 0, 1) * (lv < 0.85)
        s = s * (1 - w) + w * _signal(_CYSTIC, seq)
    if k in ("metastasis", "carcinoma"):  # necrotic centre
        w = np.clip(0.5 + (0.5 - lv) * sc / 1.5, 0, 1) * (1.0 if k == "metastasis" else 0.6)
        s = s * (1 - w) + w * _signal(_NECROSIS, seq)
    if k in ("pleomorphic_adenoma", "cyst", "lipoma", "metastasis"):  # capsule / wall / enhancing rim
        w = np.exp(-(((lv - 0.97) * sc / (0.9 if k == "metastasis" else 0.6)) ** 2))
        wall = _CAPSULE if k != "metastasis" else (0.85, 1000.0, 70.0, 0.9, 0.0, 0)
        s = s * (1 - w) + w * _signal(wall, seq)
    img[bl] = img[bl] * (1 - f) + f * s
    fat[bl] = fat[bl] * (1 - f) + f * t[4]


def _render(plan: StudyPlan, role: str, rng: np.random.Generator) -> np.ndarray:
    """Float magnitude image (nz, n, n) of one series on its display grid."""
    geo = plan.series[role]
    head = plan.head
    seq = geo["seq"]
    nra, nca = geo["acq"]
    coords = _coords(geo, nra, nca, plan.rotation, plan.offset)
    hx, hy, hz = coords
    rho = head.rho(hx, hy, hz)
    reff = (head.width + head.depth) / 2
    img = np.zeros(hx.shape, np.float32)
    fat = np.zeros(hx.shape, np.float32)
    for lim, tis, e in ((1.0, _T["skin"], 0.7), (1 - 2.0 / reff, None, 0.7), (1 - (2.0 + head.fat) / reff, _T["deep"], 1.2)):
        f = np.clip(0.5 + (lim - rho) * reff / e, 0, 1)
        if tis is None:  # subcutaneous fat
            img *= 1 - f
            fat = fat * (1 - f) + f * 0.97
        else:
            img = img * (1 - f) + f * _signal(tis, seq) * (1 - tis[4])
            fat = fat * (1 - f) + f * tis[4]
    for i, st in enumerate(head.structures):
        _paint(img, fat, coords, st, seq, plan.seed * 31 + i)
    if head.extra_lesion is not None:
        _paint_lesion(img, fat, coords, head.extra_lesion, seq, plan.seed + 5)
    _paint_lesion(img, fat, coords, head.lesion, seq, plan.seed)
    s_fat = _signal((), seq, fat=True)
    if geo["fs"]:
        resid = geo["fs_resid"] + 0.25 * np.clip(np.abs(hx) / head.width, 0, 1) ** 6
        img += fat * s_fat * resid
    else:
        img += fat * s_fat
    # coil bias: brighter near the neck coil's posterolateral elements
    b = geo["bias"]
    img *= np.exp(b[0] * hx / head.width + b[1] * (hy - head.y0) / head.depth + b[2] * hz / 60.0
                  + b[3] * (hx / head.width) ** 2)
    # k-space: zero-fill to the display matrix, vendor filter, complex noise -> Rician magnitude
    n = geo["n"]
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img, axes=(1, 2)), norm="ortho"), axes=(1, 2))
    sigma = geo["noise"] * float(np.percentile(img[:, ::3, ::3], 90))
    k.real += sigma * rng.standard_normal(k.shape, dtype=np.float32)
    k.imag += sigma * rng.standard_normal(k.shape, dtype=np.float32)
    fr = np.abs(np.fft.fftshift(np.fft.fftfreq(nra)))[:, None] * 2
    fc = np.abs(np.fft.fftshift(np.fft.fftfreq(nca)))[None, :] * 2
    k *= (1.0 / (1.0 + np.exp((np.hypot(fr, fc) - geo["filt"]) / 0.05))).astype(np.float32)
    big = np.zeros((img.shape[0], n, n), np.complex64)
    r0, c0 = n // 2 - nra // 2, n // 2 - nca // 2
    big[:, r0:r0 + nra, c0:c0 + nca] = k
    out = np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(big, axes=(1, 2)), norm="ortho"), axes=(1, 2)))
    return (out * np.sqrt(n * n / (nra * nca))).astype(np.float32)


# ---- the plan: vendor, sequences, grids, lesion, report ------------------------------------------
_VENDORS = {
    "SIEMENS": dict(model=("Aera", "Skyra", "Vida"), T1=("t1_tse_tra", "*tse2d1_3"), T2=("t2_tse_tra", "t2_tse_fs_tra", "*tse2d1_15"),
                    T1C=("t1_tse_tra_post", "t1_tse_fs_tra_post", "*tse2d1_3"), GRE=("t1_vibe_tra_post", "t1_vibe_fs_tra_post", "*fl3d1"),
                    fs_opt="FS", variant=("SK", "SP", "OSP")),
    "GE MEDICAL SYSTEMS": dict(model=("Signa HDxt", "DISCOVERY MR750w", "SIGNA Premier"), T1=("Ax T1 FSE", "fse-xl"),
                               T2=("Ax T2 FRFSE", "Ax T2 FRFSE FS", "frfse-xl"), T1C=("Ax T1 FSE +C", "Ax T1 FSE FS +C", "fse-xl"),
                               GRE=("Ax LAVA +C", "Ax LAVA FS +C", "efgre3d"), fs_opt="FS", variant=("SK", "OSP")),
    "Philips": dict(model=("Ingenia", "Achieva dStream"), T1=("T1W_TSE_TRA", "TSE"), T2=("T2W_TSE_TRA", "T2W_TSE_SPIR_TRA", "TSE"),
                    T1C=("T1W_TSE_TRA_GD", "T1W_TSE_SPIR_TRA_GD", "TSE"), GRE=("T1W_THRIVE_TRA_GD", "T1W_THRIVE_SPAIR_TRA_GD", "FFE"),
                    fs_opt="FS", variant=("SK",)),
    "CANON_MEC": dict(model=("Vantage Orian", "Vantage Galan 3T"), T1=("T1W FSE AX", "FSE2D"), T2=("T2W FSE AX", "T2W FSE AX FatSat", "FSE2D"),
                      T1C=("T1W FSE AX C+", "T1W FSE AX FatSat C+", "FSE2D"), GRE=("T1W Fast3D AX C+", "T1W Fast3D AX FatSat C+", "FE3D"),
                      fs_opt="FAT_SAT", variant=("SK",)),
}
_AGENTS = ("Gadovist", "GADOBUTROL", "Dotarem", "MultiHance", "Clariscan")


def _grid(rng: np.random.Generator, centre: np.ndarray, tilt: float = 0.0, three_d: bool = False) -> dict:
    n = int(rng.choice([256, 288, 320]))
    nca = int(min(n, rng.choice([192, 224, 256])))
    nra = int(2 * round(nca * rng.uniform(0.72, 1.0) / 2))
    thick = float(rng.uniform(3.0, 5.0))
    gap = 0.0 if three_d else float(rng.choice([0.0, 0.3, 0.5, 1.0]))
    step = thick + gap
    nz = int(np.clip(np.ceil(rng.uniform(75, 100) / step), 16, 30))
    c, s = np.cos(tilt), np.sin(tilt)
    rmat = np.array([[1, 0, 0], [0, c, -s], [0, s, c]], float)  # columns: row dir, column dir, normal
    return dict(n=n, acq=(nra, nca), fov=float(rng.uniform(200, 240)), thick=thick, step=step, nz=nz, R=rmat,
                centre=centre + np.array([rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(-4, 4)]),
                bias=rng.normal(0, [0.15, 0.2, 0.1, 0.15]), noise=float(rng.uniform(0.025, 0.06)),
                filt=float(rng.uniform(0.7, 1.1)), fs_resid=float(rng.uniform(0.04, 0.12)))


def _fmt_dims(rng: np.random.Generator, dims: list[float]) -> str:
    nd = int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))
    d = dims[:nd]
    if rng.uniform() < 0.5:
        return " x ".join(f"{v / 10:.1f}" for v in d) + " cm"
    return " x ".join(f"{v:.0f}" for v in d) + " mm"


def _report(rng: np.random.Generator, plan: StudyPlan, node: str | None, contra: float | None) -> str:
    side, lobe, kind = plan.side, plan.lobe, plan.kind
    other = "right" if side == "left" else "left"
    where = {"superficial": [f"the superficial lobe of the {side} parotid gland", f"the {side} parotid gland, superficial lobe"],
             "deep": [f"the deep lobe of the {side} parotid gland", f"the {side} parotid deep lobe"],
             "tail": [f"the tail of the {side} parotid gland", f"the {side} parotid tail"]}[lobe]
    loc = str(rng.choice(where))
    size = _fmt_dims(rng, plan.dims_mm)
    noun = str(rng.choice(["mass", "lesion", "nodule"] if plan.dims_mm[0] < 20 else ["mass", "lesion"]))
    margin = "ill-defined" if kind == "carcinoma" else str(rng.choice(["well-circumscribed", "well-defined", "sharply marginated"]))
    if kind in ("pleomorphic_adenoma", "carcinoma") and rng.uniform() < 0.6:
        margin += " lobulated" if kind == "pleomorphic_adenoma" else ", infiltrative"
    first = str(rng.choice([
        f"There is a {margin} {noun} in {loc} measuring {size}.",
        f"A {size} {margin} {noun} is present in {loc}.",
        f"In {loc} there is a {margin} {noun}, {size} in size.",
    ]))
    lines = ["CLINICAL INFORMATION: " + str(rng.choice(["Palpable preauricular lump.", "Painless swelling at the angle of the jaw.",
                                                         "Parotid swelling, query tumour."])),
             "TECHNIQUE: Axial T1, T2 and post-gadolinium T1-weighted MRI of the parotid region.",
             "", "FINDINGS:", first,
             f"It is {_T2_WORDS[kind]} and shows {_ENH_WORDS[kind]}."]
    if lobe == "deep" and plan.dims_mm[0] > 25:
        lines.append("It widens the stylomandibular tunnel and displaces the parapharyngeal fat medially.")
    if contra is not None:
        lines.append(f"A separate {contra:.0f} mm nodule in the contralateral gland is unchanged compared with the prior study.")
    else:
        lines.append(str(rng.choice([f"The {other} parotid gland is unremarkable.", f"The {other} parotid gland is normal in appearance.",
                                     "The contralateral parotid gland is unremarkable."])))
    if node == "level2":
        lines.append("Small level II lymph nodes with preserved fatty hila, not enlarged by size criteria.")
    elif node == "intraparotid":
        lines.append("A subcentimetre intraparotid lymph node with normal morphology is noted.")
    lines.append("The airway is patent. No destructive bone change.")
    dx = str(rng.choice(_DIAGNOSIS[kind]))
    hedge = str(rng.choice(["Findings are most consistent with", "Appearances favour", "Likely", "Features suggestive of"]))
    lines += ["", "IMPRESSION:", f"{side.capitalize()} parotid {lobe} {'lobe ' if lobe != 'tail' else ''}{noun}. {hedge} {dx}."]
    if kind == "carcinoma":
        lines.append("Tissue sampling is recommended.")
    return "\n".join(lines)


def plan_study(seed: int) -> StudyPlan:
    """Everything about a seed's study except the pixels (cheap): anatomy, lesion, grids, report."""
    rng = np.random.default_rng([seed, _SALT])
    head = _head(rng)
    names = list(KINDS)
    kind = str(rng.choice(names, p=np.array([KINDS[k]["w"] for k in names]) / sum(KINDS[k]["w"] for k in names)))
    side = "left" if rng.uniform() < 0.5 else "right"
    lobe = str(rng.choice(["superficial", "deep", "tail"], p=KINDS[kind]["lobe"]))
    diam = float(np.clip(KINDS[kind]["d"] * np.exp(rng.normal(0, 0.35)), 8, 48))
    if lobe == "deep":
        diam = min(diam, 36.0)
    head.side = side
    head.lesion = _lesion(rng, head, kind, lobe, side, diam)
    ext = _extent(head.lesion)
    dims = [float(d) for d in sorted((round(float(v)) for v in ext), reverse=True)[:3]]
    contra = None
    if rng.uniform() < (0.25 if kind == "warthin_tumour" else 0.05):
        other = "right" if side == "left" else "left"
        head.extra_lesion = _lesion(rng, head, "warthin_tumour", "tail", other, float(rng.uniform(8, 12)))
        contra = float(round(_extent(head.extra_lesion)[:2].max()))
    node = None
    u = rng.uniform()
    if u < 0.35:
        node = "level2" if u < 0.22 else "intraparotid"
        s = float(rng.choice([-1.0, 1.0]))
        lat = head.width - head.fat - 3.0
        if node == "level2":
            c = (s * 36, 40 * head.depth / 90, -40 + rng.uniform(-6, 6))
            ax = (rng.uniform(3, 4.5), rng.uniform(4, 6), rng.uniform(6, 9))
        else:
            c = (s * (lat - 6), 18 * head.depth / 90, rng.uniform(-5, 15))
            ax = (rng.uniform(2, 3), rng.uniform(2.5, 3.5), rng.uniform(3, 4))
        head.structures.append(Tube(c[0], c[1], ax[0], ax[1], c[2] - ax[2], c[2] + ax[2], _T["node"], power=2, edge=0.6))
        head.structures.append(Tube(c[0], c[1], ax[0] * 0.35, ax[1] * 0.35, c[2] - ax[2] * 0.4, c[2] + ax[2] * 0.4,
                                    _T["fatpad"], power=2, edge=0.5))
    rot = _rot(*np.deg2rad(rng.uniform(-1, 1, 3) * np.array([6.0, 4.0, 5.0])))
    off = np.array([rng.uniform(-6, 6), rng.uniform(-15, 5), rng.uniform(-120, -20)])
    vendor = str(rng.choice(list(_VENDORS)))
    field_t = float(rng.choice([1.5, 3.0]))
    fs_t2, fs_c = bool(rng.uniform() < 0.55), bool(rng.uniform() < 0.5)
    gre_c = bool(rng.uniform() < 0.35)
    # slab centre: near the lesion level (head frame) -> LPS
    zc = float(head.lesion.centre[2] + rng.uniform(-10, 10))
    centre = rot @ np.array([0.0, head.y0 + rng.uniform(-8, 8), zc]) + off
    t1 = _grid(rng, centre)
    tilt = float(np.deg2rad(rng.uniform(-8, 8))) if rng.uniform() < 0.5 else 0.0
    t2 = _grid(rng, centre, tilt=tilt)
    t1c = dict(t1) if (rng.uniform() < 0.45 and not gre_c) else _grid(rng, centre, three_d=gre_c)
    t1c.update(bias=rng.normal(0, [0.15, 0.2, 0.1, 0.15]), noise=float(rng.uniform(0.025, 0.06)))
    jitter = rng.uniform(0.85, 1.15, 6)
    t1["seq"] = dict(gre=False, tr=500 * jitter[0], te=11 * jitter[1], flip=90, post=False, field=field_t)
    t2["seq"] = dict(gre=False, tr=4200 * jitter[2], te=92 * jitter[3], flip=90, post=False, field=field_t)
    t1c["seq"] = (dict(gre=True, tr=4.6 * jitter[4], te=1.9 * jitter[5], flip=11.0, post=True, field=field_t) if gre_c else
                  dict(gre=False, tr=540 * jitter[4], te=11 * jitter[5], flip=90, post=True, field=field_t))
    t1["fs"], t2["fs"], t1c["fs"] = False, fs_t2, fs_c
    t2["fs_resid"] = float(rng.uniform(0.04, 0.12))
    order = [str(r) for r in rng.permutation(["T1", "T2", "T1C"])]
    plan = StudyPlan(seed=seed, kind=kind, side=side, lobe=lobe, dims_mm=dims, report="",
                     fat_sat={"T1": False, "T2": fs_t2, "T1C": fs_c}, vendor=vendor, field_t=field_t, order=order,
                     head=head, series={"T1": t1, "T2": t2, "T1C": t1c}, rotation=rot, offset=off)
    plan.report = _report(rng, plan, node, contra)
    return plan


# ---- DICOM ------------------------------------------------------------------------------------------
def _truth(plan: StudyPlan) -> np.ndarray:
    geo = plan.series["T1C"]
    n = geo["n"]
    coords = _coords(geo, n, n, plan.rotation, plan.offset)
    les = plan.head.lesion
    out = np.zeros(coords[0].shape, bool)
    bl = _block(coords, les.centre - les.radius(), les.centre + les.radius())
    if bl is not None:
        out[bl] = les.level(*(c[bl] for c in coords)) < 1.0
    return out


def _write_series(folder: Path, arr: np.ndarray, plan: StudyPlan, role: str, number: int, uids: dict,
                  rng: np.random.Generator, key: list) -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    geo, seq, v = plan.series[role], plan.series[role]["seq"], _VENDORS[plan.vendor]
    fs = geo["fs"]
    if role == "T1":
        desc, seqname = v["T1"]
    elif role == "T2":
        desc, seqname = v["T2"][1 if fs else 0], v["T2"][2]
    else:
        names = v["GRE"] if seq["gre"] else v["T1C"]
        desc, seqname = names[1 if fs else 0], names[2]
    bits = int(rng.choice([12, 16]))
    top = float(rng.uniform(1500, 4000) if bits == 12 else rng.uniform(6000, 30000))
    slope = float(rng.choice([1.0, 1.0, round(rng.uniform(0.9, 3.5), 4)]))
    scaled = arr / max(float(np.percentile(arr[:, ::2, ::2], 99.7)), 1e-6) * top
    stored = np.clip(np.rint(scaled / slope), 0, 2**bits - 1).astype(np.uint16)
    n, nz = geo["n"], geo["nz"]
    dr = dc = geo["fov"] / n
    rd, cd, nd = geo["R"][:, 0], geo["R"][:, 1], geo["R"][:, 2]
    series_uid = generate_uid(entropy_srcs=key + [role, "series"])
    ge = plan.vendor.startswith("GE")
    protocol = "NECK PAROTID" if ge else desc
    agent = role == "T1C" and rng.uniform() < 0.7
    reverse = bool(rng.uniform() < 0.5)
    sex = "F" if (plan.seed * 7) % 3 else "M"
    when = dt.datetime(2023, 1, 2, 8, 0) + dt.timedelta(days=plan.seed % 700, minutes=int(plan.seed % 300))
    for k in range(nz):
        pos = geo["centre"] + (k - (nz - 1) / 2) * geo["step"] * nd - (n / 2) * dc * rd - (n / 2) * dr * cd
        inst = (nz - k) if reverse else (k + 1)
        sop = generate_uid(entropy_srcs=key + [role, "sop", str(k)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uids["study"], series_uid, uids["for"]
        ds.Modality = "MR"
        ds.PatientName, ds.PatientID = f"FOURTH^PHANTOM{plan.seed}", f"P4{plan.seed:07d}"
        ds.PatientSex, ds.PatientBirthDate = sex, f"{1940 + plan.seed % 50}0101"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
        ds.StudyTime = when.strftime("%H%M%S")
        ds.SeriesTime = ds.ContentTime = (when + dt.timedelta(minutes=3 * number // 100)).strftime("%H%M%S")
        ds.AccessionNumber, ds.StudyID = f"A4{plan.seed:08d}", str(plan.seed % 10000)
        ds.StudyDescription = "MRI NECK PAROTID"
        ds.SeriesDescription, ds.ProtocolName, ds.SequenceName = desc, protocol, seqname
        ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = number, inst, 1
        ds.Manufacturer, ds.ManufacturerModelName = plan.vendor, str(v["model"][plan.seed % len(v["model"])])
        ds.MagneticFieldStrength = plan.field_t
        ds.BodyPartExamined, ds.PatientPosition = "NECK", "HFS"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ScanningSequence = "GR" if seq["gre"] else "SE"
        ds.SequenceVariant = ["SP", "OSP"] if seq["gre"] else list(v["variant"])
        opts = (["FAST_GEMS"] if ge and not seq["gre"] else []) + ([v["fs_opt"]] if fs else []) + ([] if ge else ["PFP"])
        ds.ScanOptions = opts
        ds.MRAcquisitionType = "3D" if seq["gre"] else "2D"
        ds.RepetitionTime, ds.EchoTime = round(seq["tr"], 2), round(seq["te"], 2)
        ds.FlipAngle = seq["flip"]
        ds.EchoTrainLength = 1 if seq["gre"] else (16 if role == "T2" else 3)
        if agent:
            ds.ContrastBolusAgent = str(_AGENTS[plan.seed % len(_AGENTS)])
            ds.ContrastBolusRoute = "IV"
        ds.ImageOrientationPatient = [round(float(x), 6) for x in np.concatenate([rd, cd])]
        ds.ImagePositionPatient = [round(float(x), 4) for x in pos]
        ds.SliceLocation = round(float(pos @ nd), 4)
        ds.PixelSpacing = [round(dr, 6), round(dc, 6)]
        ds.SliceThickness = round(geo["thick"], 3)
        ds.SpacingBetweenSlices = round(geo["step"], 3)
        ds.AcquisitionMatrix = [0, geo["acq"][1], geo["acq"][0], 0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = n
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
        if slope != 1.0 or plan.vendor == "Philips":
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, 0, "US"
        ds.WindowCenter, ds.WindowWidth = round(top * 0.45 / slope), round(top * 0.9 / slope)
        ds.PixelData = stored[k].tobytes()
        ds.save_as(folder / f"IM{inst:04d}.dcm", enforce_file_format=True)


def write_foreign_study(seed: int, folder: Path) -> ForeignStudy:
    """Write the seed's three MR series (T1, T2, post-contrast T1; role order shuffled) into
    ``folder/s01..s03`` and return the study's report and truth (on the T1C grid)."""
    from pydicom.uid import generate_uid

    folder = Path(folder)
    plan = plan_study(seed)
    key = ["pgsam-fourth", str(seed)]
    uids = {"study": generate_uid(entropy_srcs=key + ["study"]), "for": generate_uid(entropy_srcs=key + ["for"])}
    numbers = np.random.default_rng([seed, _SALT, 1]).permutation(np.arange(2, 12))[:3] * 100
    for i, role in enumerate(plan.order):
        rng = np.random.default_rng([seed, _SALT, 2 + ["T1", "T2", "T1C"].index(role)])
        arr = _render(plan, role, rng)
        _write_series(folder / f"s{i + 1:02d}", arr, plan, role, int(numbers[i]) + 1, uids, rng, key)
    return ForeignStudy(folder=folder, report=plan.report, truth=_truth(plan), kind=plan.kind, side=plan.side,
                        lobe=plan.lobe, fat_sat=dict(plan.fat_sat))
