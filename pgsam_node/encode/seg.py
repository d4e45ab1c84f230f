"""DICOM Segmentation (PS3.3 A.51) from the model's mask, on the reference series' own grid.

The SEG is built with highdicom from the reference series' datasets, so each frame references its
source instance (or source frame for an Enhanced MR source) through the Derivation Image Sequence
and the Referenced Series Sequence names the reference series (PS3.3 C.8.20.1, C.7.6.16.2.6).
Patient and study attributes come from the source, series number and UIDs are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.valuerep import PersonName

from pgsam_node.config import SegmentCodes, Settings
from pgsam_node.errors import EncodeError
from pgsam_node.findings import Findings
from pgsam_node.encode.common import (
    LATERALITY_CODES,
    SERIES_OFFSETS,
    AlgorithmInfo,
    SourceSet,
    is_empty,
    load_sources,
    log_built,
    output_uids,
    sends_nothing,
    quiet_highdicom,
    to_code,
)

#: ContentLabel (CS, PS3.3 C.10.9): upper case, digits, underscore.
CONTENT_LABEL = "PGSAM_LESION"
CONTENT_CREATOR = PersonName.from_named_components(family_name="PG-SAM", given_name="Node")


def segment_description(
    settings: Settings, codes: SegmentCodes, algorithm: AlgorithmInfo, findings: Findings | None
) -> hd.seg.SegmentDescription:
    """Segment 1: category / type / anatomic region (+ laterality modifier) and algorithm identity."""
    alg = hd.AlgorithmIdentificationSequence(name=algorithm.name, family=algorithm.family, version=algorithm.version)
    desc = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=settings.seg.segment_label,
        segmented_property_category=to_code(codes.category),
        segmented_property_type=to_code(codes.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=alg,
        anatomic_regions=[to_code(codes.anatomy)],
        display_color=hd.color.CIELabColor.from_rgb(*settings.seg.display_color),
    )
    side = (findings.side if findings is not None else None) or None
    if side in LATERALITY_CODES:
        # PS3.3 C.10.9.1: laterality is an Anatomic Region Modifier of the anatomic region item.
        mod = hd.sr.CodedConcept.from_code(LATERALITY_CODES[side])
        desc.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = DicomSequence([mod])
    return desc


def _frames_for_source(array: np.ndarray, sources: SourceSet) -> np.ndarray:
    """Arrange (Z, Y, X) per-slice data as highdicom expects: one plane per source image, or one
    plane per frame of a multi-frame source (frames outside the volume stay empty)."""
    if not sources.multiframe:
        return array
    n = int(sources.datasets[0].NumberOfFrames)
    out = np.zeros((n,) + array.shape[1:], dtype=array.dtype)
    for z, f in enumerate(sources.frame_numbers or []):
        out[f - 1] = array[z]
    return out


def _check_shape(array: np.ndarray, sources: SourceSet, what: str) -> None:
    if array.ndim != 3:
        raise EncodeError(f"{what} must be 3-D (Z, Y, X), got shape {array.shape}")
    if array.shape[0] != sources.n_slices:
        raise EncodeError(f"{what} has {array.shape[0]} slices but {sources.n_slices} source slices were given")
    ref = sources.datasets[0]
    if array.shape[1:] != (int(ref.Rows), int(ref.Columns)):
        raise EncodeError(f"{what} plane {array.shape[1:]} differs from the source grid {(int(ref.Rows), int(ref.Columns))}")


def _build(
    pixel_array: np.ndarray,
    sources: SourceSet,
    findings: Findings | None,
    settings: Settings,
    algorithm: AlgorithmInfo,
    run_version: int,
    codes: SegmentCodes,
    kind: str,
    omit_empty_frames: bool,
    mask_encoding: str = "binary",
) -> Dataset:
    series_uid, sop_uid = output_uids(sources.study_uid, run_version, algorithm.version, kind)
    fractional = kind == "fractional"
    # seg.mask_encoding "fractional": the 0/1 mask as FRACTIONAL OCCUPANCY, 8 bits per pixel
    # (PS3.3 C.8.20.2), so per-frame WADO-RS works on servers that cannot frame 1-bit pixels of a
    # width not a multiple of 8 (Orthanc 1.10, docs/seg.md).
    occupancy = kind == "seg" and mask_encoding == "fractional"
    if occupancy:
        pixel_array = pixel_array.astype(np.float32)
    try:
        with quiet_highdicom():
            seg = hd.seg.Segmentation(
                source_images=sources.datasets,
                pixel_array=_frames_for_source(pixel_array, sources),
                segmentation_type=(
                    hd.seg.SegmentationTypeValues.FRACTIONAL if fractional or occupancy
                    else hd.seg.SegmentationTypeValues.BINARY
                ),
                segment_descriptions=[segment_description(settings, codes, algorithm, findings)],
                series_instance_uid=series_uid,
                series_number=settings.seg.series_number_base + SERIES_OFFSETS[kind] + int(run_version),
                sop_instance_uid=sop_uid,
                instance_number=1,
                manufacturer=settings.seg.manufacturer,
                manufacturer_model_name=algorithm.name,
                software_versions=algorithm.version,
                device_serial_number=algorithm.version[:64],
                fractional_type=(hd.seg.SegmentationFractionalTypeValues.OCCUPANCY if occupancy
                                 else hd.seg.SegmentationFractionalTypeValues.PROBABILITY),
                max_fractional_value=255,
                content_description=settings.seg.series_description[:64],
                content_label=CONTENT_LABEL,
                content_creator_name=CONTENT_CREATOR,
                omit_empty_frames=omit_empty_frames,
                series_description=(
                    settings.seg.series_description + (" (probability)" if fractional else "")
                )[:64],
            )
    except EncodeError:
        raise
    except Exception as exc:  # highdicom validates in its constructor: ValueError, TypeError, …
        raise EncodeError(f"cannot build {kind} SEG: {exc}") from exc
    log_built(kind, seg)
    return seg


def build_seg(
    mask: np.ndarray,
    source_paths: Sequence[Path | str],
    findings: Findings | None,
    settings: Settings,
    algorithm: AlgorithmInfo,
    run_version: int,
    codes: SegmentCodes | None = None,
    frame_numbers: Sequence[int | None] | None = None,
    sources: SourceSet | None = None,
) -> Dataset | None:
    """BINARY Segmentation Storage object (1.2.840.10008.5.1.4.1.1.66.4) for one lesion segment.

    Parameters
    ----------
    mask
        uint8/bool array (Z, Y, X), 0/1, on the reference series' grid; ``mask[z]`` belongs to
        ``source_paths[z]``.
    source_paths
        One file per slice, Z order (for a multi-frame source: that file repeated).
    findings
        Structured report findings (laterality goes into the anatomic region modifier); may be None.
    settings
        Node settings (``seg`` section).
    algorithm
        Name, version (package version + checkpoint hash) and family of the algorithm.
    run_version
        Study run version: series number = ``seg.series_number_base + run_version``; UIDs derive
        from (StudyInstanceUID, run version, algorithm version).
    codes
        Segment codes; default ``settings.seg.segment_codes``.
    frame_numbers
        1-based source frame per slice for a multi-frame (Enhanced MR) source.
    sources
        Already loaded sources (saves re-reading the files).

    Returns
    -------
    pydicom.Dataset or None
        The SEG; ``None`` when the mask is empty and ``seg.empty_result`` is ``no_seg`` (the caller
        records NO_FINDING). With ``empty_segment`` an empty mask gives a SEG whose segment has no
        voxel: every frame is encoded, all zero (highdicom cannot omit them all, and viewers load a
        SEG with frames more reliably than one without).

    Raises
    ------
    EncodeError
        Shape mismatch, non-binary mask, unreadable sources, or highdicom rejecting the object.
    """
    sources = sources or load_sources(source_paths, frame_numbers)
    mask = np.asarray(mask)
    _check_shape(mask, sources, "mask")
    if mask.dtype != np.bool_ and not np.isin(np.unique(mask), (0, 1)).all():
        raise EncodeError("mask must be binary (0/1)")
    mask = mask.astype(np.uint8)
    if sends_nothing(mask, settings.seg):
        return None
    empty = is_empty(mask)
    return _build(
        mask, sources, findings, settings, algorithm, run_version, codes or settings.seg.segment_codes,
        "seg", omit_empty_frames=not empty, mask_encoding=settings.seg.mask_encoding,
    )


def build_fractional_seg(
    prob: np.ndarray,
    source_paths: Sequence[Path | str],
    findings: Findings | None,
    settings: Settings,
    algorithm: AlgorithmInfo,
    run_version: int,
    codes: SegmentCodes | None = None,
    frame_numbers: Sequence[int | None] | None = None,
    sources: SourceSet | None = None,
) -> Dataset:
    """FRACTIONAL (PROBABILITY) SEG of the model's per-voxel probabilities.

    Parameters
    ----------
    prob
        float32 array (Z, Y, X) in [0, 1] on the reference grid; stored as 0-255
        (MaximumFractionalValue 255, PS3.3 C.8.20.2). All frames are kept (probabilities below
        the threshold are information too).

    Raises
    ------
    EncodeError
        Shape mismatch, values outside [0, 1] or NaN.
    """
    sources = sources or load_sources(source_paths, frame_numbers)
    prob = np.asarray(prob, dtype=np.float32)
    _check_shape(prob, sources, "probability map")
    if not np.isfinite(prob).all() or prob.min(initial=0.0) < 0.0 or prob.max(initial=0.0) > 1.0:
        raise EncodeError("probabilities must be finite and within [0, 1]")
    return _build(
        prob, sources, findings, settings, algorithm, run_version, codes or settings.seg.segment_codes,
        "fractional", omit_empty_frames=False,
    )
