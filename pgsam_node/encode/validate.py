"""Validate a SEG before it is queued: re-read it from bytes, rebuild the mask voxel for voxel on
the source grid, check geometry and references. Any mismatch raises :class:`EncodeError`."""

from __future__ import annotations

import io
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage

from pgsam_node.errors import EncodeError
from pgsam_node.encode.common import SourceSet, quiet_highdicom

#: Geometry tolerances: positions in mm, direction cosines unitless.
POSITION_TOL_MM = 1e-3
COSINE_TOL = 1e-4


def _roundtrip(ds: Dataset) -> Dataset:
    buf = io.BytesIO()
    try:
        ds.save_as(buf, enforce_file_format=True)
    except Exception as exc:
        raise EncodeError(f"SEG cannot be written: {exc}") from exc
    buf.seek(0)
    return pydicom.dcmread(buf)


def _floats(v) -> np.ndarray:
    return np.asarray([float(x) for x in v], dtype=float)


def _source_frame_geometry(sources: SourceSet) -> list[tuple[str, int | None, np.ndarray, np.ndarray, np.ndarray]]:
    """(SOP UID, frame number or None, position, orientation, spacing) per source slice in Z order."""
    out = []
    if not sources.multiframe:
        for d in sources.datasets:
            out.append((str(d.SOPInstanceUID), None, _floats(d.ImagePositionPatient),
                        _floats(d.ImageOrientationPatient), _floats(d.PixelSpacing)))
        return out
    d = sources.datasets[0]
    shared = d.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in d else Dataset()
    for f in sources.frame_numbers or []:
        pf = d.PerFrameFunctionalGroupsSequence[f - 1]

        def grp(name: str, pf: Dataset = pf, f: int = f) -> Dataset:
            if name in pf:
                return pf[name][0]
            if name in shared:
                return shared[name][0]
            raise EncodeError(f"source frame {f} lacks {name}")

        out.append((str(d.SOPInstanceUID), f, _floats(grp("PlanePositionSequence").ImagePositionPatient),
                    _floats(grp("PlaneOrientationSequence").ImageOrientationPatient),
                    _floats(grp("PixelMeasuresSequence").PixelSpacing)))
    return out


def _frame_number(item: Dataset) -> int | None:
    v = item.get("ReferencedFrameNumber")
    if v is None:
        return None
    if isinstance(v, (list, pydicom.multival.MultiValue)):
        return int(v[0]) if len(v) == 1 else None
    return int(v)


