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
from PIL import Image
from sqlalchemy import select

from ..db.models import Instance, Run, Study
from ..logsetup import uid_hash
from ..preview import overlay_rgb

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


def compose(image: np.ndarray, mask: np.ndarray, max_side: int = 512) -> bytes:
    """PNG of an MR slice ``image`` (rows × cols, raw values) with ``mask`` (rows × cols, bool)
    filled and outlined in red (:func:`pgsam_node.preview.overlay_rgb`); small images are
    enlarged (nearest neighbour) to about ``max_side`` pixels."""
    rgb = overlay_rgb(image, fills=[(mask, COLOUR)], outlines=[(mask, COLOUR)])
    img = Image.fromarray(rgb, "RGB")
    scale = max(1, max_side // max(img.size))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def largest_slice(seg: hd.seg.Segmentation) -> tuple[str, int, np.ndarray]:
    """The source SOP Instance UID whose SEG frame has the most segmented pixels.

    Returns
    -------
    (uid, area, mask)
        ``mask`` is rows × cols bool (all segments combined).
    """
    sources = [sop for (_st, _se, sop) in seg.get_source_image_uids()]
    if not sources:
        raise PreviewUnavailable("the SEG references no source image")
    best_uid, best_area, best_mask = None, -1, None
    for i in range(0, len(sources), 32):
        chunk = sources[i : i + 32]
        try:
            arr = seg.get_pixels_by_source_instance(
                chunk, combine_segments=True, relabel=True, assert_missing_frames_are_empty=True, skip_overlap_checks=True
            )
        except (ValueError, RuntimeError, KeyError) as exc:
            raise PreviewUnavailable(f"cannot index the SEG by source image: {exc}") from None
        areas = (arr > 0).reshape(len(chunk), -1).sum(axis=1)
        j = int(np.argmax(areas))
        if int(areas[j]) > best_area:
            best_uid, best_area, best_mask = chunk[j], int(areas[j]), arr[j] > 0
    return best_uid, best_area, best_mask


def render_preview(db, settings, study_id: int) -> bytes:
    """PNG bytes: the source slice with the largest mask area, the SEG overlaid.

    Raises
    ------
    PreviewUnavailable
        No SEG yet, its files are gone, or the source image is missing.
    """
    seg, _path, study_uid = _seg_of_study(db, settings, study_id)
    best_uid, best_area, best_mask = largest_slice(seg)
    with db.session() as s:
        inst = s.scalar(select(Instance).where(Instance.sop_instance_uid == best_uid))
        rel = inst.path if inst is not None else None
    if rel is None:
        raise PreviewUnavailable("the source image is not indexed on this node")
    src = (settings.storage_root / rel).resolve()
    if not src.is_file():
        raise PreviewUnavailable("the source image file is gone")
    ds = pydicom.dcmread(src)
    pixels = ds.pixel_array
    if pixels.ndim != 2:
        raise PreviewUnavailable("multi-frame or colour source images are not previewed")
    if pixels.shape != best_mask.shape:
        raise PreviewUnavailable(f"SEG frame {best_mask.shape} does not match the source image {pixels.shape}")
    log.debug("preview of study %s: %d voxels on the chosen slice", uid_hash(study_uid), best_area,
              extra={"study": uid_hash(study_uid)})
    return compose(pixels, best_mask)
