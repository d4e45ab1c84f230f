"""The one factory for MR test data: single-frame series, Enhanced MR objects, T1/T2/T1C studies.

:class:`MRSeries` describes a series (identity, acquisition, :class:`Geometry`, pixels, instance
numbering, transfer syntax); ``instance(k)`` builds slice ``k``, ``datasets()`` every slice,
``write(folder)`` writes Part-10 files and ``write_enhanced(path)`` one Enhanced MR object with the
same content. :meth:`MRSeries.from_volume` takes a (Z, Y, X) array and a 4 x 4 affine instead of a
geometry (analytic phantoms for the geometry stage). :func:`mr_instance` is one slice in one call,
:func:`mr_study` several series sharing a study. :func:`write_and_read_back` writes a data set with
pydicom (to memory or to a file), reads it back and checks that nothing changed.

Everything is deterministic for a given specification: the SOP Instance UIDs are drawn once per
:class:`MRSeries` object and the pixels come from ``seed`` and the slice index, so ``datasets()``
and ``write()`` of one object describe the same instances. Full-sized phantom studies with a truth
mask and a report come from the package's :mod:`pgsam_node.synth` (``write_study``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from pgsam_node.synth.dicom_writer import VENDORS

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
AXIAL_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

#: Acquisition defaults per sequence role: what the classifier reads (description, TR, TE, agent).
ROLES: dict[str, dict[str, Any]] = {
    "T1": {"description": "t1_se_tra", "tr": 500, "te": 10, "agent": None},
    "T1C": {"description": "t1_se_tra", "tr": 500, "te": 10, "agent": "Dotarem"},
    "T2": {"description": "t2_tse_tra", "tr": 4000, "te": 95, "agent": None},
}

#: Ways to number the instances of a series (see :attr:`MRSeries.instance_numbers`).
NUMBERINGS = ("ascending", "descending", "interleaved", "shuffled")
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)


def _ds(v: float) -> str:
    """A DS string of at most 16 characters (PS3.5 6.2)."""
    return format_number_as_ds(float(v))


def shuffled(n: int, seed: int) -> list[int]:
    """A seeded permutation of ``range(n)`` that is never the identity when ``n > 1``."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    if n > 1 and order == sorted(order):
        order = order[1:] + order[:1]
    return order


