"""The third, independent parotid phantom generator - HELD OUT OF TRAINING on purpose.

Written to measure transfer to a generator no model had met (``benchmarks/foreign_phantoms.py
--generator third``; measured before any training on it, docs/model.md). Since then
:func:`training_case` also feeds the trainer (``train --third-generator N``, seeds from 700,000),
so evaluation seeds must stay below that. Only the interface of the second generator
(:class:`~pgsam_node.synth.second.ForeignStudy`, ``write_foreign_study(seed, folder)``) is shared.

* Anatomy: an axial section at the parotid level in canonical LPS mm (patient left = +x,
  posterior = +y, superior = +z) from signed distance functions (SDF): skin outline with a random
  radial profile, subcutaneous fat with septa, both parotids (superficial lobe, isthmus behind the
  ramus, deep lobe, tail; lobulated, fatty/lean grain), mandibular rami (cortex, marrow), masseter,
  pterygoids, SCM, neck muscles, tongue, airway, C2, canal and cord, mastoid, flow voids. A study
  draws a scale, a yaw, a shift and per-structure jitter.
* Signal: every tissue is a water/fat mixture (PD, T1, T2, fat fraction, gadolinium uptake as
  delta R1); each series is a spin echo at the TR/TE written in its header; fat saturation keeps a
  residual of the fat; gadolinium shortens T1. Per series: gamma, the sensitivity of a surface-coil
  array (sum of squares, partly normalised), blur and Rician noise.
* Partial volume: SDF occupancy over the pixel size, averaged over sub-slices of the thickness.
* One target lesion (the truth): pleomorphic adenoma, Warthin tumour, mucoepidermoid carcinoma,
  intraparotid node or simple cyst; about 30 % of studies add a distractor node (not in the truth).
* Acquisition: four fictitious consoles named in GE-, Philips-, Canon- and Siemens-like styles;
  per-series matrix, pixel size, thickness, gap and offset; the T2 may be tilted about x.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pgsam_node.synth.second import ForeignStudy

STREAM = 0x3D7A1  # np.random.default_rng([seed, STREAM])
Sdf = Callable[..., np.ndarray]  # (x, y, z) canonical mm -> signed distance (negative inside)
Box = tuple[tuple[float, float, float], tuple[float, float, float]]

# ---- tissues: water PD, water T1 and T2 at 1.5 T (ms), fat fraction, gadolinium uptake dR1 (1/s)
FAT_COMPONENT = (1.0, 280.0, 115.0)  # PD, T1, T2 of the fat signal (FSE: J-coupling keeps fat bright)
T1_AT_3T = 1.25  # water T1 lengthening at 3 T
TISSUES: dict[str, tuple[float, float, float, float, float]] = {
    "air": (0.0, 1000, 10, 0.0, 0.0), "skin": (0.8, 700, 45, 0.10, 0.8), "fat": (0.8, 900, 50, 0.95, 0.1),
    "muscle": (0.75, 950, 38, 0.03, 0.6), "tongue": (0.78, 950, 45, 0.1, 0.6), "parotid": (0.85, 950, 60, 0.45, 1.2),
    "parotid_lean": (0.85, 900, 70, 0.15, 1.4), "septum": (0.6, 900, 40, 0.2, 0.3),
    "cortex": (0.05, 900, 4, 0.0, 0.0), "marrow": (0.7, 600, 50, 0.7, 0.3), "vertebra": (0.8, 700, 55, 0.45, 0.5),
    "csf": (1.0, 3600, 1600, 0.0, 0.0), "cord": (0.75, 800, 80, 0.0, 0.05), "artery": (0.02, 1400, 50, 0.0, 0.0),
    "vein": (0.04, 1400, 50, 0.0, 0.0), "vein+c": (0.85, 1400, 150, 0.0, 6.0),  # slow venous flow enhances
    "pa": (0.92, 1350, 210, 0.0, 1.6), "pa_myxoid": (0.95, 1800, 400, 0.0, 0.9),
    "warthin": (0.82, 900, 85, 0.0, 0.5), "warthin_cyst": (0.9, 550, 260, 0.0, 0.0),  # proteinaceous fluid
    "mec": (0.8, 1000, 62, 0.0, 1.2), "mec_mucin": (0.9, 1500, 250, 0.0, 0.1),
    "node": (0.8, 850, 75, 0.0, 0.7), "cyst": (1.0, 3200, 1300, 0.0, 0.0), "cyst_wall": (0.8, 900, 70, 0.0, 1.5),
}

# ---- anatomy of the left side (mirrored for the right), canonical mm
HEAD = {"ax": 73.0, "ay": 93.0, "cy": 2.0, "power": 2.4, "skin": 1.6}
# z-invariant rounded plates: tissue, centre x, y, half-width, half-length, yaw (deg)
PLATES = [("muscle", 57.0, -16.0, 5.0, 19.0, -8.0),  # masseter
          ("muscle", 37.0, -12.0, 5.0, 16.0, -30.0),  # medial pterygoid
          ("muscle", 56.0, 47.0, 6.5, 13.0, -30.0),  # sternocleidomastoid
          ("muscle", 10.0, 7.0, 5.5, 4.0, 0.0)]  # prevertebral (longus)
RAMUS = (47.0, -12.0, 3.6, 17.0, -12.0)  # posterior border lateral
CORTEX_MM = 1.6
# ellipsoids: centre (x, y, z), semi-axes, yaw (deg)
PAROTID = {"superficial": ((60.0, 9.0, 0.0), (8.5, 19.0, 24.0), 10.0), "isthmus": ((50.0, 14.0, 0.0), (6.0, 6.0, 17.0), 0.0),
           "deep": ((39.0, 11.0, 3.0), (7.0, 10.0, 14.0), 0.0), "tail": ((57.0, 24.0, -20.0), (10.0, 11.0, 10.0), 0.0)}
UPPER = [("cortex", (52.0, 40.0, 33.0), (11.0, 11.0, 13.0), 0.0),  # mastoid
         ("muscle", (40.0, -10.0, 25.0), (8.0, 14.0, 9.0), -20.0)]  # lateral pterygoid
VESSELS = [("vein", 51.0, 13.0, 2.8, 2.8), ("artery", 46.5, 16.0, 2.0, 2.0),  # retromandibular vein, ECA
           ("artery", 30.0, 26.0, 3.0, 3.0), ("vein", 37.0, 34.0, 5.5, 4.0)]  # ICA, IJV
COVERAGE_Z = (-36.0, 34.0)  # canonical z range every series covers
LESION_Z_LIMIT = 30.0  # |centre z| + semi-axis stays inside this
# kind -> (diameter range mm, lobe probabilities superficial/deep/tail)
KINDS = {"pleomorphic_adenoma": ((12, 45), (0.7, 0.25, 0.05)), "warthin_tumour": ((15, 40), (0.4, 0.0, 0.6)),
         "mucoepidermoid_carcinoma": ((12, 40), (0.6, 0.3, 0.1)), "intraparotid_node": ((8, 15), (0.8, 0.0, 0.2)),
         "simple_cyst": ((8, 30), (0.6, 0.2, 0.2))}
DISTRACTOR_P, DISTRACTOR_MM, LEVEL_II = 0.3, (5.0, 9.0), (45.0, 24.0, -27.0)
SUB_SLICES = 3  # samples across the slice thickness (partial volume along z)
BIG = 1e3  # z extent of the z-invariant parts


@dataclass
class Part:
    """One painted structure: SDF (canonical mm), bounding box, tissue and optional second tissue."""

    sdf: Sdf
    box: Box
    tissue: str
    soft: float = 0.0  # extra edge width, mm (ill-defined margins)
    inner: tuple[str, Sdf] | None = None  # second tissue and its fraction (0..1) as a function of position
    target: bool = False


@dataclass
class Scene:
    parts: list[Part]
    tissues: dict
    pose: tuple[float, ...]  # scale xy, scale z, yaw (deg), tx, ty, tz: canonical -> LPS
    kind: str
    side: str
    lobe: str
    dims_mm: list[float]
    distractor: str | None = None  # "contralateral" or "level II"
    distractor_side: str | None = None


# ---- SDF primitives ---------------------------------------------------------------------------
def _local(x, y, cx, cy, yaw):
    c, s = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    return c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)


def _ellipsoid(c: Sequence[float], semi: Sequence[float], yaw: float = 0.0) -> Sdf:
    """Approximate SDF of an ellipsoid (good near the surface)."""
    (cx, cy, cz), (a, b, cc) = c, semi

    def f(x, y, z):
        u, v = _local(x, y, cx, cy, yaw)
        w = z - cz
        k0 = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (w / cc) ** 2)
        return k0 * (k0 - 1.0) / (np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2 + (w / cc**2) ** 2) + 1e-6)
    return f


def _ellipse(cx, cy, a, b) -> Sdf:
    """z-invariant elliptic cylinder."""
    e = _ellipsoid((cx, cy, 0.0), (a, b, 1.0))
    return lambda x, y, z: e(x, y, 0.0)


def _plate(cx, cy, hx, hy, yaw, r=2.0) -> Sdf:
    """z-invariant rounded rectangle."""
    def f(x, y, z):
        u, v = _local(x, y, cx, cy, yaw)
        qx, qy = np.abs(u) - hx + r, np.abs(v) - hy + r
        return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - r
    return f


def _smooth_union(fs: list[Sdf], k: float) -> Sdf:
    def f(x, y, z):
        d = fs[0](x, y, z)
        for g in fs[1:]:
            e = g(x, y, z)
            h = np.clip(0.5 + 0.5 * (e - d) / k, 0, 1)
            d = e * (1 - h) + d * h - k * h * (1 - h)
        return d
    return f


def _field(rng: np.random.Generator, wavelength: float, n: int = 6) -> Sdf:
    """Smooth random field (sum of random plane waves), zero mean, unit variance."""
    dirs = rng.normal(size=(n, 3))
    k = dirs / np.linalg.norm(dirs, axis=1, keepdims=True) * (2 * math.pi / wavelength) * rng.uniform(0.7, 1.3, (n, 1))
    ph, amp = rng.uniform(0, 2 * math.pi, n), math.sqrt(2.0 / n)
    return lambda x, y, z: sum(amp * np.cos(k[i, 0] * x + k[i, 1] * y + k[i, 2] * z + ph[i]) for i in range(n))


def _occupancy(d: np.ndarray, width: float) -> np.ndarray:
    return np.clip(0.5 - d / width, 0.0, 1.0)


def _box(cx, cy, r, cz=0.0, rz=BIG) -> Box:
    return (cx - r, cy - r, cz - rz), (cx + r, cy + r, cz + rz)


# ---- scene ------------------------------------------------------------------------------------
def _anatomy(rng: np.random.Generator) -> tuple[list[Part], dict[str, Sdf]]:
    """Normal anatomy in painting order, and each side's parotid SDF (for placing lesions)."""
    j = lambda s=1.5: float(rng.normal(0, s))  # noqa: E731 - per-structure jitter
    ax, ay, p = HEAD["ax"] * rng.uniform(0.94, 1.06), HEAD["ay"] * rng.uniform(0.94, 1.06), HEAD["power"]
    harm = [(k, rng.normal(0, 0.015), rng.uniform(0, 2 * math.pi)) for k in range(2, 7)]
    th = np.linspace(-math.pi, math.pi, 1441)  # outline radius by polar angle: superellipse, narrower face, harmonics
    c, s = np.cos(th), np.sin(th)
    radius = (np.abs(c) ** p / ax**p + np.abs(s) ** p / ay**p) ** (-1.0 / p) * (1 - rng.uniform(0.06, 0.16) * np.clip(-s, 0, None) ** 3)
    radius *= 1 + sum(a * np.cos(k * th + f) for k, a, f in harm)

    def head(x, y, z):
        dy = y - HEAD["cy"]
        return np.hypot(x, dy) - np.interp(np.arctan2(dy, x), th, radius).astype(np.float32)

    hb = _box(0.0, HEAD["cy"], max(ax, ay) + 5)
    fat_mm, septa = rng.uniform(4, 11), _field(rng, 25.0, 10)
    back = _ellipse(0, 84 + j(), 60 + j(), 34 + j())
    in_back = lambda f: lambda x, y, z: np.maximum(f(x, y, z), np.maximum(back(x, y, z), head(x, y, z) + fat_mm))  # noqa: E731
    parts = [Part(head, hb, "skin"),
             Part(lambda x, y, z: head(x, y, z) + HEAD["skin"], hb, "fat", 0.0,
                  ("septum", lambda x, y, z: np.clip(0.6 - np.abs(septa(x, y, 0.0)) * 6, 0, 1))),
             Part(in_back(lambda x, y, z: -BIG + 0 * x), hb, "muscle"),  # posterior neck muscles ...
             Part(in_back(_plate(0, 76, 1.2, 24, 0, 1.0)), _box(0, 76, 26), "fat"),  # ... and their fat planes
             Part(in_back(_plate(24, 74, 1.0, 18, 35, 0.9)), _box(24, 74, 20), "fat"),
             Part(in_back(_plate(-24, 74, 1.0, 18, -35, 0.9)), _box(-24, 74, 20), "fat"),
             Part(_ellipse(0, -44 + j(), 30 + j(), 23 + j()), _box(0, -44, 33), "tongue", 0.0,
                  ("fat", lambda x, y, z: np.clip(0.5 - np.abs(septa(x + 40, y, 0.0)) * 4, 0, 1)))]
    glands: dict[str, Sdf] = {}
    for side, sg in (("left", 1.0), ("right", -1.0)):
        for tis, cx, cy, hx, hy, yaw in PLATES:
            x0, y0 = sg * (cx + j()), cy + j()
            parts.append(Part(_plate(x0, y0, hx, hy, sg * yaw, 0.8 * min(hx, hy)), _box(x0, y0, hy + 3), tis))
        lobes = [_ellipsoid((sg * (cc[0] + j(2)), cc[1] + j(2), cc[2] + j(2)), np.array(semi) * rng.uniform(0.85, 1.15, 3), sg * yaw)
                 for cc, semi, yaw in PAROTID.values()]
        union, lobulation, grain = _smooth_union(lobes, 5.0), _field(rng, 12.0), _field(rng, 5.0)
        glands[side] = lambda x, y, z, u=union, f=lobulation: u(x, y, z) + 1.5 * f(x, y, z)
        parts.append(Part(glands[side], ((min(sg * 28, sg * 74), -18, -40), (max(sg * 28, sg * 74), 42, 35)), "parotid", 0.0,
                          ("parotid_lean", lambda x, y, z, f=grain: np.clip(0.3 + 0.4 * f(x, y, z), 0, 1))))  # fatty/lean acini
        cx, cy, hx, hy, yaw = RAMUS
        x0, y0 = sg * (cx + j()), cy + j()
        outer = _plate(x0, y0, hx, hy, sg * yaw, 2.5)
        parts += [Part(outer, _box(x0, y0, hy + 3), "cortex"),
                  Part(lambda x, y, z, o=outer: o(x, y, z) + CORTEX_MM, _box(x0, y0, hy + 3), "marrow")]
        for tis, cc, semi, yaw in UPPER:
            x0 = sg * (cc[0] + j())
            parts.append(Part(_ellipsoid((x0, cc[1], cc[2]), semi, sg * yaw), _box(x0, cc[1], max(semi[:2]) + 2, cc[2], semi[2] + 2), tis))
        for tis, cx, cy, a, b in VESSELS:
            x0, y0 = sg * (cx + j(1.0)), cy + j(1.0)
            parts.append(Part(_ellipse(x0, y0, a, b), _box(x0, y0, a + 2), tis))
    vy = 22 + j()  # C2 body; canal, cord and arch behind it
    vert, arch = _ellipse(0, vy, 15, 12), _ellipse(0, vy + 22, 13, 11)
    parts += [Part(vert, _box(0, vy, 18), "cortex"), Part(lambda x, y, z: vert(x, y, z) + CORTEX_MM, _box(0, vy, 18), "vertebra"),
              Part(lambda x, y, z: np.abs(arch(x, y, z)) - 1.4, _box(0, vy + 22, 16), "cortex"),
              Part(_ellipse(0, vy + 22, 10.5, 8.5), _box(0, vy + 22, 13), "csf"), Part(_ellipse(0, vy + 22, 6, 4.5), _box(0, vy + 22, 8), "cord"),
              Part(_ellipse(0, -6, 19, 11), _box(0, -6, 22), "muscle"),  # pharyngeal wall
              Part(_ellipse(0, -6 + j(), rng.uniform(10, 15), rng.uniform(4, 7)), _box(0, -6, 20), "air")]
    return parts, glands


