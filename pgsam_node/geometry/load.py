"""Read a series' DICOM files into a :class:`~pgsam_node.geometry.volume.Volume`.

Handles single-frame images (MR Image Storage, and any image with the Image Plane module, such
as the Secondary Capture tumour masks of the TCIA data) and Enhanced / Legacy Converted Enhanced
multi-frame objects (per-frame and shared functional groups, PS3.3 C.7.6.16). Compressed pixel
data is decoded by pydicom (with the pylibjpeg plugins installed).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from pgsam_node.errors import GeometryError
from pgsam_node.logsetup import uid_hash
from pgsam_node.geometry.checks import FrameGeometry, select_stack
from pgsam_node.geometry.volume import GeometryNote, Volume, affine_from_dicom

log = logging.getLogger(__name__)

#: Secondary Capture Image Storage and its multi-frame variants (1.2.840.10008.5.1.4.1.1.7[.n]).
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


def _floats(value, n: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        return None
    return arr


def _float(value, default: float | None) -> float | None:
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _group_item(ds: Dataset, per_frame: Dataset | None, keyword: str) -> Dataset | None:
    """First item of functional-group macro ``keyword`` for one frame: the per-frame group wins
    over the shared group (PS3.3 C.7.6.16.1: a macro is in one or the other)."""
    if per_frame is not None:
        seq = per_frame.get(keyword)
        if seq:
            return seq[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        seq = shared[0].get(keyword)
        if seq:
            return seq[0]
    return None


def _cs_values(value) -> tuple[str, ...]:
    """A (possibly multi-valued) CS element as a tuple of strings."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def _image_type(ds: Dataset) -> tuple[str, ...]:
    return _cs_values(ds.get("ImageType"))


def _discriminators(ds: Dataset) -> dict:
    """Attributes that tell repeated single-frame acquisitions at one position apart."""
    out = {}
    for kw in ("EchoTime", "EchoNumbers", "TemporalPositionIdentifier", "AcquisitionNumber", "TriggerTime", "DiffusionBValue"):
        v = ds.get(kw)
        if v is not None and v != "":
            out[kw] = str(v)
    return out


def _frame_discriminators(content: Dataset | None, echo: Dataset | None, diffusion: Dataset | None) -> dict:
    """The same for one frame of an Enhanced object (Frame Content, MR Echo, MR Diffusion)."""
    out = {}
    for item, kws in (
        (content, ("TemporalPositionIndex", "StackID", "FrameAcquisitionNumber")),
        (echo, ("EffectiveEchoTime",)),
        (diffusion, ("DiffusionBValue",)),
    ):
        for kw in kws:
            v = None if item is None else item.get(kw)
            if v is not None and v != "":
                out[kw] = str(v)
    return out


def frames_of_dataset(ds: Dataset, path: Path) -> list[FrameGeometry]:
    """Geometry records of every frame in one dataset (single-frame or Enhanced multi-frame).

    ``source`` of each record is ``(dataset, frame_index or None)``.
    """
    sop_uid = str(ds.get("SOPInstanceUID", ""))
    series_uid = str(ds.SeriesInstanceUID) if "SeriesInstanceUID" in ds else None
    for_uid = str(ds.FrameOfReferenceUID) if ds.get("FrameOfReferenceUID") else None
    sop_class = str(ds.get("SOPClassUID", "")) or None
    rows = int(ds.get("Rows", 0) or 0)
    cols = int(ds.get("Columns", 0) or 0)
    per_frame_seq = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame_seq is None:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            # a multi-frame image without functional groups has one position for many frames
            raise GeometryError(
                f"{path.name}: {ds.NumberOfFrames} frames but no PerFrameFunctionalGroupsSequence "
                "(PS3.3 C.7.6.16) - frame positions unknown",
                reason="missing_geometry",
            )
        spacing = _floats(ds.get("PixelSpacing"), 2)
        return [
            FrameGeometry(
                path=path,
                sop_uid=sop_uid,
                frame_number=None,
                series_uid=series_uid,
                frame_of_reference_uid=for_uid,
                position=_floats(ds.get("ImagePositionPatient"), 3),
                orientation=_floats(ds.get("ImageOrientationPatient"), 6),
                pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
                rows=rows,
                columns=cols,
                slope=_float(ds.get("RescaleSlope"), 1.0),
                intercept=_float(ds.get("RescaleIntercept"), 0.0),
                slice_thickness=_float(ds.get("SliceThickness"), None),
                image_type=_image_type(ds),
                sop_class_uid=sop_class,
                discriminators=_discriminators(ds),
                source=(ds, None),
            )
        ]
    out: list[FrameGeometry] = []
    n_frames = int(ds.get("NumberOfFrames", len(per_frame_seq)) or len(per_frame_seq))
    for idx in range(n_frames):
        pf = per_frame_seq[idx] if idx < len(per_frame_seq) else None
        pos_item = _group_item(ds, pf, "PlanePositionSequence")
        ori_item = _group_item(ds, pf, "PlaneOrientationSequence")
        meas_item = _group_item(ds, pf, "PixelMeasuresSequence")
        pvt_item = _group_item(ds, pf, "PixelValueTransformationSequence")
        # Frame type: MR Image Frame Type (C.8.13.5.1) or its CT/PET counterparts; Legacy
        # Converted Enhanced objects have none, their frames inherit the object's ImageType.
        ftype_item = None
        for kw in ("MRImageFrameTypeSequence", "CTImageFrameTypeSequence", "PETFrameTypeSequence"):
            ftype_item = _group_item(ds, pf, kw)
            if ftype_item is not None:
                break
        ftype = () if ftype_item is None else _cs_values(ftype_item.get("FrameType"))
        content = _group_item(ds, pf, "FrameContentSequence")
        spacing = _floats(meas_item.get("PixelSpacing") if meas_item is not None else None, 2)
        out.append(
            FrameGeometry(
                path=path,
                sop_uid=sop_uid,
                frame_number=idx + 1,
                series_uid=series_uid,
                frame_of_reference_uid=for_uid,
                position=_floats(pos_item.get("ImagePositionPatient") if pos_item is not None else None, 3),
                orientation=_floats(ori_item.get("ImageOrientationPatient") if ori_item is not None else None, 6),
                pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
                rows=rows,
                columns=cols,
                slope=_float(pvt_item.get("RescaleSlope") if pvt_item is not None else None, 1.0),
                intercept=_float(pvt_item.get("RescaleIntercept") if pvt_item is not None else None, 0.0),
                slice_thickness=_float(meas_item.get("SliceThickness") if meas_item is not None else None, None),
                image_type=ftype or _image_type(ds),
                sop_class_uid=sop_class,
                stack_id=None if content is None or content.get("StackID") is None else str(content.StackID),
                discriminators=_frame_discriminators(content, _group_item(ds, pf, "MREchoSequence"), _group_item(ds, pf, "MRDiffusionSequence")),
                source=(ds, idx),
            )
        )
    return out


