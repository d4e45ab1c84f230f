"""Encode a model result as DICOM: BINARY SEG (always), FRACTIONAL SEG, TID 1500 SR and a burned-in
overlay series (optional), and validate each object before it is queued for sending.

Public entry points: :func:`build_seg`, :func:`build_fractional_seg`, :func:`build_sr`,
:func:`build_overlay`, :func:`build_outputs`, :func:`validate_seg`.
"""

from pgsam_node.encode.common import (
    AlgorithmInfo,
    SourceSet,
    algorithm_info,
    is_empty,
    load_sources,
    output_uids,
    segment_codes_for,
)
from pgsam_node.encode.overlay import build_overlay
from pgsam_node.encode.seg import build_fractional_seg, build_seg
from pgsam_node.encode.outputs import build_outputs
from pgsam_node.encode.sr import build_sr, lesion_measurements
from pgsam_node.encode.validate import validate_seg

__all__ = [
    "AlgorithmInfo",
    "SourceSet",
    "algorithm_info",
    "build_fractional_seg",
    "build_outputs",
    "build_overlay",
    "build_seg",
    "build_sr",
    "is_empty",
    "lesion_measurements",
    "load_sources",
    "output_uids",
    "segment_codes_for",
    "validate_seg",
]