def _inside(rng, gland: Sdf, lobe: str, sg: float) -> np.ndarray:
    """A random point of a parotid part (nominal ellipsoid) that the gland's SDF places well inside."""
    (cx, cy, cz), (a, b, c), _ = PAROTID[lobe]
    for _ in range(50):
        u = rng.normal(size=3)
        pt = np.array([sg * cx, cy, cz]) + np.array([a, b, c]) * u * rng.uniform(0, 0.6) / np.linalg.norm(u)
        if float(gland(*pt)) < -1.5:
            return pt
    return np.array([sg * cx, cy, cz])


def _lesion(rng, kind: str, c: np.ndarray, semi: np.ndarray, g: float) -> Part:
    """The target's part; ``c`` and ``semi`` canonical, ``g`` the canonical -> mm scale."""
    yaw, r = rng.uniform(0, 180), float(semi.max())
    base = _ellipsoid(c, semi, yaw)
    soft, inner, sdf = 0.0, None, base
    if kind == "pleomorphic_adenoma":  # lobulated ("bosselated"), very T2-bright myxoid parts
        dirs = rng.normal(size=(int(rng.integers(3, 6)), 3))
        bumps = [_ellipsoid(c + d / np.linalg.norm(d) * semi * 0.8, [r * rng.uniform(0.3, 0.45)] * 3) for d in dirs]
        f, fm, body = _field(rng, r * 0.9), _field(rng, r * 0.6), _smooth_union([base] + bumps, 0.2 * r)
        sdf = lambda x, y, z: body(x, y, z) + 0.06 * r * f(x, y, z)  # noqa: E731
        tissue, inner = "pa", ("pa_myxoid", lambda x, y, z: np.clip(fm(x, y, z) - 0.3, 0, 1))
    elif kind == "warthin_tumour":  # ovoid, solid with cystic spaces
        f, fc = _field(rng, r), _field(rng, max(r * 0.5, 4.0))
        sdf = lambda x, y, z: base(x, y, z) + 0.05 * r * f(x, y, z)  # noqa: E731
        tissue, inner = "warthin", ("warthin_cyst", lambda x, y, z: np.clip((fc(x, y, z) - 0.5) * 2.0, 0, 1))
    elif kind == "mucoepidermoid_carcinoma":  # infiltrative, irregular, ill-defined
        f, fs, fm = _field(rng, r * 0.9), _field(rng, max(r * 0.35, 3.0), 12), _field(rng, r * 0.6)
        sdf = lambda x, y, z: base(x, y, z) + 0.2 * r * f(x, y, z) + 0.06 * r * fs(x, y, z)  # noqa: E731
        tissue, soft, inner = "mec", 2.0, ("mec_mucin", lambda x, y, z: np.clip(fm(x, y, z) - 1.0, 0, 1))
    elif kind == "intraparotid_node":  # oval with an eccentric fatty hilum
        hil = _ellipsoid(c + np.array([0.0, 0.5 * semi[1], 0.0]), semi * 0.35, yaw)
        tissue, inner = "node", ("fat", lambda x, y, z: _occupancy(hil(x, y, z), 1.0))
    else:  # simple cyst: fluid and a thin enhancing wall
        tissue, inner = "cyst", ("cyst_wall", lambda x, y, z: np.clip(1 - np.abs(base(x, y, z) * g + 0.8) / 0.8, 0, 1))
    rr = r * 1.5 + 3
    return Part(sdf, ((c[0] - rr, c[1] - rr, c[2] - rr), (c[0] + rr, c[1] + rr, c[2] + rr)), tissue, soft, inner, target=True)


