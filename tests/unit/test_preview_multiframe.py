"""Preview of a SEG over a multi-frame (enhanced) MR source: the frame with the largest area."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.uid import generate_uid

from pgsam_node.db import Database
from pgsam_node.db.models import Instance, Run, Series, Study
from pgsam_node.web.preview import largest_slice, render_preview

from ..factories import Geometry, MRSeries
from ..opsdata import segment_description


def test_multiframe_source(settings):
    study_uid = generate_uid()
    frames = MRSeries(study_uid=study_uid, n_slices=5, geometry=Geometry(rows=48, columns=48), pixels="blob").datasets()
    enh = hd.legacy.LegacyConvertedEnhancedMRImage(frames, series_instance_uid=generate_uid(), series_number=7,
                                                  sop_instance_uid=generate_uid(), instance_number=1)
    mask = np.zeros((5, 48, 48), bool)
    mask[1, 5:9, 5:9] = True      # 16 px on frame 2
    mask[3, 20:31, 20:31] = True  # 121 px on frame 4
    seg = hd.seg.Segmentation(
        source_images=[enh], pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description()],
        series_instance_uid=generate_uid(), series_number=9001, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="PG-SAM Node", manufacturer_model_name="pgsam", software_versions="test", device_serial_number="1",
    )
    root = settings.storage_root
    (root / "spool").mkdir(parents=True)
    (root / "outputs").mkdir(parents=True)
    enh.save_as(root / "spool" / "enh.dcm")
    seg.save_as(root / "outputs" / "seg.dcm")
    db = Database(settings.database_url)
    with db.transaction() as s:
        st = Study(study_uid=study_uid, state="DONE")
        s.add(st)
        s.flush()
        se = Series(study_id=st.id, series_uid=enh.SeriesInstanceUID, modality="MR")
        s.add(se)
        s.flush()
        s.add(Instance(series_id=se.id, sop_instance_uid=enh.SOPInstanceUID, sop_class_uid=enh.SOPClassUID, path="spool/enh.dcm"))
        s.add(Run(study_id=st.id, version=0, idempotency_key="k", status="SENT", output_paths=["outputs/seg.dcm"]))
        sid = st.id
    uid, frame, area, m = largest_slice(hd.seg.segread(root / "outputs" / "seg.dcm"))
    assert (uid, frame, area) == (enh.SOPInstanceUID, 4, 121) and m[25, 25]
    img = np.asarray(Image.open(io.BytesIO(render_preview(db, settings, sid))).convert("RGB")).astype(int)
    red = (img[..., 0] > 200) & (img[..., 1] < 80) & (img[..., 2] < 80)
    red[-24:, :40] = False  # the legend's swatch (bottom left)
    ys, xs = np.nonzero(red)
    scale = img.shape[0] // 48
    # the outline sits where the 11 x 11 square of frame 4 is (rows/cols 20..30), not frame 2's
    assert ys.min() // scale == 20 and ys.max() // scale == 30 and xs.min() // scale == 20
    db.dispose()