@dataclass(frozen=True)
class Geometry:
    """The grid of a series in patient coordinates (LPS, mm; PS3.3 C.7.6.2).

    ``pixel_spacing`` is in PixelSpacing order: (distance between rows, distance between columns).
    Slice ``k`` lies at ``origin + k * slice_spacing * slice_direction``; ``slice_direction``
    defaults to the plane normal (row x column); another direction is a gantry tilt (a sheared
    grid). ``positions`` (one LPS point per slice) overrides that rule, for broken series. The
    defaults are anisotropic on purpose (0.9 x 0.8 mm pixels, 3 mm slices, off-origin) so a
    transposed or flipped result shows up.
    """

    rows: int = 64
    columns: int = 64
    pixel_spacing: tuple[float, float] = (0.9, 0.8)
    slice_spacing: float = 3.0
    slice_thickness: float | None = None  # default: slice_spacing
    orientation: tuple[float, ...] = AXIAL_ORIENTATION
    origin: tuple[float, float, float] = (-10.0, -20.0, 30.0)
    slice_direction: tuple[float, float, float] | None = None
    positions: Any = None  # (Z, 3) array-like or None

    @classmethod
    def from_affine(cls, affine: np.ndarray, rows: int, columns: int, **kw: Any) -> Geometry:
        """The grid of a 4 x 4 affine ((column i, row j, slice k, 1) -> LPS, as ``Volume.affine``)."""
        a = np.asarray(affine, float)
        sx, sy, sz = (float(np.linalg.norm(a[:3, n])) for n in range(3))
        orientation = tuple(float(v) for v in np.concatenate([a[:3, 0] / sx, a[:3, 1] / sy]))
        return cls(rows=rows, columns=columns, pixel_spacing=(sy, sx), slice_spacing=sz, orientation=orientation,
                   origin=tuple(float(v) for v in a[:3, 3]), slice_direction=tuple(float(v) for v in a[:3, 2] / sz), **kw)

    @property
    def row_direction(self) -> np.ndarray:
        return np.asarray(self.orientation[:3], float)

    @property
    def column_direction(self) -> np.ndarray:
        return np.asarray(self.orientation[3:], float)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_direction, self.column_direction)

    @property
    def thickness(self) -> float:
        return self.slice_spacing if self.slice_thickness is None else self.slice_thickness

    def step(self) -> np.ndarray:
        """The vector from one slice's first voxel to the next slice's."""
        d = self.normal if self.slice_direction is None else np.asarray(self.slice_direction, float)
        return d / np.linalg.norm(d) * self.slice_spacing

    def position(self, k: int) -> np.ndarray:
        """ImagePositionPatient of slice ``k``."""
        if self.positions is not None:
            return np.asarray(self.positions[k], float)
        return np.asarray(self.origin, float) + k * self.step()

    def affine(self) -> np.ndarray:
        """4 x 4 affine of the grid: columns = row direction x column spacing, column direction x row
        spacing, slice step, origin."""
        a = np.eye(4)
        a[:3, 0] = self.row_direction * self.pixel_spacing[1]
        a[:3, 1] = self.column_direction * self.pixel_spacing[0]
        a[:3, 2] = self.step()
        a[:3, 3] = self.origin
        return a