def _to_world(p: np.ndarray, pose) -> np.ndarray:
    g, gz, yaw, tx, ty, tz = pose
    c, s = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    return np.stack([tx + g * (c * p[..., 0] - s * p[..., 1]), ty + g * (s * p[..., 0] + c * p[..., 1]), tz + gz * p[..., 2]], -1)


def _scene(rng: np.random.Generator) -> tuple[Scene, dict[str, Sdf], np.ndarray, np.ndarray]:
    """Anatomy, pose and the target's kind, side, lobe, centre and semi-axes (canonical)."""
    parts, glands = _anatomy(rng)
    tissues = dict(TISSUES)
    pd, t1, t2, _, up = TISSUES["parotid"]
    tissues["parotid"] = (pd, t1, t2, rng.uniform(0.3, 0.65), up)  # fatty involution varies between patients
    if rng.random() < 0.4:
        del tissues["vein+c"]  # the veins stay a flow void after contrast
    g, gz = rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.1)
    tx, ty = np.clip(rng.normal(0, 4, 2), -6, 6)
    pose = (g, gz, float(np.clip(rng.normal(0, 3), -6, 6)), float(tx), float(ty), float(np.clip(rng.normal(0, 3), -5, 5)))
    kind = str(rng.choice(list(KINDS)))
    (lo, hi), probs = KINDS[kind]
    side, lobe = str(rng.choice(["left", "right"])), str(rng.choice(["superficial", "deep", "tail"], p=probs))
    d = rng.uniform(lo, hi)  # largest diameter, mm
    semi = d / 2 * np.array([1 / g, rng.uniform(0.7, 1.0) / g, rng.uniform(0.75, 1.05) / gz])
    semi[:2] = rng.permutation(semi[:2])
    c = _inside(rng, glands[side], lobe, 1.0 if side == "left" else -1.0)
    c[2] = np.clip(c[2], semi[2] - LESION_Z_LIMIT, LESION_Z_LIMIT - semi[2])
    sc = Scene(parts, tissues, pose, kind, side, lobe, sorted([2 * semi[0] * g, 2 * semi[1] * g, 2 * semi[2] * gz], reverse=True))
    if rng.random() < DISTRACTOR_P:
        sc.distractor = str(rng.choice(["contralateral", "level II"]))
    return sc, glands, c, semi