def read_frames(paths: Iterable[Path]) -> list[FrameGeometry]:
    """Read every file and return its frames' geometry records (pixels are decoded later).

    Raises
    ------
    GeometryError
        ``unreadable`` when a file is not DICOM or has no pixel data.
    """
    frames: list[FrameGeometry] = []
    for p in paths:
        p = Path(p)
        try:
            ds = pydicom.dcmread(p)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the same finding
            raise GeometryError(f"cannot read {p.name}: {type(exc).__name__}: {exc}", reason="unreadable") from exc
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            raise GeometryError(f"{p.name} has no pixel data", reason="unreadable")
        frames.extend(frames_of_dataset(ds, p))
    return frames


def _decode(ds: Dataset) -> np.ndarray:
    """All frames of a dataset as ``(F, rows, cols)`` (F = 1 for single-frame)."""
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - missing codec, corrupt stream, ...
        raise GeometryError(
            f"pixel data cannot be decoded (transfer syntax {ds.file_meta.get('TransferSyntaxUID', '?')}): "
            f"{type(exc).__name__}: {exc}",
            reason="pixel_data",
        ) from exc
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        raise GeometryError(f"SamplesPerPixel={spp}: only greyscale images make volumes", reason="unsupported_pixels")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape[0] != n_frames and "PerFrameFunctionalGroupsSequence" in ds:
        raise GeometryError(f"decoded {arr.shape[0]} frames, header says {n_frames}", reason="pixel_data")
    return arr


