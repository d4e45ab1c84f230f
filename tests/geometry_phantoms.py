"""Analytic phantoms written as real DICOM files (MR Image Storage / Enhanced MR) for geometry tests.

A phantom is a function of patient position (LPS mm) sampled on a grid given by a 4 x 4 affine
((i, j, k, 1) = (column, row, slice, 1) -> LPS); the writers put the grid into
ImagePositionPatient / ImageOrientationPatient / PixelSpacing / SliceThickness so loading the
files exercises the whole path.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"


def rotation(axis: str, degrees: float) -> np.ndarray:
    """3 x 3 rotation about the LPS x, y or z axis."""
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


AXIAL = (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
CORONAL = (np.array([1.0, 0, 0]), np.array([0, 0, -1.0]))
SAGITTAL = (np.array([0, 1.0, 0]), np.array([0, 0, -1.0]))


def make_affine(origin, row_dir, col_dir, spacing_zyx, slice_dir=None) -> np.ndarray:
    """Affine of a grid: origin = first voxel centre, unit row/column directions, (z, y, x) spacing."""
    r = np.asarray(row_dir, float) / np.linalg.norm(row_dir)
    c = np.asarray(col_dir, float) / np.linalg.norm(col_dir)
    n = np.cross(r, c) if slice_dir is None else np.asarray(slice_dir, float) / np.linalg.norm(slice_dir)
    a = np.eye(4)
    a[:3, 0] = r * spacing_zyx[2]
    a[:3, 1] = c * spacing_zyx[1]
    a[:3, 2] = n * spacing_zyx[0]
    a[:3, 3] = origin
    return a


def centred_affine(centre, row_dir, col_dir, spacing_zyx, shape_zyx, slice_dir=None) -> np.ndarray:
    """Affine of a grid whose centre voxel position is ``centre`` (LPS)."""
    a = make_affine([0, 0, 0], row_dir, col_dir, spacing_zyx, slice_dir)
    half = (np.array([shape_zyx[2], shape_zyx[1], shape_zyx[0]], float) - 1) / 2
    a[:3, 3] = np.asarray(centre, float) - a[:3, :3] @ half
    return a


def world_points(affine: np.ndarray, shape_zyx) -> np.ndarray:
    """LPS position of every voxel centre: ``(Z, Y, X, 3)``."""
    z, y, x = shape_zyx
    k, j, i = np.meshgrid(np.arange(z), np.arange(y), np.arange(x), indexing="ij")
    idx = np.stack([i, j, k], axis=-1).astype(float)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def smooth_field(p: np.ndarray) -> np.ndarray:
    """Smooth analytic test function of LPS position (wavelengths 60-90 mm), range about 40..160."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    return 100 + 30 * np.sin(2 * np.pi * x / 70) * np.cos(2 * np.pi * y / 90) + 20 * np.sin(2 * np.pi * (z + 0.3 * x) / 60) + 0.1 * z


def sphere(p: np.ndarray, centre, radius: float, edge_mm: float) -> np.ndarray:
    """Anti-aliased ball occupancy in [0, 1] (linear ramp of width ``edge_mm`` at the surface)."""
    r = np.linalg.norm(p - np.asarray(centre, float), axis=-1)
    return np.clip(0.5 - (r - radius) / edge_mm, 0.0, 1.0)


def _plane(affine: np.ndarray):
    r = affine[:3, 0] / np.linalg.norm(affine[:3, 0])
    c = affine[:3, 1] / np.linalg.norm(affine[:3, 1])
    return r, c, float(np.linalg.norm(affine[:3, 0])), float(np.linalg.norm(affine[:3, 1]))


def _quantise(array: np.ndarray, integer: bool):
    """Stored uint16 values plus (slope, intercept) reproducing ``array``."""
    lo, hi = float(array.min()), float(array.max())
    if integer:
        return np.rint(array).astype(np.uint16), 1.0, 0.0
    slope = (hi - lo) / 60000.0 if hi > lo else 1.0
    return np.rint((array - lo) / slope).astype(np.uint16), slope, lo


def base_dataset(sop_class: str, study_uid: str, series_uid: str, for_uid: str | None, series_number: int = 1) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.PatientName = "PHANTOM^GEOMETRY"
    ds.PatientID = "PHANTOM-1"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC1"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.Modality = "MR"
    ds.Manufacturer = "PGSAM-TEST"
    ds.SeriesDescription = "phantom"
    if for_uid:
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    return ds


