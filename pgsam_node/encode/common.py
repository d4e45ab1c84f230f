"""Shared pieces of the encoders: source loading, codes, algorithm identity, deterministic UIDs."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from pgsam_node import __version__
from pgsam_node.config import SegCode, SegmentCodes, Settings
from pgsam_node.errors import EncodeError
from pgsam_node.logsetup import uid_hash

log = logging.getLogger(__name__)
# highdicom logs SOP Instance UIDs of the source images at INFO; UIDs reach our logs only hashed.
logging.getLogger("highdicom").setLevel(logging.WARNING)

#: Laterality modifiers (PS3.16 CID 244 "Laterality").
LATERALITY_CODES = {
    "left": Code("7771000", "SCT", "Left"),
    "right": Code("24028007", "SCT", "Right"),
    "bilateral": Code("51440002", "SCT", "Bilateral"),
}

#: Series-number offsets of the optional outputs relative to the BINARY SEG's number.
SERIES_OFFSETS = {"seg": 0, "fractional": 100, "sr": 200, "overlay": 300}


@dataclass(frozen=True)
class AlgorithmInfo:
    """Algorithm identification (PS3.3 C.8.20.2.3.1, Algorithm Identification Macro).

    ``family`` is a code from CID 7162 (default DCM 123110 "Artificial Intelligence").
    """

    name: str = "PG-SAM"
    version: str = __version__
    family: Code = field(default_factory=lambda: Code("123110", "DCM", "Artificial Intelligence"))


def algorithm_info(checkpoint_sha256: str | None = None, name: str = "PG-SAM") -> AlgorithmInfo:
    """Algorithm identity with version ``<package version>+<first 12 hex digits of the checkpoint>``."""
    version = __version__
    if checkpoint_sha256:
        version = f"{version}+{checkpoint_sha256[:12]}"
    return AlgorithmInfo(name=name, version=version)


def segment_codes_for(settings: Settings, model_config: dict[str, Any] | None = None) -> SegmentCodes:
    """Segment codes, one precedence (README "Segment label and codes"):

    1. ``seg.segment_codes`` set explicitly in the node's configuration (YAML or environment);
    2. the model folder's codes (``labels[0]`` category / type / anatomy of its ``config.json``),
       merged over the defaults;
    3. the built-in defaults (Morphologically abnormal structure / Neoplasm / Parotid gland).

    Raises
    ------
    EncodeError
        The model folder's codes are malformed.
    """
    base = settings.seg.segment_codes
    override = (model_config or {}).get("segment_codes")
    if not override or "segment_codes" in settings.seg.model_fields_set:
        return base
    try:
        merged = base.model_dump()
        for key, value in dict(override).items():
            merged[key] = {**merged.get(key, {}), **dict(value)}
        return SegmentCodes.model_validate(merged)
    except Exception as exc:  # pydantic ValidationError, TypeError on non-mappings
        raise EncodeError(f"invalid segment_codes in the model configuration: {exc}") from exc


def segment_label_for(settings: Settings, model_config: dict[str, Any] | None = None) -> str:
    """Segment label with the same precedence as :func:`segment_codes_for`: an explicit
    ``seg.segment_label``, else the model folder's label name (``labels[0].name``), else "Lesion"."""
    name = (model_config or {}).get("segment_label")
    if name and "segment_label" not in settings.seg.model_fields_set:
        return str(name)[:64]  # PS3.3 C.8.20.4: Segment Label is LO (64 characters)
    return settings.seg.segment_label


def with_segment_label(settings: Settings, label: str) -> Settings:
    """A copy of ``settings`` whose ``seg.segment_label`` is ``label`` (the encoders read it there)."""
    if label == settings.seg.segment_label:
        return settings
    return settings.model_copy(update={"seg": settings.seg.model_copy(update={"segment_label": label})})


def to_code(c: SegCode) -> Code:
    return Code(c.value, c.scheme, c.meaning)


def is_empty(mask: np.ndarray) -> bool:
    """True when the mask has no foreground voxel."""
    return not bool(np.any(mask))


def sends_nothing(mask: np.ndarray, seg_settings) -> bool:
    """The empty-result policy, decided here only (DESIGN.md "decide explicitly what an empty result
    sends"): True when the mask is empty and ``seg.empty_result`` is ``no_seg`` (no object is built; the
    study ends NO_FINDING). With ``empty_segment`` an empty mask still gives a SEG."""
    return seg_settings.empty_result == "no_seg" and is_empty(mask)