def _add_lesions(rng, sc: Scene, glands: dict[str, Sdf], c: np.ndarray, semi: np.ndarray, t1c: Grid) -> None:
    """Paint the target (its z on a T1C slice centre when it is thinner than two slices) and the distractor."""
    g, gz, tz = sc.pose[0], sc.pose[1], sc.pose[5]
    if 2 * semi[2] * gz < 2 * t1c.step:
        zw = float(_to_world(c, sc.pose)[2])
        c = c.copy()
        c[2] = (t1c.origin[2] + t1c.step * round((zw - t1c.origin[2]) / t1c.step) - tz) / gz
    sc.parts.append(_lesion(rng, sc.kind, c, semi, g))
    if sc.distractor is None:
        return
    r = rng.uniform(*DISTRACTOR_MM) / 2 / g
    sg = -1.0 if sc.side == "left" else 1.0  # the other side
    p = None
    if sc.distractor == "level II":
        sg = float(rng.choice([-1.0, 1.0]))
        p = np.array([sg, 1.0, 1.0]) * LEVEL_II + rng.normal(0, 1.5, 3)
        if np.linalg.norm(p - c) < semi.max() + r + 5:
            p, sg = None, (-1.0 if sc.side == "left" else 1.0)
    if p is None:
        sc.distractor, p = "contralateral", _inside(rng, glands["left" if sg > 0 else "right"], "superficial", sg)
    hil = _ellipsoid(p + [0, 0.5 * r, 0], [0.4 * r] * 3)
    sc.parts.append(Part(_ellipsoid(p, [r, 0.6 * r, 0.8 * r], rng.uniform(0, 180)), _box(p[0], p[1], r + 3, p[2], r + 3), "node", 0.0,
                         ("fat", lambda x, y, z: _occupancy(hil(x, y, z), 1.0))))
    sc.distractor_side = "left" if sg > 0 else "right"


