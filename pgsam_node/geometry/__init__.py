"""Volumes on one reference grid: loading, geometry checks, resampling, normalisation.

Public API (see ``docs/geometry.md`` for conventions and reason codes):

- :class:`Volume`, :class:`GeometryNote` - voxels (Z, Y, X) plus a voxel->LPS affine;
- :func:`load_series` - DICOM files (single-frame or Enhanced multi-frame) -> ``Volume``;
- :func:`resample_to` - trilinear resampling onto a reference grid, with a validity mask;
- :func:`mask_to_reference` - nearest-neighbour resampling of label volumes;
- :func:`build_study_volumes` -> :class:`StudyVolumes` - a study's roles on one grid;
- :func:`percentile_normalize` - robust intensity scaling for the model.
"""

from pgsam_node.geometry.load import load_series
from pgsam_node.geometry.normalize import NormParams, percentile_normalize
from pgsam_node.geometry.resample import mask_to_reference, resample_to
from pgsam_node.geometry.study import StudyVolumes, build_study_volumes
from pgsam_node.geometry.volume import GeometryNote, Volume, affine_from_dicom

__all__ = [
    "GeometryNote",
    "NormParams",
    "StudyVolumes",
    "Volume",
    "affine_from_dicom",
    "build_study_volumes",
    "load_series",
    "mask_to_reference",
    "percentile_normalize",
    "resample_to",
]
