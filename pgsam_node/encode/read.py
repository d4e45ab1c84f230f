"""Read a BINARY/FRACTIONAL SEG back onto its source grid (demo, tests, dashboard preview)."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import dcmread


def read_seg_mask(seg_path: Path, source_paths: list[Path], segment_number: int = 1) -> tuple[np.ndarray, list[str]]:
    """The segment's mask aligned with ``source_paths`` (one file per slice, Z order).

    Returns
    -------
    mask : numpy.ndarray
        (Z, Y, X) uint8; slices the SEG has no frame for are 0.
    uids : list of str
        SOP Instance UIDs of the source slices, in Z order.
    """
    seg = hd.seg.segread(seg_path)
    uids = [str(dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID) for p in source_paths]
    referenced = {u for u in uids if u in _referenced_uids(seg)}
    arr = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[u for u in uids if u in referenced],
        segment_numbers=[segment_number],
        assert_missing_frames_are_empty=True,
    )
    first = dcmread(source_paths[0], stop_before_pixels=True)
    out = np.zeros((len(uids), int(first.Rows), int(first.Columns)), dtype=np.uint8)
    j = 0
    for i, u in enumerate(uids):
        if u in referenced:
            out[i] = (arr[j, :, :, 0] > 0).astype(np.uint8)
            j += 1
    return out, uids


def _referenced_uids(seg) -> set[str]:
    out: set[str] = set()
    for item in getattr(seg, "ReferencedSeriesSequence", []):
        for inst in getattr(item, "ReferencedInstanceSequence", []):
            out.add(str(inst.ReferencedSOPInstanceUID))
    return out