# ---- report -----------------------------------------------------------------------------------
WHERE = {"superficial": ["in the superficial lobe of the {s} parotid gland", "within the superficial portion of the {s} parotid",
                         "in the {s} parotid gland, superficial lobe", "lateral to the retromandibular vein in the {s} parotid",
                         "in the superficial lobe of the parotid on the {s}"],
         "deep": ["in the deep lobe of the {s} parotid gland", "in the {s} parotid deep lobe, bulging into the parapharyngeal fat",
                  "arising from the deep lobe of the {s} parotid gland", "in the deep parotid lobe on the {s}"],
         "tail": ["in the tail of the {s} parotid gland", "at the lower pole (tail) of the {s} parotid", "in the {s} parotid tail"]}
LOOKS = {"pleomorphic_adenoma": ("well-circumscribed lobulated mass", "markedly T2 hyperintense, T1 hypointense, with heterogeneous enhancement"),
         "warthin_tumour": ("well-defined ovoid lesion", "intermediate and heterogeneous on T2 with small cystic spaces; the solid part enhances mildly"),
         "mucoepidermoid_carcinoma": ("ill-defined infiltrative mass", "low to intermediate on T2 with irregular margins and heterogeneous enhancement"),
         "intraparotid_node": ("small oval nodule with a fatty hilum", "intermediate on T2 with homogeneous enhancement"),
         "simple_cyst": ("thin-walled cystic lesion", "fluid-bright on T2 without internal enhancement; only a thin rim enhances")}
VERDICT = {"pleomorphic_adenoma": ["Most consistent with pleomorphic adenoma.", "Favour a benign mixed tumour (pleomorphic adenoma).",
                                   "Typical of pleomorphic adenoma; Warthin tumour less likely."],
           "warthin_tumour": ["Most likely a Warthin tumour.", "Features favour Warthin tumor; pleomorphic adenoma is the differential."],
           "mucoepidermoid_carcinoma": ["Suspicious for a primary parotid malignancy such as mucoepidermoid carcinoma; tissue sampling advised.",
                                        "Infiltrative margins raise concern for malignancy, e.g. mucoepidermoid carcinoma."],
           "intraparotid_node": ["Likely an intraparotid lymph node.", "Benign-appearing intraparotid lymph node; follow-up suggested."],
           "simple_cyst": ["Simple parotid cyst.", "Compatible with a benign cyst (e.g. lymphoepithelial cyst)."]}


def _report(rng: np.random.Generator, sc: Scene) -> str:
    s, other = sc.side, ("right" if sc.side == "left" else "left")
    shape, signal = LOOKS[sc.kind]
    a, b, c = sc.dims_mm
    size = rng.choice([f"{a / 10:.1f} x {b / 10:.1f} cm", f"{a:.0f} x {b:.0f} mm", f"{a / 10:.1f} x {b / 10:.1f} x {c / 10:.1f} cm", f"up to {a:.0f} mm"])
    lines = [str(rng.choice(["MRI NECK (PAROTIDS) WITHOUT AND WITH CONTRAST", "MR parotid glands pre and post gadolinium", "EXAM: MRI face/neck"])),
             f"Clinical: {rng.choice(['palpable lump', 'painless swelling', 'mass near the angle of the mandible'])}, {s} side.", "Findings:",
             f"There is {'an' if shape[0] in 'aeiou' else 'a'} {shape} {str(rng.choice(WHERE[sc.lobe])).format(s=s)}, measuring {size}. It is {signal}."]
    if sc.distractor_side and rng.random() < 0.6:
        lines.append(f"A small reactive-appearing node in the {sc.distractor_side} parotid gland, not suspicious." if sc.distractor == "contralateral"
                     else f"Incidental subcentimetre {sc.distractor_side} level II lymph node, likely reactive.")
    elif not sc.distractor_side and rng.random() < 0.7:
        lines.append(str(rng.choice([f"The {other} parotid gland is unremarkable.", "The contralateral parotid is normal."])))
    lines += ["Impression:", f"{rng.choice([s.capitalize() + ' parotid lesion', 'Parotid mass on the ' + s])}. {rng.choice(VERDICT[sc.kind])}"]
    return "\n".join(lines)


# ---- acquisition ------------------------------------------------------------------------------
@dataclass
class Grid:
    """A series' slice stack: voxel (col c, row r, slice k) -> origin + c*px*u + r*px*v + k*step*n (LPS mm)."""

    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    n: np.ndarray
    px: float
    step: float
    thick: float
    shape: tuple[int, int, int]


@dataclass
class Seq:
    role: str
    desc: str
    tr: float
    te: float
    fs: bool
    fat_residual: float
    field_t: float
    grid: Grid


