"""Per-frame WADO-RS (``/frames/N``, PS3.18 10.4) of our SEGs from Orthanc 1.10 + its DICOMweb
plugin, on a grid whose width (260) is not a multiple of 8: Orthanc refuses the BINARY SEG's
frames (HTTP 400 "Bad file format"; its log: "Bad number of columns for a
black-and-white image"); ``seg.mask_encoding:
fractional`` (FRACTIONAL OCCUPANCY, 8 bits) serves every frame, and its pixels are the mask.
On a width that is a multiple of 8 the BINARY SEG's frames are served (control)."""

from __future__ import annotations

import re

import httpx
import numpy as np
import pytest

from pgsam_node.encode import algorithm_info, build_seg, load_sources, validate_seg

from ..dicom_tools import assert_dciodvfy_clean, blob_mask
from ..factories import Geometry
from ..orthanc import OrthancServer
from .test_dicomweb_stow import DICOMWEB, PLUGIN

pytestmark = pytest.mark.orthanc


def _frames(orthanc: OrthancServer, seg) -> list[tuple[int, bytes]]:
    base = (f"{orthanc.url}/dicom-web/studies/{seg.StudyInstanceUID}/series/{seg.SeriesInstanceUID}"
            f"/instances/{seg.SOPInstanceUID}/frames")
    out = []
    for n in range(1, int(seg.NumberOfFrames) + 1):
        r = httpx.get(f"{base}/{n}", headers={"Accept": 'multipart/related; type="application/octet-stream"'}, timeout=30)
        out.append((r.status_code, r.content if r.status_code == 200 else r.text.encode()))
    return out


def _part(body: bytes) -> bytes:
    """The payload of a one-part multipart/related answer."""
    head, _, rest = body.partition(b"\r\n\r\n")
    boundary = head.split(b"\r\n")[0]
    return rest[: rest.rfind(b"\r\n" + boundary)]


@pytest.mark.parametrize("cols, encoding, served", [(260, "binary", False), (260, "fractional", True), (48, "binary", True)])
def test_orthanc_frames_by_encoding(settings, tmp_path, mr_files, cols, encoding, served):
    if not PLUGIN.exists():
        pytest.skip("Debian package orthanc-dicomweb not installed (deploy/install-system-deps.sh)")
    paths, dss = mr_files(n_slices=4, geometry=Geometry(rows=40, columns=cols))
    mask = blob_mask((4, 40, cols))
    settings = settings.model_copy(update={"seg": settings.seg.model_copy(update={"mask_encoding": encoding})})
    seg = build_seg(mask, paths, None, settings, algorithm_info("e" * 64), 1)
    validate_seg(seg, mask, load_sources(paths))  # the node's own pre-send check passes for both encodings
    seg_path = tmp_path / "seg.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    assert_dciodvfy_clean(seg_path)
    assert seg.SegmentationType == ("FRACTIONAL" if encoding == "fractional" else "BINARY")
    with OrthancServer(tmp_path / "orthanc", extra=DICOMWEB) as orthanc:
        for p in paths:
            orthanc.upload(p)
        orthanc.upload(seg_path)
        got = _frames(orthanc, seg)
        log = orthanc.log_tail(20000)
    if not served:
        assert all(code == 400 for code, _ in got), got
        assert b"Bad file format" in got[0][1]
        assert re.search("Bad number of columns", log), log[-1500:]
        return
    assert all(code == 200 for code, _ in got), got
    if encoding == "fractional":
        # Frame k is the mask of the source slice it references; 8-bit 0/255 pixels.
        for (_, body), fg in zip(got, seg.PerFrameFunctionalGroupsSequence):
            uid = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            z = [str(d.SOPInstanceUID) for d in dss].index(uid)
            pixels = np.frombuffer(_part(body), dtype=np.uint8).reshape(40, cols)
            assert np.array_equal(pixels > 127, mask[z].astype(bool))