def write_series(
    directory: Path,
    array: np.ndarray,
    affine: np.ndarray,
    *,
    integer: bool = False,
    study_uid: str | None = None,
    series_uid: str | None = None,
    for_uid: str | None = "auto",
    positions: np.ndarray | None = None,
    modify: Callable[[int, Dataset], None] | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write ``array`` (Z, Y, X) as single-frame MR Image Storage files on the grid ``affine``.

    InstanceNumber is assigned in a shuffled order so a loader that sorts by it fails.
    ``positions`` (Z, 3) overrides ImagePositionPatient per slice; ``modify(k, ds)`` may edit each
    dataset before it is written (used to build broken series). Returns the paths.
    """
    directory.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    for_uid = generate_uid() if for_uid == "auto" else for_uid
    r, c, sx, sy = _plane(affine)
    thickness = float(np.linalg.norm(affine[:3, 2]))
    nz = array.shape[0]
    numbers = list(range(1, nz + 1))
    random.Random(seed).shuffle(numbers)
    paths = []
    for k in range(nz):
        stored, slope, intercept = _quantise(array[k], integer)
        ds = base_dataset(MRImageStorage, study_uid, series_uid, for_uid)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = numbers[k]
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        pos = affine[:3, 3] + k * affine[:3, 2] if positions is None else positions[k]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.concatenate([r, c])]
        ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]
        ds.SliceThickness = f"{thickness:.6f}"
        ds.Rows, ds.Columns = stored.shape
        ds.RescaleSlope = f"{slope:.10g}"
        ds.RescaleIntercept = f"{intercept:.10g}"
        ds.RescaleType = "US"
        ds.PixelData = stored.tobytes()
        if modify is not None:
            modify(k, ds)
        p = directory / f"{k:04d}_{ds.InstanceNumber}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    random.Random(seed + 1).shuffle(paths)
    return paths


def write_enhanced(
    path: Path,
    array: np.ndarray,
    affine: np.ndarray,
    *,
    frame_order: list[int] | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    for_uid: str | None = None,
) -> tuple[Path, list[int]]:
    """Write ``array`` (Z, Y, X) as one Enhanced MR Image Storage object (PS3.3 A.36.2).

    Plane orientation and pixel measures go in the shared functional groups; plane position and
    pixel value transformation (a different rescale per frame) in the per-frame groups. Frames are
    stored in ``frame_order`` (slice indices; default reversed) so a loader must sort them by
    position. Returns the path and ``frame_order``.
    """
    nz = array.shape[0]
    frame_order = list(range(nz))[::-1] if frame_order is None else frame_order
    r, c, sx, sy = _plane(affine)
    thickness = float(np.linalg.norm(affine[:3, 2]))
    ds = base_dataset(ENHANCED_MR, study_uid or generate_uid(), series_uid or generate_uid(), for_uid or generate_uid())
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.ContentDate = "20260101"
    ds.ContentTime = "120000"
    ds.AcquisitionDateTime = "20260101120000"
    ds.NumberOfFrames = nz
    ds.Rows, ds.Columns = array.shape[1:]
    shared = Dataset()
    po = Dataset()
    po.ImageOrientationPatient = [f"{v:.8f}" for v in np.concatenate([r, c])]
    shared.PlaneOrientationSequence = Sequence([po])
    pm = Dataset()
    pm.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]
    pm.SliceThickness = f"{thickness:.6f}"
    shared.PixelMeasuresSequence = Sequence([pm])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    pixels = []
    for k in frame_order:
        stored, slope, intercept = _quantise(array[k], False)
        fg = Dataset()
        pp = Dataset()
        pos = affine[:3, 3] + k * affine[:3, 2]
        pp.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        fg.PlanePositionSequence = Sequence([pp])
        pvt = Dataset()
        pvt.RescaleSlope = f"{slope:.10g}"
        pvt.RescaleIntercept = f"{intercept:.10g}"
        pvt.RescaleType = "US"
        fg.PixelValueTransformationSequence = Sequence([pvt])
        ft = Dataset()
        ft.FrameType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        fg.MRImageFrameTypeSequence = Sequence([ft])
        per_frame.append(fg)
        pixels.append(stored)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.stack(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path, frame_order