@dataclass
class MRSeries:
    """Specification of one MR series; every field is a knob with a working default.

    Identity: ``study_uid`` / ``series_uid`` (new UIDs by default), ``frame_of_reference_uid``
    ("derived": the same for every series of a study; None: left out), ``sop_uids`` (a list, or
    {slice index: UID}; the rest are drawn), patient / study attributes.
    Acquisition: ``role`` T1, T2 or T1C fills ``description``, ``tr``, ``te`` and ``agent``
    (ContrastBolusAgent) from :data:`ROLES` where they are None; ``vendor`` ("siemens", "ge",
    "philips": the package's synthetic-study vendor styles) sets the equipment attributes and the
    vendor's series name. Pixels: ``pixels`` "noise" (uniform, BitsStored 12 by default), "blob"
    (a smooth bright disc plus noise) or a (Z, Y, X) array (integers are stored as they are; floats
    are quantised to 16 bits with a per-slice RescaleSlope / RescaleIntercept); ``rescale`` adds a
    (slope, intercept) to integer pixels. Order: ``instance_numbers`` "ascending", "descending",
    "interleaved", "shuffled" or a list; ``path_order`` "slice" or "shuffled" (the list
    :meth:`write` returns). Encoding: ``transfer_syntax`` (uncompressed, deflated, or any syntax
    pydicom has an encoder for). Last words: ``extra`` {keyword: value} on every instance, then
    ``modify(k, ds)``.
    """

    n_slices: int | None = None  # default: the array's depth, else 1
    geometry: Geometry = field(default_factory=Geometry)
    # identity
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str | None = "derived"
    sop_uids: Sequence[str] | Mapping[int, str] | None = None
    patient_name: str = "Test^Patient"
    patient_id: str = "TEST001"
    patient_birth_date: str = "19700101"
    patient_sex: str = "O"
    accession_number: str = "ACC001"
    study_date: str = "20260101"
    study_time: str = "120000"
    study_id: str = "1"
    study_description: str | None = None
    referring_physician_name: str = ""
    # series and acquisition
    role: str = "T2"
    description: str | None = None
    protocol_name: str | None = None  # default: the description
    series_number: int = 3
    tr: float | None = None
    te: float | None = None
    agent: str | None = None
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND")
    manufacturer: str | None = None  # default: the vendor's, else "PGSAM-TEST"
    vendor: str | None = None
    # pixels
    pixels: Any = "noise"
    bits_allocated: int = 16
    bits_stored: int | None = None
    rescale: tuple[float, float] | None = None
    seed: int = 0
    # order and encoding
    instance_numbers: str | Sequence[int] = "ascending"
    path_order: str = "slice"
    transfer_syntax: str = ExplicitVRLittleEndian
    extra: Mapping[str, Any] = field(default_factory=dict)
    modify: Callable[[int, Dataset], None] | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; expected one of {sorted(ROLES)}")
        if self.vendor is not None and self.vendor not in VENDORS:
            raise ValueError(f"unknown vendor {self.vendor!r}; expected one of {sorted(VENDORS)}")
        preset = ROLES[self.role]
        if self.description is None:
            self.description = VENDORS[self.vendor]["names"][self.role] if self.vendor else preset["description"]
        for knob in ("tr", "te", "agent"):
            if getattr(self, knob) is None:
                setattr(self, knob, preset[knob])
        if isinstance(self.pixels, str):
            if self.pixels not in ("noise", "blob"):
                raise ValueError(f"pixels must be 'noise', 'blob' or an array, not {self.pixels!r}")
            self.n_slices = 1 if self.n_slices is None else self.n_slices
        else:
            self.pixels = np.asarray(self.pixels)
            if self.pixels.ndim != 3 or self.pixels.shape[1:] != (self.geometry.rows, self.geometry.columns):
                raise ValueError(f"pixel array {self.pixels.shape} does not fit {self.geometry.rows} x {self.geometry.columns} slices")
            self.n_slices = self.pixels.shape[0] if self.n_slices is None else self.n_slices
        if self.bits_allocated not in (8, 16):
            raise ValueError("bits_allocated must be 8 or 16")
        if self.frame_of_reference_uid == "derived":
            self.frame_of_reference_uid = generate_uid(entropy_srcs=[self.study_uid, "frame of reference"])
        if isinstance(self.instance_numbers, str) and self.instance_numbers not in NUMBERINGS:
            raise ValueError(f"instance_numbers must be one of {NUMBERINGS} or a list")
        if self.path_order not in ("slice", "shuffled"):
            raise ValueError("path_order must be 'slice' or 'shuffled'")
        self._uid_root = generate_uid()  # SOP Instance UIDs of this series derive from it

    @classmethod
    def from_volume(cls, array: np.ndarray, affine: np.ndarray, **knobs: Any) -> MRSeries:
        """A series holding ``array`` (Z, Y, X) on the grid of ``affine``.

        Instance numbers and the returned file list are shuffled unless the knobs say otherwise,
        so a loader that sorts by InstanceNumber or trusts the file order fails.
        """
        array = np.asarray(array)
        knobs.setdefault("instance_numbers", "shuffled")
        knobs.setdefault("path_order", "shuffled")
        extra = {k: knobs.pop(k) for k in ("slice_thickness", "positions") if k in knobs}
        geometry = Geometry.from_affine(affine, array.shape[1], array.shape[2], **extra)
        return cls(pixels=array, geometry=geometry, **knobs)

    # ---- identity ------------------------------------------------------------------------------
    def sop_uid(self, k: int) -> str:
        """SOP Instance UID of slice ``k``."""
        given = self.sop_uids
        if isinstance(given, Mapping):
            if k in given:
                return given[k]
        elif given is not None:
            return given[k]
        return generate_uid(entropy_srcs=[self._uid_root, str(k)])

    def instance_number(self, k: int) -> int:
        """InstanceNumber of slice ``k``."""
        n, how = int(self.n_slices or 1), self.instance_numbers
        if not isinstance(how, str):
            return int(how[k])
        if how == "descending":
            return n - k
        if how == "interleaved":
            return (list(range(0, n, 2)) + list(range(1, n, 2))).index(k) + 1
        if how == "shuffled":
            return shuffled(n, self.seed)[k] + 1
        return k + 1

    def _common(self, sop_class: str, sop_uid: str) -> FileDataset:
        """SOP common, patient, study, series, frame of reference and equipment attributes."""
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, Dataset(), file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
        ds.PatientName, ds.PatientID = self.patient_name, self.patient_id
        ds.PatientBirthDate, ds.PatientSex = self.patient_birth_date, self.patient_sex
        ds.StudyInstanceUID = self.study_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID = self.study_date, self.study_time, self.study_id
        ds.AccessionNumber, ds.ReferringPhysicianName = self.accession_number, self.referring_physician_name
        if self.study_description is not None:
            ds.StudyDescription = self.study_description
        ds.Modality = "MR"
        ds.SeriesInstanceUID, ds.SeriesNumber = self.series_uid, self.series_number
        ds.SeriesDescription = self.description
        ds.ProtocolName = self.description if self.protocol_name is None else self.protocol_name
        v = VENDORS[self.vendor] if self.vendor else None
        ds.Manufacturer = self.manufacturer or (v["Manufacturer"] if v else "PGSAM-TEST")
        if v:
            ds.ManufacturerModelName = v["models"][3.0][0]
            ds.SoftwareVersions = v["SoftwareVersions"][0]
            ds.ReceiveCoilName = v["ReceiveCoilName"]
        if self.frame_of_reference_uid:
            ds.FrameOfReferenceUID = self.frame_of_reference_uid
            ds.PositionReferenceIndicator = ""
        return ds

    # ---- pixels --------------------------------------------------------------------------------
    def _stored_bits(self) -> int:
        if self.bits_stored is not None:
            return self.bits_stored
        if self.bits_allocated == 8:
            return 8
        return 12 if isinstance(self.pixels, str) else 16

    def _slice_pixels(self, k: int) -> tuple[np.ndarray, tuple[float, float] | None]:
        """Stored values of slice ``k`` and the (slope, intercept) to write, if any."""
        rows, cols = self.geometry.rows, self.geometry.columns
        dtype = np.uint8 if self.bits_allocated == 8 else np.uint16
        top = (1 << self._stored_bits()) - 1
        rng = np.random.default_rng([self.seed, k])
        if isinstance(self.pixels, str) and self.pixels == "noise":
            return rng.integers(0, top + 1, (rows, cols), dtype=dtype), self.rescale
        if isinstance(self.pixels, str):  # blob
            yy, xx = np.mgrid[:rows, :cols]
            blob = 400 + 300 * np.exp(-(((yy - rows / 2) ** 2 + (xx - cols / 2) ** 2) / (max(rows, cols) * 4)))
            return np.clip(blob + rng.normal(0, 20, (rows, cols)), 0, top).astype(dtype), self.rescale
        values = self.pixels[k]
        if np.issubdtype(values.dtype, np.integer):
            return values.astype(dtype), self.rescale
        lo, hi = float(values.min()), float(values.max())
        slope = (hi - lo) / 60000.0 if hi > lo else 1.0
        return np.rint((values - lo) / slope).astype(np.uint16), (slope, lo)

    def _pixel_module(self, ds: Dataset, frames: list[np.ndarray]) -> None:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = self.geometry.rows, self.geometry.columns
        bits = self._stored_bits()
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = self.bits_allocated, bits, bits - 1, 0
        ds.PixelData = np.ascontiguousarray(np.stack(frames) if len(frames) > 1 else frames[0]).astype(
            "u1" if self.bits_allocated == 8 else "<u2").tobytes()

    def _finish(self, k: int, ds: FileDataset) -> FileDataset:
        for keyword, value in self.extra.items():
            setattr(ds, keyword, value)
        if self.modify is not None:
            self.modify(k, ds)
        ts = self.transfer_syntax
        if ts in _UNCOMPRESSED:
            ds.file_meta.TransferSyntaxUID = ts
        else:
            ds.compress(ts)  # pydicom's encoders (RLE built in; JPEG-LS, JPEG 2000 through plugins)
        return ds

    # ---- instances -----------------------------------------------------------------------------
    def instance(self, k: int) -> FileDataset:
        """Slice ``k`` as one MR Image Storage instance (PS3.3 A.4) with its file meta."""
        g = self.geometry
        ds = self._common(MRImageStorage, self.sop_uid(k))
        ds.InstanceNumber = self.instance_number(k)
        ds.ImageType = list(self.image_type)
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "SK", "", "2D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = self.tr, self.te, 1
        ds.MagneticFieldStrength, ds.ImagedNucleus = 3, "1H"
        if self.agent:
            ds.ContrastBolusAgent = self.agent
        ds.ImagePositionPatient = [_ds(v) for v in g.position(k)]
        ds.ImageOrientationPatient = [_ds(v) for v in g.orientation]
        ds.PixelSpacing = [_ds(v) for v in g.pixel_spacing]
        ds.SliceThickness = _ds(g.thickness)
        stored, scale = self._slice_pixels(k)
        self._pixel_module(ds, [stored])
        if scale is not None:
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(scale[0]), _ds(scale[1]), "US"
        return self._finish(k, ds)

    def datasets(self) -> list[FileDataset]:
        """Every slice, in slice (position) order."""
        return [self.instance(k) for k in range(int(self.n_slices or 1))]

    def write(self, folder: Path) -> list[Path]:
        """Write every slice as a Part-10 file named by its SOP Instance UID (the names say nothing
        about the order); returns the paths in slice order, or shuffled (``path_order``)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for k, ds in enumerate(self.datasets()):
            p = folder / f"{self.sop_uid(k)}.dcm"
            ds.save_as(p, enforce_file_format=True)
            paths.append(p)
        if self.path_order == "shuffled":
            paths = [paths[i] for i in shuffled(len(paths), self.seed + 1)]
        return paths

    def write_enhanced(self, path: Path, frame_order: Sequence[int] | None = None) -> tuple[Path, list[int]]:
        """Write the series as one Enhanced MR Image Storage object (PS3.3 A.36.2).

        Plane orientation and pixel measures go in the shared functional groups; plane position and
        the pixel value transformation (per-frame rescale) in the per-frame groups. Frames hold the
        slices in ``frame_order`` (slice indices; default reversed) so a loader must sort them by
        position. Returns the path and the frame order.
        """
        g, n = self.geometry, int(self.n_slices or 1)
        order = list(range(n))[::-1] if frame_order is None else list(frame_order)
        ds = self._common(ENHANCED_MR, self.sop_uid(0))
        ds.InstanceNumber = 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        ds.ContentDate, ds.ContentTime = self.study_date, self.study_time
        ds.AcquisitionDateTime = self.study_date + self.study_time
        ds.NumberOfFrames = len(order)
        shared, po, pm = Dataset(), Dataset(), Dataset()
        po.ImageOrientationPatient = [_ds(v) for v in g.orientation]
        pm.PixelSpacing = [_ds(v) for v in g.pixel_spacing]
        pm.SliceThickness = _ds(g.thickness)
        shared.PlaneOrientationSequence = DicomSequence([po])
        shared.PixelMeasuresSequence = DicomSequence([pm])
        ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
        per_frame, frames = [], []
        for k in order:
            stored, scale = self._slice_pixels(k)
            fg, pp, ft = Dataset(), Dataset(), Dataset()
            pp.ImagePositionPatient = [_ds(v) for v in g.position(k)]
            fg.PlanePositionSequence = DicomSequence([pp])
            if scale is not None:
                pvt = Dataset()
                pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = _ds(scale[0]), _ds(scale[1]), "US"
                fg.PixelValueTransformationSequence = DicomSequence([pvt])
            ft.FrameType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
            fg.MRImageFrameTypeSequence = DicomSequence([ft])
            per_frame.append(fg)
            frames.append(stored)
        ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
        self._pixel_module(ds, frames)
        self._finish(0, ds).save_as(path, enforce_file_format=True)
        return Path(path), order


def mr_instance(study_uid: str | None = None, series_uid: str | None = None, index: int = 0, *,
                sop_uid: str | None = None, **knobs: Any) -> FileDataset:
    """Slice ``index`` of a series (new study / series UIDs where None): InstanceNumber
    ``index + 1``, pixels from (``seed``, ``index``), any :class:`MRSeries` knob."""
    spec = MRSeries(study_uid=study_uid or generate_uid(), series_uid=series_uid or generate_uid(),
                    n_slices=max(index + 1, knobs.pop("n_slices", 1)),
                    sop_uids={index: sop_uid} if sop_uid else None, **knobs)
    return spec.instance(index)


def mr_study(roles: Sequence[str] | Mapping[str, int] = ("T1", "T2", "T1C"), **common: Any) -> dict[str, MRSeries]:
    """One series per role sharing a study (and so its frame of reference), SeriesNumber 1, 2, ...
    in the order given; ``roles`` maps role -> slice count, or lists roles (``n_slices`` each)."""
    counts = dict(roles) if isinstance(roles, Mapping) else {r: common.get("n_slices") for r in roles}
    common.pop("n_slices", None)
    study_uid = common.pop("study_uid", None) or generate_uid()
    return {role: MRSeries(study_uid=study_uid, role=role, series_number=i + 1, n_slices=n, **common)
            for i, (role, n) in enumerate(counts.items())}


# ---- write and read back ------------------------------------------------------------------------
def assert_same_dataset(written: Dataset, read: Dataset, ignore: Sequence[str] = ()) -> None:
    """Every element of ``written`` is in ``read`` with the same value (sequences item by item);
    the transfer syntax and, where decodable, the pixel values agree too."""
    if getattr(written, "file_meta", None) is not None and getattr(read, "file_meta", None) is not None:
        assert read.file_meta.TransferSyntaxUID == written.file_meta.TransferSyntaxUID
        assert read.file_meta.MediaStorageSOPInstanceUID == written.file_meta.MediaStorageSOPInstanceUID
    for elem in written:
        if elem.keyword in ignore or elem.tag.element == 0:
            continue
        assert elem.tag in read, f"{elem.keyword or elem.tag} lost"
        got = read[elem.tag]
        if elem.VR == "SQ":
            assert len(got.value) == len(elem.value), f"{elem.keyword}: {len(got.value)} items, wrote {len(elem.value)}"
            for a, b in zip(elem.value, got.value):
                assert_same_dataset(a, b, ignore)
        else:
            assert got.value == elem.value, f"{elem.keyword or elem.tag}: read {got.value!r}, wrote {elem.value!r}"
    if "PixelData" in written:
        np.testing.assert_array_equal(read.pixel_array, written.pixel_array)


def write_and_read_back(ds: FileDataset, path: Path | None = None) -> FileDataset:
    """Write ``ds`` as a Part-10 file with pydicom (to memory, or to ``path``), read it back, check
    with :func:`assert_same_dataset` and return what was read."""
    if path is None:
        with BytesIO() as buf:
            ds.save_as(buf, enforce_file_format=True)
            buf.seek(0)
            back = pydicom.dcmread(buf)
    else:
        ds.save_as(path, enforce_file_format=True)
        back = pydicom.dcmread(path)
    assert_same_dataset(ds, back)
    return back


__all__ = [
    "AXIAL_ORIENTATION", "ENHANCED_MR", "Geometry", "MRSeries", "ROLES", "assert_same_dataset", "mr_instance",
    "mr_study", "shuffled", "write_and_read_back",
]
