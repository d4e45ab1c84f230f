"""Geometry checks on a series' frames: pick one trustworthy stack of parallel slices or refuse.

Pure functions over :class:`FrameGeometry` records (no I/O). Every finding has a reason code;
fatal ones raise :class:`~pgsam_node.errors.GeometryError` (``reason`` = the code), the rest come
back as :class:`~pgsam_node.geometry.volume.GeometryNote`. Codes (see ``docs/geometry.md``):

=======================  ======  ==========================================================
code                     fatal   meaning
=======================  ======  ==========================================================
``no_frames``            yes     nothing to load
``missing_geometry``     yes     a frame lacks ImagePositionPatient / ImageOrientationPatient
                                 / PixelSpacing
``invalid_orientation``  yes     ImageOrientationPatient is not two orthogonal unit vectors
``invalid_spacing``      yes     PixelSpacing not positive
``mixed_series``         yes     the files belong to more than one SeriesInstanceUID
``localizer``            yes     every frame is a localiser (ImageType/FrameType LOCALIZER)
``localizer_removed``    no      localiser frames were dropped from the series
``non_parallel``         yes     slices tilted against each other by less than 10 degrees
                                 (a fan, not a set of distinct stacks)
``mixed_orientation``    no/yes  distinct orientations (>= 10 degrees apart); the largest
                                 stack is kept (note), refused when there is no unique largest
``multiple_stacks``      no/yes  same orientation but different matrix / pixel spacing /
                                 Enhanced StackID; the largest stack is kept (note),
                                 refused when not unique
``frame_of_reference_mixed`` yes  the stack mixes FrameOfReferenceUIDs
``no_frame_of_reference`` no     the stack has no FrameOfReferenceUID
``single_slice``         yes     one slice is not a volume
``duplicate_positions``  yes     two slices at the same position along the normal
``missing_slices``       yes     gaps that are whole multiples of the slice step
``uneven_spacing``       yes     steps differ by more than ``geometry.spacing_tolerance``
``inconsistent_positions`` yes   slice origins do not lie on one straight line
``gantry_tilt``          no      slice step not parallel to the normal (sheared affine kept)
=======================  ======  ==========================================================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pgsam_node.errors import GeometryError
from pgsam_node.geometry.volume import GeometryNote

log = logging.getLogger(__name__)

#: |cos| of the angle between IOP's row and column vectors above which the header is invalid.
ORTHOGONALITY_TOL = 1e-3
#: Two orientations are "the same" when both direction cosines agree within this angle (rad).
#: Generous enough for 6-decimal rounded headers (~1e-6 rad), far below any real tilt.
ORIENTATION_TOL_RAD = 1e-3
#: Orientation clusters closer than this are a fan of non-parallel slices, not separate stacks.
NON_PARALLEL_MAX_DEG = 10.0
#: Slice origins may leave the fitted line by this fraction of the smallest pixel spacing.
POSITION_RESIDUAL_FRACTION = 0.1
#: Slice step vs normal angle (rad) above which the stack counts as sheared (gantry tilt).
SHEAR_TOL_RAD = 1e-3


@dataclass
class FrameGeometry:
    """Geometry and provenance of one 2-D frame (a single-frame instance or one frame of an
    Enhanced multi-frame object).

    ``position`` is ImagePositionPatient (3,), ``orientation`` ImageOrientationPatient (6,),
    ``pixel_spacing`` (row spacing, column spacing) mm; ``rows``/``columns`` the matrix.
    ``source`` is an opaque handle the loader uses to fetch pixels.
    """

    path: Path
    sop_uid: str
    frame_number: int | None
    series_uid: str | None
    frame_of_reference_uid: str | None
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    rows: int
    columns: int
    slope: float = 1.0
    intercept: float = 0.0
    slice_thickness: float | None = None
    image_type: tuple[str, ...] = ()
    sop_class_uid: str | None = None
    #: StackID of an Enhanced object's Frame Content (C.7.6.16.2.2); frames of different stacks
    #: are never mixed into one volume.
    stack_id: str | None = None
    #: Attributes that tell repeated acquisitions apart (echo time, temporal position,
    #: acquisition number, b-value); only used to explain ``duplicate_positions``.
    discriminators: dict[str, Any] = field(default_factory=dict)
    source: Any = field(default=None, repr=False)


@dataclass
class Stack:
    """Result of :func:`select_stack`: frames in slice order and the slice step vector (mm)."""

    frames: list[FrameGeometry]
    orientation: np.ndarray  # (6,) normalised direction cosines
    pixel_spacing: tuple[float, float]
    slice_step: np.ndarray  # (3,)
    notes: list[GeometryNote]


def _unit_iop(iop: np.ndarray) -> np.ndarray:
    iop = np.asarray(iop, dtype=np.float64)
    r = iop[:3] / np.linalg.norm(iop[:3])
    c = iop[3:] / np.linalg.norm(iop[3:])
    return np.concatenate([r, c])


def _angle(u: np.ndarray, v: np.ndarray) -> float:
    """Angle between unit vectors in radians (robust for tiny angles)."""
    return float(2 * np.arctan2(np.linalg.norm(u - v), np.linalg.norm(u + v)))


def _same_orientation(a: np.ndarray, b: np.ndarray) -> bool:
    return _angle(a[:3], b[:3]) <= ORIENTATION_TOL_RAD and _angle(a[3:], b[3:]) <= ORIENTATION_TOL_RAD


def _normal(iop: np.ndarray) -> np.ndarray:
    n = np.cross(iop[:3], iop[3:])
    return n / np.linalg.norm(n)


def is_localizer(image_type: tuple[str, ...]) -> bool:
    """ImageType / FrameType value 3 LOCALIZER marks a localiser (PS3.3 C.8.13.1.1.1,
    C.8.16.1); some vendors write SCOUT. Only exact tokens count, never free-text descriptions."""
    return any(t.strip().upper() in ("LOCALIZER", "SCOUT") for t in image_type)


def _duplicate_message(frames: list[FrameGeometry], d: np.ndarray, tol: float) -> str:
    """Explain duplicate positions: how often each position repeats and which attribute varies."""
    groups = np.concatenate([[0], np.cumsum(np.diff(d) > tol)])
    counts = np.bincount(groups)
    keys = {k for f in frames for k in f.discriminators}
    varying = sorted(k for k in keys if len({f.discriminators.get(k) for f in frames}) > 1)
    msg = f"{int((counts > 1).sum())} of {len(counts)} positions hold more than one slice (up to {int(counts.max())})"
    if varying:
        msg += f"; frames differ in {', '.join(varying)} (several echoes/phases/acquisitions in one series)"
    return msg + "; which one is meant is not a geometry decision"


def select_stack(frames: list[FrameGeometry], spacing_tolerance: float = 0.05) -> Stack:
    """Check a series' frames and return one stack of parallel, evenly spaced slices.

    Parameters
    ----------
    frames
        All frames of one series, in any order (InstanceNumber is never used for ordering).
    spacing_tolerance
        Relative tolerance for the slice step (``geometry.spacing_tolerance``).

    Returns
    -------
    Stack
        Frames sorted by ascending position along the normal ``row_dir x col_dir``.

    Raises
    ------
    GeometryError
        With ``reason`` one of the fatal codes in this module's table.
    """
    notes: list[GeometryNote] = []
    if not frames:
        raise GeometryError("no frames to load", reason="no_frames")

    # --- localisers (first: a localiser's own geometry does not matter)
    loc = [f for f in frames if is_localizer(f.image_type)]
    if loc:
        if len(loc) == len(frames):
            raise GeometryError(f"all {len(frames)} frames are localisers (ImageType LOCALIZER)", reason="localizer")
        frames = [f for f in frames if not is_localizer(f.image_type)]
        notes.append(GeometryNote("localizer_removed", f"{len(loc)} localiser frame(s) ignored"))

    missing = [f for f in frames if f.position is None or f.orientation is None or f.pixel_spacing is None]
    if missing:
        raise GeometryError(
            f"{len(missing)} of {len(frames)} frames lack ImagePositionPatient, ImageOrientationPatient "
            "or PixelSpacing (PS3.3 C.7.6.2); the series has no usable patient geometry",
            reason="missing_geometry",
        )

    for f in frames:
        o = np.asarray(f.orientation, dtype=np.float64)
        nr, nc = np.linalg.norm(o[:3]), np.linalg.norm(o[3:])
        if min(nr, nc) < 0.5 or abs(float(o[:3] @ o[3:]) / (nr * nc)) > ORTHOGONALITY_TOL:
            raise GeometryError(
                f"ImageOrientationPatient {list(np.round(o, 6))} is not two orthogonal unit vectors "
                "(PS3.3 C.7.6.2.1.1)",
                reason="invalid_orientation",
            )
        if min(f.pixel_spacing) <= 0:
            raise GeometryError(f"PixelSpacing {list(f.pixel_spacing)} is not positive", reason="invalid_spacing")

    series = {f.series_uid for f in frames}
    if len(series) > 1:
        raise GeometryError(f"files of {len(series)} different series were given as one series", reason="mixed_series")

    # --- orientation clusters
    clusters: list[tuple[np.ndarray, list[FrameGeometry]]] = []
    for f in frames:
        iop = _unit_iop(f.orientation)
        for rep, members in clusters:
            if _same_orientation(rep, iop):
                members.append(f)
                break
        else:
            clusters.append((iop, [f]))
    if len(clusters) > 1:
        clusters.sort(key=lambda c: len(c[1]), reverse=True)
        best_iop, best = clusters[0]
        angles = [np.degrees(_angle(_normal(best_iop), _normal(c[0]))) for c in clusters[1:]]
        # a normal flipped by 180 degrees is the same plane family
        angles = [min(a, 180.0 - a) for a in angles]
        if min(angles) < NON_PARALLEL_MAX_DEG:
            raise GeometryError(
                f"slices are not parallel (or rotated in plane): {len(clusters)} orientations, normals of the "
                f"closest {min(angles):.3f} deg apart",
                reason="non_parallel",
            )
        if len(best) < 2 or len(best) == len(clusters[1][1]):
            raise GeometryError(
                f"series mixes {len(clusters)} orientations with no single largest stack "
                f"(sizes {[len(c[1]) for c in clusters]})",
                reason="mixed_orientation",
            )
        notes.append(
            GeometryNote(
                "mixed_orientation",
                f"series mixes {len(clusters)} orientations (stack sizes {[len(c[1]) for c in clusters]}); "
                f"kept the largest stack of {len(best)} slices",
            )
        )
        frames = best
    iop = _unit_iop(frames[0].orientation)

    # --- matrix / pixel spacing groups (same orientation, different acquisitions)
    groups: dict[tuple, list[FrameGeometry]] = {}
    for f in frames:
        key = (f.rows, f.columns, round(float(f.pixel_spacing[0]), 4), round(float(f.pixel_spacing[1]), 4), f.stack_id)
        groups.setdefault(key, []).append(f)
    if len(groups) > 1:
        ordered = sorted(groups.values(), key=len, reverse=True)
        sizes = [len(g) for g in ordered]
        if sizes[0] == sizes[1]:
            raise GeometryError(
                f"series holds {len(groups)} stacks (different matrix/pixel spacing/StackID) and no single largest "
                f"(sizes {sizes})",
                reason="multiple_stacks",
            )
        notes.append(
            GeometryNote(
                "multiple_stacks",
                f"series holds {len(groups)} stacks (different matrix/pixel spacing/StackID; sizes {sizes}); "
                f"kept the largest of {sizes[0]} slices",
            )
        )
        frames = ordered[0]

    fors = {f.frame_of_reference_uid for f in frames}
    if len(fors) > 1:
        raise GeometryError(f"stack mixes {len(fors)} FrameOfReferenceUIDs", reason="frame_of_reference_mixed")
    if fors == {None}:
        notes.append(GeometryNote("no_frame_of_reference", "stack has no FrameOfReferenceUID (PS3.3 C.7.4.1)"))

    if len(frames) < 2:
        raise GeometryError("series has a single slice; a volume needs at least two", reason="single_slice")

    # --- positions along the normal: sort (never by InstanceNumber)
    normal = _normal(iop)
    pos = np.array([np.asarray(f.position, dtype=np.float64) for f in frames])
    d = pos @ normal
    order = np.argsort(d, kind="stable")
    frames = [frames[i] for i in order]
    pos = pos[order]
    d = d[order]
    diffs = np.diff(d)
    # the geometry is taken from the first slice in slice order: deterministic whatever the
    # order the files (or frames) arrived in
    iop = _unit_iop(frames[0].orientation)
    pixel_spacing = (float(frames[0].pixel_spacing[0]), float(frames[0].pixel_spacing[1]))
    positive = diffs[diffs > 1e-3]
    ref_step = float(np.median(positive)) if positive.size else 0.0
    dup_tol = max(1e-3, 0.05 * ref_step)
    dups = int(np.sum(diffs <= dup_tol))
    if dups:
        raise GeometryError(_duplicate_message(frames, d, dup_tol), reason="duplicate_positions")
    step = float(np.median(diffs))
    ratio = diffs / step
    off = np.abs(ratio - 1.0) > spacing_tolerance
    if off.any():
        rounded = np.round(ratio)
        integral = np.abs(ratio - rounded) <= spacing_tolerance * np.maximum(rounded, 1)
        if np.all(integral[off]) and np.all(rounded[off] >= 2):
            n_missing = int(np.sum(rounded[off] - 1))
            raise GeometryError(
                f"{n_missing} slice(s) missing: {int(off.sum())} gap(s) of whole multiples of the "
                f"{step:.3f} mm step",
                reason="missing_slices",
            )
        raise GeometryError(
            f"uneven slice spacing: steps {diffs.min():.3f}..{diffs.max():.3f} mm around {step:.3f} mm "
            f"exceed the relative tolerance {spacing_tolerance}",
            reason="uneven_spacing",
        )

    # --- slice origins on one line; step direction vs normal (shear)
    n = len(frames)
    slice_step = (pos[-1] - pos[0]) / (n - 1)
    fitted = pos[0] + np.outer(np.arange(n), slice_step)
    residual = float(np.linalg.norm(pos - fitted, axis=1).max())
    if residual > POSITION_RESIDUAL_FRACTION * min(pixel_spacing):
        raise GeometryError(
            f"slice origins leave a straight line by up to {residual:.3f} mm", reason="inconsistent_positions"
        )
    shear = _angle(slice_step / np.linalg.norm(slice_step), normal)
    if shear > SHEAR_TOL_RAD:
        notes.append(
            GeometryNote(
                "gantry_tilt",
                f"slice step is {np.degrees(shear):.2f} deg off the slice normal (gantry-tilt-like shear); "
                "the sheared affine is kept so positions stay exact",
            )
        )
    return Stack(frames=frames, orientation=iop, pixel_spacing=pixel_spacing, slice_step=slice_step, notes=notes)
