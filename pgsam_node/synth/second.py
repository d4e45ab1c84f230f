"""A second, independent parotid phantom generator: the stand-in for "another generator".

Written without :mod:`pgsam_node.synth` (no shared code, shapes, signal tables, header vocabulary
or report templates), so that a model trained on our generator meets phantoms it has not seen:

- anatomy: head outline with skin and subcutaneous fat, mandibular rami (cortex and marrow),
  masseter, pterygoid and sternocleidomastoid muscles, airway, vertebra, cord in CSF, the
  retromandibular vein and external carotid in the gland, lymph nodes; glands and lesions are
  lobulated implicit surfaces, not ellipsoids;
- lesions: pleomorphic adenoma, Warthin tumour (with cysts), basal cell adenoma, carcinoma
  (infiltrative margin), each with its own signal on T1, T2 and post-contrast T1, +-20 %;
- scanner: arbitrary gains (hundreds to thousands), offsets, a smooth bias field, Rician noise
  of 1-5 %, slice profile over 3-5 mm slices with gaps, in-plane matrices of 256-384 at
  0.5-0.9 mm, T2 on its own grid, fat saturation by chance on T2 and post-contrast T1;
- DICOM: MR Image Storage written with pydicom, one vocabulary of series descriptions per
  vendor (not ours), the contrast agent named in the header only sometimes;
- reports: their own wording, sizes in mm or cm, sometimes terse.

``write_foreign_study(seed, folder)`` writes one study and returns the report and the truth mask
on the post-contrast T1's grid.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Signal of each tissue on (T1, T2, T2 fat-saturated, T1 post-contrast, T1 post-contrast fat-saturated).
TISSUE = {
    "air": (0.0, 0.0, 0.0, 0.0, 0.0),
    "fat": (1.0, 0.85, 0.07, 1.0, 0.1),
    "muscle": (0.33, 0.22, 0.24, 0.4, 0.42),
    "skin": (0.5, 0.4, 0.35, 0.55, 0.5),
    "gland": (0.72, 0.6, 0.33, 0.8, 0.5),
    "cortex": (0.03, 0.03, 0.03, 0.03, 0.03),
    "marrow": (0.9, 0.7, 0.12, 0.92, 0.15),
    "csf": (0.12, 1.25, 1.25, 0.13, 0.13),
    "cord": (0.45, 0.38, 0.38, 0.46, 0.46),
    "vertebra": (0.65, 0.45, 0.18, 0.7, 0.25),
    "vein": (0.2, 0.06, 0.06, 1.1, 1.15),
    "artery": (0.05, 0.03, 0.03, 0.6, 0.6),
    "node": (0.36, 0.52, 0.6, 0.58, 0.62),
}
LESIONS = {
    # name: (signals, report diagnosis, cysts, infiltrative)
    "pleomorphic adenoma": ((0.3, 1.15, 1.1, 0.75, 0.8), "pleomorphic adenoma", False, False),
    "Warthin tumour": ((0.42, 0.48, 0.52, 0.52, 0.55), "Warthin tumour", True, False),
    "basal cell adenoma": ((0.35, 0.85, 0.85, 0.95, 1.0), "basal cell adenoma", False, False),
    "carcinoma": ((0.36, 0.42, 0.47, 0.62, 0.66), "mucoepidermoid carcinoma", False, True),
}
VENDORS = {
    "GE MEDICAL SYSTEMS": ("AX T1 FSE", "AX T2 FSE FS", "AX T2 FSE", "AX T1 FS POST GAD", "AX T1 POST GAD"),
    "SIEMENS": ("t1_tse_tra", "t2_tse_fs_tra", "t2_tse_tra", "t1_tse_fs_tra_KM", "t1_tse_tra_KM"),
    "Philips Medical Systems": ("T1W_TSE_TRA", "T2W_SPAIR_TRA", "T2W_TSE_TRA", "T1W_SPIR_TRA_GD", "T1W_TSE_TRA_GD"),
}


@dataclass
class Blob:
    """A lobulated implicit solid: a rotated ellipsoid whose radius wobbles with direction."""

    centre: np.ndarray
    semi: np.ndarray
    rot: np.ndarray
    wobble: list[tuple[np.ndarray, float, float]] = field(default_factory=list)

    def level(self, p: np.ndarray) -> np.ndarray:
        """< 1 inside; ``p`` (..., 3) in mm."""
        q = (p - self.centre) @ self.rot
        r = np.sqrt(np.sum((q / self.semi) ** 2, axis=-1))
        if self.wobble:
            u = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-6)
            w = sum(a * np.cos(u @ k + ph) for k, a, ph in self.wobble)
            r = r / (1.0 + w)
        return r


def _rot(rng: np.random.Generator, spread: float) -> np.ndarray:
    a, b, c = rng.normal(0, spread, 3)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _blob(rng, centre, semi, lobulation: float, spread: float = 0.15) -> Blob:
    wob = [(rng.normal(0, 2.2, 3), float(rng.uniform(0, lobulation)), float(rng.uniform(0, 2 * np.pi)))
           for _ in range(int(rng.integers(2, 5)))] if lobulation > 0 else []
    return Blob(np.asarray(centre, float), np.asarray(semi, float), _rot(rng, spread), wob)


@dataclass
class Scene:
    objects: list[tuple[str, Blob, float]]  # (tissue or "lesion"/"cyst", solid, margin blur in mm), painted in order
    lesion: Blob
    lesion_signal: tuple[float, ...]
    cyst_signal: tuple[float, ...]
    side: str
    lobe: str
    dims_mm: list[float]
    kind: str


def make_scene(rng: np.random.Generator) -> Scene:
    s = {"left": 1.0, "right": -1.0}
    side = str(rng.choice(["left", "right"]))
    head = rng.uniform(0.9, 1.1)
    objs: list[tuple[str, Blob, float]] = []
    objs.append(("skin", _blob(rng, (0, 8, 0), np.array([74, 88, 140]) * head, 0.02, 0.03), 0.0))
    objs.append(("fat", _blob(rng, (0, 8, 0), np.array([70, 84, 140]) * head, 0.02, 0.03), 0.0))
    objs.append(("muscle", _blob(rng, (0, 10, 0), np.array([58, 70, 140]) * head, 0.04, 0.03), 0.0))
    glands = {}
    for side_name, sgn in s.items():
        cx = sgn * rng.uniform(44, 52) * head
        g = _blob(rng, (cx, rng.uniform(12, 22), rng.uniform(-4, 4)), (rng.uniform(11, 16), rng.uniform(18, 25), rng.uniform(20, 28)), 0.08)
        deep = _blob(rng, (sgn * rng.uniform(30, 36) * head, rng.uniform(18, 26), rng.uniform(-6, 2)),
                     (rng.uniform(6, 9), rng.uniform(8, 12), rng.uniform(12, 18)), 0.08)
        glands[side_name] = (g, deep)
        objs += [("fat", _blob(rng, g.centre, g.semi + 3, 0.03), 0.0), ("gland", g, 0.8), ("gland", deep, 0.8)]
        # mandibular ramus (cortex around marrow), masseter lateral to it, pterygoid medial
        rx = sgn * rng.uniform(38, 43) * head
        objs += [("muscle", _blob(rng, (sgn * rng.uniform(50, 56) * head, -12, 0), (7, 22, 40), 0.05), 0.5),
                 ("muscle", _blob(rng, (sgn * 26 * head, -4, 0), (7, 16, 35), 0.05), 0.5),
                 ("cortex", _blob(rng, (rx, -2, 0), (5, 17, 60), 0.02, 0.05), 0.0),
                 ("marrow", _blob(rng, (rx, -2, 0), (2.5, 13, 60), 0.02, 0.05), 0.0),
                 ("muscle", _blob(rng, (sgn * 46 * head, 48, 0), (9, 14, 60), 0.05), 0.5),
                 ("vein", _blob(rng, (cx - sgn * 5, rng.uniform(8, 14), 0), (2.5, 2.5, 80), 0.0, 0.1), 0.3),
                 ("artery", _blob(rng, (cx - sgn * 9, rng.uniform(14, 20), 0), (2, 2, 80), 0.0, 0.1), 0.3)]
    objs += [("air", _blob(rng, (0, -6, 0), (rng.uniform(6, 11), rng.uniform(6, 11), 80), 0.05), 0.5),
             ("vertebra", _blob(rng, (0, 38, 0), (16, 13, 80), 0.03), 0.5),
             ("csf", _blob(rng, (0, 58, 0), (9, 8, 80), 0.0), 0.5),
             ("cord", _blob(rng, (0, 58, 0), (5, 4, 80), 0.0), 0.5)]
    for _ in range(int(rng.integers(0, 4))):  # level II nodes
        objs.append(("node", _blob(rng, (rng.choice([-1, 1]) * rng.uniform(30, 45), rng.uniform(30, 45), rng.uniform(-20, 10)),
                                   rng.uniform(2.5, 6, 3), 0.05), 0.5))
    kind = str(rng.choice(list(LESIONS)))
    sig, dx, cysts, infiltrative = LESIONS[kind]
    sig = tuple(float(v * rng.uniform(0.8, 1.2)) for v in sig)
    g, deep = glands[side]
    lobe = "deep" if rng.uniform() < 0.25 else "superficial"
    base = deep if lobe == "deep" else g
    d = np.sort(rng.uniform(8, 34, 3))[::-1]
    if lobe == "deep":
        d = np.minimum(d, 24)
    centre = base.centre + rng.uniform(-0.35, 0.35, 3) * base.semi
    les = _blob(rng, centre, d / 2, 0.12 if kind != "carcinoma" else 0.2, 0.4)
    margin = 2.0 if infiltrative else 0.4
    objs.append(("lesion", les, margin))
    if cysts:
        for _ in range(int(rng.integers(1, 4))):
            objs.append(("cyst", _blob(rng, centre + rng.uniform(-0.3, 0.3, 3) * d / 2, d / rng.uniform(5, 9), 0.05), 0.3))
    cyst_sig = (0.3, 1.2, 1.2, 0.32, 0.33) if rng.uniform() < 0.7 else (0.8, 0.9, 0.85, 0.82, 0.8)
    return Scene(objs, les, sig, cyst_sig, side, lobe, [float(x) for x in d], kind)


def _signal(name: str, scene: Scene) -> tuple[float, ...]:
    if name == "lesion":
        return scene.lesion_signal
    if name == "cyst":
        return scene.cyst_signal
    return TISSUE[name]


@dataclass
class SeriesGrid:
    shape: tuple[int, int, int]  # (slices, rows, cols)
    pixel: float
    thickness: float
    gap: float
    centre: np.ndarray

    def points(self, k: int, dz: float = 0.0) -> np.ndarray:
        z, r, c = self.shape
        ys = (np.arange(r) - (r - 1) / 2) * self.pixel + self.centre[1]
        xs = (np.arange(c) - (c - 1) / 2) * self.pixel + self.centre[0]
        zz = self.z(k) + dz
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        return np.stack([xx, yy, np.full_like(xx, zz)], axis=-1)

    def z(self, k: int) -> float:
        return float(self.centre[2] + (k - (self.shape[0] - 1) / 2) * (self.thickness + self.gap))

    def origin(self, k: int) -> list[float]:
        z, r, c = self.shape
        return [float(self.centre[0] - (c - 1) / 2 * self.pixel), float(self.centre[1] - (r - 1) / 2 * self.pixel), self.z(k)]


def _window(blob: Blob, grid: SeriesGrid, z: float) -> tuple[slice, slice] | None:
    """Rows and columns of ``grid`` that the blob can reach on the plane at ``z`` (None: none)."""
    # half-extent of the rotated ellipsoid along each world axis, with room for the wobble
    ext = np.sqrt(((blob.rot * blob.semi[None, :]) ** 2).sum(axis=1)) * 1.4 + 2 * grid.pixel
    if abs(z - blob.centre[2]) > ext[2]:
        return None
    _, r, c = grid.shape
    c0 = (blob.centre[0] - grid.centre[0]) / grid.pixel + (c - 1) / 2
    r0 = (blob.centre[1] - grid.centre[1]) / grid.pixel + (r - 1) / 2
    hx, hy = ext[0] / grid.pixel, ext[1] / grid.pixel
    rows = slice(int(max(0, np.floor(r0 - hy))), int(min(r, np.ceil(r0 + hy) + 1)))
    cols = slice(int(max(0, np.floor(c0 - hx))), int(min(c, np.ceil(c0 + hx) + 1)))
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return None
    return rows, cols


def render(scene: Scene, grid: SeriesGrid, channel: int, rng: np.random.Generator, fov_mm: float) -> np.ndarray:
    """One series, relative signal, with slice profile, texture, bias and Rician noise."""
    out = np.zeros(grid.shape, np.float32)
    offsets = np.linspace(-grid.thickness / 3, grid.thickness / 3, 3)
    tex_k = rng.normal(0, 0.15, (3, 3))
    tex_ph = rng.uniform(0, 2 * np.pi, 3)
    bias = rng.normal(0, 0.25, 3)
    sigma = rng.uniform(0.01, 0.05)
    for k in range(grid.shape[0]):
        acc = np.zeros(grid.shape[1:], np.float32)
        for dz in offsets:
            p = grid.points(k, dz)
            img = np.zeros(p.shape[:2], np.float32)
            for name, blob, blur in scene.objects:
                win = _window(blob, grid, float(p[0, 0, 2]))
                if win is None:
                    continue
                sub = p[win]
                lv = blob.level(sub)
                # soft edge about ``blur`` mm wide (0 = a pixel's width)
                width = max(blur, grid.pixel) / float(np.min(blob.semi))
                a = np.clip((1.0 - lv) / width + 0.5, 0.0, 1.0).astype(np.float32)
                if not a.any():
                    continue
                v = _signal(name, scene)[channel]
                if name in ("lesion", "gland"):
                    t = 1.0 + 0.12 * np.cos(sub @ tex_k[:, 0] + tex_ph[0]) * np.cos(sub @ tex_k[:, 1] + tex_ph[1])
                    v = v * t.astype(np.float32)
                img[win] = img[win] * (1 - a) + a * v
            acc += img
        img = acc / len(offsets)
        p = grid.points(k)
        b = np.exp(bias[0] * p[..., 0] / fov_mm + bias[1] * p[..., 1] / fov_mm + bias[2] * (p[..., 0] ** 2) / fov_mm**2)
        img = img * b.astype(np.float32)
        noise = rng.normal(0, sigma, (2,) + img.shape).astype(np.float32)
        out[k] = np.sqrt((img + noise[0]) ** 2 + noise[1] ** 2)
    return out


def lesion_mask(scene: Scene, grid: SeriesGrid) -> np.ndarray:
    return np.stack([scene.lesion.level(grid.points(k)) < 1.0 for k in range(grid.shape[0])]).astype(np.uint8)


def report(scene: Scene, rng: np.random.Generator) -> str:
    d = sorted(scene.dims_mm, reverse=True)
    dx = LESIONS[scene.kind][1]
    style = int(rng.integers(0, 4))
    cm = lambda v: f"{v / 10:.1f}"  # noqa: E731
    if style == 0:
        return (f"MRI parotid glands with and without gadolinium. FINDINGS: In the {scene.lobe} lobe of the {scene.side} "
                f"parotid gland there is a lobulated mass measuring {d[0]:.0f} x {d[1]:.0f} x {d[2]:.0f} mm. "
                f"The other parotid gland is normal. IMPRESSION: {scene.side.capitalize()} parotid mass, most in keeping with {dx}.")
    if style == 1:
        return f"{scene.side.upper()} PAROTID: {cm(d[0])} cm solid lesion, {scene.lobe} lobe. Favour {dx}."
    if style == 2:
        return (f"There is a {d[0]:.0f}-mm {scene.side}-sided parotid tumour. It is centred in the {scene.lobe} "
                f"portion of the gland. No cervical lymphadenopathy. Conclusion: {dx}.")
    return f"{scene.side.capitalize()} parotid lesion of {cm(d[0])} by {cm(d[1])} cm."


def _write_series(folder: Path, arr: np.ndarray, grid: SeriesGrid, meta: dict, uids: dict, desc: str, number: int,
                  post: bool, tr: float, te: float, gain: float, vendor: str, agent_in_header: bool) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    series_uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    pix = np.clip(arr * gain, 0, 65535).astype(np.uint16)
    for k in range(arr.shape[0]):
        fm = FileMetaDataset()
        fm.MediaStorageSOPClassUID = MRImageStorage
        fm.MediaStorageSOPInstanceUID = generate_uid()
        fm.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM{k:04d}.dcm"), {}, file_meta=fm, preamble=b"\0" * 128)
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = fm.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = uids["study"]
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = uids["for"]
        ds.PatientName, ds.PatientID = "FOREIGN^PHANTOM", meta["pid"]
        ds.StudyDate = ds.SeriesDate = meta["date"]
        ds.StudyTime = "101500"
        ds.AccessionNumber = meta["acc"]
        ds.StudyDescription = "MRI NECK PAROTID W/WO"
        ds.Modality, ds.Manufacturer = "MR", vendor
        ds.SeriesDescription = desc
        ds.ProtocolName = desc
        ds.SeriesNumber, ds.InstanceNumber = number, k + 1
        ds.BodyPartExamined = "NECK"
        ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "SE", "SK", "2D"
        ds.RepetitionTime, ds.EchoTime = f"{tr:.0f}", f"{te:.1f}"
        ds.MagneticFieldStrength = "1.5"
        if post and agent_in_header:
            ds.ContrastBolusAgent = "GADOBUTROL"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = grid.origin(k)
        ds.SliceLocation = grid.z(k)
        ds.PixelSpacing = [grid.pixel, grid.pixel]
        ds.SliceThickness = grid.thickness
        ds.SpacingBetweenSlices = grid.thickness + grid.gap
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = pix.shape[1], pix.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pix[k].tobytes()
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)


@dataclass
class ForeignStudy:
    folder: Path
    report: str
    truth: np.ndarray  # on the post-contrast T1's grid, (slices, rows, cols)
    kind: str
    side: str
    lobe: str
    fat_sat: dict[str, bool]


def write_foreign_study(seed: int, folder: Path) -> ForeignStudy:
    from pydicom.uid import generate_uid

    rng = np.random.default_rng([seed, 0xF0])
    scene = make_scene(rng)
    vendor = str(rng.choice(list(VENDORS)))
    names = VENDORS[vendor]
    n = int(rng.choice([256, 320, 384]))
    pixel = float(rng.uniform(0.5, 0.9))
    fov = n * pixel
    zc = float(scene.lesion.centre[2] + rng.uniform(-10, 10))
    centre = np.array([rng.uniform(-5, 5), rng.uniform(5, 15), zc])
    thick = float(rng.uniform(3, 5))
    gap = float(rng.choice([0.0, 0.3, 1.0]))
    nz = int(np.ceil(rng.uniform(70, 100) / (thick + gap)))
    t1_grid = SeriesGrid((nz, n, n), pixel, thick, gap, centre)
    n2 = int(rng.choice([256, 320, 384]))
    t2_thick = float(rng.uniform(3, 5))
    t2_grid = SeriesGrid((int(np.ceil(rng.uniform(70, 100) / t2_thick)), n2, n2), fov / n2, t2_thick, 0.0,
                         centre + np.array([0, 0, rng.uniform(-5, 5)]))
    fs_t2 = bool(rng.uniform() < 0.6)
    fs_c = bool(rng.uniform() < 0.5)
    uids = {"study": generate_uid(), "for": generate_uid()}
    meta = {"pid": f"FGN{seed:06d}", "date": (dt.date(2024, 1, 1) + dt.timedelta(days=int(seed % 365))).strftime("%Y%m%d"),
            "acc": f"F{seed:08d}"}
    agent = bool(rng.uniform() < 0.5)
    plan = [("T1", t1_grid, 0, names[0], False, 550, 12), ("T2", t2_grid, 2 if fs_t2 else 1, names[1] if fs_t2 else names[2], False, 4200, 90),
            ("T1C", t1_grid, 4 if fs_c else 3, names[3] if fs_c else names[4], True, 600, 12)]
    for i, (_role, grid, ch, desc, post, tr, te) in enumerate(plan):
        arr = render(scene, grid, ch, np.random.default_rng([seed, 0xF1 + i]), fov)
        gain = float(rng.uniform(300, 3000))
        _write_series(folder / f"s{i + 1:02d}", arr, grid, meta, uids, desc, 100 * (i + 1) + int(rng.integers(0, 9)), post,
                      tr * rng.uniform(0.8, 1.2), te * rng.uniform(0.8, 1.2), gain, vendor, agent)
    return ForeignStudy(folder, report(scene, rng), lesion_mask(scene, t1_grid), scene.kind, scene.side, scene.lobe,
                        {"T2": fs_t2, "T1C": fs_c})


@dataclass
class SecondCase:
    """One study of this generator on one grid, ready for training (no DICOM written)."""

    volumes: dict[str, np.ndarray]  # role -> (slices, rows, cols) float32, on one grid
    mask: np.ndarray
    affine: np.ndarray  # voxel (column, row, slice) -> LPS mm
    report: str
    kind: str
    side: str
    lobe: str
    fat_sat: dict[str, bool]


def training_case(seed: int, size: int = 128, fov_mm: float = 210.0) -> SecondCase:
    """Study ``seed`` drawn straight onto one axial ``size`` x ``size`` grid of ``fov_mm`` (the field
    of view a windowed model sees, :mod:`pgsam_node.inference.field_of_view`), 3-5 mm slices over
    70-100 mm around the lesion; each sequence with its own gain, bias and noise. Seeds of
    training and evaluation must be kept apart by the caller (the benchmark uses 0-15)."""
    rng = np.random.default_rng([seed, 0xF5])
    scene = make_scene(rng)
    thick = float(rng.uniform(3, 5))
    gap = float(rng.choice([0.0, 0.3, 1.0]))
    nz = int(np.ceil(rng.uniform(70, 100) / (thick + gap)))
    centre = np.array([rng.uniform(-8, 8), rng.uniform(2, 18), float(scene.lesion.centre[2] + rng.uniform(-10, 10))])
    grid = SeriesGrid((nz, size, size), fov_mm / size, thick, gap, centre)
    fs_t2 = bool(rng.uniform() < 0.6)
    fs_c = bool(rng.uniform() < 0.5)
    channels = {"T1": 0, "T2": 2 if fs_t2 else 1, "T1C": 4 if fs_c else 3}
    volumes = {}
    for i, (role, ch) in enumerate(channels.items()):
        volumes[role] = render(scene, grid, ch, np.random.default_rng([seed, 0xF6 + i]), fov_mm) * float(rng.uniform(300, 3000))
    aff = np.eye(4)
    aff[:3, 0], aff[:3, 1] = (grid.pixel, 0, 0), (0, grid.pixel, 0)
    aff[:3, 2], aff[:3, 3] = (0, 0, grid.thickness + grid.gap), grid.origin(0)
    return SecondCase(volumes, lesion_mask(scene, grid), aff, report(scene, rng), scene.kind, scene.side, scene.lobe,
                      {"T2": fs_t2, "T1C": fs_c})