MATRICES = (256, 288, 320, 384, 448, 512)
# console styles: manufacturer, SequenceVariant, fat-sat ScanOptions, ImageType, SeriesDescriptions per (role, fat-sat)
STYLES = {
    "helix": ("HELIX MEDICAL SYSTEMS", "SK\\OSP", "FAST_GEMS\\FS", "ORIGINAL\\PRIMARY\\OTHER", {
        ("T1", 0): ["AX T1 FSE", "Ax T1 SE", "AX T1 PRE"], ("T2", 0): ["AX T2 FRFSE", "Ax T2 FSE"], ("T2", 1): ["Ax T2 FRFSE FS", "AX T2 FSE FS"],
        ("T1C", 0): ["AX T1 FSE +C", "Ax T1 SE POST"], ("T1C", 1): ["AX T1 FS +C", "Ax T1 FSE FS POST", "AX T1 FS"]}),
    "nordlicht": ("NORDLICHT HEALTHCARE", "SK", "FS", "ORIGINAL\\PRIMARY\\M_SE\\M\\SE", {
        ("T1", 0): ["T1W_TSE_TRA"], ("T2", 0): ["T2W_TSE_TRA"], ("T2", 1): ["T2W_SPAIR_TRA", "T2W_TSE_SPIR"],
        ("T1C", 0): ["T1W_TSE_TRA_GD"], ("T1C", 1): ["T1W_mDIXON_W_GD", "T1W_SPIR_TRA +C"]}),
    "kairos": ("KAIROS MEDICAL", "SP", "FS", "ORIGINAL\\PRIMARY\\MR", {
        ("T1", 0): ["T1W_SE AX", "T1_FSE_AX"], ("T2", 0): ["T2W_FSE AX"], ("T2", 1): ["T2W_FSE_FatSat AX"],
        ("T1C", 0): ["T1W_SE AX +C"], ("T1C", 1): ["T1W_SE FatSat AX +C", "POST T1 FatSat AX"]}),
    "lumina": ("LUMINA MR", "SK\\SP", "SFS", "ORIGINAL\\PRIMARY\\M\\NORM\\DIS2D", {
        ("T1", 0): ["t1_tse_tra"], ("T2", 0): ["t2_tse_tra"], ("T2", 1): ["t2_tse_fs_tra"],
        ("T1C", 0): ["t1_tse_tra_KM"], ("T1C", 1): ["t1_tse_fs_tra_post", "t1_tse_fs_tra KM"]}),
}
AGENTS = ("GADOBUTROL", "Gadoterate meglumine", "MultiHance", "Dotarem")


def _grid(rng, pose, tilt_deg: float) -> Grid:
    """Own matrix, pixel size, thickness, gap and offsets; tilted about x by ``tilt_deg``."""
    g, gz, _, tx, ty, tz = pose
    mat = int(rng.choice(MATRICES))
    px = float(np.clip(rng.uniform(200, 240) / mat, 0.4, 0.9))
    thick = rng.uniform(3.0, 6.0)
    step = thick + float(rng.choice([0.0, 0.1 * thick, rng.uniform(0.5, 1.5)]))
    z0, z1 = tz + gz * COVERAGE_Z[0], tz + gz * COVERAGE_Z[1]
    n_sl = int(math.ceil((z1 - z0) / step)) + 1
    t = math.radians(tilt_deg)
    u, v, n = np.array([1.0, 0, 0]), np.array([0, math.cos(t), math.sin(t)]), np.array([0, -math.sin(t), math.cos(t)])
    centre = np.array([tx + rng.normal(0, 4), ty + rng.normal(0, 4), (z0 + z1) / 2 + rng.uniform(-step / 2, step / 2)])
    return Grid(centre - (mat - 1) / 2 * px * (u + v) - (n_sl - 1) / 2 * step * n, u, v, n, px, step, thick, (n_sl, mat, mat))


def _plan(rng, pose, style: str) -> dict[str, Seq]:
    """T1, T2, T1C: names, TR/TE, fat saturation and grids (T1C often reuses the T1 planning)."""
    field_t = float(rng.choice([1.5, 3.0], p=[0.6, 0.4]))
    fs = {"T1": False, "T2": bool(rng.random() < 0.6), "T1C": bool(rng.random() < 0.6)}
    t1_grid = _grid(rng, pose, 0.0)
    tilt = float(rng.choice([-1, 1]) * rng.uniform(2, 6)) if rng.random() < 0.4 else 0.0
    grids = {"T1": t1_grid, "T2": _grid(rng, pose, tilt), "T1C": t1_grid if rng.random() < 0.4 else _grid(rng, pose, 0.0)}
    out = {}
    for role in ("T1", "T2", "T1C"):
        desc = str(rng.choice(STYLES[style][4][(role, int(fs[role]))]))
        tr, te = (rng.uniform(2800, 5500), rng.uniform(75, 110)) if role == "T2" else (rng.uniform(420, 680) + 80 * fs[role], rng.uniform(8, 15))
        out[role] = Seq(role, desc, tr, te, fs[role], 0.02 if "DIXON" in desc else rng.uniform(0.04, 0.15), field_t, grids[role])
    return out


# ---- rendering --------------------------------------------------------------------------------
def _signal(tissues: dict, name: str, q: Seq) -> float:
    """Spin-echo magnitude of a water/fat mixture at the series' TR/TE."""
    post = q.role == "T1C"
    pd, t1, t2, ff, uptake = tissues[name + "+c" if post and name + "+c" in tissues else name]
    t1 *= T1_AT_3T if q.field_t > 2 else 1.0
    if post:
        t1 = 1.0 / (1.0 / t1 + uptake / 1000.0)
    se = lambda p, a, b: p * (1 - math.exp(-q.tr / a)) * math.exp(-q.te / b)  # noqa: E731
    return (1 - ff) * se(pd, t1, t2) + ff * se(*FAT_COMPONENT) * (q.fat_residual if q.fs else 1.0)


def _coords(grid: Grid, ks: slice, rs: slice, cs: slice, off: float, pose):
    """Canonical (x, y, z) of a block of voxels, as broadcastable float32 arrays."""
    ranges = [(np.arange(sl.start, sl.stop, sl.step or 1) * unit + o, d) for sl, unit, o, d in
              ((ks, grid.step, off, grid.n), (rs, grid.px, 0.0, grid.v), (cs, grid.px, 0.0, grid.u))]
    w = []
    for i in range(3):
        acc = np.float32(grid.origin[i])
        for a, (arr, d) in enumerate(ranges):
            if abs(d[i]) > 1e-9:
                acc = acc + np.expand_dims(arr.astype(np.float32), [b for b in range(3) if b != a]) * np.float32(d[i])
        w.append(np.asarray(acc, dtype=np.float32))
    g, gz, yaw, tx, ty, tz = pose
    dx, dy = _local(w[0], w[1], tx, ty, yaw)
    return dx / g, dy / g, (w[2] - tz) / gz


