"""Preview PNG of a study's newest SEG over its reference series, rendered from the files.

The SEG is read with highdicom from ``Run.output_paths`` (paths relative to the storage root);
the slice shown is the referenced source image with the largest segmented area (PS3.3 C.8.20:
each SEG frame names its source image in the Derivation Image Sequence), read with pydicom.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from sqlalchemy import select

from pgsam_node.db.models import Instance, Run, Study
from pgsam_node.logsetup import uid_hash
from pgsam_node.encode.preview import annotate, overlay_rgb, side_letters
from pgsam_node.geometry.load import as_displayed

log = logging.getLogger(__name__)
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
#: Overlay colour (RGB).
COLOUR = (230, 40, 40)


class PreviewUnavailable(Exception):
    """No SEG (yet), files gone, or the source image cannot be read; the message says which."""


def _seg_of_study(db, settings, study_id: int) -> tuple[hd.seg.Segmentation, Path, str]:
    root = settings.storage_root
    with db.session() as s:
        st = s.get(Study, study_id)
        if st is None:
            raise PreviewUnavailable(f"no study {study_id}")
        uid = st.study_uid
        runs = s.scalars(select(Run).where(Run.study_id == study_id).order_by(Run.id.desc())).all()
        candidates = [p for r in runs for p in (r.output_paths or [])]
    if not candidates:
        raise PreviewUnavailable("no segmentation yet")
    missing = 0
    for rel in candidates:
        p = (root / rel).resolve()
        if not p.is_relative_to(root.resolve()) or not p.is_file():
            missing += 1
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not a DICOM file: try the next output
            continue
        if ds.get("SOPClassUID") != SEG_SOP_CLASS:
            continue
        return hd.seg.segread(p), p, uid
    raise PreviewUnavailable("segmentation files deleted" if missing == len(candidates) else "no DICOM SEG among the outputs")


def compose(image: np.ndarray, mask: np.ndarray, max_side: int = 512, slice_text: str = "",
            sides: tuple[str, str] | None = None, label: str = "segmentation (SEG)") -> bytes:
    """PNG of an MR slice ``image`` (rows × cols, raw values) with ``mask`` (rows × cols, bool)
    filled and outlined in red (:func:`pgsam_node.encode.preview.overlay_rgb`); small images are
    enlarged (nearest neighbour) to about ``max_side`` pixels; a legend, the slice number and the
    patient-side markers are drawn (:func:`pgsam_node.encode.preview.annotate`)."""
    rgb = overlay_rgb(image, fills=[(mask, COLOUR)], outlines=[(mask, COLOUR)])
    img = annotate(rgb, [(COLOUR, label)], slice_text or "slice", sides, max_side)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _frame_refs(seg) -> dict[str, set[int]]:
    """Source SOP Instance UID → referenced frame numbers (empty for single-frame sources), from
    each SEG frame's Derivation Image Sequence (PS3.3 C.7.6.16.2.6)."""
    refs: dict[str, set[int]] = {}
    for fg in seg.get("PerFrameFunctionalGroupsSequence", []):
        for der in fg.get("DerivationImageSequence", []):
            for src in der.get("SourceImageSequence", []):
                frames = refs.setdefault(str(src.ReferencedSOPInstanceUID), set())
                f = src.get("ReferencedFrameNumber")
                if f is not None:
                    frames.update(int(x) for x in (f if isinstance(f, (list, tuple, pydicom.multival.MultiValue)) else [f]))
    return refs


def largest_slice(seg: hd.seg.Segmentation) -> tuple[str, int | None, int, np.ndarray]:
    """The source image (and frame, for a multi-frame source) whose SEG frame has the most
    segmented pixels.

    Returns
    -------
    (uid, frame, area, mask)
        ``frame`` is the 1-based source frame number, or None for a single-frame source;
        ``mask`` is rows × cols bool (all segments combined).
    """
    refs = _frame_refs(seg)
    if not refs:
        refs = {sop: set() for (_st, _se, sop) in seg.get_source_image_uids()}
    if not refs:
        raise PreviewUnavailable("the SEG references no source image")
    best: tuple[str, int | None, int, np.ndarray] | None = None
    opts = dict(combine_segments=True, relabel=True, assert_missing_frames_are_empty=True, skip_overlap_checks=True)

    def consider(uid: str, frame: int | None, plane: np.ndarray) -> None:
        nonlocal best
        area = int((plane > 0).sum())
        if best is None or area > best[2]:
            best = (uid, frame, area, plane > 0)

    try:
        single = [u for u, f in refs.items() if not f]
        for i in range(0, len(single), 32):
            chunk = single[i : i + 32]
            arr = seg.get_pixels_by_source_instance(chunk, **opts)
            for uid, plane in zip(chunk, arr):
                consider(uid, None, plane)
        for uid, frames in refs.items():
            if frames:
                nums = sorted(frames)
                arr = seg.get_pixels_by_source_frame(uid, nums, **opts)
                for num, plane in zip(nums, arr):
                    consider(uid, num, plane)
    except (ValueError, RuntimeError, KeyError, IndexError) as exc:
        raise PreviewUnavailable(f"cannot index the SEG by source image: {exc}") from None
    assert best is not None
    return best


def render_preview(db, settings, study_id: int) -> bytes:
    """PNG bytes: the source slice with the largest mask area, the SEG overlaid.

    Raises
    ------
    PreviewUnavailable
        No SEG yet, its files are gone, or the source image is missing.
    """
    seg, _path, study_uid = _seg_of_study(db, settings, study_id)
    best_uid, best_frame, best_area, best_mask = largest_slice(seg)
    with db.session() as s:
        inst = s.scalar(select(Instance).where(Instance.sop_instance_uid == best_uid))
        rel = inst.path if inst is not None else None
    if rel is None:
        raise PreviewUnavailable("the source image is not indexed on this node")
    src = (settings.storage_root / rel).resolve()
    if not src.is_file():
        raise PreviewUnavailable("the source image file is gone")
    ds = pydicom.dcmread(src)
    pixels = as_displayed(ds.pixel_array, ds)
    if best_frame is not None and int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[best_frame - 1]
    if pixels.ndim != 2:
        raise PreviewUnavailable("colour source images are not previewed")
    if pixels.shape != best_mask.shape:
        raise PreviewUnavailable(f"SEG frame {best_mask.shape} does not match the source image {pixels.shape}")
    log.debug("preview of study %s: %d voxels on the chosen slice", uid_hash(study_uid), best_area,
              extra={"study": uid_hash(study_uid)})
    number = ds.get("InstanceNumber")
    if best_frame is not None and int(ds.get("NumberOfFrames", 1) or 1) > 1:
        text = f"frame {best_frame} / {int(ds.NumberOfFrames)}"
        iop = None
        sfg = ds.get("SharedFunctionalGroupsSequence")
        if sfg and "PlaneOrientationSequence" in sfg[0]:
            iop = sfg[0].PlaneOrientationSequence[0].ImageOrientationPatient
    else:
        text = f"slice (instance) {number}" if number is not None else "slice"
        iop = ds.get("ImageOrientationPatient")
    return compose(pixels, best_mask, slice_text=text, sides=side_letters(iop))