def validate_seg(
    ds: Dataset,
    mask: np.ndarray,
    sources: SourceSet | Sequence[Dataset],
    fractional_tolerance: float = 0.5 / 255 + 1e-6,
) -> hd.seg.Segmentation:
    """Check a SEG against the mask it should encode and the reference series.

    Parameters
    ----------
    ds
        The SEG (BINARY or FRACTIONAL).
    mask
        (Z, Y, X) expected segment: 0/1 for BINARY, probabilities in [0, 1] for FRACTIONAL.
    sources
        The reference series (a :class:`SourceSet`, or single-frame datasets in Z order).
    fractional_tolerance
        Largest allowed difference after 8-bit quantisation of probabilities.

    Returns
    -------
    highdicom.seg.Segmentation
        The re-read object.

    Raises
    ------
    EncodeError
        With the first mismatch found (SOP class, geometry, references, voxels).
    """
    if not isinstance(sources, SourceSet):
        sources = SourceSet(datasets=list(sources), multiframe=False)
    mask = np.asarray(mask)
    geo = _source_frame_geometry(sources)
    if mask.shape[0] != len(geo):
        raise EncodeError(f"mask has {mask.shape[0]} slices, reference has {len(geo)}")
    re = _roundtrip(ds)
    if re.SOPClassUID != SegmentationStorage:
        raise EncodeError(f"not a Segmentation Storage object: {re.SOPClassUID}")
    ref = sources.datasets[0]
    # --- patient / study / frame of reference (PS3.3 C.8.20.1: the SEG shares the source's FoR)
    for kw in ("StudyInstanceUID", "PatientID", "FrameOfReferenceUID"):
        if str(re.get(kw, "")) != str(ref.get(kw, "")):
            raise EncodeError(f"{kw} of the SEG differs from the reference series")
    if (int(re.Rows), int(re.Columns)) != (int(ref.Rows), int(ref.Columns)):
        raise EncodeError("SEG matrix differs from the reference grid")
    # --- referenced series (PS3.3 C.7.6.16.2.6 / C.8.20.1 Common Instance Reference)
    src_uids = {u for u, *_ in geo}
    refd = re.get("ReferencedSeriesSequence")
    if not refd or [str(i.SeriesInstanceUID) for i in refd] != [sources.series_uid]:
        raise EncodeError("ReferencedSeriesSequence does not name exactly the reference series")
    listed = {str(i.ReferencedSOPInstanceUID) for i in refd[0].ReferencedInstanceSequence}
    if not listed or not listed <= {str(d.SOPInstanceUID) for d in sources.datasets}:
        raise EncodeError("ReferencedInstanceSequence lists instances outside the reference series")
    # --- shared geometry
    shared = re.SharedFunctionalGroupsSequence[0]
    spacing = _floats(shared.PixelMeasuresSequence[0].PixelSpacing)
    orient = _floats(shared.PlaneOrientationSequence[0].ImageOrientationPatient)
    if not np.allclose(spacing, geo[0][4], atol=1e-6):
        raise EncodeError(f"PixelSpacing {spacing.tolist()} differs from the source {geo[0][4].tolist()}")
    if not np.allclose(orient, geo[0][3], atol=COSINE_TOL):
        raise EncodeError("ImageOrientationPatient differs from the source")
    # --- per frame: position and source reference agree with the source slice it names
    by_ref = {(u, f): pos for u, f, pos, _, _ in geo}
    for i, pf in enumerate(re.PerFrameFunctionalGroupsSequence, start=1):
        try:
            src = pf.DerivationImageSequence[0].SourceImageSequence[0]
        except (AttributeError, IndexError) as exc:
            raise EncodeError(f"SEG frame {i} has no source image reference") from exc
        uid = str(src.ReferencedSOPInstanceUID)
        if uid not in src_uids:
            raise EncodeError(f"SEG frame {i} references an instance outside the reference series")
        fnum = _frame_number(src) if sources.multiframe else None
        key = (uid, fnum)
        if key not in by_ref:
            raise EncodeError(f"SEG frame {i} references a source frame outside the volume")
        pos = _floats(pf.PlanePositionSequence[0].ImagePositionPatient)
        if not np.allclose(pos, by_ref[key], atol=POSITION_TOL_MM):
            raise EncodeError(f"SEG frame {i} position {pos.tolist()} differs from its source {by_ref[key].tolist()}")
    # --- voxels, rebuilt by highdicom on the source grid
    try:
        with quiet_highdicom():
            seg = hd.seg.Segmentation.from_dataset(re, copy=False)
            if sources.multiframe:
                arr = seg.get_pixels_by_source_frame(
                    sources.sop_uids[0], source_frame_numbers=list(sources.frame_numbers or []),
                    segment_numbers=[1], assert_missing_frames_are_empty=True,
                )[..., 0]
            else:
                arr = seg.get_pixels_by_source_instance(
                    sources.sop_uids, segment_numbers=[1], assert_missing_frames_are_empty=True,
                )[..., 0]
    except EncodeError:
        raise
    except Exception as exc:
        raise EncodeError(f"SEG cannot be decoded back onto the source grid: {exc}") from exc
    if arr.shape != mask.shape:
        raise EncodeError(f"decoded SEG shape {arr.shape} differs from the mask {mask.shape}")
    if str(re.SegmentationType) == "FRACTIONAL":
        diff = float(np.max(np.abs(arr.astype(np.float32) - mask.astype(np.float32)), initial=0.0))
        if diff > fractional_tolerance:
            raise EncodeError(f"decoded probabilities differ from the input by up to {diff:.4f}")
    else:
        bad = int(np.count_nonzero((arr > 0) != (mask > 0)))
        if bad:
            raise EncodeError(f"decoded SEG differs from the mask in {bad} voxels")
    return seg