def output_uids(study_uid: str, run_version: int, model_version: str, kind: str) -> tuple[str, str]:
    """Deterministic (SeriesInstanceUID, SOPInstanceUID) for one output object.

    Derived from (study UID, run version, model version, kind) so that a re-send after a crash
    produces the same UIDs and the PACS replaces instead of duplicating (PS3.5 B.2: a UID derived
    from a hash of unique inputs under the pydicom root).
    """
    srcs = [study_uid, str(int(run_version)), model_version, kind]
    return generate_uid(entropy_srcs=srcs + ["series"]), generate_uid(entropy_srcs=srcs + ["instance"])


@dataclass
class SourceSet:
    """The reference series as read from disk, in the volume's slice order.

    ``datasets`` holds one dataset per distinct file (one per slice for single-frame series, exactly
    one for an Enhanced multi-frame source); ``frame_numbers`` (1-based, per Z) is set for a
    multi-frame source.
    """

    datasets: list[Dataset]
    multiframe: bool
    frame_numbers: list[int] | None = None

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def study_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def sop_uids(self) -> list[str]:
        return [str(d.SOPInstanceUID) for d in self.datasets]

    @property
    def n_slices(self) -> int:
        return len(self.frame_numbers) if self.multiframe else len(self.datasets)


#: Type 2 attributes of the Patient and General Study modules that every derived object copies
#: from its source (PS3.3 C.7.1.1, C.7.2.1). Type 2 means "present, possibly empty"; scanners and
#: anonymisers often leave them out altogether, and highdicom reads them without a default.
TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                       "AccessionNumber", "StudyID", "ReferringPhysicianName")


def with_type2_defaults(ds: pydicom.Dataset) -> pydicom.Dataset:
    """``ds`` (in memory) with every missing :data:`TYPE2_PATIENT_STUDY` attribute present and empty:
    the value a Type 2 attribute takes when it is unknown, so the derived object carries it empty too."""
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def load_sources(
    source_paths: Sequence[Path | str],
    frame_numbers: Sequence[int | None] | None = None,
    pixels: bool = False,
) -> SourceSet:
    """Read the reference series' files (metadata only unless ``pixels``).

    Parameters
    ----------
    source_paths
        One path per slice of the volume, in Z order; for an Enhanced (multi-frame) source the same
        path repeated, with ``frame_numbers`` naming the frame of each slice.
    frame_numbers
        1-based frame number per slice for multi-frame sources; ``None`` entries for single frames.

    Raises
    ------
    EncodeError
        Unreadable files, several series, or a mix of single- and multi-frame sources.
    """
    if not source_paths:
        raise EncodeError("no source images given")
    distinct: list[str] = []
    for p in source_paths:
        if str(p) not in distinct:
            distinct.append(str(p))
    datasets = []
    for p in distinct:
        try:
            datasets.append(with_type2_defaults(pydicom.dcmread(p, stop_before_pixels=not pixels)))
        except Exception as exc:  # InvalidDicomError, OSError
            raise EncodeError(f"cannot read source image {Path(p).name}: {exc}") from exc
    series = {str(d.get("SeriesInstanceUID", "")) for d in datasets}
    if len(series) != 1:
        raise EncodeError(f"source images belong to {len(series)} series; a SEG references one")
    nframes = [int(d.get("NumberOfFrames", 1) or 1) for d in datasets]
    fn = list(frame_numbers) if frame_numbers is not None else [None] * len(source_paths)
    if len(fn) != len(source_paths):
        raise EncodeError("frame_numbers must have one entry per slice")
    if len(datasets) == 1 and nframes[0] > 1:
        # Enhanced / multi-frame source: each slice is a frame of the one instance.
        if all(f is None for f in fn):
            if nframes[0] != len(source_paths):
                raise EncodeError("a multi-frame source needs a frame number per slice")
            fn = list(range(1, nframes[0] + 1))
        if any(f is None for f in fn):
            raise EncodeError("a multi-frame source needs a frame number per slice")
        if len(set(fn)) != len(fn) or min(fn) < 1 or max(fn) > nframes[0]:
            raise EncodeError("frame numbers must be distinct and within the source's frames")
        return SourceSet(datasets=datasets, multiframe=True, frame_numbers=[int(f) for f in fn])
    if any(n > 1 for n in nframes):
        raise EncodeError("several multi-frame source images: a SEG can derive from exactly one")
    if len(datasets) != len(source_paths):
        raise EncodeError("source paths repeat: one single-frame image per slice expected")
    return SourceSet(datasets=datasets, multiframe=False)


@contextmanager
def quiet_highdicom() -> Iterator[None]:
    """Silence highdicom's UserWarnings while building: some quote header values (patient name)
    and patient data must never reach the logs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def log_built(kind: str, ds: Dataset) -> None:
    log.info("built %s", kind, extra={"sop": uid_hash(str(ds.SOPInstanceUID)), "series": uid_hash(str(ds.SeriesInstanceUID))})