def _as_monochrome2(px: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored MONOCHROME1 values as MONOCHROME2 (what a viewer displays bright is high): each value
    is reflected within the range its BitsStored and PixelRepresentation allow (max - (v - min),
    as GDCM's ``gdcmconv --monochrome2`` does), before the modality LUT."""
    try:
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    except (TypeError, ValueError):
        bits = 16
    bits = min(max(bits, 1), 32)  # a hostile header must not size the arithmetic
    v = px.astype(np.int64)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -1 - v  # signed: max - (v - min) with min = -2^(b-1), max = 2^(b-1) - 1
    return ((1 << bits) - 1) - v


def _padding(px: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """Where the stored values are padding (PixelPaddingValue, or the range it spans with
    PixelPaddingRangeLimit; PS3.3 C.7.5.1.1.2), or None when the object declares no padding."""
    def one_int(v) -> int | None:
        try:  # US or SS, one value; anything else (bytes, several values, text) declares nothing usable
            return None if v is None or isinstance(v, (bytes, str)) else int(v)
        except (TypeError, ValueError):
            return None

    value = one_int(ds.get("PixelPaddingValue"))
    if value is None:
        return None
    limit = one_int(ds.get("PixelPaddingRangeLimit"))
    lo, hi = (value, value) if limit is None else sorted((value, limit))
    return (px >= lo) & (px <= hi)


def as_displayed(px: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values of ``ds`` (a frame or a stack of frames) oriented as viewers display them:
    MONOCHROME1 inverted (:func:`_as_monochrome2`), anything else unchanged."""
    return _as_monochrome2(px, ds) if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1" else px


def load_series(paths: list[Path], spacing_tolerance: float = 0.05, invert_monochrome1: bool = False) -> Volume:
    """Load one series into a volume with a trusted geometry.

    Parameters
    ----------
    paths
        The series' files: single-frame images, or one (or more) Enhanced multi-frame objects,
        in any order. Slices are sorted by position along the slice normal, never by
        InstanceNumber.
    spacing_tolerance
        Relative tolerance for even slice spacing (``geometry.spacing_tolerance``).
    invert_monochrome1
        MONOCHROME1 frames (minimum displayed white) are inverted to MONOCHROME2 first, so an
        image volume holds what viewers show; off for label volumes (masks), whose values are labels.

    Returns
    -------
    Volume
        ``array`` float32 ``(Z, Y, X)`` with RescaleSlope/RescaleIntercept applied (per frame,
        from the Pixel Value Transformation functional group for multi-frame objects);
        ``affine`` voxel (column, row, slice) -> LPS mm; per-slice SOP Instance UIDs, frame
        numbers (1-based, ``None`` for single-frame) and paths; non-fatal notes in ``warnings``.

    Raises
    ------
    GeometryError
        With a reason code from :mod:`pgsam_node.geometry.checks` or ``unreadable`` /
        ``pixel_data`` / ``unsupported_pixels``.
    """
    frames = read_frames(paths)
    stack = select_stack(frames, spacing_tolerance=spacing_tolerance)
    notes: list[GeometryNote] = list(stack.notes)
    first = stack.frames[0]
    rows, cols = first.rows, first.columns
    out = np.empty((len(stack.frames), rows, cols), dtype=np.float32)
    decoded: dict[int, np.ndarray] = {}
    padded = np.zeros(out.shape, dtype=bool)
    mono1 = False
    for k, f in enumerate(stack.frames):
        ds, idx = f.source
        is_mono1 = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
        mono1 |= is_mono1
        if idx is None:  # single-frame: decode and drop, so only the float32 volume stays in memory
            px = _decode(ds)[0]
        else:  # multi-frame: decode each object once, keep it while its frames are copied
            key = id(ds)
            if key not in decoded:
                decoded[key] = _decode(ds)
            px = decoded[key][idx]
        if px.shape != (rows, cols):
            raise GeometryError(f"frame has matrix {px.shape}, header says {(rows, cols)}", reason="pixel_data")
        pad = _padding(px, ds)
        if pad is not None:
            padded[k] = pad
        if invert_monochrome1:
            px = as_displayed(px, ds)
        # Modality LUT: stored value * slope + intercept (PS3.3 C.11.1.1.2); computed in float64
        # so 32-bit stored values do not lose precision before the float32 store.
        out[k] = (px.astype(np.float64) * f.slope + f.intercept).astype(np.float32)
    sop_class = str(first.sop_class_uid or "")
    if sop_class == SECONDARY_CAPTURE_PREFIX or sop_class.startswith(SECONDARY_CAPTURE_PREFIX + "."):
        # the Secondary Capture IODs do not include the Image Plane module (PS3.3 A.8): the
        # attributes are present (e.g. TCIA tumour masks) but no standard vouches for them
        notes.append(
            GeometryNote(
                "secondary_capture",
                "Secondary Capture image with Image Plane attributes; geometry taken as written",
            )
        )
    if mono1:
        notes.append(GeometryNote("monochrome1", "MONOCHROME1 pixels inverted to MONOCHROME2 (what viewers display)" if invert_monochrome1
                                  else "MONOCHROME1 pixels kept as stored values (not inverted)"))
    if padded.any():
        # Pixel Padding Value marks pixels outside the imaged region (PS3.3 C.7.5.1.1.2): they
        # become the series' lowest real value (background), never an extreme intensity.
        n_pad = int(padded.sum())
        out[padded] = float(out[~padded].min()) if n_pad < out.size else 0.0
        notes.append(GeometryNote("pixel_padding", f"{n_pad} padding pixel(s) (PixelPaddingValue) set to the series' lowest value"))
    affine = affine_from_dicom(stack.orientation, first.position, stack.pixel_spacing, stack.slice_step)
    vol = Volume(
        array=out,
        affine=affine,
        spacing=(float(np.linalg.norm(stack.slice_step)), stack.pixel_spacing[0], stack.pixel_spacing[1]),
        series_uid=first.series_uid,
        frame_of_reference_uid=first.frame_of_reference_uid,
        sop_uids=[f.sop_uid for f in stack.frames],
        frame_numbers=[f.frame_number for f in stack.frames],
        paths=[f.path for f in stack.frames],
        warnings=notes,
        slice_thickness=first.slice_thickness,
        sop_class_uid=first.sop_class_uid,
    )
    log.info(
        "loaded series %s: %s slices %dx%d spacing %s notes=%s",
        uid_hash(vol.series_uid),
        vol.shape[0],
        rows,
        cols,
        tuple(round(s, 3) for s in vol.spacing),
        [n.code for n in notes],
    )
    return vol
