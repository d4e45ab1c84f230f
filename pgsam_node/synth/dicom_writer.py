"""Write a synthetic phantom as a DICOM MR study: three series (T1, T2 FS, T1 FS post-Gd).

Each series has its own realistic geometry (matrix, field of view, slice thickness, gap, slice
count; T1 sometimes coronal or slightly oblique, T2 sometimes tilted) and vendor-style headers
(Siemens / GE / Philips naming, sequence attributes, Philips-style rescale). All three share one
StudyInstanceUID and FrameOfReferenceUID (PS3.3 C.7.4.1: one patient coordinate system per
frame of reference), so the node's geometry stage can resample them onto one grid.

Files are Part-10, Explicit VR Little Endian, MR Image Storage (PS3.4 B.5,
1.2.840.10008.5.1.4.1.1.4). All UIDs are derived deterministically from the seed (name-based UUIDs under 2.25).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage, PYDICOM_IMPLEMENTATION_UID
from pydicom.valuerep import format_number_as_ds

from pgsam_node.findings import Findings
from pgsam_node.synth.phantom import AXIAL, CORONAL, ROLES, Grid, Phantom, case_report, make_phantom, rotation

log = logging.getLogger(__name__)

#: Vendor header styles. Series names follow each vendor's protocol naming.
VENDORS: dict[str, dict] = {
    "siemens": {
        "Manufacturer": "SIEMENS",
        "models": {3.0: ["Skyra", "Prisma", "MAGNETOM Vida"], 1.5: ["Aera", "Avanto_fit"]},
        "SoftwareVersions": ["syngo MR E11", "syngo MR XA20"],
        "names": {"T1": "t1_tse_tra", "T1_cor": "t1_tse_cor", "T2": "t2_tse_fs_tra", "T1C": "t1_tse_fs_tra_post"},
        "SequenceName": {"T1": "*tse2d1_3", "T2": "*tse2d1_15", "T1C": "*tse2d1_3"},
        "SequenceVariant": ["SK", "SP", "OSP"],
        "ScanOptions": {"T1": "", "T2": "FS", "T1C": "FS"},
        "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"],
        "ReceiveCoilName": "HeadNeck_20",
        "rescale": False,
    },
    "ge": {
        "Manufacturer": "GE MEDICAL SYSTEMS",
        "models": {3.0: ["DISCOVERY MR750", "SIGNA Architect"], 1.5: ["Optima MR450w", "SIGNA Artist"]},
        "SoftwareVersions": ["27\\LX\\MR Software release:RX27.0_R02", "DV26.0_R03_1831.b"],
        "names": {"T1": "Ax T1 FSE", "T1_cor": "Cor T1 FSE", "T2": "Ax T2 FRFSE FS", "T1C": "Ax T1 FS +C"},
        "SequenceName": {"T1": "fse-xl", "T2": "frfse-xl", "T1C": "fse-xl"},
        "SequenceVariant": ["SK", "OSP"],
        "ScanOptions": {"T1": "FAST_GEMS", "T2": "FAST_GEMS\\FS", "T1C": "FAST_GEMS\\FS"},
        "ImageType": ["ORIGINAL", "PRIMARY", "OTHER"],
        "ReceiveCoilName": "HNS Head",
        "rescale": False,
    },
    "philips": {
        "Manufacturer": "Philips Medical Systems",
        "models": {3.0: ["Ingenia", "Achieva dStream"], 1.5: ["Ingenia", "Achieva"]},
        "SoftwareVersions": ["5.6.1\\5.6.1.2", "5.4.1\\5.4.1.0"],
        "names": {"T1": "T1W_TSE", "T1_cor": "T1W_TSE_COR", "T2": "T2W_TSE_SPAIR", "T1C": "T1W_TSE_GD"},
        "SequenceName": {"T1": "TSE", "T2": "TSE", "T1C": "TSE"},
        "SequenceVariant": ["SK"],
        "ScanOptions": {"T1": "", "T2": "FS", "T1C": "FS"},
        "ImageType": ["ORIGINAL", "PRIMARY", "M_SE", "M", "SE"],
        "ReceiveCoilName": "dS HeadNeckSpine",
        "rescale": True,
    },
}

_CONTRAST_AGENTS = ["Gadovist", "Dotarem", "MultiHance", "Clariscan"]


@dataclass
class SeriesPlan:
    """Geometry and acquisition parameters of one series."""

    role: str
    grid: Grid
    plane: str  # "axial" | "coronal" | "oblique"
    series_number: int
    description: str
    slice_thickness: float
    tr: float
    te: float
    etl: int
    flip: float
    slope: float = 1.0
    intercept: float = 0.0
    bits_stored: int = 12
    instance_order: str = "ascending"  # ascending | descending | interleaved


@dataclass
class SyntheticStudy:
    """What :func:`write_study` wrote.

    ``paths_by_role[role]`` lists the files of a series in grid (slice index k) order;
    ``mask`` is the target-lesion mask (Z, Y, X) uint8 on ``grids["T1C"]``, slice k of the mask
    being the image in ``paths_by_role["T1C"][k]``.
    """

    out_dir: Path
    paths_by_role: dict[str, list[Path]]
    grids: dict[str, Grid]
    mask: np.ndarray
    mask_path: Path
    study_uid: str
    accession_number: str
    patient_id: str
    patient_name: str
    study_date: str
    study_time: str
    report_text: str
    report_language: str
    findings: Findings
    frame_of_reference_uid: str
    series_uids: dict[str, str]
    sop_uids_by_role: dict[str, list[str]]
    vendor: str
    distractor: str | None
    plans: dict[str, SeriesPlan] = field(default_factory=dict)


#: Namespace of the name-based UUIDs behind synthetic UIDs.
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:pgsam-node:synthetic")


def _uid(seed: int, *parts) -> str:
    """Deterministic UID from the seed and a label: "2.25." + a name-based UUID (PS3.5 B.2).

    pydicom's ``generate_uid(prefix=None, entropy_srcs=...)`` ignores the entropy sources and
    returns a random UUID, so the name-based UUID (RFC 4122 version 5) is formed here.
    """
    name = "/".join(["synthetic", str(int(seed)), *[str(p) for p in parts]])
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}")


def _ds(v: float) -> str:
    """A DS string of at most 16 characters (PS3.5 6.2)."""
    return format_number_as_ds(float(v))


def _lesion_bounds(ph: Phantom) -> tuple[np.ndarray, np.ndarray]:
    c = ph.target.shape.center
    r = max(ph.target.diameters_mm) / 2 + 2
    return c - r, c + r


def _t1c_other_plane(ph: Phantom, plane: str, center: tuple, px: float, sp: float) -> Grid:
    """A coronal or sagittal T1C slab through ``center`` covering both glands and the lesion."""
    lo, hi = _lesion_bounds(ph)
    glands = np.array([ph.glands[s]["center"] for s in ("left", "right")], np.float64)
    if plane == "coronal":
        # Slices front to back over the glands (and the whole lesion); rows head to feet.
        span = max(90.0, float(hi[1] - lo[1]) + 20.0)
        n = int(np.ceil(span / sp)) + 1
        rows = cols = int(round(200.0 / px / 16) * 16)
        c = (center[0], float(lo[1] + hi[1]) / 2, center[2])
        return Grid.from_center(c, (n, rows, cols), (sp, px, px), CORONAL)
    if plane == "sagittal":
        # Slices right to left over both glands; columns anterior to posterior, rows head to feet.
        span = float(abs(glands[0, 0] - glands[1, 0])) + 50.0
        n = int(np.ceil(span / sp)) + 1
        rows = cols = int(round(200.0 / px / 16) * 16)
        sag = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # i = +y, j = -z, k = +x
        return Grid.from_center((float(glands[:, 0].mean()), center[1], center[2]), (n, rows, cols), (sp, px, px), sag)
    raise ValueError(f"t1c_plane must be axial, coronal or sagittal, not {plane!r}")


def plan_series(ph: Phantom, rng: np.random.Generator, vendor: str, t1c_plane: str = "axial") -> dict[str, SeriesPlan]:
    """Choose per-series geometry and acquisition parameters (all differ realistically).

    ``t1c_plane`` "coronal" or "sagittal" acquires the post-contrast T1 (the reference series) in
    that plane instead of axially (as parotid protocols often do); the other draws are unchanged."""
    v = VENDORS[vendor]
    hc = ph.head_center
    gz = float(np.mean([ph.glands[s]["center"][2] for s in ("left", "right")]))
    lo, hi = _lesion_bounds(ph)
    plans: dict[str, SeriesPlan] = {}

    def z_center(extent: float) -> float:
        # Cover the glands; shift if needed so the whole lesion is inside the slab.
        cz = gz + rng.uniform(-5, 5)
        half = extent / 2 - 2
        return float(np.clip(cz, hi[2] - half, lo[2] + half)) if half * 2 > hi[2] - lo[2] else float((lo[2] + hi[2]) / 2)

    # T1C: axial, 0.5-0.8 mm in-plane, 3 mm slices (the reference series).
    cols = int(rng.choice([320, 352, 384]))
    px = float(rng.uniform(0.55, 0.72))
    rows = cols if rng.uniform() < 0.6 else int(round(cols * rng.choice([1.0625, 1.125]) / 16) * 16)
    st = 3.0
    sp = float(rng.choice([3.0, 3.3, 3.6]))
    n = int(rng.integers(26, 33))
    c = (hc[0] + rng.uniform(-4, 4), hc[1] + rng.uniform(-6, 6), z_center(sp * (n - 1)))
    g = Grid.from_center(c, (n, rows, cols), (sp, px, px), AXIAL)
    if t1c_plane != "axial":
        g = _t1c_other_plane(ph, t1c_plane, c, px, sp)
    plans["T1C"] = SeriesPlan("T1C", g, t1c_plane, 0, v["names"]["T1C"], st,
                              tr=float(rng.uniform(450, 700)), te=float(rng.uniform(8, 14)), etl=int(rng.integers(3, 5)), flip=0)

    # T2 FS: axial (sometimes tilted about the x axis), coarser, thicker slices with a gap.
    cols = int(rng.choice([256, 288, 320]))
    fov = float(rng.uniform(200, 240))
    px = fov / cols
    st = float(rng.choice([4.0, 4.0, 5.0]))
    sp = st + float(rng.choice([0.4, 0.5, 1.0]))
    n = int(rng.integers(18, 25))
    tilt = float(rng.uniform(-12, 12)) if rng.uniform() < 0.35 else 0.0
    d = rotation(math.radians(tilt), 0.0, 0.0) @ AXIAL
    c = (hc[0] + rng.uniform(-4, 4), hc[1] + rng.uniform(-6, 6), z_center(sp * (n - 1) * math.cos(math.radians(tilt))))
    g = Grid.from_center(c, (n, cols, cols), (sp, px, px), d)
    plans["T2"] = SeriesPlan("T2", g, "oblique" if tilt else "axial", 0, v["names"]["T2"], st,
                             tr=float(rng.uniform(3000, 5200)), te=float(rng.uniform(80, 105)), etl=int(rng.integers(12, 21)), flip=0)

    # T1: axial with another matrix, coronal (35 %) or slightly oblique axial (15 %).
    u = rng.uniform()
    cols = int(rng.choice([256, 320, 384]))
    fov = float(rng.uniform(190, 230))
    px = fov / cols
    st = float(rng.choice([3.0, 3.5, 4.0]))
    sp = st + float(rng.choice([0.0, 0.3, 0.5]))
    if u < 0.35:
        # Coronal slices cover the glands front to back; rows run head (top) to feet.
        n = int(rng.integers(24, 33))  # ~85-130 mm front to back: masseter to mastoid
        gy = float(np.mean([ph.glands[s]["center"][1] for s in ("left", "right")]))
        cy = gy + rng.uniform(-5, 5)
        half = sp * (n - 1) / 2 - 2
        cy = float(np.clip(cy, hi[1] - half, lo[1] + half)) if 2 * half > hi[1] - lo[1] else float((lo[1] + hi[1]) / 2)
        rows = int(round(cols * 0.875 / 16) * 16)
        c = (hc[0] + rng.uniform(-4, 4), cy, gz + rng.uniform(-10, 10))
        g = Grid.from_center(c, (n, rows, cols), (sp, px, px), CORONAL)
        plane, desc = "coronal", v["names"]["T1_cor"]
    else:
        n = int(rng.integers(20, 29))
        ang = float(rng.uniform(-8, 8)) if u > 0.85 else 0.0
        d = rotation(0.0, 0.0, math.radians(ang)) @ rotation(math.radians(ang / 2), 0.0, 0.0) @ AXIAL
        c = (hc[0] + rng.uniform(-4, 4), hc[1] + rng.uniform(-6, 6), z_center(sp * (n - 1)))
        g = Grid.from_center(c, (n, cols, cols), (sp, px, px), d)
        plane, desc = ("oblique" if ang else "axial"), v["names"]["T1"]
    plans["T1"] = SeriesPlan("T1", g, plane, 0, desc, st,
                             tr=float(rng.uniform(450, 750)), te=float(rng.uniform(8, 15)), etl=int(rng.integers(2, 5)), flip=0)

    # Series numbers in acquisition order (T1, T2, T1C), vendor-like numbering.
    base = {"siemens": 1, "ge": 100, "philips": 201}[vendor]
    step = {"siemens": 1, "ge": 100, "philips": 100}[vendor]
    for i, role in enumerate(("T1", "T2", "T1C")):
        p = plans[role]
        p.series_number = base + (i + 1) * step if vendor != "siemens" else 2 + i
        p.flip = {"siemens": 150.0, "ge": 111.0, "philips": 90.0}[vendor]
        p.instance_order = str(rng.choice(["ascending", "ascending", "descending", "interleaved"]))
        p.bits_stored = 12
        if v["rescale"]:
            p.slope = float(np.round(rng.uniform(0.6, 2.6), 5))
            p.intercept = float(rng.choice([0.0, 0.0, -10.0]))
            p.bits_stored = 16
    return plans


def _instance_numbers(n: int, order: str) -> list[int]:
    """InstanceNumber of each slice k (grid order); scanners do not always number by position."""
    if order == "descending":
        return [n - k for k in range(n)]
    if order == "interleaved":
        seq = list(range(0, n, 2)) + list(range(1, n, 2))
        num = [0] * n
        for i, k in enumerate(seq):
            num[k] = i + 1
        return num
    return [k + 1 for k in range(n)]


def _study_identity(seed: int, patient_name: str | None, patient_id: str | None, accession: str | None,
                    study_date: str | None) -> dict:
    rng = np.random.default_rng([int(seed), 0x1D])
    day = dt.date(2024, 1, 1) + dt.timedelta(days=int(seed) % 700)
    when = dt.datetime.combine(day, dt.time(8, 0)) + dt.timedelta(minutes=int(rng.integers(0, 600)))
    if study_date:
        when = dt.datetime.combine(dt.datetime.strptime(study_date, "%Y%m%d").date(), when.time())
    age = int(rng.integers(25, 85))
    sex = str(rng.choice(["M", "F"]))
    birth = dt.date(when.year - age, int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    return {
        "PatientName": patient_name or f"SYNTH^CASE{int(seed):04d}",
        "PatientID": patient_id or f"SYN{int(seed):07d}",
        "AccessionNumber": accession or f"SA{int(seed):08d}",
        "when": when,
        "PatientSex": sex,
        "PatientBirthDate": birth.strftime("%Y%m%d"),
        "PatientAge": f"{age:03d}Y",
        "PatientWeight": _ds(float(np.round(rng.uniform(50, 100), 1))),
    }


def _to_stored(vol: np.ndarray, plan: SeriesPlan) -> np.ndarray:
    # Stored value = (real - intercept) / slope (PS3.3 C.11.1.1.2 rescale), clipped to BitsStored.
    top = (1 << plan.bits_stored) - 1
    return np.clip(np.rint((vol - plan.intercept) / plan.slope), 0, top).astype(np.uint16)


def draw_scanner(seed: int, vendor: str | None = None, field_strength: float | None = None):
    """The scanner of study ``seed``: (generator, vendor, field strength, model, software version).

    The generator is returned positioned after these draws, where :func:`plan_series` draws the
    series plans, so :func:`write_study` and :func:`pgsam_node.synth.acquisition.acquire` plan the
    same series for a seed.
    """
    rng = np.random.default_rng([int(seed), 0xD1C0])
    vendor = vendor or str(rng.choice(sorted(VENDORS)))
    if vendor not in VENDORS:
        raise ValueError(f"unknown vendor {vendor!r}; expected one of {sorted(VENDORS)}")
    v = VENDORS[vendor]
    tesla = field_strength or float(rng.choice([1.5, 3.0, 3.0]))
    model = str(rng.choice(v["models"][tesla]))
    software = str(rng.choice(v["SoftwareVersions"]))
    return rng, vendor, tesla, model, software


def write_study(
    phantom_or_case_seed: Phantom | int,
    out_dir: Path | str,
    *,
    truth_path: Path | str | None = None,
    seed: int | None = None,
    report_language: str | None = None,
    patient_name: str | None = None,
    patient_id: str | None = None,
    accession_number: str | None = None,
    study_date: str | None = None,
    vendor: str | None = None,
    distractor: str | None = "random",
    field_strength: float | None = None,
    t1c_plane: str = "axial",
) -> SyntheticStudy:
    """Write one synthetic study as three DICOM MR series plus ``truth.npz``.

    Parameters
    ----------
    phantom_or_case_seed : a :class:`Phantom`, or a seed for :func:`make_phantom` (with
        ``distractor``).
    out_dir : folder to write into (created); series go to ``out_dir/<SeriesNumber>_<role>/``.
    truth_path : where the ground truth goes (default ``out_dir/truth.npz``; ``pgsam-node synth``
        keeps it out of the DICOM folders so that ``storescu +sd +r`` meets only DICOM files).
    seed : seed for headers, UIDs, geometry, noise and report wording (default: the phantom's).
    report_language : "en", "zh" or None (random).
    vendor : "siemens", "ge", "philips" or None (chosen by seed).
    t1c_plane : "axial" (default), "coronal" or "sagittal": the plane of the post-contrast T1.

    Returns
    -------
    SyntheticStudy; ``mask`` is (Z, Y, X) uint8 on the T1C grid, also saved with the grid's
    affine in ``truth.npz`` (keys ``mask``, ``affine``, ``shape``, ``sop_instance_uids``).
    """
    if isinstance(phantom_or_case_seed, Phantom):
        ph = phantom_or_case_seed
    else:
        ph = make_phantom(int(phantom_or_case_seed), distractor=distractor)
    seed = ph.seed if seed is None else int(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng, vendor, tesla, model, software = draw_scanner(seed, vendor, field_strength)
    v = VENDORS[vendor]
    ident = _study_identity(seed, patient_name, patient_id, accession_number, study_date)
    when: dt.datetime = ident["when"]
    study_uid = _uid(seed, "study")
    for_uid = _uid(seed, "frame-of-reference")
    plans = plan_series(ph, rng, vendor, t1c_plane)
    text, findings, lang = case_report(ph, seed, report_language)
    agent = str(rng.choice(_CONTRAST_AGENTS))
    station = f"MR{int(rng.integers(10000, 99999))}"
    serial = str(int(rng.integers(10000, 99999)))

    paths_by_role: dict[str, list[Path]] = {}
    series_uids: dict[str, str] = {}
    sops_by_role: dict[str, list[str]] = {}
    for idx, role in enumerate(("T1", "T2", "T1C")):
        plan = plans[role]
        vol = ph.render(role, plan.grid, np.random.default_rng([seed, 0xA0 + idx]))
        stored = _to_stored(vol, plan)
        series_uid = _uid(seed, "series", role)
        series_uids[role] = series_uid
        series_time = when + dt.timedelta(minutes=4 * idx + (6 if role == "T1C" else 0))
        sdir = out_dir / f"{plan.series_number:04d}_{role}"
        sdir.mkdir(parents=True, exist_ok=True)
        numbers = _instance_numbers(plan.grid.shape[0], plan.instance_order)
        ipps = plan.grid.slice_positions()
        row_dir = plan.grid.direction[:, 0]
        col_dir = plan.grid.direction[:, 1]
        normal = np.cross(row_dir, col_dir)
        real = stored.astype(np.float64) * plan.slope + plan.intercept
        wc, ww = np.percentile(real, [50, 99.5])
        paths, sops = [], []
        for k in range(plan.grid.shape[0]):
            sop_uid = _uid(seed, "instance", role, k)
            ds = Dataset()
            # --- SOP Common (PS3.3 C.12.1)
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.SOPClassUID = MRImageStorage
            ds.SOPInstanceUID = sop_uid
            ds.InstanceCreationDate = series_time.strftime("%Y%m%d")
            ds.InstanceCreationTime = series_time.strftime("%H%M%S")
            # --- Patient (C.7.1.1) / Patient Study (C.7.2.2)
            ds.PatientName = ident["PatientName"]
            ds.PatientID = ident["PatientID"]
            ds.PatientBirthDate = ident["PatientBirthDate"]
            ds.PatientSex = ident["PatientSex"]
            ds.PatientAge = ident["PatientAge"]
            ds.PatientWeight = ident["PatientWeight"]
            # --- General Study (C.7.2.1)
            ds.StudyInstanceUID = study_uid
            ds.StudyDate = when.strftime("%Y%m%d")
            ds.StudyTime = when.strftime("%H%M%S")
            ds.ReferringPhysicianName = "REFERRER^SYNTHETIC"
            ds.StudyID = str(1 + seed % 9999)
            ds.AccessionNumber = ident["AccessionNumber"]
            ds.StudyDescription = "MR PAROTID W/WO CONTRAST"
            # --- General Series (C.7.3.1); PatientPosition is required for MR (type 2C)
            ds.Modality = "MR"
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = plan.series_number
            ds.SeriesDate = series_time.strftime("%Y%m%d")
            ds.SeriesTime = series_time.strftime("%H%M%S")
            ds.SeriesDescription = plan.description
            ds.ProtocolName = plan.description if vendor != "ge" else "PAROTID/NECK"
            ds.BodyPartExamined = "HEAD" if vendor == "siemens" else "NECK"
            ds.PatientPosition = "HFS"
            # --- Frame of Reference (C.7.4.1): shared by all three series
            ds.FrameOfReferenceUID = for_uid
            ds.PositionReferenceIndicator = ""
            # --- General Equipment (C.7.5.1)
            ds.Manufacturer = v["Manufacturer"]
            ds.ManufacturerModelName = model
            ds.SoftwareVersions = software.split("\\") if "\\" in software else software
            ds.InstitutionName = "SYNTHETIC HOSPITAL"
            ds.StationName = station
            ds.DeviceSerialNumber = serial
            # --- General Image (C.7.6.1) / General Acquisition
            ds.InstanceNumber = numbers[k]
            ds.AcquisitionNumber = 1
            ds.ContentDate = series_time.strftime("%Y%m%d")
            ds.ContentTime = series_time.strftime("%H%M%S")
            ds.AcquisitionDate = series_time.strftime("%Y%m%d")
            ds.AcquisitionTime = series_time.strftime("%H%M%S")
            # --- Image Plane (C.7.6.2): IOP = row (i) and column (j) directions in LPS
            ds.PixelSpacing = [_ds(plan.grid.spacing[1]), _ds(plan.grid.spacing[2])]
            ds.ImageOrientationPatient = [_ds(x) for x in (*row_dir, *col_dir)]
            ds.ImagePositionPatient = [_ds(x) for x in ipps[k]]
            ds.SliceThickness = _ds(plan.slice_thickness)
            ds.SpacingBetweenSlices = _ds(plan.grid.spacing[0])
            ds.SliceLocation = _ds(float(ipps[k] @ normal))
            # --- Image Pixel (C.7.6.3)
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = plan.grid.shape[1], plan.grid.shape[2]
            ds.BitsAllocated = 16
            ds.BitsStored = plan.bits_stored
            ds.HighBit = plan.bits_stored - 1
            ds.PixelRepresentation = 0
            if v["rescale"]:
                # Philips-style real-world scaling on MR images (not in the classic MR IOD, but
                # real data carry it and loaders must apply it).
                ds.RescaleIntercept = _ds(plan.intercept)
                ds.RescaleSlope = _ds(plan.slope)
                ds.RescaleType = "US"
            ds.WindowCenter = _ds(round(float(wc), 1))
            ds.WindowWidth = _ds(round(float(max(ww - 0, 1.0)), 1))
            # --- MR Image (C.8.3.1)
            ds.ImageType = v["ImageType"]
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = v["SequenceVariant"]
            opts = v["ScanOptions"][role]
            ds.ScanOptions = opts.split("\\") if "\\" in opts else opts
            ds.MRAcquisitionType = "2D"
            ds.SequenceName = v["SequenceName"][role]
            ds.AngioFlag = "N"
            ds.RepetitionTime = _ds(round(plan.tr, 1))
            ds.EchoTime = _ds(round(plan.te, 2))
            ds.EchoTrainLength = plan.etl
            ds.NumberOfAverages = "1" if role == "T2" else "2"
            ds.ImagingFrequency = _ds(63.87 if tesla == 1.5 else 127.74)
            ds.ImagedNucleus = "1H"
            ds.EchoNumbers = 1
            ds.MagneticFieldStrength = _ds(tesla)
            # Phase encoding along the shorter in-plane extent (rectangular FOV), as scanners do.
            rows, cols = plan.grid.shape[1], plan.grid.shape[2]
            phase_steps = int(min(rows, cols) * 0.8)
            ds.NumberOfPhaseEncodingSteps = phase_steps
            ds.PercentSampling = "80"
            ds.PercentPhaseFieldOfView = _ds(round(100.0 * min(rows, cols) / max(rows, cols), 3))
            ds.PixelBandwidth = _ds(200 if role != "T2" else 250)
            ds.ReceiveCoilName = v["ReceiveCoilName"]
            ds.TransmitCoilName = "Body"
            # (0018,1310) = frequency rows \ frequency columns \ phase rows \ phase columns.
            if rows <= cols:
                ds.AcquisitionMatrix = [0, cols, phase_steps, 0]
                ds.InPlanePhaseEncodingDirection = "COL"
            else:
                ds.AcquisitionMatrix = [rows, 0, 0, phase_steps]
                ds.InPlanePhaseEncodingDirection = "ROW"
            ds.FlipAngle = _ds(plan.flip)
            ds.VariableFlipAngleFlag = "N"
            ds.PatientPosition = "HFS"
            if role == "T1C":
                # Contrast/Bolus module (C.7.6.4): present because contrast was given.
                ds.ContrastBolusAgent = agent
                ds.ContrastBolusRoute = "IV"
                ds.ContrastBolusVolume = _ds(float(np.round(float(ident["PatientWeight"]) * 0.1, 1)))
                ds.ContrastBolusIngredient = "GADOLINIUM"
                ds.ContrastBolusStartTime = (series_time - dt.timedelta(minutes=2)).strftime("%H%M%S")
            ds.PixelData = np.ascontiguousarray(stored[k]).astype("<u2").tobytes()

            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds.file_meta = meta
            path = sdir / f"IM{numbers[k]:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
            sops.append(sop_uid)
        paths_by_role[role] = paths
        sops_by_role[role] = sops

    g = plans["T1C"].grid
    mask = ph.lesion_mask(g)
    mask_path = Path(truth_path) if truth_path is not None else out_dir / "truth.npz"
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        mask_path, mask=mask, affine=g.affine(), shape=np.array(g.shape),
        sop_instance_uids=np.array(sops_by_role["T1C"]), study_instance_uid=np.array(study_uid),
        findings=np.array(_findings_json(findings)),
    )
    log.info("wrote synthetic study (vendor %s, %d+%d+%d images)", vendor,
             *(len(paths_by_role[r]) for r in ("T1", "T2", "T1C")))
    return SyntheticStudy(
        out_dir=out_dir, paths_by_role=paths_by_role, grids={r: plans[r].grid for r in ROLES}, mask=mask,
        mask_path=mask_path, study_uid=study_uid, accession_number=ident["AccessionNumber"],
        patient_id=ident["PatientID"], patient_name=ident["PatientName"], study_date=when.strftime("%Y%m%d"),
        study_time=when.strftime("%H%M%S"), report_text=text, report_language=lang, findings=findings,
        frame_of_reference_uid=for_uid, series_uids=series_uids, sop_uids_by_role=sops_by_role, vendor=vendor,
        distractor=ph.distractor, plans=plans,
    )


def _findings_json(f: Findings) -> str:
    import json

    return json.dumps(f.to_dict(), ensure_ascii=False)