def _index_box(part: Part, grid: Grid, pose) -> tuple[slice, slice, slice] | None:
    (x0, y0, z0), (x1, y1, z1) = part.box
    rel = _to_world(np.array([[a, b, c] for a in (x0, x1) for b in (y0, y1) for c in (z0, z1)]), pose) - grid.origin
    m = 3 + part.soft / grid.px
    out = []
    for axis, size, step, margin in ((grid.n, grid.shape[0], grid.step, 1), (grid.v, grid.shape[1], grid.px, m), (grid.u, grid.shape[2], grid.px, m)):
        idx = rel @ axis / step
        a, b = max(0, int(math.floor(idx.min() - margin))), min(size, int(math.ceil(idx.max() + margin)) + 1)
        if a >= b:
            return None
        out.append(slice(a, b))
    return out[0], out[1], out[2]


def _render(sc: Scene, q: Seq) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free image and the target's occupancy on the series' grid, partial volume included."""
    grid = q.grid
    offs = grid.thick * ((np.arange(SUB_SLICES) + 0.5) / SUB_SLICES - 0.5)
    stack = np.zeros((SUB_SLICES, *grid.shape), np.float32)
    truth = np.zeros(grid.shape, np.float32)
    sig = {name: _signal(sc.tissues, name, q) for name in TISSUES if not name.endswith("+c")}
    for part in sc.parts:
        box = _index_box(part, grid, sc.pose)
        if box is None:
            continue
        once = part.box[0][2] <= -BIG and abs(grid.n[2] - 1.0) < 1e-9  # z-invariant part on an axial grid
        for i, off in enumerate(offs):
            if not (once and i):
                x, y, z = _coords(grid, *box, off, sc.pose)
                occ = _occupancy(part.sdf(x, y, z) * sc.pose[0], grid.px + part.soft)
                val = sig[part.tissue]
                if part.inner is not None:
                    val = val + (sig[part.inner[0]] - val) * part.inner[1](x, y, z)
            blk = stack[(i, *box)]
            stack[(i, *box)] = blk + (val - blk) * occ
            if part.target:
                truth[box] += np.broadcast_to(occ, blk.shape) / SUB_SLICES
    return stack.mean(0), truth


def _acquire(rng, clean: np.ndarray, grid: Grid, pose) -> np.ndarray:
    """Gamma, the sensitivity of a neck surface-coil array (sum of squares, partly normalised by the
    console, computed coarse and interpolated), blur and Rician noise of one series."""
    from scipy.ndimage import gaussian_filter, zoom

    body = clean > 0.05 * clean.max()
    img = np.clip(clean / np.percentile(clean[body], 99), 0, None) ** rng.uniform(0.8, 1.25)
    k, r, c = grid.shape
    x, y, z = _coords(grid, slice(0, k), slice(0, r, 8), slice(0, c, 8), 0.0, pose)
    d0, keep = rng.uniform(45, 75), rng.uniform(0.15, 0.65)  # falloff (mm); share of it the console leaves
    sos = np.zeros(np.broadcast_shapes(x.shape, z.shape), np.float32)
    for a in np.linspace(0, 2 * math.pi, int(rng.integers(4, 9)), endpoint=False) + rng.uniform(0, 1):
        cx, cy, cz = (HEAD["ax"] + 12) * math.cos(a), HEAD["cy"] + (HEAD["ay"] + 12) * math.sin(a), rng.uniform(-25, 25)
        sos += (1 + (np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) * pose[0] / d0) ** 2) ** -3.0
    bias = (np.sqrt(sos) / np.median(np.sqrt(sos))) ** keep
    img = img * zoom(bias, (1, r / bias.shape[1], c / bias.shape[2]), order=1)
    if rng.random() < 0.6:
        s = rng.uniform(0.3, 0.8)
        img = gaussian_filter(img, (0, s, s))
    sigma = rng.uniform(0.015, 0.045) * float(np.percentile(img[body], 75))
    return np.hypot(img + sigma * rng.standard_normal(img.shape, dtype=np.float32), sigma * rng.standard_normal(img.shape, dtype=np.float32))


# ---- DICOM ------------------------------------------------------------------------------------
def _write(folder: Path, pix: np.ndarray, q: Seq, style: str, study: dict, number: int, slope: float) -> None:
    """One single-frame MR Image Storage file per slice, headers as the fictitious console writes them."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    maker, variant, fs_opt, image_type, _ = STYLES[style]
    grid, key = q.grid, [study["key"], q.role]
    common = dict(SOPClassUID=MRImageStorage, StudyInstanceUID=study["uid"], SeriesInstanceUID=generate_uid(entropy_srcs=[*key, "series"]),
                  FrameOfReferenceUID=study["for"], PatientName=study["name"], PatientID=study["pid"], PatientSex=study["sex"],
                  StudyDate=study["date"], SeriesDate=study["date"], StudyTime="141000", AccessionNumber=study["acc"],
                  StudyDescription=study["desc"], Modality="MR", Manufacturer=maker, InstitutionName="THIRD PHANTOM CLINIC",
                  SeriesDescription=q.desc, SeriesNumber=number,
                  ProtocolName="PAROTID W+WO" if style == "helix" else q.desc,  # the helix console writes the exam protocol
                  ImageType=image_type.replace("M_SE\\M\\SE", "W\\W") if "DIXON" in q.desc else image_type,
                  ScanningSequence="SE", SequenceVariant=variant, MRAcquisitionType="2D", RepetitionTime=round(q.tr, 1),
                  EchoTime=round(q.te, 2), FlipAngle=90, EchoTrainLength=16 if q.role == "T2" else 3, MagneticFieldStrength=q.field_t,
                  ImageOrientationPatient=[round(float(a), 6) for a in (*grid.u, *grid.v)], PixelSpacing=[round(grid.px, 6)] * 2,
                  SliceThickness=round(grid.thick, 3), SpacingBetweenSlices=round(grid.step, 3), SamplesPerPixel=1,
                  PhotometricInterpretation="MONOCHROME2", Rows=pix.shape[1], Columns=pix.shape[2], BitsAllocated=16, BitsStored=16,
                  HighBit=15, PixelRepresentation=0)
    if q.fs and "DIXON" not in q.desc:
        common["ScanOptions"] = fs_opt
    if style == "lumina":
        common["SequenceName"] = "*tse2d1_" + ("15" if q.role == "T2" else "3")
    if q.role == "T1C":
        common.update(ContrastBolusAgent=study["agent"], ContrastBolusRoute="IV", ContrastBolusVolume=study["dose"])
    if slope != 1.0:
        common.update(RescaleSlope=round(slope, 6), RescaleIntercept=0, RescaleType="US")
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(pix.shape[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        for kw, val in common.items():
            setattr(ds, kw, val)
        pos = grid.origin + k * grid.step * grid.n
        ds.SOPInstanceUID, ds.InstanceNumber = generate_uid(entropy_srcs=[*key, str(k)]), k + 1
        ds.ImagePositionPatient, ds.SliceLocation = [round(float(a), 4) for a in pos], round(float(pos @ grid.n), 4)
        ds.PixelData = pix[k].tobytes()
        ds.save_as(folder / f"{study['pid']}_{number}_{k + 1:03d}.dcm", enforce_file_format=True)


def _prepare(seed: int):
    """Scene, acquisition plan, console style and report of a seed (everything but the pixels)."""
    scene_rng, text_rng, acq_rng, noise_rng = np.random.default_rng([seed, STREAM]).spawn(4)
    sc, glands, centre, semi = _scene(scene_rng)
    style = str(acq_rng.choice(list(STYLES)))
    plan = _plan(acq_rng, sc.pose, style)
    _add_lesions(scene_rng, sc, glands, centre, semi, plan["T1C"].grid)
    return sc, plan, style, _report(text_rng, sc), acq_rng, noise_rng


def write_foreign_study(seed: int, folder: Path) -> ForeignStudy:
    """Write one study (three series in s01..s03, order shuffled) and return its truth on the T1C grid."""
    from pydicom.uid import generate_uid

    sc, plan, style, report, acq_rng, noise_rng = _prepare(seed)
    key = f"third-{seed}"
    study = {"key": key, "uid": generate_uid(entropy_srcs=[key]), "for": generate_uid(entropy_srcs=[key, "for"]),
             "name": f"THIRD^SEED{seed}", "pid": f"TRD{seed:06d}", "sex": str(acq_rng.choice(["F", "M"])),
             "date": f"2024{1 + seed % 12:02d}{1 + seed % 28:02d}", "acc": f"T{seed:08d}", "agent": str(acq_rng.choice(AGENTS)),
             "dose": round(float(acq_rng.uniform(6, 15)), 1),
             "desc": str(acq_rng.choice(["MRI NECK PAROTID W/WO", "MR Parotids +C", "NECK^PAROTID", "Parotis MRT"]))}
    order = ["T1", "T2", "T1C"] if acq_rng.random() < 0.7 else ["T2", "T1", "T1C"]
    numbers, folders = sorted(acq_rng.choice(np.arange(2, 12), 3, replace=False)), acq_rng.permutation(3) + 1
    truth = np.zeros(0, bool)
    for i, role in enumerate(order):
        q = plan[role]
        clean, occ = _render(sc, q)
        img = _acquire(noise_rng, clean, q.grid, sc.pose)
        slope = float(acq_rng.uniform(0.8, 2.5)) if style == "nordlicht" else 1.0  # this console rescales
        pix = np.clip(np.round(img * acq_rng.uniform(800, 3500) / np.percentile(img[clean > 0.05 * clean.max()], 99.5) / slope), 0, 65535)
        number = int(numbers[i]) * 100 + 1 if style == "nordlicht" else int(numbers[i])
        _write(folder / f"s{folders[i]:02d}", pix.astype(np.uint16), q, style, study, number, slope)
        if role == "T1C":
            truth = occ > 0.5
    return ForeignStudy(folder=folder, report=report, truth=truth, kind=sc.kind, side=sc.side, lobe=sc.lobe,
                        fat_sat={r: plan[r].fs for r in ("T1", "T2", "T1C")})


def training_case(seed: int, size: int = 128, fov_mm: float = 210.0):
    """Study ``seed`` drawn straight onto one axial ``size`` x ``size`` grid of ``fov_mm`` centred
    in-plane on the head (the view a windowed model sees), with the T1C's slice thickness and step
    over the whole coverage; each sequence with the plan's contrast, fat saturation, field strength,
    gamma, coil bias, blur and noise. Returns a :class:`~pgsam_node.synth.second.SecondCase`."""
    import dataclasses

    from pgsam_node.synth.second import SecondCase

    sc, plan, _style, report, acq_rng, noise_rng = _prepare(seed)
    ref = plan["T1C"].grid
    _g, gz, _yaw, tx, ty, tz = sc.pose
    px = fov_mm / size
    z0, z1 = tz + gz * COVERAGE_Z[0], tz + gz * COVERAGE_Z[1]
    n_sl = int(math.ceil((z1 - z0) / ref.step)) + 1
    u, v, n = np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0])
    centre = np.array([tx, ty, (z0 + z1) / 2])
    grid = Grid(centre - (size - 1) / 2 * px * (u + v) - (n_sl - 1) / 2 * ref.step * n, u, v, n, px, ref.step, ref.thick,
                (n_sl, size, size))
    volumes, mask = {}, np.zeros(grid.shape, bool)
    for role in ("T1", "T2", "T1C"):
        q = dataclasses.replace(plan[role], grid=grid)
        clean, occ = _render(sc, q)
        volumes[role] = (_acquire(noise_rng, clean, grid, sc.pose) * float(acq_rng.uniform(800, 3500))).astype(np.float32)
        if role == "T1C":
            mask = occ > 0.5
    aff = np.eye(4)
    aff[:3, 0], aff[:3, 1], aff[:3, 2], aff[:3, 3] = u * px, v * px, n * ref.step, grid.origin
    return SecondCase(volumes, mask.astype(np.uint8), aff, report, sc.kind, sc.side, sc.lobe,
                      {r: plan[r].fs for r in ("T1", "T2", "T1C")})
