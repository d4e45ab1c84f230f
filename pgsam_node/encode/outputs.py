"""Bundle the enabled outputs of one run, each validated before it is returned."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from pgsam_node.config import SegmentCodes, Settings
from pgsam_node.errors import EncodeError
from pgsam_node.findings import Findings
from pgsam_node.encode.common import AlgorithmInfo, is_empty, load_sources
from pgsam_node.encode.overlay import build_overlay
from pgsam_node.encode.seg import build_fractional_seg, build_seg
from pgsam_node.encode.sr import build_sr
from pgsam_node.encode.validate import validate_seg


def build_outputs(
    mask: np.ndarray,
    source_paths: Sequence[Path | str],
    findings: Findings | None,
    settings: Settings,
    algorithm: AlgorithmInfo,
    run_version: int,
    codes: SegmentCodes | None = None,
    frame_numbers: Sequence[int | None] | None = None,
    prob: np.ndarray | None = None,
) -> list[Dataset]:
    """All objects to send for one run, in sending order: BINARY SEG first, then (as configured)
    the FRACTIONAL SEG (``seg.fractional``, needs ``prob``), the TID 1500 SR
    (``seg.structured_report``, only for a non-empty mask) and the overlay series
    (``seg.overlay_series``, one instance per slice).

    Parameters
    ----------
    mask
        (Z, Y, X) uint8 0/1 on the reference grid.
    prob
        (Z, Y, X) float32 probabilities in [0, 1], for the FRACTIONAL SEG.

    Returns
    -------
    list of pydicom.Dataset
        Empty when the mask is empty and ``seg.empty_result`` is ``no_seg`` (record NO_FINDING).

    Raises
    ------
    EncodeError
        Any object cannot be built, or a SEG fails validation (``seg.validate_outputs``).
    """
    codes = codes or settings.seg.segment_codes
    need_pixels = settings.seg.overlay_series
    sources = load_sources(source_paths, frame_numbers, pixels=need_pixels)
    mask = np.asarray(mask)
    seg = build_seg(mask, source_paths, findings, settings, algorithm, run_version, codes, frame_numbers, sources=sources)
    if seg is None:
        return []
    if settings.seg.validate_outputs:
        validate_seg(seg, mask, sources)
    out: list[Dataset] = [seg]
    if settings.seg.fractional:
        if prob is None:
            raise EncodeError("seg.fractional is enabled but no probability map was given")
        frac = build_fractional_seg(prob, source_paths, findings, settings, algorithm, run_version, codes, frame_numbers, sources=sources)
        if settings.seg.validate_outputs:
            validate_seg(frac, prob, sources)
        out.append(frac)
    if settings.seg.structured_report and not is_empty(mask):
        out.append(build_sr(seg, mask, sources, findings, settings, algorithm, run_version, codes))
    if settings.seg.overlay_series:
        out.extend(build_overlay(mask, sources, settings, algorithm, run_version))
    return out
